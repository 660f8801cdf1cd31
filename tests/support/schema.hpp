#pragma once
// Dropping a test's own schemas at teardown.

#include <exception>
#include <initializer_list>
#include <string>

#include <catch2/catch.hpp>
#include <pqxx/pqxx>

namespace test_env {

/// Drops each schema if it exists. A failure only warns: teardown must not mask the test's result.
inline void drop_schemas(pqxx::connection& db, std::initializer_list<std::string> schemas) noexcept {
  try {
    pqxx::work tx{db};
    for (const auto& s : schemas) tx.exec0("DROP SCHEMA IF EXISTS " + tx.quote_name(s) + " CASCADE");
    tx.commit();
  } catch (const std::exception& e) {
    WARN("dropping test schemas: " << e.what());
  }
}

}  // namespace test_env
