#pragma once
// Bounded waits: poll a condition until it holds or a deadline passes. Never sleep-then-assert.

#include <chrono>
#include <thread>

namespace test_env {

/// True as soon as cond() is; false if it still is not after `within`.
template <class F>
[[nodiscard]] bool eventually(F&& cond, std::chrono::milliseconds within) {
  const auto deadline = std::chrono::steady_clock::now() + within;
  while (!cond()) {
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));  // poll interval, bounded by the deadline
  }
  return true;
}

}  // namespace test_env
