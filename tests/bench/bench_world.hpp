#pragma once
// A benchmark's own stream, schema and bus, deleted afterwards.

#include <cstdint>
#include <memory>
#include <string>

#include <unistd.h>

#include <pqxx/pqxx>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include "bench_support.hpp"
#include "omnibus/event.hpp"
#include "omnibus/event_bus.hpp"
#include "omnibus/relay.hpp"
#include "omnibus/migrations.hpp"
#include "omnibus/jetstream.hpp"
#include "omnibus/nats_connection.hpp"

namespace bench {

/// About 200 bytes on the wire with headers, like the baselines in NOTES-debian12.md.
struct payload {
  static constexpr std::string_view name = "bench.payload";
  static constexpr int version = 1;
  std::int64_t n = 0;
  std::int64_t sent_ns = 0;  ///< steady clock at publish, for latency
  std::string text = std::string(40, 'x');
  OMNIBUS_FIELDS(n, sent_ns, text);
};

struct world {
  explicit world(const std::string& stem) : world(stem, env("OMNIBUS_NATS_URL"), 1) {}
  /// On the servers at `nats_url` (comma-separated for a cluster), the stream with `replicas`.
  world(const std::string& stem, const std::string& nats_url, int replicas)
      : conn({.url = nats_url, .name = "omnibus-bench"}), js(conn), db(env("OMNIBUS_DATABASE_URL")) {
    const std::string tag = stem + std::to_string(::getpid());
    opts.group = "bench";
    opts.schema = "bench_" + tag;
    opts.stream.name = "BENCH_" + tag;
    opts.stream.subject_prefix = "bench_" + tag;
    opts.stream.max_bytes = std::int64_t{4} << 30;
    opts.stream.replicas = replicas;
    (void)js.delete_stream(opts.stream);
    omnibus::migrate(db, opts.schema);
    bus = std::make_unique<omnibus::event_bus>(js, opts);
    log = std::make_shared<spdlog::logger>("bench", std::make_shared<spdlog::sinks::null_sink_mt>());
  }
  ~world() {
    bus.reset();
    try {
      (void)js.delete_stream(opts.stream);
    } catch (const std::exception& e) {  // a cluster mid-election, say: never throw from here
      std::fprintf(stderr, "bench: could not delete stream %s: %s\n", opts.stream.name.c_str(), e.what());
    }
    try {
      pqxx::work tx{db};
      tx.exec0("DROP SCHEMA IF EXISTS \"" + opts.schema + "\" CASCADE");
      tx.commit();
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench: could not drop schema %s: %s\n", opts.schema.c_str(), e.what());
    }
  }
  /// A relay for this world's schema and stream.
  [[nodiscard]] omnibus::relay_options relay_options() const {
    omnibus::relay_options ro;
    ro.database_url = env("OMNIBUS_DATABASE_URL");
    ro.schema = opts.schema;
    ro.stream = opts.stream;
    return ro;
  }
  long outbox_rows() {
    pqxx::nontransaction q{db};
    return q.exec1("SELECT count(*) FROM \"" + opts.schema + "\".bus_outbox")[0].as<long>();
  }

  omnibus::nats_connection conn;
  omnibus::jetstream js;
  pqxx::connection db;
  omnibus::bus_options opts;
  std::unique_ptr<omnibus::event_bus> bus;
  std::shared_ptr<spdlog::logger> log;
};

}  // namespace bench
