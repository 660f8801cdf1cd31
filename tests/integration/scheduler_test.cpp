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
#include <optional>
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
  // Two publishers cancelling the same events: each is cancelled once, by one of them.
  std::atomic<int> cancelled{0};
  auto canceller = [&] {
    pqxx::connection conn{where.database_url};
    for (int i = 1; i < rounds; ++i) cancelled += b.cancel(conn, first[static_cast<std::size_t>(i)]) ? 1 : 0;
  };
  {
    std::jthread one(canceller);
    std::jthread two(canceller);
  }
  CHECK(cancelled == rounds - 1);
  CHECK(pending() == 1);
  // Forced: the second publisher's INSERT waits for the first's open transaction, then returns
  // the first's id once it commits.
  {
    pqxx::connection first_conn{where.database_url};
    pqxx::connection other{where.database_url};
    std::optional<pqxx::work> holder;
    holder.emplace(first_conn);
    omnibus::context ctx{*holder};
    omnibus::schedule_options k;
    k.unique_key = "forced";
    const auto winner = b.publish_after(ctx, 1h, tool_event{5}, k);
    std::atomic<bool> returned{false};
    omnibus::event_id loser;
    std::jthread second_publisher([&] {
      pqxx::work tx{other};
      omnibus::context c2{tx};
      loser = b.publish_after(c2, 1h, tool_event{6}, k);
      tx.commit();
      returned = true;
    });
    struct end_first {  // on a failed REQUIRE too: the second publisher must not wait forever
      std::optional<pqxx::work>& tx;
      ~end_first() {
        if (tx) tx->abort();
      }
    } end{holder};
    // Still blocked on the first's uncommitted row (pg_locks shows it waiting).
    REQUIRE(test_env::eventually([&] {
      return scalar("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE NOT l.granted AND "
                    "l.locktype = 'transactionid' AND a.query LIKE '%bus_scheduled%'") >= 1;
    }, 10s));
    CHECK_FALSE(returned);
    holder->commit();
    holder.reset();
    second_publisher.join();
    CHECK(returned);
    CHECK(loser == winner);
  }
  // In REPEATABLE READ, a key taken after the transaction began is a serialization failure.
  {
    pqxx::connection other{where.database_url};
    pqxx::transaction<pqxx::isolation_level::repeatable_read> rr{other};
    (void)rr.exec("SELECT 1");  // the snapshot is taken here
    omnibus::schedule_options k;
    k.unique_key = "taken-later";
    (void)b.publish_after(db, 1h, tool_event{7}, k);
    omnibus::context ctx{rr};
    CHECK_THROWS_AS(b.publish_after(ctx, 1h, tool_event{8}, k), pqxx::serialization_failure);
  }
  CHECK(b.cancel(db, omnibus::list_scheduled(db, opts.schema, {.due_before = std::nullopt, .unique_key = "forced"}).at(0).id));
  CHECK(b.cancel(db, omnibus::list_scheduled(db, opts.schema, {.due_before = std::nullopt, .unique_key = "taken-later"}).at(0).id));
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
  omnibus::recurring_options ro;
  ro.missed = omnibus::missed_policy::all;  // a slow pass fires late, never drops an occurrence...
  ro.missed_window = 2s;                    // ...unless it is more than 2 s late (paused, below)
  b.add_schedule("tick", "* * * * * *", "UTC",
                 [](omnibus::cron::time_point occurrence) { return tool_event{occurrence.time_since_epoch().count()}; }, ro);
  start_all();
  const long started = std::chrono::duration_cast<std::chrono::seconds>(sys_clock::now().time_since_epoch()).count();
  REQUIRE(test_env::eventually([&] { return count("n > " + std::to_string(started + 2)) >= 1; }, 20s));
  // Consecutive seconds, each once.
  CHECK(scalar("SELECT count(*) - count(DISTINCT n) FROM \"" + opts.schema + "\".handled") == 0);
  CHECK(scalar("SELECT max(n) - min(n) + 1 - count(*) FROM \"" + opts.schema + "\".handled") == 0);
  // Occurrences are handled after they came, never before.
  CHECK(scalar("SELECT count(*) FROM \"" + opts.schema + "\".handled WHERE at < to_timestamp(n)") == 0);

  const std::string db_now = "SELECT (extract(epoch FROM now()) * 1000000)::bigint";
  const std::string fired_between = "SELECT count(*) FROM \"" + opts.schema +
                                    "\".bus_recurring_fired WHERE NOT manual AND fired_at > timestamptz 'epoch' + $1 * "
                                    "interval '1 microsecond' AND fired_at < timestamptz 'epoch' + $2 * interval '1 microsecond'";
  REQUIRE(omnibus::set_recurring_paused(db, opts.schema, "tick", true));
  const long paused_us = scalar(db_now);  // after the pause committed: no firing may start later
  CHECK(omnibus::list_recurring(db, opts.schema).at(0).paused);
  // Paused across several occurrences.
  REQUIRE(test_env::eventually([&] { return scalar(db_now) > paused_us + 4'000'000; }, 10s));
  const long resumed_us = scalar(db_now);
  REQUIRE(omnibus::set_recurring_paused(db, opts.schema, "tick", false));
  {
    pqxx::nontransaction q{db};
    CHECK(q.exec_params1(fired_between, paused_us, resumed_us)[0].as<long>() == 0);  // nothing fired while paused
  }
  // Resumed: occurrences more than missed_window late are skipped (and logged); it ticks again.
  const long resumed_s = resumed_us / 1'000'000;
  REQUIRE(test_env::eventually([&] { return count("n > " + std::to_string(resumed_s + 1)) >= 1; }, 20s));
  CHECK(count("n > " + std::to_string(paused_us / 1'000'000 + 1) + " AND n < " + std::to_string(resumed_s - 2)) == 0);
  CHECK(logs().find("recurring schedule tick missed") != std::string::npos);

  const auto id = omnibus::trigger_recurring(db, b, "tick");
  CHECK_FALSE(id.is_nil());
  // The triggered event itself is handled (the inbox records it by its id).
  REQUIRE(test_env::eventually([&] {
    return scalar("SELECT count(*) FROM \"" + opts.schema + "\".bus_inbox WHERE event_id = '" + id.to_string() + "'") == 1;
  }, 20s));
  CHECK(scalar("SELECT count(*) FROM \"" + opts.schema + "\".bus_recurring_fired WHERE manual") == 1);
  CHECK_THROWS_AS(omnibus::trigger_recurring(db, b, "nope"), std::invalid_argument);
}

TEST_CASE_METHOD(process_fixture, "4 worker processes: 10,000 scheduled events and a per-second cron, each fired once",
                 "[integration][scheduler]") {
  provision_recorder();
  constexpr long events = 10000;
  // Due within a few seconds of now, in one transaction; each due time kept beside its id to
  // the nanosecond, and the time each row reached the outbox recorded by a trigger.
  {
    pqxx::work tx{db};
    const std::string s = "\"" + opts.schema + "\"";
    tx.exec0("CREATE TABLE " + s + ".due (id uuid PRIMARY KEY, due_ns bigint NOT NULL)");
    tx.exec0("CREATE TABLE " + s + ".moved (event_id uuid NOT NULL, at timestamptz NOT NULL)");
    tx.exec0("CREATE FUNCTION " + s + ".record_moved() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN INSERT INTO " + s +
             ".moved VALUES (NEW.event_id, clock_timestamp()); RETURN NEW; END $$");
    tx.exec0("CREATE TRIGGER record_moved AFTER INSERT ON " + s + ".bus_outbox FOR EACH ROW EXECUTE FUNCTION " + s +
             ".record_moved()");
    omnibus::context ctx{tx};
    const auto t0 = sys_clock::now() + 3s;  // with its nanoseconds: a due time must round up, never down
    std::string values;
    for (long i = 0; i < events; ++i) {
      const auto when = t0 + std::chrono::nanoseconds(i * 400'123);
      const auto id = b.publish_at(ctx, when, tool_event{i});
      values += (i ? ",('" : "('") + id.to_string() + "'," +
                std::to_string(std::chrono::duration_cast<std::chrono::nanoseconds>(when.time_since_epoch()).count()) + ")";
    }
    tx.exec0("INSERT INTO " + s + ".due VALUES " + values);
    tx.commit();
  }
  const std::vector<std::string> env = {"OMNIBUS_TEST_INBOX=1", "OMNIBUS_TEST_RELAY=1", "OMNIBUS_TEST_SCHEDULER=1",
                                        "OMNIBUS_TEST_CRON=* * * * * *"};
  std::vector<std::unique_ptr<test_env::child_process>> workers;
  for (int i = 0; i < 4; ++i) workers.push_back(worker_process_ptr("w" + std::to_string(i), env));
  REQUIRE(test_env::eventually([&] { return count("n < " + std::to_string(events)) == events; }, 120s));
  // A minute of per-second occurrences from the first one fired, by 4 schedulers.
  constexpr long cron_window = 60;
  const std::string ticks = "n >= 1000000000";
  REQUIRE(test_env::eventually([&] { return count(ticks) >= 1; }, 60s));
  const long first_tick = scalar("SELECT min(n) FROM \"" + opts.schema + "\".handled WHERE " + ticks);
  REQUIRE(test_env::eventually([&] { return count("n >= " + std::to_string(first_tick + cron_window)) >= 1; }, 120s));
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
  // Every second of the window fired exactly once (the inbox counts effects once per event id,
  // so a second firing of one occurrence would show as a second row with its n).
  const std::string window = "n BETWEEN " + std::to_string(first_tick) + " AND " + std::to_string(first_tick + cron_window - 1);
  CHECK(count(window) == cron_window);
  CHECK(scalar("SELECT count(*) - count(DISTINCT n) FROM \"" + opts.schema + "\".handled WHERE " + ticks) == 0);
  // None early: each scheduled event reached the outbox at or after its due time, to the
  // nanosecond asked for; each occurrence after its second began.
  CHECK(scalar("SELECT count(*) FROM \"" + opts.schema + "\".due") == events);
  CHECK(scalar("SELECT count(*) FROM \"" + opts.schema + "\".due d JOIN \"" + opts.schema +
               "\".moved m ON m.event_id = d.id WHERE (extract(epoch FROM m.at) * 1000000)::bigint * 1000 < d.due_ns") == 0);
  CHECK(scalar("SELECT count(*) FROM \"" + opts.schema + "\".due d JOIN \"" + opts.schema +
               "\".moved m ON m.event_id = d.id") == events);  // each moved once
  CHECK(scalar("SELECT count(*) FROM \"" + opts.schema + "\".handled WHERE " + ticks + " AND at < to_timestamp(n)") == 0);
}
