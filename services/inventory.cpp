#include "services/inventory.hpp"

#include <pqxx/pqxx>

#include "models/order_placed.hpp"
#include "omnibus/event_bus.hpp"

namespace services {

inventory::inventory(omnibus::event_bus& bus, const shop_options& options) : options_(options) {
  const std::string reserve = "UPDATE " + table(options, "stock") +
                              " SET available = available - $2 WHERE sku = $1 AND available >= $2";
  bus.add_sync_listener<models::order_placed>([reserve](omnibus::context& ctx, const models::order_placed& e) {
    if (ctx.tx().exec_params(reserve, e.sku, e.quantity).affected_rows() == 0) {
      throw out_of_stock("not enough " + e.sku + " for order " + std::to_string(e.order_id));
    }
  });
}

void inventory::restock(omnibus::context& ctx, const std::string& sku, int units) {
  ctx.tx().exec_params0("INSERT INTO " + table(options_, "stock") +
                            " (sku, available) VALUES ($1, $2) ON CONFLICT (sku) DO UPDATE SET available = EXCLUDED.available",
                        sku, units);
}

}  // namespace services
