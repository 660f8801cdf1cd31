#pragma once
// What PostgreSQL holds about a bus, for operators: the outbox backlog, whether a relay is
// active, dead letters, parked listeners and keys. Read by the worker's metrics and its `stats`
// command; cheap (a few aggregate queries in one read transaction).

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "omnibus/export.hpp"
#include "omnibus/fwd.hpp"

namespace omnibus {

/// One schema's tables, summed up.
struct OMNIBUS_API bus_state {
  int schema_version = 0;                 ///< 0: not migrated
  std::uint64_t outbox_rows = 0;          ///< events written, not yet sent to the stream
  /// How long the oldest outbox row has waited, by the database's clock; nullopt: none waits.
  std::optional<std::chrono::milliseconds> outbox_oldest_age;
  bool relay_active = false;              ///< some session holds the schema's relay lock
  /// Who holds it: "omnibus relay <host>:<pid>" (the relay names its session), else the backend's pid.
  std::string relay_holder;
  /// Dead letters per listener (listeners with none are absent), by listener name.
  std::vector<std::pair<std::string, std::uint64_t>> dead_letters;
  std::vector<std::string> parked;        ///< the listeners parked at an event, by name
  /// Parked keys per per-key listener (listeners with none are absent), by listener name.
  std::vector<std::pair<std::string, std::uint64_t>> parked_keys;
  std::vector<std::string> paused;        ///< the listeners an operator paused, by name
  /// Events that left the stream before their listener handled them, per consumer (those with
  /// none are absent), by name: all recorded, and those not yet acknowledged.
  struct lost {
    std::string listener;            ///< the async listener's name
    std::string consumer;            ///< its durable consumer, "<group>_<listener>" (per-key: "..._k<n>")
    std::uint64_t events = 0;        ///< every recorded loss
    std::uint64_t unacknowledged = 0;  ///< losses no operator acknowledged yet
  };
  std::vector<lost> lost_events;  ///< by listener name
  std::uint64_t scheduled_pending = 0;  ///< scheduled events not yet fired (bus_scheduled)
  std::uint64_t scheduled_due = 0;      ///< of those, due by the database's clock: waiting for a scheduler
  /// How late the most overdue of them is; nullopt: none is due. Growing: no scheduler runs.
  std::optional<std::chrono::milliseconds> scheduled_overdue;

  /// Whether outbox rows have waited longer than `after` while no process holds the relay
  /// lock: events are written and nothing sends them (a worker with a relay must run).
  [[nodiscard]] bool unrelayed(std::chrono::milliseconds after) const noexcept {
    return !relay_active && outbox_oldest_age && *outbox_oldest_age > after;
  }
};

/// Reads `schema`'s state in one read-only transaction. A schema that was never migrated reads
/// as version 0 and empty. Throws what libpqxx throws (the database is unreachable, ...).
[[nodiscard]] OMNIBUS_API bus_state read_bus_state(pqxx::connection_base& conn, std::string_view schema);

}  // namespace omnibus
