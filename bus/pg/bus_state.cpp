#include "omnibus/bus_state.hpp"

#include <pqxx/pqxx>

#include "core/schema.hpp"
#include "omnibus/migrations.hpp"

namespace omnibus {

bus_state read_bus_state(pqxx::connection_base& conn, std::string_view schema) {
  check_schema_name(schema);
  bus_state out;
  out.schema_version = schema_version(conn, schema);
  pqxx::read_transaction tx{conn};
  // The relay's lock is an advisory lock on a 64-bit key: pg_locks shows it as two 32-bit halves.
  // pg_locks holds every database's locks; an advisory lock is this database's only.
  const auto holder = tx.exec_params("SELECT coalesce(NULLIF(a.application_name, ''), 'PostgreSQL backend ' || "
                                     "coalesce(l.pid::text, '?')) FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = "
                                     "l.pid WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND l.database = "
                                     "(SELECT oid FROM pg_database WHERE datname = current_database()) AND "
                                     "((l.classid::bigint << 32) | l.objid::bigint) = hashtextextended($1, 0) LIMIT 1",
                                     "omnibus:relay:" + std::string(schema));
  out.relay_active = !holder.empty();
  if (out.relay_active) out.relay_holder = holder[0][0].as<std::string>();
  if (out.schema_version == 0) return out;
  const auto backlog = tx.exec1("SELECT count(*), (extract(epoch FROM now() - min(created_at)) * 1000)::bigint FROM " +
                                detail::table_name(schema, "bus_outbox"));
  out.outbox_rows = backlog[0].as<std::uint64_t>();
  if (!backlog[1].is_null()) out.outbox_oldest_age = std::chrono::milliseconds(backlog[1].as<std::int64_t>());
  for (const auto& row : tx.exec("SELECT listener, count(*) FROM " + detail::table_name(schema, "bus_dead_letters") +
                                 " GROUP BY listener ORDER BY listener")) {
    out.dead_letters.emplace_back(row[0].as<std::string>(), row[1].as<std::uint64_t>());
  }
  for (const auto& row : tx.exec("SELECT listener FROM " + detail::table_name(schema, "bus_parked") + " ORDER BY listener")) {
    out.parked.push_back(row[0].as<std::string>());
  }
  if (out.schema_version >= 13) {
    for (const auto& row : tx.exec("SELECT listener, count(*) FROM " + detail::table_name(schema, "bus_parked_keys") +
                                   " GROUP BY listener ORDER BY listener")) {
      out.parked_keys.emplace_back(row[0].as<std::string>(), row[1].as<std::uint64_t>());
    }
  }
  if (out.schema_version >= 6) {
    for (const auto& row : tx.exec("SELECT listener FROM " + detail::table_name(schema, "bus_paused") + " ORDER BY listener")) {
      out.paused.push_back(row[0].as<std::string>());
    }
  }
  if (out.schema_version >= 8) {
    for (const auto& row : tx.exec("SELECT listener, consumer, sum(events), coalesce(sum(events) FILTER (WHERE "
                                   "acknowledged_at IS NULL), 0) FROM " + detail::table_name(schema, "bus_lost_events") +
                                   " GROUP BY listener, consumer ORDER BY listener, consumer")) {
      out.lost_events.push_back({row[0].as<std::string>(), row[1].as<std::string>(), row[2].as<std::uint64_t>(),
                                 row[3].as<std::uint64_t>()});
    }
  }
  if (out.schema_version >= 9) {
    const auto sched = tx.exec1("SELECT count(*), count(*) FILTER (WHERE due_at <= now()), (extract(epoch FROM now() - "
                                "min(due_at)) * 1000)::bigint FROM " + detail::table_name(schema, "bus_scheduled"));
    out.scheduled_pending = sched[0].as<std::uint64_t>();
    out.scheduled_due = sched[1].as<std::uint64_t>();
    if (out.scheduled_due > 0 && !sched[2].is_null()) out.scheduled_overdue = std::chrono::milliseconds(sched[2].as<std::int64_t>());
  }
  return out;
}

}  // namespace omnibus
