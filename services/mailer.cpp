#include "services/mailer.hpp"

#include <pqxx/pqxx>

#include "models/order_placed.hpp"
#include "models/review_requested.hpp"
#include "models/sales_report_due.hpp"
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
  bus.add_async_listener<models::review_requested>("review_email", [record](omnibus::context& ctx, const models::review_requested& e) {
    pqxx::nontransaction tx{ctx.db()};
    tx.exec_params0(record, ctx.event_id().to_string(), "review", e.customer);
  }, o);
  bus.add_schedule("sales_report", options.report_cron, options.report_zone, [](omnibus::cron::time_point occurrence) {
    return models::sales_report_due{occurrence.time_since_epoch().count()};
  });
  bus.add_async_listener<models::sales_report_due>("report_email", [record](omnibus::context& ctx, const models::sales_report_due&) {
    pqxx::nontransaction tx{ctx.db()};
    tx.exec_params0(record, ctx.event_id().to_string(), "report", "sales@example.com");
  }, o);
}

}  // namespace services
