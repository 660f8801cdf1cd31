// The transactional outbox and its relay, against real PostgreSQL and nats-server: no
// phantom events from rolled-back transactions, no lost events after a crash, one active
// relay per schema, failover, and migrations.

#include <algorithm>
#include <chrono>
#include <csignal>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <pqxx/pqxx>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include "omnibus/event.hpp"
#include "omnibus/event_bus.hpp"
#include "omnibus/migrations.hpp"
#include "omnibus/relay.hpp"
#include "omnibus/jetstream.hpp"
#include "omnibus/nats_connection.hpp"
#include "support/child_process.hpp"
#include "support/stream_reader.hpp"
#include "support/schema.hpp"
#include "support/test_env.hpp"
#include "support/wait.hpp"
#include "tools/tool_event.hpp"

namespace {

using namespace std::chrono_literals;

struct outbox_fixture {
  omnibus::nats_connection conn{{.url = test_env::nats_url()}};
  omnibus::jetstream js{conn};
  omnibus::bus_options opts = test_env::test_bus_options("outbox");
  pqxx::connection db{test_env::database_url()};
  std::shared_ptr<spdlog::logger> log = std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::null_sink_mt>());

  outbox_fixture() {
    js.provision(opts.stream, {});
    omnibus::migrate(db, opts.schema);
  }
  ~outbox_fixture() {
    (void)js.delete_stream(opts.stream);
    test_env::drop_schemas(db, {opts.schema});
  }

  omnibus::relay_options relay_opts() const {
    omnibus::relay_options ro;
    ro.database_url = test_env::database_url();
    ro.schema = opts.schema;
    ro.stream = opts.stream;
    ro.standby_poll = 50ms;
    ro.retry_backoff = 100ms;
    return ro;
  }
  long outbox_rows() {
    pqxx::nontransaction q{db};
    return q.exec1("SELECT count(*) FROM \"" + opts.schema + "\".bus_outbox")[0].as<long>();
  }
  std::uint64_t last_seq() { return js.last_sequence(opts.stream); }

  // Commits `count` events in one transaction, numbered from `first`.
  std::vector<omnibus::event_id> commit_events(omnibus::event_bus& b, long first, long count) {
    std::vector<omnibus::event_id> ids;
    pqxx::work tx{db};
    omnibus::context ctx{tx};
    for (long i = first; i < first + count; ++i) ids.push_back(b.publish(ctx, tool_event{i}));
    tx.commit();
    return ids;
  }

  // The stream holds exactly `ids`, once each, in this order.
  void require_stream_holds(const std::vector<omnibus::event_id>& ids) {
    auto stored = test_env::read_stream(js, opts.stream, ids.size());
    REQUIRE(stored.size() == ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) {
      REQUIRE(omnibus::decode(stored[i], opts.stream.subject_prefix).id == ids[i]);
    }
    CHECK(last_seq() == ids.size());  // nothing beyond them
  }

  // The counters a relay process prints when it stops: "relayed=<n> duplicates=<d>".
  static std::pair<long, long> relay_counts(const std::string& output) {
    long relayed = -1, duplicates = -1;
    auto at = output.rfind("relayed=");
    if (at != std::string::npos) std::sscanf(output.c_str() + at, "relayed=%ld duplicates=%ld", &relayed, &duplicates);
    return {relayed, duplicates};
  }

  test_env::child_process tool(std::vector<std::string> args, std::vector<std::string> env = {}) {
    args.insert(args.begin(), test_env::tool_path("OMNIBUS_OUTBOX_TOOL"));
    return test_env::child_process(std::move(args), std::move(env));
  }
};

}  // namespace

TEST_CASE_METHOD(outbox_fixture, "a rolled-back transaction's events never reach the stream",
                 "[integration][outbox]") {
  omnibus::event_bus b{js, opts};
  b.freeze();
  omnibus::relay r{js, relay_opts(), log};
  r.start();
  {
    pqxx::work tx{db};
    omnibus::context ctx{tx};
    for (int i = 0; i < 100; ++i) b.publish(ctx, tool_event{i});
    tx.abort();
  }
  // The fence: a committed control event, waited for in the stream.
  auto control = commit_events(b, 1000, 1);
  REQUIRE(test_env::eventually([&] { return last_seq() >= 1; }, 10s));
  CHECK(last_seq() == 1);
  require_stream_holds(control);
  // The relay deletes a row after the stream acknowledged it: the row may outlive the event's
  // arrival by a moment.
  CHECK(test_env::eventually([&] { return outbox_rows() == 0; }, 10s));
}

TEST_CASE_METHOD(outbox_fixture, "the outbox INSERT is prepared once per connection, and not at all when turned off",
                 "[integration][outbox]") {
  auto prepared_here = [&](pqxx::connection& c) {
    pqxx::nontransaction q{c};
    return q.exec1("SELECT count(*) FROM pg_prepared_statements WHERE name LIKE 'omnibus_outbox_%'")[0].as<long>();
  };
  omnibus::relay r{js, relay_opts(), log};
  r.start();
  std::vector<omnibus::event_id> ids;
  SECTION("prepared: the default") {
    omnibus::event_bus b{js, opts};
    b.freeze();
    {  // its first use is in a transaction that rolls back: the statement stays
      pqxx::work tx{db};
      omnibus::context ctx{tx};
      b.publish(ctx, tool_event{0});
      tx.abort();
    }
    CHECK(prepared_here(db) == 1);
    for (long k = 0; k < 3; ++k) {
      auto some = commit_events(b, k * 10, 10);
      ids.insert(ids.end(), some.begin(), some.end());
    }
    CHECK(prepared_here(db) == 1);
  }
  SECTION("turned off, as behind a transaction-pooling proxy") {
    opts.prepared_statements = false;
    omnibus::event_bus b{js, opts};
    b.freeze();
    for (long k = 0; k < 3; ++k) {
      auto some = commit_events(b, k * 10, 10);
      ids.insert(ids.end(), some.begin(), some.end());
    }
    CHECK(prepared_here(db) == 0);
  }
  REQUIRE(test_env::eventually([&] { return last_seq() >= ids.size(); }, 10s));
  require_stream_holds(ids);
}

TEST_CASE_METHOD(outbox_fixture, "nothing reaches the stream before COMMIT", "[integration][outbox]") {
  omnibus::event_bus b{js, opts};
  b.freeze();
  omnibus::relay r{js, relay_opts(), log};
  r.start();
  pqxx::connection other{test_env::database_url()};
  pqxx::work open_tx{other};
  omnibus::context open_ctx{open_tx};
  auto pending = b.publish(open_ctx, tool_event{1});  // written, not committed

  auto control = commit_events(b, 2, 1);
  REQUIRE(test_env::eventually([&] { return last_seq() >= 1; }, 10s));
  CHECK(last_seq() == 1);  // the control only: the open transaction's row is invisible

  open_tx.commit();
  REQUIRE(test_env::eventually([&] { return last_seq() >= 2; }, 10s));
  require_stream_holds({control[0], pending});
}

TEST_CASE_METHOD(outbox_fixture, "publish_batch in a transaction writes its rows in one COPY and they arrive in order",
                 "[integration][outbox]") {
  omnibus::event_bus b{js, opts};
  b.freeze();
  std::vector<tool_event> events;
  for (long i = 0; i < 1000; ++i) events.push_back({i});
  std::vector<omnibus::event_id> ids;
  {
    pqxx::work tx{db};
    omnibus::context ctx{tx};
    auto report = b.publish_batch(ctx, std::span<const tool_event>(events));
    CHECK(report.ok());
    ids = report.ids;
    tx.commit();
  }
  CHECK(outbox_rows() == 1000);
  omnibus::relay r{js, relay_opts(), log};
  r.start();
  REQUIRE(test_env::eventually([&] { return outbox_rows() == 0; }, 20s));
  require_stream_holds(ids);
}

TEST_CASE_METHOD(outbox_fixture, "a publisher that commits and dies before relaying loses nothing",
                 "[integration][outbox]") {
  // The child commits 100 events, then its relay reads them and the failpoint kills it
  // before a single publish.
  auto child = tool({"publish", opts.schema, opts.stream.name, "100"}, {"OMNIBUS_FAILPOINT=relay_before_publish"});
  REQUIRE(child.wait(30s) == 86);
  CHECK_THAT(child.output(), Catch::Contains("committed=100"));
  // It wrote outbox rows before it made its relay: it was told, once, that somebody must relay.
  CHECK_THAT(child.output(), Catch::Contains("runs no relay: another process"));
  CHECK(outbox_rows() == 100);
  CHECK(last_seq() == 0);

  std::vector<omnibus::event_id> ids;
  {
    pqxx::nontransaction q{db};
    for (const auto& row : q.exec("SELECT event_id::text FROM \"" + opts.schema + "\".bus_outbox ORDER BY id")) {
      ids.push_back(omnibus::event_id::parse(row[0].c_str()));
    }
  }
  // A relay in another process sends them all, each once, in order.
  auto relay = tool({"relay", opts.schema, opts.stream.name, "1000"});
  REQUIRE(test_env::eventually([&] { return outbox_rows() == 0; }, 20s));
  relay.signal(SIGTERM);
  REQUIRE(relay.wait(10s) == 0);
  CHECK(relay_counts(relay.output()) == std::pair<long, long>{100, 0});
  require_stream_holds(ids);
}

TEST_CASE_METHOD(outbox_fixture, "two relays at once send 10,000 rows exactly once, in order",
                 "[integration][outbox]") {
  omnibus::event_bus b{js, opts};
  b.freeze();
  std::vector<omnibus::event_id> ids;
  for (long k = 0; k < 10; ++k) {
    auto some = commit_events(b, k * 1000, 1000);
    ids.insert(ids.end(), some.begin(), some.end());
  }
  auto first = tool({"relay", opts.schema, opts.stream.name, "500"});
  auto second = tool({"relay", opts.schema, opts.stream.name, "500"});
  REQUIRE(test_env::eventually([&] { return outbox_rows() == 0; }, 60s));
  first.signal(SIGTERM);
  second.signal(SIGTERM);
  REQUIRE(first.wait(10s) == 0);
  REQUIRE(second.wait(10s) == 0);
  // One relay did all the work; neither ever saw a duplicate PubAck (dedup hid no double send).
  auto [relayed1, duplicates1] = relay_counts(first.output());
  auto [relayed2, duplicates2] = relay_counts(second.output());
  CHECK(duplicates1 == 0);
  CHECK(duplicates2 == 0);
  CHECK(relayed1 + relayed2 == 10000);
  CHECK(std::min(relayed1, relayed2) == 0);
  require_stream_holds(ids);
}

TEST_CASE_METHOD(outbox_fixture, "when the active relay dies, the standby takes over and every row is sent",
                 "[integration][outbox]") {
  omnibus::event_bus b{js, opts};
  b.freeze();
  std::vector<omnibus::event_id> ids;
  for (long k = 0; k < 5; ++k) {
    auto some = commit_events(b, k * 1000, 1000);
    ids.insert(ids.end(), some.begin(), some.end());
  }

  SECTION("killed by a failpoint between its PubAcks and its DELETE") {
    // The active relay dies after the PubAcks of its 2nd batch of 500, before deleting it.
    auto active = tool({"relay", opts.schema, opts.stream.name, "500"}, {"OMNIBUS_FAILPOINT=relay_after_pub_ack@2"});
    REQUIRE(test_env::eventually([&] { return outbox_rows() < 5000; }, 20s));  // it is the active one
    auto standby = tool({"relay", opts.schema, opts.stream.name, "500"});
    REQUIRE(active.wait(20s) == 86);
    REQUIRE(test_env::eventually([&] { return outbox_rows() == 0; }, 30s));
    standby.signal(SIGTERM);
    REQUIRE(standby.wait(10s) == 0);
    // The standby re-sent the undeleted batch; the duplicate window stored it once.
    CHECK(relay_counts(standby.output()).second == 500);
  }
  SECTION("killed with SIGKILL while it has work") {
    auto active = tool({"relay", opts.schema, opts.stream.name, "100"});
    REQUIRE(test_env::eventually([&] { return outbox_rows() < 5000; }, 20s));
    auto standby = tool({"relay", opts.schema, opts.stream.name, "100"});
    active.signal(SIGKILL);
    REQUIRE(active.wait(10s) == 128 + SIGKILL);
    REQUIRE(test_env::eventually([&] { return outbox_rows() == 0; }, 30s));
    standby.signal(SIGTERM);
    REQUIRE(standby.wait(10s) == 0);
  }
  require_stream_holds(ids);
}

TEST_CASE_METHOD(outbox_fixture, "a standby relay stops promptly when asked", "[integration][outbox]") {
  omnibus::relay active{js, relay_opts(), log};
  active.start();
  REQUIRE(test_env::eventually([&] { return active.stats().active.load(); }, 10s));
  omnibus::relay standby{js, relay_opts(), log};
  standby.start();
  // Standing by: it polls for the lock and never becomes active while the other holds it.
  auto own_session = [&] {
    pqxx::nontransaction q{db};
    return q.exec1("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")[0].as<long>();
  };
  REQUIRE(test_env::eventually([&] { return own_session() >= 3; }, 10s));  // the fixture's, the active's, the standby's
  const auto start = std::chrono::steady_clock::now();
  standby.stop();
  CHECK(std::chrono::steady_clock::now() - start < 2s);
  CHECK_FALSE(standby.stats().active.load());
  CHECK(active.stats().active.load());
}

TEST_CASE_METHOD(outbox_fixture, "migrations run twice, and from two processes at once", "[integration][outbox]") {
  const std::string schema = test_env::unique_name("mig");
  auto run = [&] {
    pqxx::connection c{test_env::database_url()};
    return omnibus::migrate(c, schema);
  };
  std::vector<std::thread> threads;  // separate connections: separate sessions, as separate processes would be
  std::vector<int> versions(4, -1);
  std::vector<std::string> errors(4);
  for (int i = 0; i < 4; ++i) {
    threads.emplace_back([&, i] {
      try {
        versions[i] = run();
      } catch (const std::exception& e) {
        errors[i] = e.what();
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 4; ++i) {
    CHECK(errors[i].empty());
    CHECK(versions[i] == omnibus::latest_schema_version());
  }
  CHECK(run() == omnibus::latest_schema_version());
  CHECK(omnibus::schema_version(db, schema) == omnibus::latest_schema_version());
  pqxx::work tx{db};
  tx.exec0("DROP SCHEMA \"" + schema + "\" CASCADE");
  tx.commit();
}

TEST_CASE_METHOD(outbox_fixture, "a database at a newer schema version refuses to start", "[integration][outbox]") {
  {
    pqxx::work tx{db};
    tx.exec0("INSERT INTO \"" + opts.schema + "\".bus_schema_version (version, description) VALUES (999, 'from the future')");
    tx.commit();
  }
  CHECK_THROWS_WITH(omnibus::migrate(db, opts.schema), Catch::Contains("version 999") && Catch::Contains("newer"));
}

TEST_CASE_METHOD(outbox_fixture, "the printed migrations SQL builds the same schema", "[integration][outbox]") {
  const std::string schema = test_env::unique_name("sql");
  {
    pqxx::work tx{db};
    const std::string sql = omnibus::migrations_sql(schema);
    // The script has its own BEGIN/COMMIT; run its body inside ours.
    auto body = sql.substr(sql.find("BEGIN;") + 6);
    body = body.substr(0, body.rfind("COMMIT;"));
    tx.exec0(body);
    tx.exec0(body);  // idempotent
    tx.commit();
  }
  CHECK(omnibus::schema_version(db, schema) == omnibus::latest_schema_version());
  CHECK(omnibus::migrate(db, schema) == omnibus::latest_schema_version());  // and migrate() agrees
  pqxx::work tx{db};
  tx.exec0("DROP SCHEMA \"" + schema + "\" CASCADE");
  tx.commit();
}
