// omnibus-worker: the worker binary. main() only wires configuration to the library.
// Today: the migrations subcommands. The run loop and the operator commands follow.

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include <CLI/CLI.hpp>
#include <pqxx/pqxx>

#include "bus/error.hpp"
#include "bus/migrations.hpp"

namespace {

// Exit codes: 0 ok, 1 runtime failure, 2 bad configuration (CLI11 uses 105-110 for parse errors).
constexpr int exit_failure = 1;
constexpr int exit_config = 2;

const char* env_or(const char* name, const char* fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? v : fallback;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"omnibus-worker: runs Omnibus async listeners, and operates the bus's tables"};
  app.require_subcommand(1);
  std::string schema = env_or("OMNIBUS_SCHEMA", "omnibus");
  std::string database_url = env_or("OMNIBUS_DATABASE_URL", "");
  app.add_option("--schema", schema, "PostgreSQL schema of the bus's tables [env OMNIBUS_SCHEMA]")->capture_default_str();

  auto* migrations = app.add_subcommand("migrations", "Print or apply the bus's database migrations");
  migrations->require_subcommand(1);
  auto* print = migrations->add_subcommand("sql", "Print every migration as one SQL script (for Flyway, psql, ...)");
  auto* apply = migrations->add_subcommand("apply", "Apply the missing migrations (processes also do this at start-up)");
  apply->add_option("--database-url", database_url, "libpq URL [env OMNIBUS_DATABASE_URL]");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    if (print->parsed()) {
      std::fputs(bus::migrations_sql(schema).c_str(), stdout);
      return 0;
    }
    if (apply->parsed()) {
      if (database_url.empty()) {
        std::fprintf(stderr, "omnibus-worker: no database: pass --database-url or set OMNIBUS_DATABASE_URL\n");
        return exit_config;
      }
      pqxx::connection conn{database_url};
      int v = bus::migrate(conn, schema);
      std::printf("schema %s is at version %d\n", schema.c_str(), v);
      return 0;
    }
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "omnibus-worker: %s\n", e.what());
    return exit_config;
  } catch (const pqxx::broken_connection&) {
    // libpq's text can echo the connection string; say what failed without it.
    std::fprintf(stderr, "omnibus-worker: cannot connect to PostgreSQL (check --database-url / OMNIBUS_DATABASE_URL)\n");
    return exit_failure;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "omnibus-worker: %s\n", e.what());
    return exit_failure;
  }
  return 0;
}
