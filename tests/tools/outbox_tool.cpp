// A second process for the outbox tests.
//   outbox_tool publish <schema> <stream> <count>   commits <count> events in one transaction,
//                                                   then runs a relay until it has sent them
//   outbox_tool relay <schema> <stream> <batch>     runs a relay until SIGTERM, then prints
//                                                   "relayed=<n> duplicates=<d>"
//   outbox_tool publisher <schema> <stream> <txs>   a service: its own relay, and <txs>
//                                                   transactions of OMNIBUS_TEST_PER_TX events
//                                                   numbered from OMNIBUS_TEST_FIRST, each also
//                                                   INSERTing its numbers into <schema>.committed;
//                                                   OMNIBUS_TEST_KILL_AFTER_TX=k: SIGKILL itself
//                                                   right after the k-th COMMIT, before its relay
//                                                   can send it
// NATS and PostgreSQL come from OMNIBUS_NATS_URL and OMNIBUS_DATABASE_URL. OMNIBUS_FAILPOINT
// makes it _exit at a chosen point (see bus/failpoint.hpp).

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

#include <pqxx/pqxx>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "omnibus/event.hpp"
#include "omnibus/event_bus.hpp"
#include "omnibus/migrations.hpp"
#include "omnibus/relay.hpp"
#include "omnibus/jetstream.hpp"
#include "omnibus/nats_connection.hpp"
#include "tool_event.hpp"

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: outbox_tool publish|relay|publisher <schema> <stream> <count|batch>\n");
    return 2;
  }
  const std::string mode = argv[1];
  const char* nats_url = std::getenv("OMNIBUS_NATS_URL");
  const char* db_url = std::getenv("OMNIBUS_DATABASE_URL");
  if (nats_url == nullptr || db_url == nullptr) {
    std::fprintf(stderr, "outbox_tool: OMNIBUS_NATS_URL and OMNIBUS_DATABASE_URL must be set\n");
    return 2;
  }
  omnibus::bus_options opts;
  opts.schema = argv[2];
  opts.stream.name = argv[3];
  opts.stream.subject_prefix = argv[3];
  const long n = std::atol(argv[4]);

  auto log = std::make_shared<spdlog::logger>("outbox_tool", std::make_shared<spdlog::sinks::stderr_sink_mt>());
  omnibus::nats_connection conn{{.url = nats_url}};
  omnibus::jetstream js{conn};
  omnibus::relay_options ro;
  ro.database_url = db_url;
  ro.schema = opts.schema;
  ro.stream = opts.stream;
  ro.standby_poll = std::chrono::milliseconds(50);
  ro.retry_backoff = std::chrono::milliseconds(100);

  if (mode == "publish") {
    pqxx::connection db{db_url};
    omnibus::migrate(db, opts.schema);
    omnibus::event_bus b{js, opts};
    b.freeze();
    {
      pqxx::work tx{db};
      omnibus::context ctx{tx};
      for (long i = 0; i < n; ++i) b.publish(ctx, tool_event{i});
      tx.commit();
    }
    std::printf("committed=%ld\n", n);
    std::fflush(stdout);
    omnibus::relay r{js, ro, log};
    r.start();
    // Its own relay sends them (unless a failpoint ends the process first); bounded.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (r.stats().relayed.load() < static_cast<std::uint64_t>(n)) {
      if (std::chrono::steady_clock::now() > deadline) {
        std::fprintf(stderr, "outbox_tool: the relay did not send %ld events within 60 s\n", n);
        return 1;
      }
      std::this_thread::yield();
    }
    return 0;
  }
  if (mode == "relay") {
    ro.batch_size = static_cast<std::size_t>(n);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, nullptr);  // before the relay's thread starts, so it inherits the mask
    omnibus::relay r{js, ro, log};
    r.start();
    int sig = 0;
    sigwait(&set, &sig);
    r.stop();
    std::printf("relayed=%llu duplicates=%llu\n", static_cast<unsigned long long>(r.stats().relayed.load()),
                static_cast<unsigned long long>(r.stats().duplicates.load()));
    return 0;
  }
  if (mode == "publisher") {
    const char* per_tx_env = std::getenv("OMNIBUS_TEST_PER_TX");
    const char* first_env = std::getenv("OMNIBUS_TEST_FIRST");
    const char* kill_env = std::getenv("OMNIBUS_TEST_KILL_AFTER_TX");
    const long per_tx = per_tx_env != nullptr ? std::atol(per_tx_env) : 1;
    const long first = first_env != nullptr ? std::atol(first_env) : 0;
    const long kill_after = kill_env != nullptr ? std::atol(kill_env) : -1;
    pqxx::connection db{db_url};
    omnibus::event_bus b{js, opts};
    b.freeze();
    omnibus::relay r{js, ro, log};
    r.start();
    const std::string record = "INSERT INTO \"" + opts.schema + "\".committed (n) VALUES ($1)";
    for (long t = 0; t < n; ++t) {
      pqxx::work tx{db};
      omnibus::context ctx{tx};
      for (long i = 0; i < per_tx; ++i) {
        const long number = first + t * per_tx + i;
        b.publish(ctx, tool_event{number});
        tx.exec_params0(record, number);
      }
      tx.commit();
      if (t + 1 == kill_after) ::raise(SIGKILL);  // kill -9, committed and not relayed
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (;;) {  // a service's relay keeps running; this one stops once the outbox is empty
      pqxx::nontransaction q{db};
      if (q.exec1("SELECT count(*) FROM \"" + opts.schema + "\".bus_outbox")[0].as<long>() == 0) break;
      if (std::chrono::steady_clock::now() > deadline) {
        std::fprintf(stderr, "outbox_tool: the outbox did not empty within 60 s\n");
        return 1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));  // poll, bounded by the deadline above
    }
    std::printf("committed=%ld\n", n * per_tx);
    return 0;
  }
  std::fprintf(stderr, "outbox_tool: unknown mode %s\n", mode.c_str());
  return 2;
}
