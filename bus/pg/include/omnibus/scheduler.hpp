#pragma once
// The scheduler (README "Scheduling", DESIGN decision 19): moves due scheduled events into the
// outbox, and fires the bus's recurring schedules, each occurrence once across any number of
// schedulers. Every worker runs one beside its relay (omnibus-worker run); a process that runs
// an omnibus::relay of its own should run one too.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <stop_token>
#include <string>
#include <thread>

#include <spdlog/fwd.h>

#include "omnibus/event_bus.hpp"
#include "omnibus/export.hpp"

namespace omnibus {

/// Where a scheduler finds its tables, and how it paces itself. The schema, the stream's
/// subject prefix and the body limit are the bus's.
struct OMNIBUS_API scheduler_options {
  std::string database_url;  ///< libpq URL or key=value string; never logged
  std::size_t batch_size = 1000;  ///< due scheduled events moved to the outbox per transaction
  /// The longest sleep: NOTIFY wakes the scheduler when an event is scheduled sooner, and
  /// this sweep catches what a lost notification (a reconnect) would miss.
  std::chrono::milliseconds sweep_interval{1000};
  std::chrono::milliseconds retry_backoff{1000};  ///< after a database failure
  /// Fired occurrences are remembered this long (bus_recurring_fired), then deleted.
  std::chrono::hours fired_retention{24 * 7};
};

/// Counters, readable from any thread.
struct OMNIBUS_API scheduler_stats {
  std::atomic<std::uint64_t> moved{0};              ///< scheduled events moved to the outbox
  std::atomic<std::uint64_t> recurring_fired{0};    ///< recurring occurrences fired
  std::atomic<std::uint64_t> recurring_skipped{0};  ///< occurrences not fired by their missed_policy
  std::atomic<std::uint64_t> recurring_errors{0};   ///< occurrences whose make() threw, or whose event was refused
  std::atomic<bool> connected{false};               ///< has a database session now
};

/// Runs on a thread of its own (start()) or on the caller's (run()). Borrows `bus`, which must
/// outlive it (its schema, its stream's subject prefix, its recurring schedules, frozen at
/// run). Uses a connection of its own; reconnects after a failure. Never throws out of run().
class OMNIBUS_API scheduler {
 public:
  /// Connects to nothing until run(). Throws std::invalid_argument for a null `log`, an empty
  /// database_url, a batch_size of 0 or a sweep_interval that is not positive.
  scheduler(event_bus& bus, scheduler_options options, std::shared_ptr<spdlog::logger> log);
  ~scheduler();  ///< stops and joins the thread, if started
  scheduler(const scheduler&) = delete;
  scheduler& operator=(const scheduler&) = delete;

  /// Starts run() on a background thread. Call once.
  void start();
  /// Asks run() to return and joins the background thread. Idempotent.
  void stop();
  /// Freezes the bus, migrates, registers the recurring schedules (logging a changed
  /// expression), then fires what is due until `stop` is requested. A recurring schedule
  /// stored with another build's expression is left to that build's workers (a rolling
  /// deploy) until it is a minute (or 10 sweeps) overdue; then this build takes it over.
  void run(std::stop_token stop);

  /// The scheduler's counters, live; valid as long as the scheduler.
  [[nodiscard]] const scheduler_stats& stats() const noexcept { return stats_; }

 private:
  class session;
  // Writes r's row (expression, zone, next fire time) unless it is there as in this build; a
  // changed one is logged. take_over: only when another build's row is overdue past the grace.
  void register_one(session& s, const recurring_schedule& r, bool take_over);
  std::size_t move_due(session& s);
  void fire_recurring(session& s, const recurring_schedule& r);

  event_bus& bus_;  // borrowed
  scheduler_options options_;
  std::shared_ptr<spdlog::logger> log_;
  scheduler_stats stats_;
  bool registered_ = false;  // the recurring schedules were written once: a reconnect keeps them
  std::chrono::steady_clock::time_point last_prune_{};
  std::jthread thread_;
};

}  // namespace omnibus
