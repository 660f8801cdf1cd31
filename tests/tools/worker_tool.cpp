// A worker process for the worker tests.
//   worker_tool <schema> <stream> <tag>
// Runs one async listener, "recorder", on tool_event: it INSERTs (n, <tag>) into
// <schema>.handled through the worker's pooled connection. SIGTERM or SIGINT stop it
// gracefully (exit 0); a stuck worker exits 3.
// Environment: OMNIBUS_NATS_URL, OMNIBUS_DATABASE_URL, and for the tests:
//   OMNIBUS_TEST_DELAY_MS    work each handler call simulates (default 0)
//   OMNIBUS_TEST_ACK_WAIT_MS the consumer's AckWait (default 30000)
//   OMNIBUS_TEST_STUCK       1: every handler call blocks forever, ignoring its deadline
//   OMNIBUS_TEST_DEADLINE_MS the handler deadline (default 60000)
//   OMNIBUS_TEST_ORDERED     1: the listener is ordered
//   OMNIBUS_TEST_FAIL_N      event n fails on its first two attempts
//   OMNIBUS_TEST_INBOX       1: an inbox listener, recording through the inbox transaction

#include <csignal>
#include <future>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include <pqxx/pqxx>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "bus/event_bus.hpp"
#include "bus/worker.hpp"
#include "mq/connection.hpp"
#include "mq/jetstream.hpp"
#include "tool_event.hpp"

namespace {
long env_long(const char* name, long fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::atol(v) : fallback;
}
}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: worker_tool <schema> <stream> <tag>\n");
    return 2;
  }
  const char* nats_url = std::getenv("OMNIBUS_NATS_URL");
  const char* db_url = std::getenv("OMNIBUS_DATABASE_URL");
  if (nats_url == nullptr || db_url == nullptr) {
    std::fprintf(stderr, "worker_tool: OMNIBUS_NATS_URL and OMNIBUS_DATABASE_URL must be set\n");
    return 2;
  }
  const std::string schema = argv[1];
  const std::string tag = argv[3];
  const long delay_ms = env_long("OMNIBUS_TEST_DELAY_MS", 0);
  const bool stuck = env_long("OMNIBUS_TEST_STUCK", 0) == 1;
  const long fail_n = env_long("OMNIBUS_TEST_FAIL_N", -1);

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // every thread started below inherits the mask

  bus::bus_options opts;
  opts.group = "g";
  opts.schema = schema;
  opts.stream.name = argv[2];
  opts.stream.subject_prefix = argv[2];
  opts.stream.memory_storage = true;
  opts.stream.max_age = std::chrono::hours(1);
  opts.stream.max_bytes = 256 * 1024 * 1024;

  auto log = std::make_shared<spdlog::logger>("worker_tool", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  mq::connection conn{{.url = nats_url}};
  mq::jetstream js{conn};
  bus::event_bus b{js, opts};
  bus::listener_options lo;
  lo.ack_wait = std::chrono::milliseconds(env_long("OMNIBUS_TEST_ACK_WAIT_MS", 30000));
  lo.deadline = std::chrono::milliseconds(env_long("OMNIBUS_TEST_DEADLINE_MS", 60000));
  lo.concurrency = 4;
  lo.ordered = env_long("OMNIBUS_TEST_ORDERED", 0) == 1;
  lo.inbox = env_long("OMNIBUS_TEST_INBOX", 0) == 1;
  lo.retry.initial = std::chrono::milliseconds(20);
  b.add_async_listener<tool_event>("recorder", [&](bus::context& ctx, const tool_event& e) {
    if (stuck) {
      std::promise<void> never;
      never.get_future().wait();  // a handler that never returns, whatever its deadline says
    }
    if (e.n == fail_n && ctx.attempt() <= 2) throw std::runtime_error("event " + std::to_string(e.n) + " fails twice");
    if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));  // simulated work
    const std::string insert = "INSERT INTO \"" + schema + "\".handled (n, worker) VALUES ($1, $2)";
    if (ctx.transaction() != nullptr) {  // inbox: the effect commits with the inbox row
      ctx.tx().exec_params0(insert, e.n, tag);
      return;
    }
    pqxx::nontransaction tx{ctx.db()};
    tx.exec_params0(insert, e.n, tag);
  }, lo);

  bus::worker_options wo;
  wo.database_url = db_url;
  bus::worker w{b, wo, log};
  std::jthread signals([&](std::stop_token) {
    int sig = 0;
    sigwait(&set, &sig);
  });
  std::jthread runner([&](std::stop_token st) {
    try {
      w.run(st);
      std::printf("handled=%llu\n", static_cast<unsigned long long>(w.stats().handled.load()));
      std::fflush(stdout);
    } catch (const bus::worker_stuck& e) {
      log->critical("{}", e.what());
      std::fflush(nullptr);
      std::_Exit(3);  // the stuck threads cannot be joined
    }
  });
  signals.join();  // a signal arrived
  runner.request_stop();
  runner.join();
  return 0;
}
