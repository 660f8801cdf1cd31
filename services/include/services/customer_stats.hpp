#pragma once

#include "omnibus/fwd.hpp"
#include "services/shop_options.hpp"

namespace services {

/// Keeps per-customer order statistics, strictly in publish order and exactly once (the
/// ordered inbox listener "customer_stats"). It counts any order that arrives after a later
/// one as out of order, which ordering makes impossible.
class customer_stats {
 public:
  customer_stats(omnibus::event_bus& bus, const shop_options& options);
};

}  // namespace services
