#pragma once
// The worker: drains every async listener's durable consumer with retries, dead letters,
// deadlines and graceful shutdown (DESIGN decisions 8, 9, 11, 13, 14, 15).
//
// Threads: one fetcher per listener, or per partition of a per-key listener (a blocking fetch
// never occupies a handler thread), a pool with one thread per handler slot for the handlers
// (never NATS.c's threads), a lease keeper when some listener runs per key (README "Ordered
// per key"), and the thread that calls run(), which signals in-progress, enforces deadlines
// and starts per-key retries when they are due.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <stop_token>
#include <string>
#include <vector>

#include <spdlog/fwd.h>

#include "omnibus/error.hpp"
#include "omnibus/event_bus.hpp"
#include "omnibus/export.hpp"
#include "omnibus/listener_control.hpp"

namespace omnibus {

namespace detail {
class store;
}  // namespace detail

/// The delay before the next attempt after attempt `attempt` (1-based) failed:
/// min(initial * multiplier^(attempt-1), max), scaled by 1 + jitter * (2 * unit_random - 1).
[[nodiscard]] OMNIBUS_API std::chrono::milliseconds retry_delay(const retry_policy& policy, std::uint64_t attempt,
                                                    double unit_random) noexcept;

/// Where a worker keeps its dead letters, and its timings. Every listener's own settings are
/// in its listener_options.
struct OMNIBUS_API worker_options {
  std::string database_url;  ///< dead letters and handlers' connections; never logged
  std::size_t pool_size = 0;                                  ///< 0: one connection per handler slot
  std::chrono::milliseconds fetch_wait{500};                  ///< one fetch's long poll
  /// Read-ahead: a listener fetches beyond its slots as many events as its slots start within
  /// this window at its handlers' average pace (at most 1,024 and half of the listener's
  /// max_in_flight, 1,000 by default; ordered listeners never). Fast
  /// handlers so drain in large batches; slow ones fetch only what they run, leaving the rest
  /// to other workers. A waiting event is kept alive (in progress) and its deadline starts when
  /// a slot starts it. 0: never more than the slots.
  std::chrono::milliseconds read_ahead_window{20};
  std::chrono::milliseconds shutdown_grace{10000};            ///< how long in-flight handlers may finish
  std::chrono::milliseconds newer_version_delay{30000};       ///< nak delay for a version this build cannot read
  std::chrono::milliseconds tick{50};                         ///< deadline and in-progress granularity
  std::chrono::milliseconds db_wait{5000};                    ///< for a pooled connection
  /// How long run() waits for PostgreSQL at start (a restart, a failover under way), and for
  /// consumers the broker cannot open yet (a cluster electing their leaders), before it throws:
  /// its first reads are tried again every half second until then.
  std::chrono::milliseconds start_wait{30000};
  std::chrono::milliseconds fetch_retry{1000};                ///< after a failed fetch, before the next
  std::chrono::milliseconds flush_timeout{5000};              ///< for the last acks to reach the server at shutdown
  /// How often the worker reads which listeners an operator paused (listener_control.hpp).
  std::chrono::milliseconds control_poll{1000};
  /// An outage (PostgreSQL unreachable, or a handler's transient_error) holds the event and
  /// calls its handler again after this, doubling up to outage_retry_max (+-20%), without
  /// spending attempts.
  std::chrono::milliseconds outage_retry{1000};
  std::chrono::milliseconds outage_retry_max{30000};  ///< the longest wait between an outage's calls
  /// How often a parked listener's held event checks for an operator's word.
  std::chrono::milliseconds parked_poll{1000};
  /// An inbox transaction's lock_timeout: a hung handler's uncommitted inbox row cannot block
  /// its redelivered copy for longer than this (that copy fails and is retried).
  std::chrono::milliseconds inbox_lock_timeout{5000};
  /// How long inbox rows are kept, by the database's clock. Must exceed the stream's MaxAge:
  /// a message can be redelivered (or re-sent by a relay) while the stream holds it, and only
  /// its inbox row stops a second run.
  std::chrono::seconds inbox_retention{std::chrono::hours(24 * 8)};
  std::chrono::seconds inbox_prune_every{std::chrono::minutes(10)};  ///< how often old rows are deleted
  /// How often the worker reads the stream's fill, warning from `stream_full_warning` on
  /// (publishers stop at stream_config::hold_above), and checks each listener for events that
  /// left the stream before it handled them (README "Operations": lost events).
  std::chrono::milliseconds stream_check_every{std::chrono::seconds(30)};
  double stream_full_warning = 0.8;  ///< fill (of max_bytes or max_msgs) from which each check logs a warning
  /// Per-key listeners (README "Ordered per key"): how long a worker holds its partitions
  /// without renewing them (the database's clock); a killed worker's partitions move to the
  /// others after it. Each listener's lease is at least its deadline + 1 s + 3 heartbeats.
  std::chrono::milliseconds partition_lease{15000};
  /// Per-key listeners: how often a worker renews its leases, rebalances and reads operators'
  /// requests for parked keys.
  std::chrono::milliseconds partition_heartbeat{1000};
};

/// Counters, readable from any thread while the worker runs.
struct OMNIBUS_API worker_stats {
  std::atomic<std::uint64_t> handled{0};        ///< handler returned, message acked
  std::atomic<std::uint64_t> failed{0};         ///< handler threw and the message was nak'd for a retry
  std::atomic<std::uint64_t> dead_lettered{0};  ///< written to bus_dead_letters, then termed
  std::atomic<std::uint64_t> timed_out{0};      ///< handler passed its deadline
  std::atomic<std::uint64_t> deferred{0};       ///< a newer version than this build knows, nak'd with a delay
  std::atomic<std::uint64_t> parked{0};         ///< ordered listeners parked at an event; per-key: keys parked
  std::atomic<std::uint64_t> set_aside{0};      ///< per-key: events set aside behind their parked key
  std::atomic<std::uint64_t> skipped{0};        ///< parked events skipped by an operator
  std::atomic<std::uint64_t> duplicates{0};     ///< inbox listeners: already handled, acked without running
  std::atomic<std::uint64_t> in_doubt{0};       ///< inbox commits whose outcome was unknown: not acked
  /// Messages terminated although their dead letter could not be written (the row was refused,
  /// or max_deliveries was reached): each is logged with its stream sequence.
  std::atomic<std::uint64_t> unrecorded{0};
  /// True while run() drains: migrated, provisioned, every consumer open. False before and
  /// once shutdown begins (a readiness probe reads it).
  std::atomic<bool> ready{false};
  /// Listeners an operator has paused, as this worker last read them.
  std::atomic<std::uint64_t> paused_now{0};
  /// Handler calls that met an outage (an unreachable database, transient_error) and were
  /// held for another call without spending an attempt.
  std::atomic<std::uint64_t> outage_retries{0};
  /// Events this worker's loss checks found gone from the stream before their listener
  /// handled them (what all workers found: the schema's bus_lost_events, omnibus_events_lost).
  std::atomic<std::uint64_t> lost_events{0};
};

/// Thrown by run() when every handler slot of a listener has been stuck past its deadline for
/// worker_options::db_wait (shorter is a database outage's passing block). The
/// stuck threads cannot be stopped: exit the process (non-zero) so its supervisor restarts it.
class OMNIBUS_API worker_stuck : public error {
 public:
  using error::error;
  ~worker_stuck() override;
};

/// Runs `bus`'s async listeners. Borrows `bus` (and its queue), which must outlive it.
class OMNIBUS_API worker {
 public:
  /// Connects to nothing until run(). `log` is shared and must not be null. Throws
  /// std::invalid_argument for a null `log`, an empty database_url, or a bus without a queue.
  worker(event_bus& bus, worker_options options, std::shared_ptr<spdlog::logger> log);
  /// Keeps failures, dead letters, parked listeners and the inbox in `store` instead of
  /// PostgreSQL (database_url is then not used). For Omnibus's own unit tests: the store
  /// interface is internal and not installed.
  worker(event_bus& bus, worker_options options, std::shared_ptr<spdlog::logger> log,
         std::unique_ptr<detail::store> store);
  ~worker();
  worker(const worker&) = delete;
  worker& operator=(const worker&) = delete;

  /// Validates the options (std::invalid_argument, before touching any server), migrates the
  /// schema, provisions (freezing the bus), then drains until `stop` is requested,
  /// and shuts down gracefully: stop fetching, nak what was fetched but not started, let
  /// in-flight handlers finish within shutdown_grace (nak the rest), flush, return. Throws
  /// worker_stuck, or omnibus::error / omnibus::nats_error when start-up fails. Call once.
  void run(std::stop_token stop);

  /// The worker's counters, live; valid as long as the worker.
  [[nodiscard]] const worker_stats& stats() const noexcept;

  /// Each listener's flow state in this worker (running, paused, outage, breaker_open,
  /// breaker_half_open, rate_limited) and why, as `listeners list` shows it. Empty before run().
  [[nodiscard]] std::vector<listener_report> listener_states() const;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace omnibus
