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
  std::chrono::milliseconds review_delay{2000};  ///< a review request is scheduled this long after its order
  std::string report_cron = "0 9 * * MON-FRI";  ///< when the sales report is due (recurring schedule)
  std::string report_zone = "Europe/Berlin";    ///< report_cron's time zone
};

/// The quoted, schema-qualified name of a shop table.
std::string table(const shop_options& o, const char* name);

}  // namespace services
