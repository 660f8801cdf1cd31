#pragma once
// One listener's flow control in one worker (README "Flow control"): whether its fetcher may
// fetch now, and how many. It combines an operator's pause, an outage of a dependency, and
// the circuit breaker; the rate limit's tokens are drawn by the fetcher itself (worker.cpp),
// since they live in the store. Every change of state is logged once, with its reason.
// Internal to bus/: not installed.

#include <chrono>
#include <cstdint>
#include <deque>
#include <memory>
#include <mutex>
#include <string>

#include <spdlog/fwd.h>

#include "omnibus/event_bus.hpp"

namespace omnibus::detail {

/// What a listener is doing, as `listeners list`, `stats` and the metrics show it.
enum class flow_state : std::uint8_t { running, paused, outage, breaker_open, breaker_half_open, rate_limited };

/// "running", "paused", "outage", "breaker_open", "breaker_half_open", "rate_limited".
[[nodiscard]] const char* to_string(flow_state s) noexcept;

/// A listener's state in one worker, and why.
struct flow_report {
  flow_state state = flow_state::running;
  std::string reason;  ///< empty while running
  std::chrono::system_clock::time_point since{};
};

/// Thread-safe.
class flow_gate {
 public:
  using clock = std::chrono::steady_clock;

  flow_gate(std::string listener, const listener_options& options, std::shared_ptr<spdlog::logger> log);

  /// How many events the fetcher may fetch now, of `free` slots; `trial` when the one it may
  /// fetch is the breaker's half-open trial (report its outcome with `trial` set). When `take`
  /// is 0, `wait` is how long until asking again is worth it.
  struct allowance {
    int take = 0;
    bool trial = false;
    std::chrono::milliseconds wait{0};
  };
  [[nodiscard]] allowance may_take(int free, clock::time_point now);
  /// The trial allowed by may_take() was not fetched (nothing was waiting): allow it again.
  void trial_unused();

  /// An operator paused or resumed the listener.
  void set_paused(bool paused, const std::string& reason);
  /// Whether an operator has paused it (as last read).
  [[nodiscard]] bool paused() const;
  /// Whether an event fetched earlier must not start now: paused, or the breaker not closed
  /// (the half-open trial excepted, which the caller knows). An outage does not hold back: its
  /// events are held without spending attempts.
  [[nodiscard]] bool holds_back() const;
  /// A call that started at `started` could not reach a dependency. Enters the outage unless
  /// the call began before the last outage ended (a late echo of it). Returns whether it did.
  bool enter_outage(const std::string& reason, clock::time_point started);
  /// A call that started at `started` got past the dependencies: leaves the outage unless the
  /// call began before it did.
  void leave_outage(clock::time_point started);
  /// Ends the outage whatever its calls did (a held event was taken away by its deadline): the
  /// next event that meets the dependency down enters it again.
  void end_outage();
  /// A handler call's end, for the breaker: `failed` when it threw or passed its deadline.
  void on_result(bool failed, bool trial, const std::string& error, clock::time_point now);
  /// Whether the rate limit held the fetcher back at its last draw.
  void set_rate_limited(bool limited);

  [[nodiscard]] flow_report report() const;

 private:
  enum class breaker { closed, open, half_open };
  void enter(flow_state s, const std::string& reason);  // under mutex_
  void settle_state();                                   // under mutex_: the state shown
  [[nodiscard]] flow_state current() const;              // under mutex_

  const std::string listener_;
  const breaker_policy policy_;
  const std::shared_ptr<spdlog::logger> log_;
  mutable std::mutex mutex_;
  bool paused_ = false;
  std::string pause_reason_;
  bool outage_ = false;
  std::string outage_reason_;
  clock::time_point outage_began_{};
  clock::time_point outage_ended_{};
  breaker breaker_ = breaker::closed;
  std::string breaker_reason_;
  clock::time_point open_until_{};
  bool trial_out_ = false;
  std::deque<clock::time_point> failures_;
  bool rate_limited_ = false;
  flow_report shown_;
};

}  // namespace omnibus::detail
