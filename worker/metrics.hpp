#pragma once
// The worker's Prometheus metrics (prometheus-cpp's registry and text format) and its
// readiness. An observer of the bus for what happens in this process (publishes, handler
// calls), and, at scrape time, what the servers hold (consumers, the stream, the outbox, dead
// letters), read at most once per cache period however often it is scraped. Internal to the
// worker library.

#include <chrono>
#include <memory>
#include <string>

#include <spdlog/fwd.h>

#include "omnibus/event_bus.hpp"
#include "omnibus/observer.hpp"

namespace omnibus {
class nats_connection;
struct relay_stats;
class worker;
struct worker_stats;
}  // namespace omnibus

namespace omnibus::detail {

/// Where the metrics read what lives outside this process. Everything is borrowed.
struct metrics_sources {
  const event_bus* bus = nullptr;            ///< its queue and listeners; required
  const nats_connection* nats = nullptr;     ///< connected or not (readiness)
  std::string database_url;                  ///< the outbox, dead letters, parking, migrations
  const worker_stats* worker = nullptr;      ///< set while a worker runs
  const class worker* flow = nullptr;        ///< its listeners' flow states; set while a worker runs
  const relay_stats* relay = nullptr;        ///< set when this process runs a relay
  /// Outbox rows older than this with no relay lock held: not ready (bus_state::unrelayed).
  std::chrono::milliseconds outbox_alert_after = std::chrono::minutes(1);
};

class worker_metrics final : public observer {
 public:
  /// Creates every per-listener series of `sources.bus`'s async listeners (so each exists at
  /// zero before anything happens). `cache`: how long server-side values are reused.
  worker_metrics(metrics_sources sources, std::shared_ptr<spdlog::logger> log,
                 std::chrono::milliseconds cache = std::chrono::seconds(2));
  ~worker_metrics() override;

  /// The text exposition of every metric (refreshing server-side values when stale).
  [[nodiscard]] std::string scrape();
  /// /readyz: whether this worker can do its work now, and a JSON body that says why not.
  [[nodiscard]] std::pair<bool, std::string> readiness();

  void on_publish(std::string_view event_name, publish_path path) override;
  void on_publish_error(std::string_view event_name, std::string_view what) override;
  void on_handle_start(const handle_info& info) override;
  void on_handle_end(const handle_info& info, handle_outcome outcome, std::chrono::nanoseconds took,
                     std::string_view error) override;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace omnibus::detail
