#pragma once
// The outbox relay: sends committed outbox rows to the stream, in insertion order, and deletes
// them after their PubAcks. One relay per schema is active (it holds a session advisory
// lock); any number of others stand by and take over when it goes away.

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <stop_token>
#include <string>
#include <thread>

#include <spdlog/fwd.h>

#include "omnibus/export.hpp"
#include "omnibus/queue.hpp"

namespace omnibus {
namespace detail {
class fill_guard;
}

/// Where a relay finds the outbox, and how it paces itself.
struct OMNIBUS_API relay_options {
  std::string database_url;     ///< libpq URL or key=value string; never logged
  /// The bus's schema (bus_options::schema): its outbox is drained, its relay lock taken, and
  /// it is migrated first. [a-z_][a-z0-9_]*, at most 63 characters.
  std::string schema = "omnibus";
  std::size_t batch_size = 1000;                            ///< rows read and published at once
  std::chrono::milliseconds sweep_interval{1000};           ///< fallback sweep without a NOTIFY
  /// After a NOTIFY, gather the next ones this long before sweeping: one sweep then sends many
  /// events instead of one row per transaction (a little latency for much less load).
  std::chrono::milliseconds coalesce{5};
  std::chrono::milliseconds standby_poll{500};              ///< how often a standby tries to take over
  std::chrono::milliseconds retry_backoff{1000};            ///< after a database or stream failure
  std::chrono::milliseconds publish_timeout{10000};         ///< for one batch's PubAcks
  /// The stream the outbox's events go to (the bus's bus_options::stream): while it is fuller than
  /// stream.hold_above, rows wait in the outbox (README "Operations").
  stream_config stream;
};

/// Counters, readable from any thread.
struct OMNIBUS_API relay_stats {
  std::atomic<std::uint64_t> relayed{0};     ///< rows published and deleted
  std::atomic<std::uint64_t> batches{0};     ///< publish batches that landed (relayed / batches: their mean size)
  std::atomic<std::uint64_t> duplicates{0};  ///< PubAcks marked duplicate (a re-send after a crash)
  std::atomic<std::uint64_t> failures{0};    ///< batches that did not fully land
  std::atomic<bool> active{false};           ///< holds the schema's relay lock now
  std::atomic<bool> holding{false};          ///< rows wait: the stream is above stream_config::hold_above
};

/// Runs on a thread of its own (start()) or on the caller's (run()). Borrows `q`, which must
/// outlive it. Uses connections of its own; reconnects, retakes the lock and sweeps fully
/// after every reconnect. Never throws out of run(): it logs and retries.
class OMNIBUS_API relay {
 public:
  /// Connects to nothing until run(). `log` is shared and must not be null. Throws
  /// std::invalid_argument for a null `log`, a bad schema name or a batch_size of 0.
  relay(queue& q, relay_options options, std::shared_ptr<spdlog::logger> log);
  ~relay();  ///< stops and joins the thread, if started
  relay(const relay&) = delete;
  relay& operator=(const relay&) = delete;

  /// Starts run() on a background thread. Call once.
  void start();
  /// Asks run() to return and joins the background thread. Idempotent.
  void stop();
  /// The relay loop: returns when `stop` is requested.
  void run(std::stop_token stop);

  /// The relay's counters, live; valid as long as the relay.
  [[nodiscard]] const relay_stats& stats() const noexcept { return stats_; }

 private:
  class session;
  std::size_t sweep(session& s);
  // How many of `msgs` fit below the stream's hold line; logs each change of holding once.
  std::size_t room_for(std::span<const message> msgs);

  queue& queue_;  // borrowed
  relay_options options_;
  std::shared_ptr<spdlog::logger> log_;
  relay_stats stats_;
  std::unique_ptr<detail::fill_guard> fill_;
  std::string unreadable_logged_;  // the last stream-state error logged (once each)
  bool hold_logged_ = false;        // a hold was logged and its release was not yet
  std::chrono::steady_clock::time_point last_hold_log_{};
  std::jthread thread_;
};

}  // namespace omnibus
