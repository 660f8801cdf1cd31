#include "omnibus/schedules.hpp"

#include <stdexcept>

#include <pqxx/pqxx>

#include "omnibus/envelope.hpp"
#include "core/outbox.hpp"
#include "core/scheduled.hpp"
#include "core/schema.hpp"

namespace omnibus {
namespace {

using sys_time = std::chrono::system_clock::time_point;

sys_time at(const pqxx::field& f) { return sys_time(std::chrono::microseconds(f.as<long long>())); }
std::optional<sys_time> maybe_at(const pqxx::field& f) {
  if (f.is_null()) return std::nullopt;
  return at(f);
}

// The columns every scheduled_event has, times as epoch microseconds.
constexpr const char* scheduled_columns =
    "id::text, event_name, (extract(epoch FROM due_at) * 1000000)::bigint, "
    "(extract(epoch FROM created_at) * 1000000)::bigint, coalesce(unique_key, ''), subject";

scheduled_event read_scheduled(const pqxx::row& r) {
  scheduled_event e;
  e.id = event_id::parse(r[0].c_str());
  e.event_name = r[1].as<std::string>();
  e.due_at = at(r[2]);
  e.created_at = at(r[3]);
  e.unique_key = r[4].as<std::string>();
  e.subject = r[5].as<std::string>();
  return e;
}

}  // namespace

std::vector<scheduled_event> list_scheduled(pqxx::connection_base& conn, std::string_view schema,
                                            const scheduled_filter& filter) {
  check_schema_name(schema);
  pqxx::read_transaction tx{conn};
  const pqxx::result rows = tx.exec_params(
      detail::with_schema(std::string("SELECT ") + scheduled_columns +
                              " FROM {s}.bus_scheduled WHERE ($1::bigint IS NULL OR due_at < timestamptz 'epoch' + "
                              "$1::bigint * interval '1 microsecond') AND ($2 = '' OR unique_key = $2) "
                              "ORDER BY due_at, id LIMIT $3",
                          schema),
      filter.due_before ? std::optional<long long>(detail::epoch_micros(*filter.due_before)) : std::nullopt,
      filter.unique_key, static_cast<long long>(filter.limit));
  std::vector<scheduled_event> out;
  out.reserve(rows.size());
  for (const auto& r : rows) out.push_back(read_scheduled(r));
  return out;
}

scheduled_counts count_scheduled(pqxx::connection_base& conn, std::string_view schema) {
  check_schema_name(schema);
  pqxx::read_transaction tx{conn};
  const pqxx::row r = tx.exec1(detail::with_schema(
      "SELECT count(*), count(*) FILTER (WHERE due_at <= clock_timestamp()) FROM {s}.bus_scheduled", schema));
  return {r[0].as<std::uint64_t>(), r[1].as<std::uint64_t>()};
}

std::optional<scheduled_event> find_scheduled(pqxx::connection_base& conn, std::string_view schema, const event_id& id) {
  check_schema_name(schema);
  pqxx::read_transaction tx{conn};
  const pqxx::result rows = tx.exec_params(
      detail::with_schema(std::string("SELECT ") + scheduled_columns + ", headers, body FROM {s}.bus_scheduled WHERE id = $1::uuid",
                          schema),
      id.to_string());
  if (rows.empty()) return std::nullopt;
  scheduled_event e = read_scheduled(rows[0]);
  e.headers = rows[0][6].as<std::string>();
  const pqxx::binarystring body{rows[0][7]};
  e.body.assign(body.get(), body.size());
  return e;
}

std::vector<recurring_state> list_recurring(pqxx::connection_base& conn, std::string_view schema) {
  check_schema_name(schema);
  pqxx::read_transaction tx{conn};
  const pqxx::result rows = tx.exec(detail::with_schema(
      "SELECT name, expression, zone, event_name, paused, (extract(epoch FROM next_fire_at) * 1000000)::bigint, "
      "(extract(epoch FROM last_occurrence) * 1000000)::bigint, (extract(epoch FROM last_fired_at) * 1000000)::bigint, "
      "coalesce(last_event_id::text, ''), coalesce(last_result, '') FROM {s}.bus_recurring ORDER BY name",
      schema));
  std::vector<recurring_state> out;
  for (const auto& r : rows) {
    recurring_state s;
    s.name = r[0].as<std::string>();
    s.expression = r[1].as<std::string>();
    s.zone = r[2].as<std::string>();
    s.event_name = r[3].as<std::string>();
    s.paused = r[4].as<bool>();
    s.next_fire_at = maybe_at(r[5]);
    s.last_occurrence = maybe_at(r[6]);
    s.last_fired_at = maybe_at(r[7]);
    s.last_event_id = r[8].as<std::string>();
    s.last_result = r[9].as<std::string>();
    out.push_back(std::move(s));
  }
  return out;
}

bool set_recurring_paused(pqxx::connection_base& conn, std::string_view schema, std::string_view name, bool paused) {
  check_schema_name(schema);
  pqxx::work tx{conn};
  const auto n = tx.exec_params(detail::with_schema("UPDATE {s}.bus_recurring SET paused = $2, updated_at = now() "
                                                    "WHERE name = $1",
                                                    schema),
                                std::string(name), paused)
                     .affected_rows();
  tx.commit();
  return n > 0;
}

event_id trigger_recurring(pqxx::connection_base& conn, event_bus& bus, std::string_view name) {
  const recurring_schedule* found = nullptr;
  for (const recurring_schedule& r : bus.schedules()) found = r.name == name ? &r : found;
  if (found == nullptr) {
    std::string names;
    for (const recurring_schedule& r : bus.schedules()) names += (names.empty() ? "" : ", ") + r.name;
    throw std::invalid_argument("no recurring schedule named '" + std::string(name) + "' in this build" +
                                (names.empty() ? std::string(" (it has none)") : "; its schedules: " + names));
  }
  const std::string& schema = bus.options().schema;
  const envelope env = found->make(std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::now()));
  const message msg = encode(env, bus.options().stream.subject_prefix, bus.options().max_body_bytes);
  pqxx::work tx{conn};
  tx.exec_params0(detail::with_schema("INSERT INTO {s}.bus_recurring_fired (name, occurrence, event_id, manual) "
                                      "VALUES ($1, clock_timestamp(), $2::uuid, true)",
                                      schema),
                  std::string(name), env.id.to_string());
  outbox_insert(tx, schema, msg);
  tx.exec_params0(detail::with_schema("UPDATE {s}.bus_recurring SET last_fired_at = clock_timestamp(), last_event_id = "
                                      "$2::uuid, last_result = 'triggered by hand', updated_at = now() WHERE name = $1",
                                      schema),
                  std::string(name), env.id.to_string());
  tx.commit();
  return env.id;
}

}  // namespace omnibus
