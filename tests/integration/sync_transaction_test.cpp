// Sync listeners write through the publisher's transaction: their rows commit or roll back
// with the publisher's.

#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <catch2/catch.hpp>
#include <pqxx/pqxx>

#include "omnibus/event.hpp"
#include "omnibus/event_bus.hpp"
#include "omnibus/observer.hpp"
#include "support/schema.hpp"
#include "support/test_env.hpp"
#include "support/wait.hpp"

namespace {

struct user_registered {
  static constexpr std::string_view name = "test.user_registered";
  static constexpr int version = 1;
  static constexpr bool local_only = true;  // this test is about the sync path alone
  std::string email;
  OMNIBUS_FIELDS(email);
};

struct schema_fixture {
  pqxx::connection conn{test_env::database_url()};
  std::string schema = test_env::unique_name("sync_tx");
  std::string table;

  schema_fixture() {
    pqxx::work tx{conn};
    table = tx.quote_name(schema) + ".audit";
    tx.exec0("CREATE SCHEMA " + tx.quote_name(schema));
    tx.exec0("CREATE TABLE " + table + " (email text NOT NULL)");
    tx.commit();
  }
  ~schema_fixture() {
    test_env::drop_schemas(conn, {schema});
  }
  long rows(const std::string& email) {
    pqxx::work tx{conn};
    return tx.exec_params1("SELECT count(*) FROM " + table + " WHERE email = $1", email)[0].as<long>();
  }
};

}  // namespace

TEST_CASE_METHOD(schema_fixture, "a sync listener's row commits and rolls back with the publisher's transaction",
                 "[integration][postgres][bus]") {
  omnibus::event_bus b;
  b.add_sync_listener<user_registered>([&](omnibus::context& ctx, const user_registered& e) {
    ctx.tx().exec_params0("INSERT INTO " + table + " (email) VALUES ($1)", e.email);
  });

  {
    pqxx::work tx{conn};
    omnibus::context ctx{tx};
    b.publish(ctx, user_registered{"kept@example.com"});
    tx.commit();
  }
  {
    pqxx::work tx{conn};
    omnibus::context ctx{tx};
    b.publish(ctx, user_registered{"dropped@example.com"});
    tx.abort();
  }
  CHECK(rows("kept@example.com") == 1);
  CHECK(rows("dropped@example.com") == 0);
}

TEST_CASE_METHOD(schema_fixture, "a throwing sync listener fails the publish and its transaction keeps nothing",
                 "[integration][postgres][bus]") {
  omnibus::event_bus b;
  b.add_sync_listener<user_registered>([&](omnibus::context& ctx, const user_registered& e) {
    ctx.tx().exec_params0("INSERT INTO " + table + " (email) VALUES ($1)", e.email);
  });
  b.add_sync_listener<user_registered>([](omnibus::context&, const user_registered&) {
    throw std::runtime_error("email is banned");
  });

  pqxx::work tx{conn};
  omnibus::context ctx{tx};
  CHECK_THROWS_WITH(b.publish(ctx, user_registered{"banned@example.com"}), "email is banned");
  tx.abort();  // what a publisher does when publish() throws
  CHECK(rows("banned@example.com") == 0);
}

// Transaction phases: listeners that run in the publishing process after transact()'s
// transaction commits or rolls back.
namespace {

struct phase_recorder : omnibus::observer {
  std::vector<std::string> errors;
  void on_phase_error(std::string_view event_name, omnibus::phase when, std::string_view what) override {
    errors.push_back(std::string(event_name) + " " + omnibus::to_string(when) + ": " + std::string(what));
  }
};

struct phased_fixture : schema_fixture {
  omnibus::event_bus b;
  std::vector<std::string> ran;  // what the phase listeners saw, in order
  std::shared_ptr<phase_recorder> seen = std::make_shared<phase_recorder>();
  long visible_at_commit = -1;   // rows another connection saw from the after-commit listener

  phased_fixture() {
    b.add_observer(seen);
    b.add_sync_listener<user_registered>([&](omnibus::context& ctx, const user_registered& e) {
      ctx.tx().exec_params0("INSERT INTO " + table + " (email) VALUES ($1)", e.email);
    });
    b.add_listener<user_registered>(omnibus::phase::after_commit, [&](omnibus::context& ctx, const user_registered& e) {
      CHECK(ctx.transaction() == nullptr);  // no transaction: it is over
      pqxx::connection other{test_env::database_url()};
      pqxx::read_transaction q{other};
      visible_at_commit = q.exec_params1("SELECT count(*) FROM " + table + " WHERE email = $1", e.email)[0].as<long>();
      ran.push_back("commit " + e.email + " " + ctx.meta().correlation_id);
    });
    b.add_listener<user_registered>(omnibus::phase::after_rollback, [&](omnibus::context&, const user_registered& e) {
      ran.push_back("rollback " + e.email);
    });
  }
};

}  // namespace

TEST_CASE_METHOD(phased_fixture, "after-commit listeners run once, in publish order, once the data is visible",
                 "[integration][postgres][bus][phases]") {
  const long published = b.transact(conn, [&](omnibus::context& ctx) {
    ctx.meta().correlation_id = "req-1";
    b.publish(ctx, user_registered{"a@example.com"});
    b.publish(ctx, user_registered{"b@example.com"});
    CHECK(ran.empty());  // nothing before the commit
    return 2L;
  });
  CHECK(published == 2);
  CHECK(ran == std::vector<std::string>{"commit a@example.com req-1", "commit b@example.com req-1"});
  CHECK(visible_at_commit == 1);  // another connection already saw the row
  CHECK(rows("a@example.com") == 1);
  CHECK(b.phase_errors() == 0);

  // The variant for a transaction the caller opened: transact() commits it.
  ran.clear();
  pqxx::work tx{conn};
  b.transact(tx, [&](omnibus::context& ctx) { b.publish(ctx, user_registered{"c@example.com"}); });
  CHECK(ran == std::vector<std::string>{"commit c@example.com "});
  CHECK(rows("c@example.com") == 1);
}

TEST_CASE_METHOD(phased_fixture, "a body that throws rolls back and runs the after-rollback listeners only",
                 "[integration][postgres][bus][phases]") {
  CHECK_THROWS_WITH(b.transact(conn, [&](omnibus::context& ctx) {
    b.publish(ctx, user_registered{"gone@example.com"});
    throw std::runtime_error("out of stock");
  }), "out of stock");
  CHECK(ran == std::vector<std::string>{"rollback gone@example.com"});
  CHECK(rows("gone@example.com") == 0);
}

TEST_CASE_METHOD(phased_fixture, "an after-commit listener that throws leaves the commit and the other listeners alone",
                 "[integration][postgres][bus][phases]") {
  omnibus::event_bus bus;
  std::vector<std::string> order;
  bus.add_observer(seen);
  bus.add_listener<user_registered>(omnibus::phase::after_commit, [&](omnibus::context&, const user_registered&) {
    order.push_back("first");
    throw std::runtime_error("cache unreachable");
  });
  bus.add_listener<user_registered>(omnibus::phase::after_commit, [&](omnibus::context&, const user_registered&) {
    order.push_back("second");
  });
  bus.add_sync_listener<user_registered>([&](omnibus::context& ctx, const user_registered& e) {
    ctx.tx().exec_params0("INSERT INTO " + table + " (email) VALUES ($1)", e.email);
  });
  bus.transact(conn, [&](omnibus::context& ctx) { bus.publish(ctx, user_registered{"kept@example.com"}); });
  CHECK(order == std::vector<std::string>{"first", "second"});
  CHECK(rows("kept@example.com") == 1);
  CHECK(bus.phase_errors() == 1);
  REQUIRE(seen->errors.size() == 1);
  CHECK(seen->errors[0] == "test.user_registered after_commit: cache unreachable");
}

TEST_CASE_METHOD(phased_fixture, "a connection cut during COMMIT runs neither phase and says the outcome is unknown",
                 "[integration][postgres][bus][phases]") {
  pqxx::connection victim{test_env::database_url()};
  CHECK_THROWS_AS(b.transact(victim, [&](omnibus::context& ctx) {
    b.publish(ctx, user_registered{"doubt@example.com"});
    // Another session ends this one's backend: the COMMIT that follows cannot know its outcome.
    const int pid = ctx.tx().exec1("SELECT pg_backend_pid()")[0].as<int>();
    pqxx::connection killer{test_env::database_url()};
    pqxx::nontransaction k{killer};
    CHECK(k.exec_params1("SELECT pg_terminate_backend($1)", pid)[0].as<bool>());
    REQUIRE(test_env::eventually([&] {  // gone before the COMMIT is sent
      return k.exec_params1("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid)[0].as<long>() == 0;
    }, std::chrono::seconds(10)));
  }), omnibus::commit_unknown);
  CHECK(ran.empty());
}

TEST_CASE_METHOD(phased_fixture, "phased events need a transaction transact() owns; without one they run at once",
                 "[integration][postgres][bus][phases]") {
  pqxx::work tx{conn};
  omnibus::context foreign{tx};
  CHECK_THROWS_WITH(b.publish(foreign, user_registered{"x@example.com"}),
                    Catch::Contains("run only for events published in event_bus::transact()"));
  CHECK(ran.empty());
  tx.abort();

  omnibus::event_bus local;  // no transaction at all: the publish is the commit
  std::vector<std::string> seen_now;
  local.add_listener<user_registered>(omnibus::phase::after_commit, [&](omnibus::context& ctx, const user_registered& e) {
    seen_now.push_back(e.email);
    // A publish from an after-commit listener is a fresh one (here: no transaction, so at once).
    if (e.email == "first@example.com") local.publish(ctx, user_registered{"second@example.com"});
  });
  omnibus::context none;
  local.publish(none, user_registered{"first@example.com"});
  CHECK(seen_now == std::vector<std::string>{"first@example.com", "second@example.com"});
}
