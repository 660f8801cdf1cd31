// The worker: worker_main gives it every flag, environment variable and operator command of
// omnibus-worker (run, dead-letters, parked, consumers, stream, schedules, migrations; --help
// lists them).
//   OMNIBUS_DATABASE_URL=postgresql://... hello-worker run
// and with the web dashboard, /metrics, /healthz and /readyz on http://127.0.0.1:9464/:
//   OMNIBUS_DATABASE_URL=postgresql://... hello-worker run --http 127.0.0.1:9464

#include <cstdio>

#include <omnibus/worker_main.hpp>

#include "greeting.hpp"

// A service adds its listeners in its constructor.
struct greeter {
  explicit greeter(omnibus::event_bus& bus) {
    omnibus::listener_options o;
    o.rate.per_second = 50;     // at most 50 greetings a second, across every hello-worker
    o.breaker.enabled = true;   // 5 failures within a minute: stop for 30 s, then try one
    bus.add_async_listener<greeting>("greeter", [](omnibus::context& ctx, const greeting& g) {
      std::printf("hello, %s (event %s, attempt %llu)\n", g.to.c_str(), ctx.event_id().to_string().c_str(),
                  static_cast<unsigned long long>(ctx.attempt()));
      std::fflush(stdout);
    }, o);
    // Each visitor's visits in order, across workers; a visit that keeps failing parks its
    // visitor (hello-worker parked list / parked retry visits KEY) while other visitors go on.
    omnibus::listener_options per_key;
    per_key.order = omnibus::ordering::per_key;
    bus.add_async_listener<visit>("visits", [](omnibus::context&, const visit& v) {
      std::printf("visit %lld of %s\n", static_cast<long long>(v.number), v.visitor.c_str());
      std::fflush(stdout);
    }, per_key);
    // A recurring event: every worker's scheduler fires each occurrence once, between them.
    bus.add_schedule("morning_greeting", "0 9 * * *", "Europe/Berlin", [] { return greeting{"the morning", 1}; });
  }
};

int main(int argc, char** argv) {
  omnibus::worker_program program{"hello-worker"};
  program.config().bus = hello_options();  // group "hello"; flags and OMNIBUS_* variables override
  return program.main(argc, argv, [](omnibus::app& app) { app.make<greeter>(app.bus()); });
}
