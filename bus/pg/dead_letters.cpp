#include "omnibus/dead_letters.hpp"

#include <pqxx/pqxx>

#include "core/outbox.hpp"
#include "core/schema.hpp"
#include "omnibus/text.hpp"

namespace omnibus {
namespace {

std::string t(std::string_view schema, const char* table) { return detail::table_name(schema, table); }

std::chrono::system_clock::time_point from_epoch_us(std::int64_t us) {
  return std::chrono::system_clock::time_point{std::chrono::microseconds{us}};
}

dead_letter from_row(const pqxx::row& r) {
  dead_letter dl;
  dl.id = r[0].as<std::int64_t>();
  dl.listener = r[1].as<std::string>();
  dl.event_id = r[2].as<std::string>();
  dl.event_name = r[3].is_null() ? "" : r[3].as<std::string>();
  dl.msg.subject = r[4].as<std::string>();
  pqxx::binarystring headers{r[5]};
  detail::split_headers(std::string_view(headers.get(), headers.size()), dl.msg);
  pqxx::binarystring body{r[6]};
  dl.msg.body.assign(body.get(), body.size());
  if (!r[13].is_null()) dl.raw_header_block = pqxx::binarystring{r[13]}.str();
  dl.reason = r[7].as<std::string>();
  dl.error = r[8].as<std::string>();
  dl.attempts = r[9].as<int>();
  dl.first_failed_at = from_epoch_us(r[10].as<std::int64_t>());
  dl.last_failed_at = from_epoch_us(r[11].as<std::int64_t>());
  dl.stream_sequence = r[12].is_null() ? 0 : r[12].as<std::uint64_t>();
  return dl;
}

std::string select_columns(std::string_view schema) {
  return "SELECT id, listener, event_id, event_name, subject, headers, body, reason, error, attempts, "
         "(extract(epoch FROM first_failed_at) * 1000000)::bigint, (extract(epoch FROM last_failed_at) * 1000000)::bigint, "
         "stream_sequence, raw_headers FROM " +
         t(schema, "bus_dead_letters");
}

}  // namespace

void record_failure(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                    std::string_view event_id, std::string_view error) {
  pqxx::work tx{conn};
  tx.exec_params0("INSERT INTO " + t(schema, "bus_failures") +
                      " (listener, event_id, last_error) VALUES ($1, $2, $3) "
                      "ON CONFLICT (listener, event_id) DO UPDATE SET failures = bus_failures.failures + 1, "
                      "last_failed_at = now(), last_error = EXCLUDED.last_error",
                  std::string(listener), std::string(event_id), std::string(error));
  tx.commit();
}

void clear_failure(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                   std::string_view event_id) {
  pqxx::nontransaction tx{conn};
  tx.exec_params0("DELETE FROM " + t(schema, "bus_failures") + " WHERE listener = $1 AND event_id = $2",
                  std::string(listener), std::string(event_id));
}

void write_dead_letter(pqxx::connection_base& conn, std::string_view schema, const dead_letter& dl) {
  pqxx::work tx{conn};
  tx.exec_params0(
      "WITH history AS (DELETE FROM " + t(schema, "bus_failures") +
          " WHERE listener = $1 AND event_id = $2 RETURNING first_failed_at) "
          "INSERT INTO " + t(schema, "bus_dead_letters") +
          " (listener, event_id, event_name, subject, headers, body, reason, error, attempts, first_failed_at, "
          "last_failed_at, stream_sequence, raw_headers) "
          "VALUES ($1, $2, NULLIF($3, ''), $4, $5, $6, $7, $8, $9, coalesce((SELECT first_failed_at FROM history), now()), "
          "now(), $10, NULLIF($11, ''::bytea)) "
          "ON CONFLICT (listener, event_id) DO UPDATE SET attempts = greatest(bus_dead_letters.attempts, EXCLUDED.attempts), "
          "reason = EXCLUDED.reason, error = EXCLUDED.error, last_failed_at = now()",
      dl.listener, to_text(dl.event_id), to_text(dl.event_name), to_text(dl.msg.subject),
      pqxx::binarystring(detail::join_headers(dl.msg)), pqxx::binarystring(dl.msg.body.data(), dl.msg.body.size()),
      dl.reason, to_text(dl.error), dl.attempts, static_cast<std::int64_t>(dl.stream_sequence),
      pqxx::binarystring(dl.raw_header_block));
  tx.commit();
}

std::vector<dead_letter> list_dead_letters(pqxx::connection_base& conn, std::string_view schema,
                                           std::string_view listener, std::string_view event_name, std::size_t limit) {
  pqxx::read_transaction tx{conn};
  auto rows = tx.exec_params(select_columns(schema) +
                                 " WHERE ($1 = '' OR listener = $1) AND ($2 = '' OR event_name = $2) ORDER BY id DESC LIMIT $3",
                             std::string(listener), std::string(event_name), static_cast<std::int64_t>(limit));
  std::vector<dead_letter> out;
  out.reserve(rows.size());
  for (const auto& r : rows) out.push_back(from_row(r));
  return out;
}

std::optional<dead_letter> find_dead_letter(pqxx::connection_base& conn, std::string_view schema, std::int64_t id) {
  pqxx::read_transaction tx{conn};
  auto rows = tx.exec_params(select_columns(schema) + " WHERE id = $1", id);
  if (rows.empty()) return std::nullopt;
  return from_row(rows[0]);
}

bool discard_dead_letter(pqxx::connection_base& conn, std::string_view schema, std::int64_t id) {
  pqxx::work tx{conn};
  auto r = tx.exec_params("DELETE FROM " + t(schema, "bus_dead_letters") + " WHERE id = $1", id);
  tx.commit();
  return r.affected_rows() > 0;
}

std::vector<parked_event> list_parked(pqxx::connection_base& conn, std::string_view schema) {
  pqxx::read_transaction tx{conn};
  std::vector<parked_event> out;
  for (const auto& r : tx.exec("SELECT listener, event_id, coalesce(event_name, ''), coalesce(stream_sequence, 0), error, "
                               "attempts, coalesce(action, '') FROM " + t(schema, "bus_parked") + " ORDER BY listener")) {
    out.push_back({r[0].as<std::string>(), r[1].as<std::string>(), r[2].as<std::string>(), r[3].as<std::uint64_t>(),
                   r[4].as<std::string>(), r[5].as<int>(), r[6].as<std::string>()});
  }
  return out;
}

std::optional<parked_event> find_parked(pqxx::connection_base& conn, std::string_view schema, std::string_view listener) {
  for (auto& p : list_parked(conn, schema)) {
    if (p.listener == listener) return p;
  }
  return std::nullopt;
}

void park(pqxx::connection_base& conn, std::string_view schema, const parked_event& p) {
  pqxx::work tx{conn};
  tx.exec_params0("INSERT INTO " + t(schema, "bus_parked") +
                      " (listener, event_id, event_name, stream_sequence, error, attempts) VALUES ($1, $2, NULLIF($3, ''), $4, $5, $6) "
                      "ON CONFLICT (listener) DO UPDATE SET event_id = EXCLUDED.event_id, event_name = EXCLUDED.event_name, "
                      "stream_sequence = EXCLUDED.stream_sequence, error = EXCLUDED.error, attempts = EXCLUDED.attempts, "
                      "parked_at = now(), action = NULL",
                  p.listener, p.event_id, p.event_name, static_cast<std::int64_t>(p.stream_sequence), p.error, p.attempts);
  tx.commit();
}

bool request_parked_action(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                           std::string_view action) {
  pqxx::work tx{conn};
  auto r = tx.exec_params("UPDATE " + t(schema, "bus_parked") + " SET action = $2 WHERE listener = $1",
                          std::string(listener), std::string(action));
  tx.commit();
  return r.affected_rows() > 0;
}

void unpark(pqxx::connection_base& conn, std::string_view schema, std::string_view listener) {
  pqxx::nontransaction tx{conn};
  tx.exec_params0("DELETE FROM " + t(schema, "bus_parked") + " WHERE listener = $1", std::string(listener));
}

}  // namespace omnibus
