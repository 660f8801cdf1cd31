// Sync listeners write through the publisher's transaction: their rows commit or roll back
// with the publisher's.

#include <stdexcept>
#include <string>

#include <catch2/catch.hpp>
#include <pqxx/pqxx>

#include "omnibus/event.hpp"
#include "omnibus/event_bus.hpp"
#include "support/schema.hpp"
#include "support/test_env.hpp"

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
