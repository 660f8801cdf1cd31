#pragma once
// The `stats` command's screen: every listener (pending, ack pending, redelivered, dead
// letters, parked), the outbox backlog, the relay, the stream's fill. Read from the same
// sources as the metrics, so the two agree. Internal to the worker library.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "omnibus/bus_state.hpp"
#include "omnibus/event_bus.hpp"
#include "omnibus/listener_control.hpp"

namespace omnibus::detail {

struct listener_stats {
  std::string name;
  std::string consumer;
  std::uint64_t pending = 0;
  std::uint64_t ack_pending = 0;
  std::uint64_t redelivered = 0;
  /// How long the oldest event it has not acked has been in the stream; nullopt: none waits.
  std::optional<std::chrono::milliseconds> oldest_unacked_age;
  std::uint64_t dead_letters = 0;
  bool parked = false;
  std::uint64_t parked_keys = 0;  ///< a per-key listener's parked keys
  bool paused = false;
  bool consumer_found = false;  ///< false: the consumer does not exist (never provisioned?)
  std::size_t workers = 0;      ///< running workers reporting the listener
  /// The states other than running that workers report (outage, breaker_open, ...), each once.
  std::vector<std::string> flow;
};

struct stats_view {
  std::vector<listener_stats> listeners;
  bus_state db;
  std::optional<stream_state> stream;
  std::string stream_name;
};

/// Reads the servers once. Throws what the queue and libpqxx throw.
[[nodiscard]] stats_view read_stats(const event_bus& bus, pqxx::connection_base& db);
/// For a terminal: aligned columns, warnings spelled out.
/// `alert_after`: outbox rows older than this with no relay are called out (in red on a terminal).
[[nodiscard]] std::string stats_text(const stats_view& v, std::chrono::milliseconds alert_after, bool colour);
/// For scripts: one JSON object.
[[nodiscard]] std::string stats_json(const stats_view& v, std::chrono::milliseconds alert_after);

}  // namespace omnibus::detail
