#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "omnibus/event.hpp"

namespace models {

/// An order was placed. Published in the order's transaction; inventory's sync listener
/// reserves its stock in that same transaction and fails it when stock is short.
struct order_placed {
  static constexpr std::string_view name = "order.placed";
  static constexpr int version = 1;
  std::int64_t order_id = 0;
  std::string customer;  ///< the customer's email
  std::string sku;
  std::int32_t quantity = 0;
  std::int64_t cents = 0;
  OMNIBUS_FIELDS(order_id, customer, sku, quantity, cents);
};

}  // namespace models
