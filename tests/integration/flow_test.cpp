// Flow control across worker processes, on the real servers: the shared rate limit, and what
// the workers report of their listeners. (Outages are in the fault suite, the breaker and the
// outage's rules in tests/unit/runtime_test.cpp.)
//
// OMNIBUS_FLOW_VARIANT=long measures the rate over 30 s instead of 6:
//   OMNIBUS_FLOW_VARIANT=long meson test -C build flow --verbose

#include <chrono>
#include <csignal>
#include <cstdlib>
#include <memory>
#include <span>
#include <thread>
#include <string>
#include <string_view>
#include <vector>

#include <catch2/catch.hpp>

#include "omnibus/listener_control.hpp"
#include "omnibus/operations.hpp"
#include "support/worker_fixture.hpp"

using namespace std::chrono_literals;

namespace {

bool long_variant() {
  const char* v = std::getenv("OMNIBUS_FLOW_VARIANT");
  return v != nullptr && std::string_view(v) == "long";
}

}  // namespace

TEST_CASE_METHOD(test_env::process_fixture,
                 "four workers under a 200/s shared rate limit handle 200/s, also across a kill -9 and a restart",
                 "[integration][flow][rate]") {
  const long rate = 200;
  const long window_s = long_variant() ? 30 : 6;
  {
    omnibus::listener_options lo;  // as worker_tool registers it: the consumer exists before it runs
    lo.rate.per_second = static_cast<double>(rate);
    b.add_async_listener<tool_event>("recorder", [](omnibus::context&, const tool_event&) {}, lo);
    b.provision();
  }
  publish_many(rate * (window_s + 6));  // more than the window can take: the limit, not the supply, decides
  const std::vector<std::string> env{"OMNIBUS_TEST_RATE=" + std::to_string(rate), "OMNIBUS_TEST_ACK_WAIT_MS=2000"};
  std::vector<std::unique_ptr<test_env::child_process>> workers;
  for (int i = 0; i < 4; ++i) workers.push_back(worker_process_ptr("w" + std::to_string(i), env));

  // The window starts a second after the first event (past the bucket's initial burst).
  REQUIRE(test_env::eventually([&] { return count() > 0; }, 30s));
  const std::string first = "(SELECT min(at) FROM \"" + opts.schema + "\".handled)";
  const std::string window = "at >= " + first + " + interval '1 second' AND at < " + first + " + interval '" +
                             std::to_string(1 + window_s) + " seconds'";
  const auto reached = [&](double seconds) {
    return scalar("SELECT count(*) FROM \"" + opts.schema + "\".handled WHERE at >= " + first + " + interval '" +
                  std::to_string(seconds) + " seconds'") > 0;
  };
  // A third into the window, one worker dies with its drawn tokens and in-flight events; it
  // comes back a moment later. The others go on drawing from the same bucket.
  REQUIRE(test_env::eventually([&] { return reached(1.0 + static_cast<double>(window_s) / 3); }, 60s));
  workers[0]->signal(SIGKILL);
  REQUIRE(workers[0]->wait(10s) == 128 + SIGKILL);
  workers[0] = worker_process_ptr("w0-again", env);

  // Every worker reports the listener (running or rate-limited) while it drains.
  REQUIRE(test_env::eventually([&] {
    const auto reports = omnibus::list_listener_reports(db, opts.schema, 15s);
    long live = 0;
    for (const auto& r : reports) {
      if (r.listener == "recorder" && (r.state == "running" || r.state == "rate_limited")) ++live;
    }
    return live >= 4;
  }, 30s));

  REQUIRE(test_env::eventually([&] { return reached(2.0 + static_cast<double>(window_s)); }, 120s));
  const long in_window = count(window);
  const double measured = static_cast<double>(in_window) / static_cast<double>(window_s);
  std::printf("flow: rate limit %ld/s, 4 workers, one killed and restarted: %.1f/s over %ld s (%ld events)\n", rate,
              measured, window_s, in_window);
  CHECK(measured >= rate * 0.9);
  CHECK(measured <= rate * 1.1);
  CHECK(count("worker = 'w1'") > 0);
  CHECK(count("worker = 'w2'") > 0);
  for (auto& w : workers) w->signal(SIGTERM);
  for (auto& w : workers) CHECK(w->wait(30s) == 0);
  // A worker deletes its reports when it stops; the killed one's age out (listeners list ignores them).
  CHECK(omnibus::list_listener_reports(db, opts.schema, 15s).size() <= 1);
}

TEST_CASE_METHOD(test_env::process_fixture,
                 "replaying a projection from the start while events arrive rebuilds it exactly; other listeners are "
                 "untouched",
                 "[integration][replay]") {
  {
    omnibus::listener_options inbox;
    inbox.inbox = true;
    b.add_async_listener<tool_event>("recorder", [](omnibus::context&, const tool_event&) {}, inbox);
    b.add_async_listener<tool_event>("bystander", [](omnibus::context&, const tool_event&) {});
    b.provision();
  }
  const auto publish_range = [&](long first, long count) {
    std::vector<tool_event> events;
    for (long i = 0; i < count; ++i) events.push_back({first + i});
    omnibus::context ctx;
    REQUIRE(b.publish_batch(ctx, std::span<const tool_event>(events)).ok());
  };
  // As the worker reports it: until it reads a pause, it handles what comes.
  const auto recorder_paused = [&] {
    for (const auto& r : omnibus::list_listener_reports(db, opts.schema, 15s)) {
      if (r.listener == "recorder") return r.state == "paused";
    }
    return false;
  };
  publish_range(0, 1000);
  auto w = worker_process_ptr("w", {"OMNIBUS_TEST_INBOX=1", "OMNIBUS_TEST_BYSTANDER=1"});
  REQUIRE(test_env::eventually([&] { return count("worker = 'w'") == 1000 && count("worker = 'bystander'") == 1000; },
                               60s));

  // The recipe: pause the projection, reset it, replay it from the start; events keep coming.
  REQUIRE(omnibus::pause_listener(db, opts.schema, "recorder", "rebuilding the projection"));
  REQUIRE(test_env::eventually(recorder_paused, 30s));
  {
    pqxx::work tx{db};
    tx.exec0("DELETE FROM \"" + opts.schema + "\".handled WHERE worker <> 'bystander'");
    tx.commit();
  }
  std::jthread more([&] {
    for (long first = 1000; first < 2000; first += 100) publish_range(first, 100);
  });
  omnibus::replay_request r;
  r.listener = "recorder";
  r.from_sequence = 1;
  const omnibus::replay_plan plan = omnibus::replay_listener(b, db, r);
  CHECK(plan.events >= 1000);  // and whatever of the next 1,000 had arrived
  more.join();

  const bool rebuilt = test_env::eventually([&] { return count("worker = 'w'") == 2000; }, 60s);
  if (!rebuilt) {
    const auto info = js.info(opts.stream, "g_recorder");
    std::printf("projection rows %ld, distinct %ld; consumer pending %llu ack_pending %llu; inbox rows %ld\n%s\n",
                count("worker = 'w'"), scalar("SELECT count(DISTINCT n) FROM \"" + opts.schema + "\".handled WHERE worker = 'w'"),
                info ? static_cast<unsigned long long>(info->pending) : 0ULL,
                info ? static_cast<unsigned long long>(info->ack_pending) : 0ULL,
                scalar("SELECT count(*) FROM \"" + opts.schema + "\".bus_inbox"), w->output().c_str());
  }
  REQUIRE(rebuilt);
  CHECK(scalar("SELECT count(DISTINCT n) FROM \"" + opts.schema + "\".handled WHERE worker = 'w'") == 2000);
  REQUIRE(test_env::eventually([&] { return count("worker = 'bystander'") == 2000; }, 60s));
  // The bystander saw each event once: the replay never touched its consumer.
  CHECK(scalar("SELECT count(DISTINCT n) FROM \"" + opts.schema + "\".handled WHERE worker = 'bystander'") == 2000);
  CHECK(omnibus::list_paused_listeners(db, opts.schema).empty());  // resumed

  // A point after events it has not handled yet is refused: the new consumer would skip them.
  REQUIRE(omnibus::pause_listener(db, opts.schema, "recorder", "behind"));
  REQUIRE(test_env::eventually(recorder_paused, 30s));
  publish_range(3000, 10);
  omnibus::replay_request later;
  later.listener = "recorder";
  later.from_time = std::chrono::system_clock::now() + 1h;
  CHECK_THROWS_WITH(omnibus::plan_replay(b, later), Catch::Contains("it has events it has not handled yet"));
  REQUIRE(omnibus::resume_listener(db, opts.schema, "recorder"));
  REQUIRE(test_env::eventually([&] { return count("worker = 'w'") == 2010; }, 60s));

  // The stream keeps what its limits keep: a replay from before that says how far back it reaches.
  js.purge_stream(opts.stream);
  publish_range(5000, 1);
  const std::string reach = "reaches back to sequence " + std::to_string(js.state(opts.stream)->first_sequence);
  omnibus::replay_request early;
  early.listener = "recorder";
  early.from_sequence = 1;
  CHECK_THROWS_WITH(omnibus::plan_replay(b, early), Catch::Contains(reach));
  early.from_sequence.reset();
  early.from_time = std::chrono::system_clock::time_point{} + std::chrono::hours(24 * 365 * 30);  // 2000
  CHECK_THROWS_WITH(omnibus::plan_replay(b, early), Catch::Contains(reach) &&
                                                        Catch::Contains("events before that are gone"));
  w->signal(SIGTERM);
  CHECK(w->wait(30s) == 0);
}

TEST_CASE_METHOD(test_env::process_fixture,
                 "pausing a listener under load stops it in four workers within 2 s; the others go on; resume drains it",
                 "[integration][flow][pause]") {
  {
    b.add_async_listener<tool_event>("recorder", [](omnibus::context&, const tool_event&) {});
    b.add_async_listener<tool_event>("bystander", [](omnibus::context&, const tool_event&) {});
    b.provision();
  }
  const long events = 4000;
  publish_many(events);
  std::vector<std::unique_ptr<test_env::child_process>> workers;
  for (int i = 0; i < 4; ++i) {
    workers.push_back(worker_process_ptr("w" + std::to_string(i), {"OMNIBUS_TEST_BYSTANDER=1", "OMNIBUS_TEST_DELAY_MS=5"}));
  }
  REQUIRE(test_env::eventually([&] { return count("worker <> 'bystander'") >= 200; }, 60s));

  const auto paused_at = std::chrono::steady_clock::now();
  REQUIRE(omnibus::pause_listener(db, opts.schema, "recorder", "partner down"));
  // Every worker reports it paused, nothing of it in flight, within 2 s (control poll: 1 s).
  REQUIRE(test_env::eventually([&] {
    long paused = 0;
    for (const auto& r : omnibus::list_listener_reports(db, opts.schema, 15s)) {
      if (r.listener == "recorder" && r.state == "paused") ++paused;
    }
    return paused == 4;
  }, 10s));
  const auto took = std::chrono::steady_clock::now() - paused_at;
  std::printf("flow: pause obeyed by 4 workers under load in %lld ms\n",
              static_cast<long long>(std::chrono::duration_cast<std::chrono::milliseconds>(took).count()));
  CHECK(took < 3000ms);  // the 2 s, plus room for a loaded CI machine
  const long frozen = count("worker <> 'bystander'");
  const long bystander_then = count("worker = 'bystander'");
  // The bystander goes on while the recorder stays where it was.
  REQUIRE(test_env::eventually([&] { return count("worker = 'bystander'") >= std::min(events, bystander_then + 500); },
                               60s));
  CHECK(count("worker <> 'bystander'") == frozen);

  REQUIRE(omnibus::resume_listener(db, opts.schema, "recorder"));
  REQUIRE(test_env::eventually([&] { return distinct_handled() == events && count("worker <> 'bystander'") >= events; },
                               120s));
  CHECK(count("worker <> 'bystander'") == events);  // each once: nothing lost, nothing twice
  for (auto& w : workers) w->signal(SIGTERM);
  for (auto& w : workers) CHECK(w->wait(30s) == 0);
}
