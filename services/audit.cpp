#include "services/audit.hpp"

#include <pqxx/pqxx>

#include "models/order_placed.hpp"
#include "models/user_registered.hpp"
#include "omnibus/event_bus.hpp"

namespace services {

audit::audit(omnibus::event_bus& bus, const shop_options& options) {
  const std::string insert = "INSERT INTO " + table(options, "audit") + " (what) VALUES ($1)";
  bus.add_sync_listener<models::user_registered>([insert](omnibus::context& ctx, const models::user_registered& e) {
    ctx.tx().exec_params0(insert, "user " + std::to_string(e.user_id) + " registered as " + e.email);
  });
  bus.add_sync_listener<models::order_placed>([insert](omnibus::context& ctx, const models::order_placed& e) {
    ctx.tx().exec_params0(insert, "order " + std::to_string(e.order_id) + " placed by " + e.customer);
  });
}

}  // namespace services
