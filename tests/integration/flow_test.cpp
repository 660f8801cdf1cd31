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
#include <string>
#include <string_view>
#include <vector>

#include <catch2/catch.hpp>

#include "omnibus/listener_control.hpp"
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
