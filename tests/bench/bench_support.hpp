#pragma once
// Shared pieces of the benchmarks: the one line format, medians, the servers' URLs.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace bench {

using clock = std::chrono::steady_clock;

/// bench: <metric> value=<v> <unit> baseline=<b> <unit> ratio=<r> target=<op><t>
inline void line(const std::string& metric, double value, const std::string& unit, double baseline, double ratio,
                 const char* op, double target) {
  std::printf("bench: %s value=%.6g %s baseline=%.6g %s ratio=%.3f target=%s%g\n", metric.c_str(), value, unit.c_str(),
              baseline, unit.c_str(), ratio, op, target);
  std::fflush(stdout);
}

/// OMNIBUS_BENCH_ONLY=<text> runs only the metrics whose name contains it (to profile one).
inline bool wanted(const char* metric) {
  const char* only = std::getenv("OMNIBUS_BENCH_ONLY");
  return only == nullptr || *only == '\0' || std::string_view(metric).find(only) != std::string_view::npos;
}

inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

inline double seconds_since(clock::time_point start) {
  return std::chrono::duration<double>(clock::now() - start).count();
}

// Waits until cond() holds; a benchmark that cannot finish fails instead of hanging.
template <class F>
inline void await(F&& cond, const char* what, std::chrono::seconds within = std::chrono::seconds(120)) {
  const auto deadline = clock::now() + within;
  while (!cond()) {
    if (clock::now() > deadline) throw std::runtime_error(std::string("timed out waiting for ") + what);
    std::this_thread::sleep_for(std::chrono::milliseconds(1));  // poll, bounded by the deadline
  }
}

inline std::string env(const char* name) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') {
    throw std::runtime_error(std::string(name) + " is not set: run scripts/bench (it starts the servers)");
  }
  return v;
}

}  // namespace bench
