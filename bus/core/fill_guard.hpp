#pragma once
// Keeps publishers below stream_config::hold_above of the stream's limits: nats-server 2.9.10
// drops the oldest events near MaxBytes despite DiscardNew (nats-io/nats-server#4771), so the
// bus never takes the stream there. The event_bus's direct publish and the relay each keep one.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <optional>
#include <span>
#include <string>

#include "omnibus/queue.hpp"

namespace omnibus::detail {

/// Roughly what the server stores for `m`: subject, header block, body and its record's overhead.
[[nodiscard]] std::size_t stored_size(const message& m) noexcept;

/// Whether messages fit below the hold line. Reads the stream's state at most every `refresh`,
/// and again (at most every `reread`) when the estimate says the next message would cross it.
/// Thread-safe.
class fill_guard {
 public:
  fill_guard(queue& q, stream_config stream, std::chrono::milliseconds refresh = std::chrono::seconds(1),
             std::chrono::milliseconds reread = std::chrono::milliseconds(100));

  struct verdict {
    std::size_t admitted = 0;  ///< how many of the messages, from the first, may be published now
    std::string why;           ///< when not all: "stream X is nearly full: ..." (names the stream and its fill)
  };
  /// How many of `msgs`, in order, fit; counts those as published. Never throws: when the
  /// stream's state cannot be read, everything is admitted (the publish reports the trouble).
  [[nodiscard]] verdict admit(std::span<const message> msgs);
  /// admit() for messages of these stored_size()s.
  [[nodiscard]] verdict admit_sizes(std::span<const std::size_t> sizes);
  /// Whether the stream was last seen above the hold line (for the relay's log and stats).
  [[nodiscard]] bool holding() const;
  /// Holding, and too soon to read the stream's state again: admit() would refuse everything.
  [[nodiscard]] bool holding_fresh() const;
  /// Whether the last try to read the stream's state failed, and why (empty: it did not).
  [[nodiscard]] std::string unreadable() const;

 private:
  using clock = std::chrono::steady_clock;
  void read(clock::time_point now);  // under mutex_
  [[nodiscard]] std::size_t fits(std::span<const std::size_t> sizes) const;  // under mutex_

  queue& queue_;
  const stream_config stream_;
  const std::chrono::milliseconds refresh_;
  const std::chrono::milliseconds reread_;
  mutable std::mutex mutex_;
  bool off_ = false;                  // hold_above >= 1, or the queue has no limits to read
  std::optional<stream_state> seen_;  // the last state read
  clock::time_point read_at_{};
  std::uint64_t added_bytes_ = 0;     // admitted since the last read
  std::uint64_t added_msgs_ = 0;
  bool holding_ = false;
  std::string unreadable_;
};

}  // namespace omnibus::detail
