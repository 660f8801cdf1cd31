#pragma once

#include "omnibus/fwd.hpp"
#include "services/shop_options.hpp"

namespace services {

/// Writes an audit row for every user registration and order, inside the publisher's
/// transaction (sync listeners), so the audit trail commits or rolls back with the fact.
class audit {
 public:
  audit(omnibus::event_bus& bus, const shop_options& options);
};

}  // namespace services
