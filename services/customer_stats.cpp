#include "services/customer_stats.hpp"

#include <pqxx/pqxx>

#include "models/order_placed.hpp"
#include "omnibus/event_bus.hpp"

namespace services {

customer_stats::customer_stats(omnibus::event_bus& bus, const shop_options& options) {
  const std::string stats = table(options, "customer_stats");
  omnibus::listener_options o;
  o.ordered = true;
  o.inbox = true;  // exactly once: the worker's transaction records the event with these writes
  o.retry.initial = options.retry_initial;
  bus.add_async_listener<models::order_placed>("customer_stats", [stats](omnibus::context& ctx, const models::order_placed& e) {
    pqxx::transaction_base& tx = ctx.tx();  // the inbox transaction: commits with the inbox row
    auto last = tx.exec_params("SELECT last_order_id FROM " + stats + " WHERE customer = $1 FOR UPDATE", e.customer);
    const bool out_of_order = !last.empty() && last[0][0].as<std::int64_t>() > e.order_id;
    tx.exec_params0("INSERT INTO " + stats +
                        " (customer, orders, cents, last_order_id, out_of_order) VALUES ($1, 1, $2, $3, $4) "
                        "ON CONFLICT (customer) DO UPDATE SET orders = " + stats + ".orders + 1, cents = " + stats +
                        ".cents + EXCLUDED.cents, last_order_id = greatest(" + stats + ".last_order_id, EXCLUDED.last_order_id), "
                        "out_of_order = " + stats + ".out_of_order + EXCLUDED.out_of_order",
                    e.customer, e.cents, e.order_id, out_of_order ? 1 : 0);
  }, o);
}

}  // namespace services
