#include "omnibus/listener_control.hpp"

#include <algorithm>

#include <pqxx/pqxx>

#include "core/schema.hpp"

namespace omnibus {

namespace {
std::chrono::system_clock::time_point from_micros(std::int64_t us) {
  return std::chrono::system_clock::time_point{std::chrono::microseconds{us}};
}
}  // namespace

bool pause_listener(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                    std::string_view reason) {
  check_schema_name(schema);
  pqxx::work tx{conn};
  // xmax = 0 only for a row this statement inserted: it tells a new pause from an update.
  const bool fresh = tx.exec_params1("INSERT INTO " + detail::table_name(schema, "bus_paused") +
                                         " (listener, reason) VALUES ($1, $2) ON CONFLICT (listener) DO UPDATE SET "
                                         "reason = EXCLUDED.reason RETURNING xmax = 0",
                                     std::string(listener), std::string(reason))[0]
                         .as<bool>();
  tx.commit();
  return fresh;
}

bool resume_listener(pqxx::connection_base& conn, std::string_view schema, std::string_view listener) {
  check_schema_name(schema);
  pqxx::work tx{conn};
  const auto r = tx.exec_params("DELETE FROM " + detail::table_name(schema, "bus_paused") + " WHERE listener = $1",
                                std::string(listener));
  tx.commit();
  return r.affected_rows() > 0;
}

std::vector<paused_listener> list_paused_listeners(pqxx::connection_base& conn, std::string_view schema) {
  check_schema_name(schema);
  pqxx::read_transaction tx{conn};
  std::vector<paused_listener> out;
  for (const auto& row : tx.exec("SELECT listener, reason, (extract(epoch FROM paused_at) * 1000000)::bigint FROM " +
                                 detail::table_name(schema, "bus_paused") + " ORDER BY listener")) {
    out.push_back({row[0].as<std::string>(), row[1].as<std::string>(), from_micros(row[2].as<std::int64_t>())});
  }
  return out;
}

std::vector<listener_report> list_listener_reports(pqxx::connection_base& conn, std::string_view schema,
                                                   std::chrono::seconds fresh_within) {
  check_schema_name(schema);
  pqxx::read_transaction tx{conn};
  std::vector<listener_report> out;
  const std::string table = detail::table_name(schema, "bus_listener_states");
  if (tx.exec_params1("SELECT to_regclass($1) IS NULL", table)[0].as<bool>()) return out;  // not migrated yet
  for (const auto& row : tx.exec_params(
           "SELECT listener, worker, state, reason, (extract(epoch FROM since) * 1000000)::bigint, "
           "(extract(epoch FROM reported_at) * 1000000)::bigint FROM " + table +
               " WHERE reported_at > now() - make_interval(secs => $1) ORDER BY listener, worker",
           static_cast<double>(fresh_within.count()))) {
    out.push_back({row[0].as<std::string>(), row[1].as<std::string>(), row[2].as<std::string>(),
                   row[3].as<std::string>(), from_micros(row[4].as<std::int64_t>()), from_micros(row[5].as<std::int64_t>())});
  }
  return out;
}

std::vector<listener_minute> list_listener_minutes(pqxx::connection_base& conn, std::string_view schema, int minutes) {
  check_schema_name(schema);
  pqxx::read_transaction tx{conn};
  std::vector<listener_minute> out;
  const std::string table = detail::table_name(schema, "bus_listener_minutes");
  if (tx.exec_params1("SELECT to_regclass($1) IS NULL", table)[0].as<bool>()) return out;  // not migrated yet
  for (const auto& row : tx.exec_params(
           "SELECT listener, (extract(epoch FROM minute) * 1000000)::bigint, handled, failed, "
           "(extract(epoch FROM date_trunc('minute', now()) - minute) / 60)::int FROM " + table +
               " WHERE minute > date_trunc('minute', now()) - make_interval(mins => $1) ORDER BY listener, minute",
           std::clamp(minutes, 1, 120))) {
    out.push_back({row[0].as<std::string>(), from_micros(row[1].as<std::int64_t>()), row[2].as<std::uint64_t>(),
                   row[3].as<std::uint64_t>(), row[4].as<int>()});
  }
  return out;
}

std::vector<lost_events_report> list_lost_events(pqxx::connection_base& conn, std::string_view schema,
                                                bool unacknowledged_only) {
  check_schema_name(schema);
  pqxx::read_transaction tx{conn};
  std::vector<lost_events_report> out;
  const std::string table = detail::table_name(schema, "bus_lost_events");
  if (tx.exec_params1("SELECT to_regclass($1) IS NULL", table)[0].as<bool>()) return out;  // not migrated yet
  for (const auto& row : tx.exec(
           "SELECT id, listener, consumer, first_sequence, last_sequence, events, "
           "(extract(epoch FROM detected_at) * 1000000)::bigint, (extract(epoch FROM acknowledged_at) * 1000000)::bigint "
           "FROM " + table + (unacknowledged_only ? " WHERE acknowledged_at IS NULL" : "") + " ORDER BY id")) {
    lost_events_report r{row[0].as<std::uint64_t>(), row[1].as<std::string>(), row[2].as<std::string>(),
                         row[3].as<std::uint64_t>(), row[4].as<std::uint64_t>(), row[5].as<std::uint64_t>(),
                         from_micros(row[6].as<std::int64_t>()), std::nullopt};
    if (!row[7].is_null()) r.acknowledged_at = from_micros(row[7].as<std::int64_t>());
    out.push_back(std::move(r));
  }
  return out;
}

std::size_t acknowledge_lost_events(pqxx::connection_base& conn, std::string_view schema, std::string_view consumer) {
  check_schema_name(schema);
  pqxx::work tx{conn};
  const auto r = tx.exec_params("UPDATE " + detail::table_name(schema, "bus_lost_events") +
                                    " SET acknowledged_at = now() WHERE acknowledged_at IS NULL AND ($1 = '' OR consumer = $1)",
                                std::string(consumer));
  tx.commit();
  return static_cast<std::size_t>(r.affected_rows());
}

}  // namespace omnibus
