// The worker against real nats-server and PostgreSQL: retries, dead letters, isolation between
// listeners, garbage, deadlines, shared load across processes, SIGTERM and kill -9.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <csignal>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <pqxx/pqxx>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "omnibus/dead_letters.hpp"
#include "omnibus/event_bus.hpp"
#include "omnibus/listener_control.hpp"
#include "omnibus/migrations.hpp"
#include "omnibus/worker.hpp"
#include "omnibus/jetstream.hpp"
#include "omnibus/nats_connection.hpp"
#include "support/child_process.hpp"
#include "support/worker_fixture.hpp"
#include "support/stream_reader.hpp"
#include "support/test_env.hpp"
#include "support/wait.hpp"
#include "tools/tool_event.hpp"

using namespace std::chrono_literals;
using test_env::worker_fixture;
using test_env::process_fixture;

TEST_CASE_METHOD(worker_fixture, "a handler that fails twice then succeeds runs exactly three times, and is acked",
                 "[integration][worker]") {
  std::atomic<int> calls{0};
  b.add_async_listener<tool_event>("flaky", [&](omnibus::context&, const tool_event&) {
    if (++calls <= 2) throw std::runtime_error("database is busy");
  }, quick_retries(5));
  start_worker();
  auto id = publish(1);
  REQUIRE(test_env::eventually([&] { return w->stats().handled.load() == 1; }, 10s));
  REQUIRE(test_env::eventually([&] { return settled("flaky"); }, 10s));
  CHECK(calls == 3);
  CHECK(w->stats().failed.load() == 2);
  CHECK(dead_letters().empty());
  // The history is cleared (just after the ack: wait for it).
  CHECK(test_env::eventually([&] {
    pqxx::nontransaction q{db};
    return q.exec1("SELECT count(*) FROM \"" + opts.schema + "\".bus_failures")[0].as<int>() == 0;
  }, 10s));
  // One log line per failure, naming listener, event, id, attempt and error.
  CHECK_THAT(logs(), Catch::Contains("listener flaky: test.tool_event " + id.to_string() + " attempt 1/5 failed: database is busy"));
  CHECK_THAT(logs(), Catch::Contains("attempt 2/5 failed"));
}

TEST_CASE_METHOD(worker_fixture, "a handler that always fails becomes one dead letter with its error and attempts",
                 "[integration][worker]") {
  std::atomic<int> calls{0};
  b.add_async_listener<tool_event>("broken", [&](omnibus::context&, const tool_event&) {
    ++calls;
    throw std::runtime_error("cannot reach the mail server");
  }, quick_retries(3));
  start_worker();
  auto id = publish(7);
  REQUIRE(test_env::eventually([&] { return dead_letters().size() == 1; }, 10s));
  REQUIRE(test_env::eventually([&] { return settled("broken"); }, 10s));
  auto dl = dead_letters().front();
  CHECK(dl.listener == "broken");
  CHECK(dl.event_id == id.to_string());
  CHECK(dl.event_name == "test.tool_event");
  CHECK(dl.reason == "handler_failed");
  CHECK(dl.error == "cannot reach the mail server");
  CHECK(dl.attempts == 3);
  CHECK(dl.first_failed_at <= dl.last_failed_at);
  CHECK(dl.first_failed_at < dl.last_failed_at);  // the first failure was recorded two attempts earlier
  CHECK(omnibus::decode_event<tool_event>(omnibus::decode(dl.msg, opts.stream.subject_prefix)).n == 7);
  CHECK(calls == 3);
}

TEST_CASE_METHOD(worker_fixture, "a permanent error skips the remaining attempts", "[integration][worker]") {
  std::atomic<int> calls{0};
  b.add_async_listener<tool_event>("strict", [&](omnibus::context&, const tool_event&) {
    ++calls;
    throw omnibus::permanent_error("customer does not exist");
  }, quick_retries(10));
  start_worker();
  publish(1);
  REQUIRE(test_env::eventually([&] { return dead_letters().size() == 1; }, 10s));
  CHECK(dead_letters().front().reason == "permanent");
  CHECK(dead_letters().front().attempts == 1);
  CHECK(calls == 1);
}

TEST_CASE_METHOD(worker_fixture, "a failing listener never makes another one run twice", "[integration][worker]") {
  std::mutex m;
  std::map<long, int> good_seen;
  b.add_async_listener<tool_event>("good", [&](omnibus::context&, const tool_event& e) {
    std::lock_guard lock(m);
    ++good_seen[e.n];
  });
  b.add_async_listener<tool_event>("bad", [&](omnibus::context&, const tool_event& e) {
    if (e.n == 1) throw std::runtime_error("bad listener fails on 1");
  }, quick_retries(3));
  start_worker();
  publish(1);
  REQUIRE(test_env::eventually([&] { return dead_letters("bad").size() == 1; }, 10s));  // bad's retries are over
  publish(2);  // the sentinel
  REQUIRE(test_env::eventually([&] {
    std::lock_guard lock(m);
    return good_seen.count(2) == 1;
  }, 10s));
  std::lock_guard lock(m);
  CHECK(good_seen[1] == 1);
  CHECK(good_seen[2] == 1);
}

TEST_CASE_METHOD(worker_fixture, "garbage on a listener's subject becomes a dead letter with its reason, and events after it are handled",
                 "[integration][worker]") {
  std::atomic<int> handled{0};
  b.add_async_listener<tool_event>("sturdy", [&](omnibus::context&, const tool_event&) { ++handled; });
  start_worker();
  const std::string subject = opts.stream.subject_prefix + ".test.tool_event";

  omnibus::message no_headers;  // raw bytes, nothing else
  no_headers.subject = subject;
  no_headers.body = "\xde\xad\xbe\xef";
  (void)js.publish(no_headers, 5s);

  omnibus::envelope env;  // proper headers, a body that is not msgpack
  env.id = omnibus::event_id::generate();
  env.name = "test.tool_event";
  env.version = 1;
  env.body = "\xc1\xc1";
  (void)js.publish(omnibus::encode(env, opts.stream.subject_prefix), 5s);

  omnibus::envelope typed = env;  // a field of the wrong type
  typed.id = omnibus::event_id::generate();
  typed.body = "\x81\xa1n\xa3one";  // {"n": "one"}
  (void)js.publish(omnibus::encode(typed, opts.stream.subject_prefix), 5s);

  publish(1);
  publish(2);
  REQUIRE(test_env::eventually([&] { return handled == 2 && dead_letters().size() == 3; }, 10s));
  std::set<std::string> reasons;
  for (auto& dl : dead_letters()) reasons.insert(dl.reason);
  CHECK(reasons == std::set<std::string>{"missing_header", "malformed_body", "wrong_type"});
  for (auto& dl : dead_letters()) CHECK(dl.attempts == 1);  // bad input is not retried
  for (auto& dl : dead_letters()) {
    if (dl.reason == "missing_header") {
      CHECK(dl.msg.body == "\xde\xad\xbe\xef");  // kept byte for byte
      CHECK(dl.event_id.rfind("seq:", 0) == 0);     // no id on the wire: keyed by stream sequence
    }
  }
}

TEST_CASE_METHOD(worker_fixture, "a handler past its deadline is retried while another listener keeps running",
                 "[integration][worker]") {
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<int> slow_calls{0};
  std::atomic<int> fast_calls{0};
  omnibus::listener_options slow_opts = quick_retries(5);
  slow_opts.deadline = 300ms;
  slow_opts.concurrency = 2;
  b.add_async_listener<tool_event>("slow", [&](omnibus::context&, const tool_event&) {
    if (++slow_calls == 1) released.wait();  // the first call hangs, ignoring its deadline
  }, slow_opts);
  b.add_async_listener<tool_event>("fast", [&](omnibus::context&, const tool_event&) { ++fast_calls; });
  start_worker();
  publish(1);
  for (long n = 2; n <= 5; ++n) publish(n);
  // The hung call passed its deadline; its message was retried in the other slot and handled.
  REQUIRE(test_env::eventually([&] { return w->stats().timed_out.load() == 1 && slow_calls >= 6; }, 10s));
  CHECK(fast_calls >= 5);
  CHECK_THAT(logs(), Catch::Contains("passed its 300 ms deadline"));
  release.set_value();  // the late result is discarded
  REQUIRE(test_env::eventually([&] { return logs().find("late result is discarded") != std::string::npos; }, 5s));
  REQUIRE(test_env::eventually([&] { return settled("slow") && settled("fast"); }, 10s));
}


TEST_CASE_METHOD(process_fixture, "two worker processes share 10,000 events, each handled once",
                 "[integration][worker][process]") {
  provision_recorder();
  publish_many(10000);
  auto a = worker_process("a", {"OMNIBUS_TEST_DELAY_MS=1"});
  auto c = worker_process("c", {"OMNIBUS_TEST_DELAY_MS=1"});
  REQUIRE(test_env::eventually([&] { return count() >= 10000; }, 120s));
  a.signal(SIGTERM);
  c.signal(SIGTERM);
  REQUIRE(a.wait(20s) == 0);
  REQUIRE(c.wait(20s) == 0);
  CHECK(count() == 10000);
  CHECK(distinct_handled() == 10000);  // no event handled twice
  CHECK(count("worker = 'a'") >= 1000);
  CHECK(count("worker = 'c'") >= 1000);
}

TEST_CASE_METHOD(process_fixture, "SIGTERM mid-batch: the worker exits 0 and a second worker handles the rest",
                 "[integration][worker][process]") {
  provision_recorder();
  publish_many(1000);
  auto first = worker_process("first", {"OMNIBUS_TEST_DELAY_MS=20"});
  REQUIRE(test_env::eventually([&] { return count() >= 50; }, 30s));
  first.signal(SIGTERM);
  REQUIRE(first.wait(30s) == 0);
  const long by_first = count();
  CHECK(by_first < 1000);
  auto second = worker_process("second");
  REQUIRE(test_env::eventually([&] { return distinct_handled() == 1000; }, 60s));
  second.signal(SIGTERM);
  REQUIRE(second.wait(20s) == 0);
  CHECK(count() == 1000);  // in-flight calls finished and were acked; nothing ran twice
}

TEST_CASE_METHOD(process_fixture, "kill -9 mid-batch: the other worker handles every event after AckWait",
                 "[integration][worker][process]") {
  provision_recorder(2s);
  publish_many(1000);
  std::vector<std::string> env{"OMNIBUS_TEST_DELAY_MS=20", "OMNIBUS_TEST_ACK_WAIT_MS=2000"};
  auto doomed = worker_process("doomed", env);
  REQUIRE(test_env::eventually([&] { return count() >= 50; }, 30s));
  auto survivor = worker_process("survivor", env);
  doomed.signal(SIGKILL);
  REQUIRE(doomed.wait(10s) == 128 + SIGKILL);
  REQUIRE(test_env::eventually([&] { return distinct_handled() == 1000; }, 90s));
  survivor.signal(SIGTERM);
  REQUIRE(survivor.wait(20s) == 0);
}

TEST_CASE_METHOD(process_fixture, "a worker whose every slot is stuck exits non-zero for its supervisor",
                 "[integration][worker][process]") {
  provision_recorder();
  publish_many(10);
  auto stuck = worker_process("stuck", {"OMNIBUS_TEST_STUCK=1", "OMNIBUS_TEST_DEADLINE_MS=300"});
  REQUIRE(stuck.wait(30s) == 3);
  CHECK_THAT(stuck.output(), Catch::Contains("stuck past its deadline"));
}

TEST_CASE_METHOD(process_fixture, "an ordered listener sees 1,000 events in publish order across two workers, though #500 fails twice",
                 "[integration][worker][ordered]") {
  provision_recorder(30s, true);
  publish_many(1000);
  std::vector<std::string> env{"OMNIBUS_TEST_ORDERED=1", "OMNIBUS_TEST_FAIL_N=500"};
  auto a = worker_process("a", env);
  auto c = worker_process("c", env);
  REQUIRE(test_env::eventually([&] { return count() >= 1000; }, 120s));
  a.signal(SIGTERM);
  c.signal(SIGTERM);
  REQUIRE(a.wait(20s) == 0);
  REQUIRE(c.wait(20s) == 0);
  pqxx::nontransaction q{db};
  auto rows = q.exec("SELECT n, worker FROM \"" + opts.schema + "\".handled ORDER BY seq");
  REQUIRE(rows.size() == 1000);
  std::set<std::string> workers;
  for (std::size_t i = 0; i < rows.size(); ++i) {
    REQUIRE(rows[i][0].as<long>() == static_cast<long>(i));  // in publish order, each once
    workers.insert(rows[i][1].as<std::string>());
  }
  CHECK(workers.size() == 2);  // both workers took part, one event at a time
  CHECK_THAT(a.output() + c.output(), Catch::Contains("event 500 fails twice"));
}

TEST_CASE_METHOD(worker_fixture, "an ordered listener parks at an event that keeps failing, until retried or skipped",
                 "[integration][worker][ordered]") {
  std::atomic<long> failing{1};
  std::mutex m;
  std::vector<long> seen;
  omnibus::listener_options o = quick_retries(2);
  o.ordered = true;
  b.add_async_listener<tool_event>("ledger", [&](omnibus::context&, const tool_event& e) {
    if (e.n == failing) throw std::runtime_error("ledger rejects " + std::to_string(e.n));
    std::lock_guard lock(m);
    seen.push_back(e.n);
  }, o);
  start_worker(100ms);
  auto seen_now = [&] {
    std::lock_guard lock(m);
    return seen;
  };
  auto first = publish(1);
  publish(2);
  publish(3);
  REQUIRE(test_env::eventually([&] {
    auto p = omnibus::find_parked(db, opts.schema, "ledger");
    return p && p->event_id == first.to_string();
  }, 10s));
  // Parked: event 1 is held (ack pending), 2 and 3 wait behind it, nothing overtook it.
  REQUIRE(test_env::eventually([&] {
    auto i = js.info(opts.stream, "g_ledger");
    return i && i->ack_pending == 1 && i->pending == 2;
  }, 10s));
  CHECK(seen_now().empty());
  CHECK(omnibus::find_parked(db, opts.schema, "ledger")->error == "ledger rejects 1");

  SECTION("retry runs it once the handler is fixed") {
    failing = -1;  // the fix is deployed
    REQUIRE(omnibus::request_parked_action(db, opts.schema, "ledger", "retry"));
    REQUIRE(test_env::eventually([&] { return seen_now().size() == 3; }, 10s));
    CHECK(seen_now() == std::vector<long>{1, 2, 3});
  }
  SECTION("skip moves past it") {
    REQUIRE(omnibus::request_parked_action(db, opts.schema, "ledger", "skip"));
    REQUIRE(test_env::eventually([&] { return seen_now().size() == 2; }, 10s));
    CHECK(seen_now() == std::vector<long>{2, 3});
    CHECK(w->stats().skipped.load() == 1);
  }
  CHECK_FALSE(omnibus::find_parked(db, opts.schema, "ledger").has_value());
  CHECK(dead_letters().empty());
}

TEST_CASE_METHOD(worker_fixture, "an ordered listener set to dead-letter goes on past a failing event",
                 "[integration][worker][ordered]") {
  std::mutex m;
  std::vector<long> seen;
  omnibus::listener_options o = quick_retries(2);
  o.ordered = true;
  o.park_when_exhausted = false;
  b.add_async_listener<tool_event>("ledger", [&](omnibus::context&, const tool_event& e) {
    if (e.n == 1) throw std::runtime_error("ledger rejects 1");
    std::lock_guard lock(m);
    seen.push_back(e.n);
  }, o);
  start_worker();
  publish(1);
  publish(2);
  REQUIRE(test_env::eventually([&] {
    std::lock_guard lock(m);
    return seen.size() == 1;
  }, 10s));
  CHECK(seen == std::vector<long>{2});
  CHECK(dead_letters("ledger").size() == 1);
  CHECK_FALSE(omnibus::find_parked(db, opts.schema, "ledger").has_value());
}

namespace {
// A bus and worker of the test's own with a low max_deliveries, on the fixture's stream.
struct ceiling_world {
  test_env::worker_fixture& f;
  omnibus::event_bus bus;
  std::unique_ptr<omnibus::worker> worker;
  std::jthread runner;
  ceiling_world(test_env::worker_fixture& fixture, std::int64_t max_deliveries)
      : f(fixture), bus(fixture.js, [&] {
          auto o = fixture.opts;
          o.max_deliveries = max_deliveries;
          return o;
        }()) {}
  ~ceiling_world() {
    if (runner.joinable()) {
      runner.request_stop();
      runner.join();
    }
  }
  void start(std::chrono::milliseconds newer_version_delay = 30s) {
    omnibus::worker_options wo;
    wo.database_url = f.where.database_url;
    wo.fetch_wait = 200ms;
    wo.newer_version_delay = newer_version_delay;
    worker = std::make_unique<omnibus::worker>(bus, wo, f.log);
    runner = std::jthread([this](std::stop_token st) { worker->run(st); });
    REQUIRE(test_env::eventually([&] { return f.js.consumers(f.opts.stream).size() >= bus.async_listeners().size(); }, 10s));
  }
};
}  // namespace

TEST_CASE_METHOD(worker_fixture, "a message no worker settles stops at max_deliveries and the server's report becomes a dead letter",
                 "[integration][worker][ceiling]") {
  ceiling_world world{*this, 3};
  std::atomic<long> handled{0};
  omnibus::listener_options o = quick_retries(2);
  o.deadline = 200ms;
  world.bus.add_async_listener<tool_event>("stubborn", [&](omnibus::context& ctx, const tool_event& e) {
    if (e.n == 7) {  // never finishes in time: each delivery is nak'd by the deadline, never settled
      std::mutex m;
      std::condition_variable_any never;
      std::unique_lock lock(m);
      (void)never.wait(lock, ctx.stop_token(), [] { return false; });  // returns when the deadline stops it
      return;
    }
    ++handled;
  }, o);
  world.start();
  omnibus::context ctx;
  const auto id = world.bus.publish(ctx, tool_event{7});
  (void)world.bus.publish(ctx, tool_event{8});
  // The server delivered it three times, gave up, reported it; the worker recorded the report.
  REQUIRE(test_env::eventually([&] { return dead_letters("stubborn").size() == 1; }, 20s));
  const auto dl = dead_letters("stubborn").front();
  CHECK(dl.reason == "max_deliveries");
  CHECK(dl.event_id == id.to_string());
  CHECK(dl.attempts == 3);
  CHECK(dl.msg.body == omnibus::detail::encode_body(tool_event{7}));  // read back from the stream, exactly
  CHECK_THAT(dl.error, Catch::Contains("nats-server stopped delivering it after 3 deliveries"));
  CHECK(test_env::eventually([&] { return handled == 1; }, 10s));
}

TEST_CASE_METHOD(worker_fixture, "a newer version deferred until max_deliveries becomes a dead letter instead of a loop",
                 "[integration][worker][ceiling]") {
  ceiling_world world{*this, 4};
  std::atomic<long> handled{0};
  world.bus.add_async_listener<tool_event>("patient", [&](omnibus::context&, const tool_event&) { ++handled; }, quick_retries(2));
  world.start(10ms);
  omnibus::envelope env;
  env.id = omnibus::event_id::generate();
  env.name = "test.tool_event";
  env.version = 99;  // from a build far ahead of this one
  env.body = omnibus::detail::encode_body(tool_event{1});
  (void)js.publish(omnibus::encode(env, opts.stream.subject_prefix), 5s);
  omnibus::context ctx;
  (void)world.bus.publish(ctx, tool_event{2});
  REQUIRE(test_env::eventually([&] { return dead_letters("patient").size() == 1; }, 20s));
  const auto dl = dead_letters("patient").front();
  CHECK(dl.reason == "max_deliveries");
  CHECK(dl.attempts == 4);
  CHECK_THAT(dl.error, Catch::Contains("version 99"));
  CHECK(world.worker->stats().deferred.load() == 3);
  REQUIRE(test_env::eventually([&] { return handled == 1 && settled("patient"); }, 10s));
}

TEST_CASE_METHOD(worker_fixture, "a dead letter the database refuses for good is terminated and logged with its sequence, not retried",
                 "[integration][worker]") {
  {
    pqxx::work tx{db};  // a row that can never be written, as an encoding or size error would be
    tx.exec0("ALTER TABLE \"" + opts.schema + "\".bus_dead_letters ADD CONSTRAINT refuse_permanent CHECK (reason <> 'permanent')");
    tx.commit();
  }
  std::atomic<long> handled{0};
  b.add_async_listener<tool_event>("strict", [&](omnibus::context&, const tool_event& e) {
    if (e.n == 3) throw omnibus::permanent_error("never");
    ++handled;
  }, quick_retries(5));
  start_worker();
  publish(3);
  publish(4);
  REQUIRE(test_env::eventually([&] { return w->stats().unrecorded.load() == 1 && handled == 1; }, 10s));
  REQUIRE(test_env::eventually([&] { return settled("strict"); }, 10s));  // termed: nothing comes back
  CHECK_THAT(logs(), Catch::Contains("terminated without one") && Catch::Contains("stream message #1 "));
  CHECK(dead_letters().empty());
  CHECK(w->stats().dead_lettered.load() == 0);
}

namespace {
std::uint64_t lost_total(pqxx::connection_base& db, const std::string& schema, const std::string& listener) {
  std::uint64_t n = 0;
  for (const auto& r : omnibus::list_lost_events(db, schema, false)) n += r.listener == listener ? r.events : 0;
  return n;
}
// Whether, within 10 s, each of `listeners` listeners' loss check ran again after this call.
bool checked_again(worker_fixture& f, int listeners) {
  const std::string marks = "\"" + f.opts.schema + "\".bus_stream_marks";
  const std::string from = pqxx::nontransaction{f.db}.exec1("SELECT now()::text")[0].as<std::string>();
  return test_env::eventually([&] {
    pqxx::nontransaction q{f.db};
    return q.exec_params1("SELECT count(*) FROM " + marks + " WHERE checked_at > $1::timestamptz", from)[0].as<int>() ==
           listeners;
  }, 10s);
}
}  // namespace

TEST_CASE("events that age out before their listener handled them are counted, logged and kept until acknowledged; "
          "a listener that keeps up has none",
          "[integration][worker][lost]") {
  test_env::servers short_lived = test_env::servers::shared();
  short_lived.stream_max_age = 2s;
  worker_fixture f{short_lived};
  f.b.add_async_listener<tool_event>("keeps_up", [](omnibus::context&, const tool_event&) {});
  f.b.add_async_listener<tool_event>("paused", [](omnibus::context&, const tool_event&) {});
  f.b.provision();
  REQUIRE(omnibus::pause_listener(f.db, f.opts.schema, "paused", "lost events test"));
  omnibus::worker_options wo;
  wo.database_url = f.where.database_url;
  wo.control_poll = 100ms;
  wo.stream_check_every = 200ms;
  f.start_worker(wo);
  REQUIRE(test_env::eventually([&] { return f.reported("paused", "paused"); }, 10s));

  const long events = 40;
  for (long n = 0; n < events; ++n) f.publish(n);
  REQUIRE(test_env::eventually([&] { return f.settled("keeps_up"); }, 10s));
  // max_age takes every event; the paused listener's are gone unhandled.
  REQUIRE(test_env::eventually([&] { return f.js.state(f.opts.stream)->messages == 0; }, 30s));
  const bool found = test_env::eventually([&] { return lost_total(f.db, f.opts.schema, "paused") >= events; }, 10s);
  INFO("worker log:\n" << f.logs());
  {
    pqxx::nontransaction q{f.db};
    for (const auto& row : q.exec("SELECT consumer, lowest_unhandled, pending, deliveries, last_sequence FROM \"" +
                                  f.opts.schema + "\".bus_stream_marks")) {
      UNSCOPED_INFO("mark " << row[0].c_str() << " lowest " << row[1].c_str() << " pending " << row[2].c_str()
                            << " deliveries " << row[3].c_str() << " last " << row[4].c_str());
    }
  }
  REQUIRE(found);
  CHECK(lost_total(f.db, f.opts.schema, "paused") == events);
  CHECK(lost_total(f.db, f.opts.schema, "keeps_up") == 0);
  const auto losses = omnibus::list_lost_events(f.db, f.opts.schema, true);
  REQUIRE_FALSE(losses.empty());
  CHECK(losses.front().first_sequence == 1);
  CHECK(losses.back().last_sequence == static_cast<std::uint64_t>(events));
  CHECK(losses.front().consumer == "g_paused");
  // Counted and logged just after the database has it.
  CHECK(test_env::eventually([&] { return f.w->stats().lost_events.load() == static_cast<std::uint64_t>(events); }, 10s));
  CHECK(test_env::eventually([&] {
    const std::string l = f.logs();
    return l.find("listener paused: ") != std::string::npos &&
           l.find("of its event(s) left stream " + f.opts.stream.name) != std::string::npos;
  }, 10s));

  // Acknowledged, they stop counting as unacknowledged and stay on record.
  CHECK(omnibus::acknowledge_lost_events(f.db, f.opts.schema, "g_paused") == losses.size());
  CHECK(omnibus::list_lost_events(f.db, f.opts.schema, true).empty());
  CHECK(lost_total(f.db, f.opts.schema, "paused") == events);

  // More events after the acknowledgement, handled in time once resumed: no new loss.
  REQUIRE(omnibus::resume_listener(f.db, f.opts.schema, "paused"));
  for (long n = 0; n < 10; ++n) f.publish(1000 + n);
  REQUIRE(test_env::eventually([&] { return f.settled("paused") && f.settled("keeps_up"); }, 10s));
  REQUIRE(test_env::eventually([&] { return f.js.state(f.opts.stream)->messages == 0; }, 30s));
  REQUIRE(checked_again(f, 2));  // both listeners, after the stream emptied
  CHECK(omnibus::list_lost_events(f.db, f.opts.schema, true).empty());
  CHECK(lost_total(f.db, f.opts.schema, "paused") == events);
}

TEST_CASE("a listener that does not keep up: every event is either handled or counted lost, none twice",
          "[integration][worker][lost]") {
  test_env::servers short_lived = test_env::servers::shared();
  short_lived.stream_max_age = 2s;
  worker_fixture f{short_lived};
  std::atomic<long> handled{0};
  omnibus::listener_options slow;
  slow.concurrency = 1;
  f.b.add_async_listener<tool_event>("slow", [&](omnibus::context&, const tool_event&) {
    std::this_thread::sleep_for(50ms);  // simulated work: about 20 events a second
    ++handled;
  }, slow);
  omnibus::worker_options wo;
  wo.database_url = f.where.database_url;
  wo.stream_check_every = 200ms;
  f.start_worker(wo);

  const long events = 150;  // over 7 s of work for a stream that keeps each event 2 s
  for (long n = 0; n < events; ++n) f.publish(n);
  REQUIRE(test_env::eventually([&] { return f.js.state(f.opts.stream)->messages == 0; }, 30s));
  // Every delivery handled (this listener never fails: one delivery each).
  REQUIRE(test_env::eventually([&] {
    return static_cast<std::uint64_t>(handled.load()) == f.js.info(f.opts.stream, "g_slow")->deliveries;
  }, 10s));
  REQUIRE(checked_again(f, 1));
  const std::uint64_t lost = lost_total(f.db, f.opts.schema, "slow");
  INFO("handled " << handled.load() << ", lost " << lost);
  CHECK(handled.load() < events);
  CHECK(lost > 0);
  CHECK(static_cast<std::uint64_t>(handled.load()) + lost == static_cast<std::uint64_t>(events));
}
