#pragma once
// Sleeping that a std::stop_token interrupts. Private to bus/.

#include <chrono>
#include <condition_variable>
#include <mutex>
#include <stop_token>

namespace omnibus::detail {

/// Waits until `until` or until `stop` is requested. Returns false when stop was requested.
template <class Clock, class Duration>
bool wait_until(const std::stop_token& stop, std::chrono::time_point<Clock, Duration> until) {
  std::mutex m;
  std::condition_variable_any cv;
  std::unique_lock lock(m);
  cv.wait_until(lock, stop, until, [] { return false; });  // wakes on stop or at `until`
  return !stop.stop_requested();
}

/// Waits for `d` or until `stop` is requested. Returns false when stop was requested.
template <class Rep, class Period>
bool wait_for(const std::stop_token& stop, std::chrono::duration<Rep, Period> d) {
  return wait_until(stop, std::chrono::steady_clock::now() + d);
}

}  // namespace omnibus::detail
