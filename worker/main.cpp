// omnibus-worker: the example shop's worker, built the way a user's worker is: worker_main
// does configuration, signals and every operator command; this file adds the shop's services
// and its flags of its own.

#include <stdexcept>
#include <string>

#include <CLI/CLI.hpp>
#include <pqxx/pqxx>

#include "omnibus/cron.hpp"
#include "omnibus/migrations.hpp"
#include "omnibus/worker_main.hpp"
#include "services/shop.hpp"

int main(int argc, char** argv) {
  omnibus::worker_program program{"omnibus-worker", "runs the shop's async listeners, and operates the bus."};
  services::shop_options shop;
  program.cli().add_option("--shop-schema", shop.schema, "PostgreSQL schema of the shop's tables")
      ->envname("OMNIBUS_SHOP_SCHEMA")->capture_default_str();
  program.cli().add_option("--flaky-rate", shop.flaky_failure_rate, "how often the shop's loyalty listener fails (0..1)")
      ->envname("OMNIBUS_FLAKY_RATE")->capture_default_str();
  program.cli().add_option("--report-cron", shop.report_cron, "when the sales report is due (a cron expression)")
      ->envname("OMNIBUS_REPORT_CRON")->capture_default_str();
  program.cli().add_option("--report-zone", shop.report_zone, "the sales report's time zone")
      ->envname("OMNIBUS_REPORT_ZONE")->capture_default_str();
  program.run_command().add_option("--concurrency", shop.concurrency, "handler slots per unordered listener")
      ->envname("OMNIBUS_CONCURRENCY")->capture_default_str();
  program.validate([&](const omnibus::worker_config&) {
    if (shop.concurrency < 1) throw omnibus::config_error("--concurrency must be at least 1");
    if (shop.flaky_failure_rate < 0 || shop.flaky_failure_rate > 1) throw omnibus::config_error("--flaky-rate must be within 0..1");
    try {
      omnibus::check_schema_name(shop.schema);
    } catch (const std::invalid_argument& e) {
      throw omnibus::config_error(e.what());
    }
  });
  return program.main(argc, argv, [&](omnibus::app& app) {
    if (app.command() == "run") {  // the shop's tables, before its listeners touch them
      pqxx::connection db{app.config().database_url};
      services::migrate_shop(db, shop);
    }
    try {
      app.keep(services::make_shop(app.bus(), shop));  // every service registers its listeners here
    } catch (const omnibus::cron_error& e) {
      throw omnibus::config_error(std::string("--report-cron/--report-zone: ") + e.what());
    }
  });
}
