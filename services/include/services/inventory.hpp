#pragma once

#include <stdexcept>
#include <string>

#include "omnibus/fwd.hpp"
#include "services/shop_options.hpp"

namespace services {

/// Thrown by inventory's sync listener: the order's transaction must roll back.
class out_of_stock : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Reserves stock for every order inside the order's transaction (a sync listener), and
/// throws out_of_stock when there is not enough: the order and its event never exist.
class inventory {
 public:
  inventory(omnibus::event_bus& bus, const shop_options& options);
  /// Sets a SKU's available units, through ctx's transaction.
  void restock(omnibus::context& ctx, const std::string& sku, int units);

 private:
  shop_options options_;
};

}  // namespace services
