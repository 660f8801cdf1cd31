#pragma once
// The library's own tables (outbox, dead letters, inbox), created and upgraded by versioned
// migrations inside a schema of the application's choosing.

#include <string>
#include <string_view>

#include "omnibus/export.hpp"
#include "omnibus/fwd.hpp"

namespace omnibus {

/// The newest schema version this build knows.
[[nodiscard]] OMNIBUS_API int latest_schema_version() noexcept;

/// Applies every missing migration to `schema`, in one transaction, under a transaction-level
/// advisory lock taken before anything is created, so processes starting at once are safe.
/// Throws omnibus::error when the database's version is newer than this build's (refuse to start),
/// and std::invalid_argument for a schema name that is not [a-z_][a-z0-9_]*.
/// Returns the version the schema is at afterwards. Uses `conn` from the calling thread only.
OMNIBUS_API int migrate(pqxx::connection_base& conn, std::string_view schema);

/// The version `schema` is at: 0 when it has no Omnibus tables.
[[nodiscard]] OMNIBUS_API int schema_version(pqxx::connection_base& conn, std::string_view schema);

/// Every migration as one SQL script, for users who run migrations with their own tool
/// (Flyway, Liquibase, psql). Idempotent: it records versions as migrate() does.
[[nodiscard]] OMNIBUS_API std::string migrations_sql(std::string_view schema);

}  // namespace omnibus
