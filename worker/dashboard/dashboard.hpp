#pragma once
// The worker's web dashboard, served under / by its HTTP endpoint (--http): the listeners and
// their backlog, dead letters (filtered, paginated, decoded) with single and bulk retry and
// discard through redrives, parked listeners, schedules. Server-rendered HTML, one small
// script, everything compiled in. Also answers /metrics, /healthz and /readyz, and applies the
// access rules to all of it. Internal to the worker library.

#include <chrono>
#include <memory>
#include <string>

#include <spdlog/fwd.h>

#include "omnibus/event_bus.hpp"
#include "http_server.hpp"
#include "dashboard/access.hpp"

namespace omnibus::detail {

class worker_metrics;

/// What the dashboard reads from and how it behaves.
struct dashboard_options {
  std::string database_url;                      ///< its own connections (a few, reused)
  std::chrono::milliseconds alert_after{60000};  ///< outbox rows older than this with no relay are flagged
  bool redrives_here = true;                     ///< this process runs a redrive runner
  std::chrono::milliseconds overview_cache{2000};  ///< the overview's numbers are reused this long
};

/// Routes every request of the endpoint. handle() runs on the HTTP server's handler threads,
/// several at once; it never runs a listener's handler (retries go through redrives, carried
/// out by a runner).
class dashboard {
 public:
  /// Borrows `bus`, `metrics` (may be null: no probes) and `access`, which outlive it.
  dashboard(event_bus& bus, worker_metrics* metrics, access_control& access, dashboard_options options,
            std::shared_ptr<spdlog::logger> log);
  ~dashboard();
  dashboard(const dashboard&) = delete;
  dashboard& operator=(const dashboard&) = delete;

  /// The answer to `r`, after the access rules. Throws nothing it does not turn into a 5xx.
  [[nodiscard]] http_reply handle(const http_request& r);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace omnibus::detail
