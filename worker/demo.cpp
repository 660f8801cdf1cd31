// omnibus-demo: the example shop end to end. Starts two omnibus-worker processes, registers
// users and places orders (some fail for lack of stock), waits until the workers have drained
// every listener, prints what happened, and checks that summary against the database.
// Needs OMNIBUS_NATS_URL and OMNIBUS_DATABASE_URL (scripts/demo sets both).

#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <pqxx/pqxx>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include "omnibus/dead_letters.hpp"
#include "omnibus/event_bus.hpp"
#include "omnibus/migrations.hpp"
#include "omnibus/relay.hpp"
#include "omnibus/schedules.hpp"
#include "omnibus/jetstream.hpp"
#include "omnibus/nats_connection.hpp"
#include "models/review_requested.hpp"
#include "services/shop.hpp"
#include "support/process.hpp"

namespace {

using namespace std::chrono_literals;

// One omnibus-worker child process (the tests' process helper), its output in a file.
class worker_process {
 public:
  worker_process(const std::string& exe, const std::vector<std::string>& args, const std::string& log)
      : p_(argv_of(exe, args), {}, log) {}
  // SIGTERM, then the exit status (graceful shutdown exits 0).
  int stop() {
    (void)p_.signal(SIGTERM);
    return wait();
  }
  // The exit status, once the process ends (a worker that never ends fails the demo).
  int wait() {
    const int rc = p_.wait(std::chrono::minutes(2));
    if (rc < 0) throw std::runtime_error("a worker did not exit within 2 minutes:\n" + p_.output());
    return rc;
  }
  [[nodiscard]] bool alive() { return p_.alive(); }
  [[nodiscard]] std::string output() const { return p_.output(); }
  // The value of `key=` in the worker's final stats line.
  [[nodiscard]] long stat(const std::string& key) const {
    const std::string out = output();
    auto line = out.rfind("worker: handled=");
    if (line == std::string::npos) return -1;
    auto at = out.find(key + "=", line);
    return at == std::string::npos ? -1 : std::atol(out.c_str() + at + key.size() + 1);
  }

 private:
  static std::vector<std::string> argv_of(const std::string& exe, const std::vector<std::string>& args) {
    std::vector<std::string> argv{exe};
    argv.insert(argv.end(), args.begin(), args.end());
    return argv;
  }
  test_env::process p_;
};

long count(pqxx::connection& db, const std::string& sql) {
  pqxx::nontransaction q{db};
  return q.exec1(sql)[0].as<long>();
}

}  // namespace

int main(int argc, char** argv) {
  int users_n = 20, orders_n = 300;
  double flaky = 0.2;
  int replicas = 1;
  std::string schema = "omnibus_demo", shop_schema = "shop_demo", stream = "SHOPDEMO", prefix = "shopdemo";
  CLI::App app{"omnibus-demo: the example shop, end to end"};
  app.add_option("--users", users_n, "users to register")->capture_default_str();
  app.add_option("--orders", orders_n, "orders to place")->capture_default_str();
  app.add_option("--flaky-rate", flaky, "how often the loyalty listener fails")->capture_default_str();
  app.add_option("--schema", schema, "bus schema")->capture_default_str();
  app.add_option("--shop-schema", shop_schema, "shop schema")->capture_default_str();
  app.add_option("--stream", stream, "stream name (also the subject prefix, lower-cased)")->capture_default_str();
  app.add_option("--stream-replicas", replicas, "copies of the stream (3 on a cluster: scripts/demo --cluster)")
      ->capture_default_str();
  bool leave_dead_letters = false;
  app.add_flag("--leave-dead-letters", leave_dead_letters,
               "do not retry the loyalty dead letters at the end: leave them to look at (scripts/demo --dashboard)");
  CLI11_PARSE(app, argc, argv);
  prefix.clear();
  for (char ch : stream) prefix += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));

  const char* nats_url = std::getenv("OMNIBUS_NATS_URL");
  const char* db_url = std::getenv("OMNIBUS_DATABASE_URL");
  if (nats_url == nullptr || db_url == nullptr) {
    std::fprintf(stderr, "omnibus-demo: set OMNIBUS_NATS_URL and OMNIBUS_DATABASE_URL (scripts/demo does)\n");
    return 2;
  }

  try {
    omnibus::bus_options bo;
    bo.group = "shop";
    bo.schema = schema;
    bo.stream.name = stream;
    bo.stream.subject_prefix = prefix;
    bo.stream.replicas = replicas;
    services::shop_options so;
    so.schema = shop_schema;
    so.flaky_failure_rate = flaky;

    // A fresh start: the demo owns its stream and schemas.
    omnibus::nats_connection nats{{.url = nats_url, .name = "omnibus-demo"}};
    omnibus::jetstream js{nats};
    (void)js.delete_stream(bo.stream);
    pqxx::connection db{db_url};
    {
      pqxx::work tx{db};
      tx.exec0("DROP SCHEMA IF EXISTS \"" + schema + "\" CASCADE");
      tx.exec0("DROP SCHEMA IF EXISTS \"" + shop_schema + "\" CASCADE");
      tx.commit();
    }
    omnibus::migrate(db, schema);
    services::migrate_shop(db, so);

    // The publishing side constructs the same services, and provisions their consumers.
    omnibus::event_bus bus{js, bo};
    auto shop = services::make_shop(bus, so);
    bus.provision();

    std::printf("omnibus demo: a shop with %d customers and %d orders; the loyalty listener fails %.0f%% of the time\n",
                users_n, orders_n, flaky * 100);
    const std::string exe = (std::filesystem::path(argv[0]).parent_path() / "omnibus-worker").string();
    const std::vector<std::string> worker_args{"--group", "shop", "--schema", schema, "--shop-schema", shop_schema,
                                               "--stream", stream, "--subject-prefix", prefix, "--log-level", "warn",
                                               "--flaky-rate", std::to_string(flaky), "--stream-replicas",
                                               std::to_string(replicas), "run"};
    worker_process w1{exe, worker_args, "/tmp/omnibus-demo-worker-1.log"};
    worker_process w2{exe, worker_args, "/tmp/omnibus-demo-worker-2.log"};
    std::printf("  started 2 workers (logs: /tmp/omnibus-demo-worker-{1,2}.log)\n");
    if (replicas > 1) std::printf("  the stream is replicated %d times across a JetStream cluster\n", replicas);

    auto log = std::make_shared<spdlog::logger>("demo", std::make_shared<spdlog::sinks::null_sink_mt>());
    omnibus::relay_options ro;
    ro.database_url = db_url;
    ro.schema = schema;
    ro.stream = bo.stream;
    omnibus::relay relay{js, ro, log};  // the workers run relays too: one is active, the rest stand by
    relay.start();

    // Stock: a few units per product, so that some orders fail.
    const std::vector<std::string> skus{"kettle", "teapot", "mug", "tea-1kg", "strainer"};
    {
      pqxx::work tx{db};
      omnibus::context ctx{tx};
      // Orders take 2 units on average: stock for about 85% of them.
      for (const auto& sku : skus) shop->inventory.restock(ctx, sku, orders_n * 2 * 85 / 100 / static_cast<int>(skus.size()));
      tx.commit();
    }
    std::vector<std::string> customers;
    for (int i = 0; i < users_n; ++i) {
      pqxx::work tx{db};
      omnibus::context ctx{tx};
      customers.push_back("customer" + std::to_string(i) + "@example.com");
      shop->users.register_user(ctx, customers.back());
      tx.commit();
    }
    std::mt19937 random{42};
    long placed = 0, rolled_back = 0;
    for (int i = 0; i < orders_n; ++i) {
      pqxx::work tx{db};
      omnibus::context ctx{tx};
      ctx.meta().correlation_id = "demo-order-" + std::to_string(i);
      try {
        shop->orders.place(ctx, customers[random() % customers.size()], skus[random() % skus.size()],
                           1 + static_cast<int>(random() % 3), 500 + static_cast<long>(random() % 5000));
        tx.commit();
        ++placed;
      } catch (const services::out_of_stock&) {
        tx.abort();  // the order, its audit row and its event never existed
        ++rolled_back;
      }
    }
    std::printf("  placed %ld orders, %ld rolled back for lack of stock\n", placed, rolled_back);
    std::printf("  each order scheduled a review request %lld ms later in its own transaction; the sales report is a "
                "recurring schedule. What the operator sees:\n",
                static_cast<long long>(so.review_delay.count()));
    const std::vector<std::string> cli_args{"--group", "shop", "--schema", schema, "--shop-schema", shop_schema, "--stream",
                                            stream, "--subject-prefix", prefix};
    const auto operator_command = [&](std::vector<std::string> args, const char* log, std::size_t max_lines) {
      std::vector<std::string> argv = cli_args;
      argv.insert(argv.end(), args.begin(), args.end());
      worker_process cmd{exe, argv, log};
      const int rc = cmd.wait();
      std::istringstream out(cmd.output());
      std::size_t n = 0;
      for (std::string line; std::getline(out, line) && n < max_lines; ++n) std::printf("    | %s\n", line.c_str());
      if (rc != 0) throw std::runtime_error("omnibus-worker " + args.front() + " exited " + std::to_string(rc));
    };
    std::printf("  $ omnibus-worker schedules list --limit 3\n");
    operator_command({"schedules", "list", "--limit", "3"}, "/tmp/omnibus-demo-schedules.log", 12);
    std::printf("  $ omnibus-worker schedules trigger sales_report   (fire it once now, outside its cron)\n");
    operator_command({"schedules", "trigger", "sales_report"}, "/tmp/omnibus-demo-trigger.log", 3);

    // Drained: the outbox is empty and every listener's consumer has nothing pending or unacked.
    const std::string outbox = "SELECT count(*) FROM \"" + schema + "\".bus_outbox";
    const std::string scheduled = "SELECT count(*) FROM \"" + schema + "\".bus_scheduled";
    auto drained = [&] {
      if (count(db, scheduled) != 0 || count(db, outbox) != 0) return false;
      for (const auto& c : js.consumers(bo.stream)) {
        if (c.pending != 0 || c.ack_pending != 0) return false;
      }
      return true;
    };
    const auto deadline = std::chrono::steady_clock::now() + 120s;
    int stable = 0;
    while (stable < 3) {  // consumer info lags acks a little: insist on three clean reads
      if (std::chrono::steady_clock::now() > deadline) throw std::runtime_error("the workers did not drain within 120 s");
      if (!w1.alive() || !w2.alive()) throw std::runtime_error("a worker died:\n" + w1.output() + w2.output());
      stable = drained() ? stable + 1 : 0;
      std::this_thread::sleep_for(100ms);
    }
    relay.stop();
    const int rc1 = w1.stop(), rc2 = w2.stop();

    // What happened, from the database and the workers' own counts.
    const std::string s = "\"" + shop_schema + "\".";
    const long orders = count(db, "SELECT count(*) FROM " + s + "orders");
    const long welcome = count(db, "SELECT count(*) FROM " + s + "emails WHERE kind = 'welcome'");
    const long confirmations = count(db, "SELECT count(*) FROM " + s + "emails WHERE kind = 'confirmation'");
    const long reviews = count(db, "SELECT count(*) FROM " + s + "emails WHERE kind = 'review'");
    const long reports = count(db, "SELECT count(*) FROM " + s + "emails WHERE kind = 'report'");
    std::string report_next = "never";
    for (const auto& r : omnibus::list_recurring(db, schema)) {
      if (r.name == "sales_report" && r.next_fire_at) report_next = omnibus::to_iso8601(*r.next_fire_at);
    }
    const long stats_orders = count(db, "SELECT coalesce(sum(orders), 0) FROM " + s + "customer_stats");
    const long out_of_order = count(db, "SELECT coalesce(sum(out_of_order), 0) FROM " + s + "customer_stats");
    const long loyalty = count(db, "SELECT count(*) FROM " + s + "loyalty");
    const long audit = count(db, "SELECT count(*) FROM " + s + "audit");
    const auto dead = omnibus::list_dead_letters(db, schema, {}, {}, 100000);
    long dead_loyalty = 0;
    for (const auto& d : dead) dead_loyalty += d.listener == "loyalty" ? 1 : 0;
    const long retried = w1.stat("failed") + w2.stat("failed");
    const long handled = w1.stat("handled") + w2.stat("handled");

    std::printf("\nsummary\n");
    std::printf("  events published          %6ld  (%d user.registered + %ld order.placed + %ld order.review_requested + 1 "
                "report.sales_due)\n",
                users_n + 2 * placed + 1, users_n, placed, placed);
    std::printf("  orders rolled back        %6ld  (inventory's sync listener threw: no order, no audit row, no event)\n", rolled_back);
    std::printf("  audit rows (sync, in tx)  %6ld\n", audit);
    std::printf("  handled per listener\n");
    std::printf("    welcome_email           %6ld\n", welcome);
    std::printf("    confirmation_email      %6ld\n", confirmations);
    std::printf("    review_email            %6ld  (scheduled: each fired once, %lld ms after its order)\n", reviews,
                static_cast<long long>(so.review_delay.count()));
    std::printf("    report_email            %6ld  (recurring \"%s\" %s, triggered once by hand; next %s)\n", reports,
                so.report_cron.c_str(), so.report_zone.c_str(), report_next.c_str());
    std::printf("    customer_stats          %6ld  (ordered; out of order: %ld)\n", stats_orders, out_of_order);
    std::printf("    loyalty                 %6ld  (flaky)\n", loyalty);
    std::printf("  handler calls that succeeded %3ld  (both workers)\n", handled);
    std::printf("  retried (failed attempts) %6ld\n", retried);
    std::printf("  dead-lettered             %6zu  (loyalty, after 3 attempts each)\n", dead.size());
    std::printf("  workers exited            %d and %d  (0: graceful shutdown)\n", rc1, rc2);

    // The one command that retries them: it runs the loyalty listener alone on each stored
    // event (never the other listeners). The backend has "recovered": --flaky-rate 0.
    const std::string retry_cmd = "build/worker/omnibus-worker --schema " + schema + " --shop-schema " + shop_schema +
                                  " --flaky-rate 0 dead-letters retry --all --listener loyalty";
    std::printf("\nThe loyalty backend has recovered. To run its dead letters through that listener alone:\n  %s\n",
                retry_cmd.c_str());
    long loyalty_after = loyalty;
    if (leave_dead_letters) {
      std::printf("  (left as they are, to retry from the dashboard: --leave-dead-letters)\n");
      // And three review requests due in an hour, for the dashboard's schedules page.
      pqxx::work tx{db};
      omnibus::context ctx{tx};
      for (int i = 1; i <= 3; ++i) {
        (void)bus.publish_after(ctx, std::chrono::hours(1), models::review_requested{-i, "later@example.com"});
      }
      tx.commit();
      std::printf("  3 review requests scheduled an hour from now (cancel them from the dashboard)\n");
    } else if (!dead.empty()) {
      worker_process retry{exe, {"--schema", schema, "--shop-schema", shop_schema, "--flaky-rate", "0", "dead-letters",
                                 "retry", "--all", "--listener", "loyalty"}, "/tmp/omnibus-demo-retry.log"};
      const int rc = retry.wait();
      std::istringstream out(retry.output());
      for (std::string line; std::getline(out, line);) std::printf("    | %s\n", line.c_str());
      if (rc != 0) std::printf("  (retry exited %d)\n", rc);
      loyalty_after = count(db, "SELECT count(*) FROM " + s + "loyalty");
      std::printf("  loyalty now                %5ld of %ld orders; dead letters left: %zu\n", loyalty_after, placed,
                  omnibus::list_dead_letters(db, schema, {}, {}, 100000).size());
    }

    // The summary must agree with itself and with the database.
    std::vector<std::string> wrong;
    if (orders != placed) wrong.push_back("orders in the table differ from orders committed");
    if (welcome != users_n) wrong.push_back("welcome emails differ from users");
    if (confirmations != placed) wrong.push_back("confirmations differ from orders");
    if (reviews != placed) wrong.push_back("review requests differ from orders (each is scheduled once per order)");
    if (reports != 1) wrong.push_back("the sales report did not fire exactly once for its one trigger");
    if (stats_orders != placed) wrong.push_back("customer_stats counted a different number of orders");
    if (out_of_order != 0) wrong.push_back("customer_stats saw orders out of order");
    if (loyalty + dead_loyalty != placed) wrong.push_back("loyalty points plus loyalty dead letters differ from orders");
    if (audit != users_n + placed) wrong.push_back("audit rows differ from committed facts");
    if (static_cast<long>(dead.size()) != dead_loyalty) wrong.push_back("a listener other than loyalty dead-lettered");
    if (rc1 != 0 || rc2 != 0) wrong.push_back("a worker did not shut down gracefully");
    if (!leave_dead_letters && loyalty_after != placed) wrong.push_back("the retried dead letters did not all succeed");
    // welcome + confirmation + review + customer_stats + loyalty successes + the report
    if (handled != users_n + 3 * placed + loyalty + 1) wrong.push_back("the workers' handled counts differ from the effects");
    for (const auto& w : wrong) std::printf("MISMATCH: %s\n", w.c_str());
    std::printf("\ndemo: %s\n", wrong.empty() ? "every count checks out against the database" : "FAILED");
    return wrong.empty() ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "omnibus-demo: %s\n", e.what());
    return 1;
  }
}
