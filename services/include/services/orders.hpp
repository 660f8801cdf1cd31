#pragma once

#include <cstdint>
#include <string>

#include "omnibus/fwd.hpp"
#include "services/shop_options.hpp"

namespace services {

/// Places orders; publishes order.placed in the order's transaction, and schedules
/// order.review_requested for review_delay later in that same transaction.
class orders {
 public:
  orders(omnibus::event_bus& bus, const shop_options& options);
  /// Inserts the order and publishes order.placed through ctx's transaction. Throws what the
  /// sync listeners throw (out_of_stock): the caller then rolls the transaction back.
  std::int64_t place(omnibus::context& ctx, const std::string& customer, const std::string& sku, int quantity,
                     std::int64_t cents);

 private:
  omnibus::event_bus& bus_;  // outlives the service
  shop_options options_;
};

}  // namespace services
