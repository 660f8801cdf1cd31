#pragma once

#include "omnibus/fwd.hpp"
#include "services/shop_options.hpp"

namespace services {

/// Awards loyalty points per order (async listener "loyalty"). Its backend is flaky: a call
/// fails with probability shop_options::flaky_failure_rate, to show retries and dead letters.
class loyalty {
 public:
  loyalty(omnibus::event_bus& bus, const shop_options& options);
};

}  // namespace services
