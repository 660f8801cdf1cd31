// Scheduled and recurring events against a real PostgreSQL and nats-server: firing once and
// never early, rollback, cancel and reschedule, unique keys under concurrent publishers,
// recurring schedules with pause, resume and trigger, and 4 worker processes sharing the work.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <pqxx/pqxx>

#include "omnibus/event.hpp"
#include "omnibus/relay.hpp"
#include "omnibus/scheduler.hpp"
#include "omnibus/schedules.hpp"
#include "support/worker_fixture.hpp"

using namespace std::chrono_literals;
using test_env::process_fixture;
using test_env::worker_fixture;
using sys_clock = std::chrono::system_clock;

namespace {

struct big_event {
  static constexpr std::string_view name = "test.big_event";
  static constexpr int version = 1;
  std::string text;
  OMNIBUS_FIELDS(text);
};

// A worker with its relay and scheduler in this process, recording tool_events in `handled`.
struct scheduler_fixture : process_fixture {
  std::optional<omnibus::relay> relay;
  std::optional<omnibus::scheduler> sched;

  void record_events() {
    omnibus::listener_options lo = quick_retries(5);
    lo.inbox = true;  // the count of effects is the count of distinct events handled
    b.add_async_listener<tool_event>("recorder", [this](omnibus::context& ctx, const tool_event& e) {
      ctx.tx().exec_params0("INSERT INTO \"" + opts.schema + "\".handled (n, worker) VALUES ($1, 'inproc')", e.n);
    }, lo);
  }
  void start_all() {
    omnibus::relay_options ro;
    ro.database_url = where.database_url;
    ro.schema = opts.schema;
    ro.stream = opts.stream;
    relay.emplace(js, ro, log);
    omnibus::scheduler_options so;
    so.database_url = where.database_url;
    so.retry_backoff = 100ms;
    sched.emplace(b, so, log);
    start_worker();
    relay->start();
    sched->start();
  }
  ~scheduler_fixture() {
    if (sched) sched->stop();
    if (relay) relay->stop();
  }
  long pending() { return scalar("SELECT count(*) FROM \"" + opts.schema + "\".bus_scheduled"); }
};

}  // namespace

TEST_CASE_METHOD(scheduler_fixture, "a scheduled event fires once when due and never before; a rolled-back one never",
                 "[integration][scheduler]") {
  record_events();
  start_all();
  omnibus::event_id later;
  sys_clock::time_point due;
  {
    pqxx::work tx{db};
    omnibus::context ctx{tx};
    later = b.publish_after(ctx, 1500ms, tool_event{1});
    tx.commit();
  }
  {
    pqxx::work tx{db};
    omnibus::context ctx{tx};
    (void)b.publish_after(ctx, 100ms, tool_event{2});
    tx.abort();  // a rolled-back transaction schedules nothing
  }
  const auto found = omnibus::find_scheduled(db, opts.schema, later);
  REQUIRE(found);
  due = found->due_at;
  CHECK(found->event_name == "test.tool_event");
  // A time in the past fires at once, from a transaction of its own on a connection.
  (void)b.publish_at(db, sys_clock::now() - 1h, tool_event{3});

  const bool fired = test_env::eventually([&] { return count("n = 1") == 1 && count("n = 3") == 1; }, 20s);
  INFO(logs());
  REQUIRE(fired);
  CHECK(pending() == 0);
  CHECK(count("n = 2") == 0);
  // Handled no earlier than due, by the database's clock (the scheduler's too).
  CHECK(scalar("SELECT count(*) FROM \"" + opts.schema + "\".handled WHERE n = 1 AND at >= timestamptz 'epoch' + " +
               std::to_string(std::chrono::duration_cast<std::chrono::microseconds>(due.time_since_epoch()).count()) +
               " * interval '1 microsecond'") == 1);
  CHECK_FALSE(omnibus::find_scheduled(db, opts.schema, later));
  CHECK_FALSE(b.cancel(db, later));  // fired: nothing to cancel
}

TEST_CASE_METHOD(scheduler_fixture, "cancel and reschedule: in the caller's transaction, false once fired",
                 "[integration][scheduler]") {
  record_events();
  start_all();
  const auto a = b.publish_after(db, 1h, tool_event{10});
  const auto c = b.publish_after(db, 1h, tool_event{11});
  {
    pqxx::work tx{db};
    omnibus::context ctx{tx};
    CHECK(b.cancel(ctx, a));
    tx.abort();  // the cancel rolls back with its transaction
  }
  CHECK(omnibus::find_scheduled(db, opts.schema, a));
  CHECK(b.cancel(db, a));
  CHECK_FALSE(b.cancel(db, a));
  CHECK_FALSE(omnibus::find_scheduled(db, opts.schema, a));
  CHECK(b.reschedule(db, c, sys_clock::now()));  // the NOTIFY wakes a scheduler that planned to sleep
  REQUIRE(test_env::eventually([&] { return count("n = 11") == 1; }, 20s));
  CHECK_FALSE(b.reschedule(db, c, sys_clock::now() + 1h));
  CHECK(count("n = 10") == 0);
  CHECK_FALSE(b.cancel(db, omnibus::event_id::generate()));  // unknown
}

TEST_CASE_METHOD(scheduler_fixture, "bad input: too large, no transaction or connection, a long key; nothing is written",
                 "[integration][scheduler]") {
  opts.max_body_bytes = 1000;
  omnibus::event_bus small{js, opts};
  CHECK_THROWS_AS(small.publish_after(db, 1s, big_event{std::string(5000, 'x')}), omnibus::event_too_large);
  omnibus::context bare;
  CHECK_THROWS_WITH(b.publish_after(bare, 1s, tool_event{1}), Catch::Contains("give it a context with a transaction"));
  omnibus::schedule_options long_key;
  long_key.unique_key = std::string(300, 'k');
  CHECK_THROWS_AS(b.publish_after(db, 1s, tool_event{1}, long_key), std::invalid_argument);
  CHECK(pending() == 0);
}

TEST_CASE_METHOD(scheduler_fixture, "unique keys: two concurrent publishers never both schedule one key",
                 "[integration][scheduler]") {
  constexpr int rounds = 40;
  std::vector<omnibus::event_id> first(rounds), second(rounds);
  auto publisher = [&](std::vector<omnibus::event_id>& out, long n) {
    pqxx::connection conn{where.database_url};
    for (int i = 0; i < rounds; ++i) {
      omnibus::schedule_options o;
      o.unique_key = "remind:order:" + std::to_string(i);
      pqxx::work tx{conn};
      omnibus::context ctx{tx};
      out[static_cast<std::size_t>(i)] = b.publish_after(ctx, 1h, tool_event{n}, o);
      tx.commit();
    }
  };
  {
    std::jthread one(publisher, std::ref(first), 1);
    std::jthread two(publisher, std::ref(second), 2);
  }
  CHECK(first == second);  // each key: one winner, and the loser was told its id
  CHECK(pending() == rounds);
  // Once the pending one is gone (cancelled here; fired alike), the key is free again.
  CHECK(b.cancel(db, first[0]));
  omnibus::schedule_options o;
  o.unique_key = "remind:order:0";
  const auto again = b.publish_after(db, 1h, tool_event{3}, o);
  CHECK(again != first[0]);
  CHECK(b.publish_after(db, 2h, tool_event{4}, o) == again);
  const auto listed = omnibus::list_scheduled(db, opts.schema, {.due_before = std::nullopt, .unique_key = "remind:order:0"});
  REQUIRE(listed.size() == 1);
  CHECK(listed[0].id == again);
}

TEST_CASE_METHOD(scheduler_fixture, "cancel racing the scheduler: an event is cancelled or fired, never both, never lost",
                 "[integration][scheduler]") {
  record_events();
  start_all();
  constexpr long events = 300;
  std::vector<omnibus::event_id> ids;
  for (long i = 0; i < events; ++i) ids.push_back(b.publish_after(db, std::chrono::milliseconds(300 + i), tool_event{i}));
  std::set<long> cancelled;
  std::mt19937 random{7};
  pqxx::connection conn{where.database_url};
  for (long i = 0; i < events; i += 2) {  // every other one, while they come due
    if (b.cancel(conn, ids[static_cast<std::size_t>(i)])) cancelled.insert(i);
    std::this_thread::sleep_for(std::chrono::microseconds(random() % 1500));  // pacing the race, not a wait
  }
  INFO("cancelled " << cancelled.size());
  REQUIRE(test_env::eventually([&] { return pending() == 0 && distinct_handled() == events - static_cast<long>(cancelled.size()); }, 30s));
  CHECK(count() == events - static_cast<long>(cancelled.size()));
  for (long n : cancelled) CHECK(count("n = " + std::to_string(n)) == 0);
}

TEST_CASE_METHOD(scheduler_fixture, "a recurring schedule fires each occurrence once; pause, resume and trigger",
                 "[integration][scheduler]") {
  record_events();
  b.add_schedule("tick", "* * * * * *", "UTC",
                 [](omnibus::cron::time_point occurrence) { return tool_event{occurrence.time_since_epoch().count()}; });
  start_all();
  const long started = std::chrono::duration_cast<std::chrono::seconds>(sys_clock::now().time_since_epoch()).count();
  REQUIRE(test_env::eventually([&] { return count("n > " + std::to_string(started + 2)) >= 1; }, 20s));
  // Consecutive seconds, each once.
  CHECK(scalar("SELECT count(*) - count(DISTINCT n) FROM \"" + opts.schema + "\".handled") == 0);
  CHECK(scalar("SELECT max(n) - min(n) + 1 - count(*) FROM \"" + opts.schema + "\".handled") == 0);
  // Occurrences are handled after they came, never before.
  CHECK(scalar("SELECT count(*) FROM \"" + opts.schema + "\".handled WHERE at < to_timestamp(n)") == 0);

  REQUIRE(omnibus::set_recurring_paused(db, opts.schema, "tick", true));
  const auto paused_state = [&] {
    for (const auto& r : omnibus::list_recurring(db, opts.schema)) {
      if (r.name == "tick") return r;
    }
    FAIL("tick is not registered");
    return omnibus::recurring_state{};
  };
  CHECK(paused_state().paused);
  const long at_pause = scalar("SELECT coalesce(max(n), 0) FROM \"" + opts.schema + "\".handled");
  // Paused across several occurrences: wait until three have passed unfired.
  const long resume_after = at_pause + 4;
  REQUIRE(test_env::eventually([&] { return sys_clock::now() > sys_clock::time_point(std::chrono::seconds(resume_after)); }, 10s));
  const long fired_while_paused = count("n > " + std::to_string(at_pause + 1));  // one may have fired as we paused
  CHECK(fired_while_paused == 0);
  REQUIRE(omnibus::set_recurring_paused(db, opts.schema, "tick", false));
  // Resumed: the missed occurrences fire as one (the latest), then it ticks again.
  REQUIRE(test_env::eventually([&] { return count("n > " + std::to_string(resume_after + 1)) >= 1; }, 20s));
  CHECK(count("n > " + std::to_string(at_pause + 1) + " AND n < " + std::to_string(resume_after - 1)) == 0);
  CHECK(logs().find("recurring schedule tick missed") != std::string::npos);

  const long before_trigger = count();
  const auto id = omnibus::trigger_recurring(db, b, "tick");
  CHECK_FALSE(id.is_nil());
  REQUIRE(test_env::eventually([&] { return paused_state().last_event_id == id.to_string() || count() > before_trigger; }, 10s));
  CHECK(scalar("SELECT count(*) FROM \"" + opts.schema + "\".bus_recurring_fired WHERE manual") == 1);
  CHECK_THROWS_AS(omnibus::trigger_recurring(db, b, "nope"), std::invalid_argument);
}

TEST_CASE_METHOD(process_fixture, "4 worker processes: 10,000 scheduled events and a per-second cron, each fired once",
                 "[integration][scheduler]") {
  provision_recorder();
  constexpr long events = 10000;
  // Due within a few seconds of now, in one transaction, each due time kept beside it.
  {
    pqxx::work tx{db};
    tx.exec0("CREATE TABLE \"" + opts.schema + "\".due (n bigint PRIMARY KEY, due_at timestamptz NOT NULL)");
    omnibus::context ctx{tx};
    const auto t0 = sys_clock::now() + 3s;
    for (long i = 0; i < events; ++i) (void)b.publish_at(ctx, t0 + std::chrono::microseconds(i * 400), tool_event{i});
    tx.exec_params0("INSERT INTO \"" + opts.schema + "\".due SELECT n, $1::timestamptz + n * interval '400 microseconds' "
                    "FROM generate_series(0, $2 - 1) AS n",
                    omnibus::to_iso8601(t0), events);
    tx.commit();
  }
  const std::vector<std::string> env = {"OMNIBUS_TEST_INBOX=1", "OMNIBUS_TEST_RELAY=1", "OMNIBUS_TEST_SCHEDULER=1",
                                        "OMNIBUS_TEST_CRON=* * * * * *"};
  std::vector<std::unique_ptr<test_env::child_process>> workers;
  for (int i = 0; i < 4; ++i) workers.push_back(worker_process_ptr("w" + std::to_string(i), env));
  const long started = std::chrono::duration_cast<std::chrono::seconds>(sys_clock::now().time_since_epoch()).count();
  REQUIRE(test_env::eventually([&] { return count("n < " + std::to_string(events)) == events; }, 120s));
  const long cron_window = std::getenv("OMNIBUS_FAULT_VARIANT") != nullptr ? 60 : 30;  // a minute in the long run
  REQUIRE(test_env::eventually([&] { return count("n > " + std::to_string(started + cron_window + 2)) >= 1; }, 120s));
  long moved = 0;
  for (auto& w : workers) {
    w->signal(SIGTERM);
    REQUIRE(w->wait(30s) == 0);
    const std::string out = w->output();
    const auto at = out.find("moved=");
    REQUIRE(at != std::string::npos);
    moved += std::atol(out.c_str() + at + 6);
  }
  CHECK(moved == events);  // each due row moved to the outbox exactly once, among 4 schedulers
  CHECK(count("n < " + std::to_string(events)) == events);
  CHECK(distinct_handled() == count());
  // Every second of the window fired exactly once (the inbox counts effects once per event id).
  const std::string window = "n BETWEEN " + std::to_string(started + 2) + " AND " + std::to_string(started + cron_window);
  CHECK(count(window) == cron_window - 1);
  CHECK(scalar("SELECT count(*) FROM \"" + opts.schema + "\".handled WHERE n >= 1000000000 AND at < to_timestamp(n)") == 0);
  // None early: each scheduled event handled at or after its due time.
  CHECK(scalar("SELECT count(*) FROM \"" + opts.schema + "\".handled h JOIN \"" + opts.schema +
               "\".due d USING (n) WHERE h.at < d.due_at") == 0);
}
