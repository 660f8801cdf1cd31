#include <chrono>

#include <catch2/catch.hpp>

#include "omnibus/worker.hpp"

using namespace std::chrono_literals;

TEST_CASE("retry delays grow exponentially up to the maximum", "[worker]") {
  omnibus::retry_policy p;
  p.initial = 100ms;
  p.multiplier = 2.0;
  p.max = 1s;
  p.jitter = 0.0;
  CHECK(omnibus::retry_delay(p, 1, 0.5) == 100ms);
  CHECK(omnibus::retry_delay(p, 2, 0.5) == 200ms);
  CHECK(omnibus::retry_delay(p, 4, 0.5) == 800ms);
  CHECK(omnibus::retry_delay(p, 5, 0.5) == 1s);
  CHECK(omnibus::retry_delay(p, 60, 0.5) == 1s);  // no overflow far out
}

TEST_CASE("jitter spreads a delay evenly around its nominal value", "[worker]") {
  omnibus::retry_policy p;
  p.initial = 1000ms;
  p.jitter = 0.2;
  CHECK(omnibus::retry_delay(p, 1, 0.0) == 800ms);
  CHECK(omnibus::retry_delay(p, 1, 0.5) == 1000ms);
  CHECK(omnibus::retry_delay(p, 1, 0.999999) == 1200ms);
}
