#pragma once
// Settings shared by the example shop's services.

#include <chrono>
#include <string>

namespace services {

struct shop_options {
  std::string schema = "shop";        ///< PostgreSQL schema of the shop's own tables
  double flaky_failure_rate = 0.2;    ///< how often the loyalty listener fails (0..1)
  int concurrency = 4;                ///< handler slots of each unordered async listener
  int flaky_attempts = 3;             ///< loyalty's attempts before a dead letter
  std::chrono::milliseconds retry_initial{50};  ///< first retry delay (demo-fast)
};

/// The quoted, schema-qualified name of a shop table.
std::string table(const shop_options& o, const char* name);

}  // namespace services
