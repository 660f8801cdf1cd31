// Runs the async listener until SIGINT or SIGTERM. Reads OMNIBUS_NATS_URL and
// OMNIBUS_DATABASE_URL (dead letters live in PostgreSQL).

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <stop_token>
#include <thread>

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <omnibus/event_bus.hpp>
#include <omnibus/jetstream.hpp>
#include <omnibus/nats_connection.hpp>
#include <omnibus/worker.hpp>

#include "greeting.hpp"

int main() {
  const char* url = std::getenv("OMNIBUS_NATS_URL");
  const char* database = std::getenv("OMNIBUS_DATABASE_URL");
  if (database == nullptr) {
    std::fprintf(stderr, "hello-worker: set OMNIBUS_DATABASE_URL\n");
    return 2;
  }
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);  // the threads started below inherit this

  omnibus::nats_connection nats{{.url = url != nullptr ? url : "nats://127.0.0.1:4222"}};
  omnibus::jetstream js{nats};
  omnibus::event_bus bus{js, hello_options()};
  bus.add_async_listener<greeting>("greeter", [](omnibus::context& ctx, const greeting& g) {
    std::printf("hello, %s (event %s, attempt %llu)\n", g.to.c_str(), ctx.event_id().to_string().c_str(),
                static_cast<unsigned long long>(ctx.attempt()));
    std::fflush(stdout);
  });

  omnibus::worker_options wo;
  wo.database_url = database;
  omnibus::worker worker{bus, wo, spdlog::stderr_color_mt("hello-worker")};
  std::jthread runner([&](std::stop_token stop) { worker.run(stop); });
  int sig = 0;
  sigwait(&signals, &sig);  // until SIGINT or SIGTERM; then the jthread's stop ends run() gracefully
  return 0;
}
