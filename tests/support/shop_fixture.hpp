#pragma once
// The example shop on its own schema, stream and names, with the worker binary at hand and
// dead letters written as the worker writes them: the operator-facing tests (CLI, dashboard).

#include <chrono>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <pqxx/pqxx>

#include "omnibus/codec.hpp"
#include "omnibus/dead_letters.hpp"
#include "omnibus/envelope.hpp"
#include "omnibus/jetstream.hpp"
#include "omnibus/migrations.hpp"
#include "omnibus/nats_connection.hpp"
#include "models/order_placed.hpp"
#include "services/shop.hpp"
#include "support/child_process.hpp"
#include "support/schema.hpp"
#include "support/stream_reader.hpp"
#include "support/test_env.hpp"

namespace test_env {

using namespace std::chrono_literals;

/// The shop: loyalty always fails (2 attempts), review requests stay scheduled for an hour.
struct shop_fixture {
  omnibus::nats_connection conn{{.url = test_env::nats_url()}};
  omnibus::jetstream js{conn};
  omnibus::bus_options opts = [] {
    auto o = test_env::test_bus_options("cli");
    o.group = "shop";
    return o;
  }();
  services::shop_options shop_opts = [] {
    services::shop_options s;
    s.schema = test_env::unique_name("shop");
    s.flaky_failure_rate = 1.0;  // loyalty always fails
    s.flaky_attempts = 2;
    s.retry_initial = 20ms;
    s.review_delay = 1h;  // the orders' review requests stay scheduled: the tests count what they publish
    return s;
  }();
  pqxx::connection db{test_env::database_url()};

  shop_fixture() {
    omnibus::migrate(db, opts.schema);
    services::migrate_shop(db, shop_opts);
  }
  ~shop_fixture() {
    (void)js.delete_stream(opts.stream);
    test_env::drop_schemas(db, {opts.schema, shop_opts.schema});
  }
  // omnibus-worker with this fixture's names, plus `args`.
  test_env::child_process cli(std::vector<std::string> args, std::vector<std::string> env = {}) {
    std::vector<std::string> argv{test_env::tool_path("OMNIBUS_WORKER_BIN"), "--group", opts.group, "--schema", opts.schema,
                                  "--shop-schema", shop_opts.schema, "--stream", opts.stream.name, "--subject-prefix",
                                  opts.stream.subject_prefix};
    argv.insert(argv.end(), args.begin(), args.end());
    return test_env::child_process(argv, std::move(env));
  }
  // `n` dead letters of `listener` for orders first..first+n-1, as the worker writes them.
  void dead_letters(const std::string& listener, long first, long n, const std::string& error = "loyalty backend timed out") {
    for (long i = first; i < first + n; ++i) {
      omnibus::envelope env;
      env.id = omnibus::event_id::generate();
      env.name = models::order_placed::name;
      env.version = models::order_placed::version;
      env.body = omnibus::detail::encode_body(models::order_placed{i, "c" + std::to_string(i) + "@example.com", "mug", 1, 1200});
      omnibus::dead_letter dl;
      dl.listener = listener;
      dl.event_id = env.id.to_string();
      dl.event_name = env.name;
      dl.msg = omnibus::encode(env, opts.stream.subject_prefix);
      dl.reason = "handler_failed";
      dl.error = error;
      dl.attempts = 2;
      omnibus::write_dead_letter(db, opts.schema, dl);
    }
  }
  /// One order placed by a publisher as the worker's `run` would make the stream: its events
  /// go through the outbox, and its review request stays scheduled (review_delay: an hour).
  void place_one_order() {
    omnibus::event_bus b{js, as_worker_run()};
    auto shop = services::make_shop(b, shop_opts);
    b.provision();
    pqxx::work tx{db};
    omnibus::context ctx{tx};
    shop->inventory.restock(ctx, "mug", 1);
    shop->orders.place(ctx, "ada@example.com", "mug", 1, 1200);
    tx.commit();
  }
  long items(std::int64_t redrive, const std::string& state) {
    return count("SELECT count(*) FROM \"" + opts.schema + "\".bus_redrive_items WHERE redrive_id = " +
                 std::to_string(redrive) + " AND state = '" + state + "'");
  }
  long count(const std::string& sql) {
    pqxx::nontransaction q{db};
    return q.exec1(sql)[0].as<long>();
  }
  /// This fixture's names with the stream as omnibus-worker run makes it from its defaults.
  [[nodiscard]] omnibus::bus_options as_worker_run() const {
    auto same = opts;
    const omnibus::stream_config defaults;
    same.stream.memory_storage = defaults.memory_storage;
    same.stream.max_age = defaults.max_age;
    same.stream.max_bytes = defaults.max_bytes;
    return same;
  }
};

}  // namespace test_env
