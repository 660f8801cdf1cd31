// A worker process for the worker tests.
//   worker_tool <schema> <stream> <tag>
// Runs one async listener, "recorder", on tool_event: it INSERTs (n, <tag>) into
// <schema>.handled through the worker's pooled connection. SIGTERM or SIGINT stop it
// gracefully (exit 0); a stuck worker exits 3, one whose run() throws (PostgreSQL unreachable
// past start_wait, say) exits 1.
// Environment: OMNIBUS_NATS_URL, OMNIBUS_DATABASE_URL, and for the tests:
//   OMNIBUS_TEST_DELAY_MS    work each handler call simulates (default 0)
//   OMNIBUS_TEST_ACK_WAIT_MS the consumer's AckWait (default 30000)
//   OMNIBUS_TEST_STUCK       1: every handler call blocks forever, ignoring its deadline
//   OMNIBUS_TEST_DEADLINE_MS the handler deadline (default 60000)
//   OMNIBUS_TEST_ORDERED     1: the listener is ordered
//   OMNIBUS_TEST_FAIL_N      event n fails on its first two attempts
//   OMNIBUS_TEST_INBOX       1: an inbox listener, recording through the inbox transaction
//   OMNIBUS_TEST_HANG_N      "3,17": the first attempt at each of these events never returns
//   OMNIBUS_TEST_BYSTANDER   1: a second listener, "bystander", records (n, 'bystander')
//   OMNIBUS_TEST_BYSTANDER_ORDERED 1: the bystander is an ordered listener
//   OMNIBUS_TEST_RELAY       1: the process also runs an outbox relay, as omnibus-worker does
//   OMNIBUS_TEST_FILE_STORAGE 1: the stream is on file (it must match the test's)
//   OMNIBUS_TEST_MAX_BYTES   the stream's MaxBytes (default 256 MiB; it must match the test's)
//   OMNIBUS_TEST_REPLICAS    the stream's replicas (default 1; it must match the test's)
//   OMNIBUS_TEST_STREAM_CHECK_MS how often the worker reads the stream's fill (default 30000)
//   OMNIBUS_TEST_MAX_BODY    the bus's body limit in bytes (default: the library's)
//   OMNIBUS_TEST_SCHEDULER   1: the process also runs a scheduler, as omnibus-worker does, and
//                            prints "moved=N recurring=M" when it stops
//   OMNIBUS_TEST_SCHEDULER_BATCH the scheduler's batch_size (default: the library's)
//   OMNIBUS_TEST_KEYED       1: the listener is "keyed", per key on keyed_event (inbox), instead of the
//                            recorder: it INSERTs (key, seq, <tag>, started, ended) into
//                            <schema>.keyed_handled in the inbox transaction
//   OMNIBUS_TEST_FLAKY_PERCENT keyed: this share of attempts throw (seeded by the event)
//   OMNIBUS_TEST_LEASE_MS    keyed: worker_options::partition_lease (default 15000)
//   OMNIBUS_TEST_START_WAIT_MS worker_options::start_wait (default 30000)
//   OMNIBUS_TEST_CRON        a cron expression: recurring schedule "tick" publishes tool_event
//                            {n = its occurrence in epoch seconds}, in UTC; missed: all

#include <csignal>
#include <future>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include <pqxx/pqxx>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "omnibus/event_bus.hpp"
#include "omnibus/relay.hpp"
#include "omnibus/scheduler.hpp"
#include "omnibus/worker.hpp"
#include "omnibus/jetstream.hpp"
#include "omnibus/nats_connection.hpp"
#include "keyed_event.hpp"
#include "tool_event.hpp"

namespace {
long env_long(const char* name, long fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::atol(v) : fallback;
}
std::set<long> env_set(const char* name) {
  std::set<long> out;
  const char* v = std::getenv(name);
  if (v == nullptr) return out;
  std::stringstream in(v);
  std::string item;
  while (std::getline(in, item, ',')) out.insert(std::atol(item.c_str()));
  return out;
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
  const std::set<long> hang_n = env_set("OMNIBUS_TEST_HANG_N");

  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);  // every thread started below inherits the mask
  std::fprintf(stderr, "worker_tool: signals blocked\n");  // from here SIGTERM means a graceful stop

  omnibus::bus_options opts;
  opts.group = "g";
  opts.schema = schema;
  opts.stream.name = argv[2];
  opts.stream.subject_prefix = argv[2];
  opts.stream.memory_storage = env_long("OMNIBUS_TEST_FILE_STORAGE", 0) != 1;
  opts.stream.max_age = std::chrono::hours(1);
  opts.stream.max_bytes = env_long("OMNIBUS_TEST_MAX_BYTES", 256 * 1024 * 1024);
  opts.max_body_bytes = static_cast<std::size_t>(env_long("OMNIBUS_TEST_MAX_BODY", static_cast<long>(opts.max_body_bytes)));
  opts.stream.replicas = static_cast<int>(env_long("OMNIBUS_TEST_REPLICAS", 1));

  auto log = std::make_shared<spdlog::logger>("worker_tool", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  if (env_long("OMNIBUS_TEST_DEBUG_LOG", 0) == 1) log->set_level(spdlog::level::debug);
  omnibus::nats_connection conn{{.url = nats_url}};
  omnibus::jetstream js{conn};
  // Where it is connected, now and after every reconnect (the cluster scenario kills that node).
  std::jthread where([&conn](std::stop_token st) {
    std::string last;
    while (!st.stop_requested()) {
      const std::string now = conn.connected_url();
      if (!now.empty() && now != last) {
        std::fprintf(stderr, "worker_tool: connected to %s\n", now.c_str());
        last = now;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));  // a watcher's poll, not a wait for a test
    }
  });
  omnibus::event_bus b{js, opts};
  omnibus::listener_options lo;
  lo.ack_wait = std::chrono::milliseconds(env_long("OMNIBUS_TEST_ACK_WAIT_MS", 30000));
  lo.deadline = std::chrono::milliseconds(env_long("OMNIBUS_TEST_DEADLINE_MS", 60000));
  lo.concurrency = 4;
  lo.ordered = env_long("OMNIBUS_TEST_ORDERED", 0) == 1;
  lo.inbox = env_long("OMNIBUS_TEST_INBOX", 0) == 1;
  lo.retry.initial = std::chrono::milliseconds(20);
  lo.retry.max_attempts = static_cast<int>(env_long("OMNIBUS_TEST_MAX_ATTEMPTS", lo.retry.max_attempts));
  lo.rate.per_second = static_cast<double>(env_long("OMNIBUS_TEST_RATE", 0));
  const bool keyed = env_long("OMNIBUS_TEST_KEYED", 0) == 1;
  const long flaky = env_long("OMNIBUS_TEST_FLAKY_PERCENT", 0);
  if (keyed) {
    omnibus::listener_options ko = lo;
    ko.order = omnibus::ordering::per_key;
    ko.inbox = true;
    ko.concurrency = 8;
    ko.retry.max_attempts = 20;  // 5% flaky: never exhausted
    ko.retry.max = std::chrono::milliseconds(200);
    b.add_async_listener<keyed_event>("keyed", [&](omnibus::context& ctx, const keyed_event& e) {
      const auto started = std::chrono::system_clock::now();
      // Which attempts fail is drawn from the event and the attempt, so a replay fails the same.
      const std::size_t draw = std::hash<std::string>{}(e.key + "/" + std::to_string(e.seq) + "/" +
                                                        std::to_string(ctx.attempt()));
      if (flaky > 0 && static_cast<long>(draw % 100) < flaky) throw std::runtime_error("flaky");
      if (delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));  // simulated work
      ctx.tx().exec_params0("INSERT INTO \"" + schema + "\".keyed_handled (key, seq, worker, started, ended) VALUES "
                            "($1, $2, $3, to_timestamp($4::float8 / 1000000), clock_timestamp())",
                            e.key, e.seq, tag,
                            static_cast<double>(std::chrono::duration_cast<std::chrono::microseconds>(
                                                    started.time_since_epoch()).count()));
    }, ko);
  }
  if (!keyed) b.add_async_listener<tool_event>("recorder", [&](omnibus::context& ctx, const tool_event& e) {
    if (stuck || (ctx.attempt() == 1 && hang_n.contains(e.n))) {
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
  if (env_long("OMNIBUS_TEST_BYSTANDER", 0) == 1) {
    omnibus::listener_options bo;
    bo.retry.initial = std::chrono::milliseconds(20);
    bo.ordered = env_long("OMNIBUS_TEST_BYSTANDER_ORDERED", 0) == 1;
    b.add_async_listener<tool_event>("bystander", [&](omnibus::context& ctx, const tool_event& e) {
      pqxx::nontransaction tx{ctx.db()};
      tx.exec_params0("INSERT INTO \"" + schema + "\".handled (n, worker) VALUES ($1, 'bystander')", e.n);
    }, bo);
  }

  if (const char* expr = std::getenv("OMNIBUS_TEST_CRON")) {
    omnibus::recurring_options ro;
    ro.missed = omnibus::missed_policy::all;  // a slow pass on a busy machine fires late, never drops one
    ro.missed_window = std::chrono::minutes(10);
    b.add_schedule("tick", expr, "UTC", [](omnibus::cron::time_point occurrence) {
      return tool_event{occurrence.time_since_epoch().count()};
    }, ro);
  }

  std::optional<omnibus::relay> relay;
  if (env_long("OMNIBUS_TEST_RELAY", 0) == 1) {
    omnibus::relay_options ro;
    ro.database_url = db_url;
    ro.schema = schema;
    ro.stream = opts.stream;
    ro.standby_poll = std::chrono::milliseconds(50);
    ro.retry_backoff = std::chrono::milliseconds(100);
    relay.emplace(js, ro, log);
    relay->start();
  }
  std::optional<omnibus::scheduler> scheduler;
  if (env_long("OMNIBUS_TEST_SCHEDULER", 0) == 1) {
    omnibus::scheduler_options so;
    so.database_url = db_url;
    so.retry_backoff = std::chrono::milliseconds(100);
    so.batch_size = static_cast<std::size_t>(env_long("OMNIBUS_TEST_SCHEDULER_BATCH", static_cast<long>(so.batch_size)));
    scheduler.emplace(b, so, log);
    scheduler->start();
  }
  omnibus::worker_options wo;
  wo.database_url = db_url;
  wo.outage_retry = std::chrono::milliseconds(env_long("OMNIBUS_TEST_OUTAGE_RETRY_MS", 1000));
  wo.outage_retry_max = std::max(wo.outage_retry, std::chrono::milliseconds(env_long("OMNIBUS_TEST_OUTAGE_RETRY_MAX_MS", 30000)));
  wo.stream_check_every = std::chrono::milliseconds(env_long("OMNIBUS_TEST_STREAM_CHECK_MS", 30000));
  wo.partition_lease = std::chrono::milliseconds(env_long("OMNIBUS_TEST_LEASE_MS", 15000));
  wo.start_wait = std::chrono::milliseconds(env_long("OMNIBUS_TEST_START_WAIT_MS", 30000));
  omnibus::worker w{b, wo, log};
  std::jthread signals([&](std::stop_token) {
    int sig = 0;
    sigwait(&set, &sig);
  });
  std::jthread runner([&](std::stop_token st) {
    try {
      w.run(st);
      std::printf("handled=%llu\n", static_cast<unsigned long long>(w.stats().handled.load()));
      std::fflush(stdout);
    } catch (const omnibus::worker_stuck& e) {
      log->critical("{}", e.what());
      std::fflush(nullptr);
      std::_Exit(3);  // the stuck threads cannot be joined
    } catch (const std::exception& e) {
      log->critical("worker_tool: the worker stopped: {}", e.what());
      std::fflush(nullptr);
      std::_Exit(1);  // the main thread waits for a signal
    }
  });
  signals.join();  // a signal arrived
  runner.request_stop();
  runner.join();
  if (scheduler) {
    scheduler->stop();
    std::printf("moved=%llu recurring=%llu\n", static_cast<unsigned long long>(scheduler->stats().moved.load()),
                static_cast<unsigned long long>(scheduler->stats().recurring_fired.load()));
    std::fflush(stdout);
  }
  return 0;
}
