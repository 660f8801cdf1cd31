#pragma once
// What integration tests need from their surroundings: server URLs and names of their own.

#include <atomic>
#include <cstdlib>
#include <random>
#include <string>
#include <string_view>

#include <unistd.h>

#include <catch2/catch.hpp>

namespace test_env {

/// The NATS URL the servers script exported. Fails the test (never skips) when it is missing.
inline std::string nats_url() {
  const char* v = std::getenv("OMNIBUS_NATS_URL");
  if (v == nullptr || *v == '\0') {
    FAIL("OMNIBUS_NATS_URL is not set. Run ./scripts/test, or start the servers with "
         "`eval \"$(scripts/servers start)\"` and run meson test again.");
  }
  return v;
}

/// The PostgreSQL URL the servers script exported. Fails the test when it is missing.
inline std::string database_url() {
  const char* v = std::getenv("OMNIBUS_DATABASE_URL");
  if (v == nullptr || *v == '\0') {
    FAIL("OMNIBUS_DATABASE_URL is not set. Run ./scripts/test, or start the servers with "
         "`eval \"$(scripts/servers start)\"` and run meson test again.");
  }
  return v;
}

/// A name no other test (in this or another process) uses: stream, subject prefix, consumer
/// or schema. Only [a-z0-9_], so it is valid in every one of those places.
inline std::string unique_name(std::string_view stem) {
  static std::atomic<unsigned> counter{0};
  thread_local std::mt19937 random{std::random_device{}()};
  std::string name(stem);
  name += '_' + std::to_string(::getpid()) + '_' + std::to_string(counter++) + '_' +
          std::to_string(random() % 100000);
  return name;
}

}  // namespace test_env
