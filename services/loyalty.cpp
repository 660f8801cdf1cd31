#include "services/loyalty.hpp"

#include <random>
#include <stdexcept>

#include <pqxx/pqxx>

#include "models/order_placed.hpp"
#include "omnibus/event_bus.hpp"

namespace services {

loyalty::loyalty(omnibus::event_bus& bus, const shop_options& options) {
  const std::string record =
      "INSERT INTO " + table(options, "loyalty") + " (order_id, customer, points) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
  const double rate = options.flaky_failure_rate;
  omnibus::listener_options o;
  o.concurrency = options.concurrency;
  o.retry.max_attempts = options.flaky_attempts;
  o.retry.initial = options.retry_initial;
  o.retry.max = options.retry_initial * 10;
  bus.add_async_listener<models::order_placed>("loyalty", [record, rate](omnibus::context& ctx, const models::order_placed& e) {
    thread_local std::mt19937 random{std::random_device{}()};
    if (std::uniform_real_distribution<double>(0.0, 1.0)(random) < rate) {
      throw std::runtime_error("loyalty backend timed out");
    }
    pqxx::nontransaction tx{ctx.db()};
    tx.exec_params0(record, e.order_id, e.customer, static_cast<int>(e.cents / 100));
  }, o);
}

}  // namespace services
