#include "services/shop.hpp"

#include <pqxx/pqxx>

#include "omnibus/event_bus.hpp"
#include "omnibus/migrations.hpp"

namespace services {

std::string table(const shop_options& o, const char* name) { return "\"" + o.schema + "\"." + name; }

shop::shop(omnibus::event_bus& bus, const shop_options& o)
    : options(o), audit(bus, o), users(bus, o), inventory(bus, o), orders(bus, o), mailer(bus, o), stats(bus, o),
      loyalty(bus, o) {}

std::unique_ptr<shop> make_shop(omnibus::event_bus& bus, const shop_options& options) {
  omnibus::check_schema_name(options.schema);
  return std::make_unique<shop>(bus, options);
}

void migrate_shop(pqxx::connection_base& conn, const shop_options& o) {
  omnibus::check_schema_name(o.schema);
  pqxx::work tx{conn};
  tx.exec_params("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", "shop:migrate:" + o.schema);
  tx.exec0("CREATE SCHEMA IF NOT EXISTS \"" + o.schema + "\"");
  tx.exec0("CREATE TABLE IF NOT EXISTS " + table(o, "users") +
           " (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, email text NOT NULL UNIQUE)");
  tx.exec0("CREATE TABLE IF NOT EXISTS " + table(o, "audit") +
           " (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, what text NOT NULL, at timestamptz NOT NULL DEFAULT now())");
  tx.exec0("CREATE TABLE IF NOT EXISTS " + table(o, "stock") + " (sku text PRIMARY KEY, available int NOT NULL)");
  tx.exec0("CREATE TABLE IF NOT EXISTS " + table(o, "orders") +
           " (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer text NOT NULL, sku text NOT NULL, "
           "quantity int NOT NULL, cents bigint NOT NULL, placed_at timestamptz NOT NULL DEFAULT now())");
  tx.exec0("CREATE TABLE IF NOT EXISTS " + table(o, "emails") +
           " (event_id text NOT NULL, kind text NOT NULL, address text NOT NULL, "
           "sent_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (kind, event_id))");
  tx.exec0("CREATE TABLE IF NOT EXISTS " + table(o, "customer_stats") +
           " (customer text PRIMARY KEY, orders int NOT NULL, cents bigint NOT NULL, last_order_id bigint NOT NULL, "
           "out_of_order int NOT NULL DEFAULT 0)");
  tx.exec0("CREATE TABLE IF NOT EXISTS " + table(o, "loyalty") +
           " (order_id bigint PRIMARY KEY, customer text NOT NULL, points int NOT NULL)");
  tx.commit();
}

}  // namespace services
