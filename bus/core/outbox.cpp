#include "core/outbox.hpp"
#include "core/schema.hpp"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <tuple>
#include <vector>

#include <pqxx/pqxx>
#include <spdlog/spdlog.h>

#include "omnibus/envelope.hpp"
#include "omnibus/error.hpp"

namespace omnibus {
namespace {

std::string table(std::string_view schema) { return detail::table_name(schema, "bus_outbox"); }

std::string hex_bytea(const std::string& bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 + bytes.size() * 2);
  out += "\\x";
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

const std::string& id_text(const message& msg) {
  const std::string* id = msg.header(header::msg_id);
  if (id == nullptr) throw error("an outbox message needs a " + std::string(header::msg_id) + " header");
  return *id;
}

}  // namespace

std::string outbox_channel(std::string_view schema) { return detail::notify_channel(schema, "_outbox"); }

namespace detail {
std::string notify_channel(std::string_view schema, std::string_view suffix) {
  // PostgreSQL's identifiers, channel names included, are at most 63 bytes, and a schema may
  // use them all: a long schema is cut. Two schemas that share a prefix then share a channel,
  // which costs only a wake-up that finds nothing.
  constexpr std::size_t max_identifier = 63;
  const std::size_t keep = std::min(schema.size(), max_identifier - suffix.size());
  return std::string(schema.substr(0, keep)) + std::string(suffix);
}
}  // namespace detail

namespace detail {

std::string join_headers(const message& msg) {
  std::string out;
  for (const auto& [k, v] : msg.headers) {
    if (!out.empty()) out += "\r\n";
    out += k;
    out += ": ";
    out += v;
  }
  return out;
}

void split_headers(std::string_view text, message& out) {
  while (!text.empty()) {
    auto end = text.find("\r\n");
    std::string_view line = text.substr(0, end);
    auto colon = line.find(": ");
    if (colon == std::string_view::npos) throw error("outbox row has a malformed header line: " + std::string(line));
    out.headers.emplace_back(std::string(line.substr(0, colon)), std::string(line.substr(colon + 2)));
    text = end == std::string_view::npos ? std::string_view{} : text.substr(end + 2);
  }
}

namespace {
std::atomic<int> relays_running{0};
std::atomic<bool> warned_without_relay{false};

// Durability that cannot be silently misconfigured: outbox rows that no relay sends are events
// that never leave. Said once per process, through spdlog's default logger.
void warn_if_no_relay(std::string_view schema) {
  if (relays_running.load(std::memory_order_relaxed) > 0 || warned_without_relay.load(std::memory_order_relaxed)) return;
  if (warned_without_relay.exchange(true)) return;
  spdlog::warn("omnibus: this process writes events to the outbox of schema {} and runs no relay: another process "
               "(a worker with its relay, or an omnibus::relay) must run one, or the events never leave the outbox",
               schema);
}
}  // namespace

void relay_created() noexcept { relays_running.fetch_add(1, std::memory_order_relaxed); }
void relay_destroyed() noexcept { relays_running.fetch_sub(1, std::memory_order_relaxed); }

}  // namespace detail

namespace {

// The INSERT and the NOTIFY in one statement: one round trip.
std::string insert_sql(std::string_view schema) {
  return "WITH row AS (INSERT INTO " + table(schema) +
         " (event_id, subject, headers, body) VALUES ($1::uuid, $2, $3, $4) RETURNING 1) "
         "SELECT pg_notify($5, '') FROM row";
}

// PostgreSQL keeps 63 bytes of a statement's name: a schema's name may be that long, so the
// statement is named by a hash of it (a collision makes libpqxx refuse the second definition).
std::string statement_name(std::string_view schema) {
  std::uint64_t h = 14695981039346656037ull;  // FNV-1a
  for (unsigned char c : schema) h = (h ^ c) * 1099511628211ull;
  char name[40];
  std::snprintf(name, sizeof name, "omnibus_outbox_%016llx", static_cast<unsigned long long>(h));
  return name;
}

}  // namespace

void outbox_insert(pqxx::transaction_base& tx, std::string_view schema, const message& msg, statement_mode mode) {
  detail::warn_if_no_relay(schema);
  const pqxx::binarystring body(msg.body.data(), msg.body.size());
  if (mode == statement_mode::text) {
    tx.exec_params(insert_sql(schema), id_text(msg), msg.subject, detail::join_headers(msg), body, outbox_channel(schema));
    return;
  }
  // libpqxx keeps the definition per connection and prepares it on the server at its first
  // use there (again after a reconnect); defining it again is a lookup.
  const std::string name = statement_name(schema);
  tx.conn().prepare(name, insert_sql(schema));
  tx.exec_prepared(name, id_text(msg), msg.subject, detail::join_headers(msg), body, outbox_channel(schema));
}

void outbox_insert_batch(pqxx::transaction_base& tx, std::string_view schema, std::span<const message> msgs) {
  if (msgs.empty()) return;
  detail::warn_if_no_relay(schema);
  {
    pqxx::stream_to copy{tx, table(schema), std::vector<std::string>{"event_id", "subject", "headers", "body"}};
    for (const message& m : msgs) {
      copy << std::make_tuple(id_text(m), m.subject, detail::join_headers(m), hex_bytea(m.body));
    }
    copy.complete();
  }
  tx.exec_params("SELECT pg_notify($1, '')", outbox_channel(schema));
}

}  // namespace omnibus
