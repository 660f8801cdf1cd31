#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "omnibus/event.hpp"

namespace models {

/// Ask a customer to review an order: scheduled by orders::place in the order's transaction,
/// published a while later (shop_options::review_delay), once per order (its unique key).
struct review_requested {
  static constexpr std::string_view name = "order.review_requested";
  static constexpr int version = 1;
  std::int64_t order_id = 0;
  std::string customer;  ///< the customer's email
  OMNIBUS_FIELDS(order_id, customer);
};

}  // namespace models
