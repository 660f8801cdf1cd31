#include "services/orders.hpp"

#include <pqxx/pqxx>

#include "models/order_placed.hpp"
#include "models/review_requested.hpp"
#include "omnibus/event_bus.hpp"

namespace services {

orders::orders(omnibus::event_bus& bus, const shop_options& options) : bus_(bus), options_(options) {}

std::int64_t orders::place(omnibus::context& ctx, const std::string& customer, const std::string& sku, int quantity,
                           std::int64_t cents) {
  const auto id = ctx.tx()
                      .exec_params1("INSERT INTO " + table(options_, "orders") +
                                        " (customer, sku, quantity, cents) VALUES ($1, $2, $3, $4) RETURNING id",
                                    customer, sku, quantity, cents)[0]
                      .as<std::int64_t>();
  bus_.publish(ctx, models::order_placed{id, customer, sku, quantity, cents});  // inventory may throw here
  // In the order's transaction: rolled back with the order if anything after this fails. The
  // key keeps it to one pending request per order.
  (void)bus_.publish_after(ctx, options_.review_delay, models::review_requested{id, customer},
                           {.unique_key = "review:order:" + std::to_string(id)});
  return id;
}

}  // namespace services
