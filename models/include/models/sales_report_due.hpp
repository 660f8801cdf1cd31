#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "omnibus/event.hpp"

namespace models {

/// Time for the sales report: published by the recurring schedule "sales_report"
/// (shop_options::report_cron in report_zone), once per occurrence across all workers.
struct sales_report_due {
  static constexpr std::string_view name = "report.sales_due";
  static constexpr int version = 1;
  std::int64_t occurrence = 0;  ///< the occurrence it fires for, in seconds since the epoch
  OMNIBUS_FIELDS(occurrence);
};

}  // namespace models
