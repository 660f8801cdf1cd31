#include "services/mailer.hpp"

#include <pqxx/pqxx>

#include "models/order_placed.hpp"
#include "models/user_registered.hpp"
#include "omnibus/event_bus.hpp"

namespace services {

mailer::mailer(omnibus::event_bus& bus, const shop_options& options) {
  // A redelivered event must not send a second email: the event id is the idempotency key.
  const std::string record = "INSERT INTO " + table(options, "emails") +
                             " (event_id, kind, address) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";
  omnibus::listener_options o;
  o.concurrency = options.concurrency;
  bus.add_async_listener<models::user_registered>("welcome_email", [record](omnibus::context& ctx, const models::user_registered& e) {
    pqxx::nontransaction tx{ctx.db()};
    tx.exec_params0(record, ctx.event_id().to_string(), "welcome", e.email);
  }, o);
  bus.add_async_listener<models::order_placed>("confirmation_email", [record](omnibus::context& ctx, const models::order_placed& e) {
    pqxx::nontransaction tx{ctx.db()};
    tx.exec_params0(record, ctx.event_id().to_string(), "confirmation", e.customer);
  }, o);
}

}  // namespace services
