#pragma once
// The example application: a small shop. One function constructs every service, so the
// publishing side and the worker register the same listeners and a worker never misses one.

#include <memory>

#include "omnibus/fwd.hpp"
#include "services/audit.hpp"
#include "services/customer_stats.hpp"
#include "services/inventory.hpp"
#include "services/loyalty.hpp"
#include "services/mailer.hpp"
#include "services/orders.hpp"
#include "services/shop_options.hpp"
#include "services/users.hpp"

namespace services {

/// Every service of the shop. Borrows the bus, which must outlive it.
struct shop {
  shop(omnibus::event_bus& bus, const shop_options& options);
  shop_options options;
  services::audit audit;
  services::users users;
  services::inventory inventory;
  services::orders orders;
  services::mailer mailer;
  services::customer_stats stats;
  services::loyalty loyalty;
};

/// Constructs every service; each adds its listeners to `bus` (which must not be frozen yet).
[[nodiscard]] std::unique_ptr<shop> make_shop(omnibus::event_bus& bus, const shop_options& options = {});

/// Creates the shop's tables if missing (safe from several processes at once).
void migrate_shop(pqxx::connection_base& conn, const shop_options& options);

}  // namespace services
