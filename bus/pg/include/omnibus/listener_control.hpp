#pragma once
// Pausing a listener across every worker: a row in <schema>.bus_paused, which each worker
// reads every worker_options::control_poll. A paused listener fetches nothing; its events wait
// in the stream (for as long as the stream keeps them) and are handled after the resume.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "omnibus/export.hpp"
#include "omnibus/fwd.hpp"

namespace omnibus {

/// A listener an operator paused.
struct OMNIBUS_API paused_listener {
  std::string listener;                            ///< the async listener's name
  std::string reason;                              ///< what the operator said
  std::chrono::system_clock::time_point since{};   ///< when it was paused
};

/// Pauses `listener` in every worker of the schema (within their control poll). False when it
/// was paused already (the reason is then updated).
OMNIBUS_API bool pause_listener(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                                std::string_view reason);
/// Resumes it. False when it was not paused.
OMNIBUS_API bool resume_listener(pqxx::connection_base& conn, std::string_view schema, std::string_view listener);
/// Every paused listener, by name.
[[nodiscard]] OMNIBUS_API std::vector<paused_listener> list_paused_listeners(pqxx::connection_base& conn,
                                                                           std::string_view schema);

/// What one running worker reports of one listener (each worker rewrites its rows every
/// worker_options::control_poll, and deletes them when it stops).
struct OMNIBUS_API listener_report {
  std::string listener;  ///< the async listener's name
  std::string worker;    ///< host:pid
  /// running, paused, outage, breaker_open, breaker_half_open or rate_limited
  std::string state;
  std::string reason;                                   ///< empty while running
  std::chrono::system_clock::time_point since{};        ///< in this state since
  std::chrono::system_clock::time_point reported_at{};  ///< by the database's clock
  /// Handler calls that handled their event since this worker's previous report (added to
  /// `bus_listener_minutes`; list_listener_reports leaves it 0).
  std::uint64_t handled = 0;
  /// Handler calls that failed (retried, dead-lettered, parked, timed out) since the previous report.
  std::uint64_t failed = 0;
};

/// One listener's handler calls in one minute, summed over every worker.
struct OMNIBUS_API listener_minute {
  std::string listener;                            ///< the async listener's name
  std::chrono::system_clock::time_point minute{};  ///< the minute's start
  std::uint64_t handled = 0;                       ///< calls that handled their event
  std::uint64_t failed = 0;                        ///< calls that failed
  /// Whole minutes before the database's current minute (0: the current one, still filling).
  int minutes_ago = 0;
};

/// The last `minutes` minutes (the current one included, at most 120 are kept) of every
/// listener that had calls, by listener then minute; none before the schema's migration 12.
[[nodiscard]] OMNIBUS_API std::vector<listener_minute> list_listener_minutes(pqxx::connection_base& conn,
                                                                           std::string_view schema, int minutes = 60);

/// The reports of workers heard from within `fresh_within` (older ones are a killed worker's
/// leftovers), by listener then worker; none before the schema's migration 7.
[[nodiscard]] OMNIBUS_API std::vector<listener_report> list_listener_reports(pqxx::connection_base& conn,
                                                                           std::string_view schema,
                                                                           std::chrono::seconds fresh_within);

/// Events of a listener that left the stream before it handled them (max_age, the stream's
/// limits): found by the workers' loss check, kept until an operator acknowledges them.
struct OMNIBUS_API lost_events_report {
  std::uint64_t id = 0;       ///< the row's id
  std::string listener;       ///< the async listener's name
  std::string consumer;       ///< its durable consumer
  std::uint64_t first_sequence = 0;  ///< the first of the stream sequences the events were among
  std::uint64_t last_sequence = 0;   ///< the last of them
  std::uint64_t events = 0;   ///< how many of the listener's events
  std::chrono::system_clock::time_point detected_at{};  ///< when a worker's loss check found them
  std::optional<std::chrono::system_clock::time_point> acknowledged_at;  ///< nullopt: not yet
};

/// Every recorded loss, oldest first; `unacknowledged_only` leaves out the acknowledged ones.
/// None before the schema's migration 8.
[[nodiscard]] OMNIBUS_API std::vector<lost_events_report> list_lost_events(pqxx::connection_base& conn,
                                                                         std::string_view schema,
                                                                         bool unacknowledged_only);
/// Marks the losses of consumer `consumer` ("<group>_<listener>"; every consumer's when empty)
/// acknowledged: /readyz stops failing for them. The rows stay, and omnibus_events_lost keeps
/// counting them. Returns how many rows it marked.
OMNIBUS_API std::size_t acknowledge_lost_events(pqxx::connection_base& conn, std::string_view schema,
                                                std::string_view consumer);

}  // namespace omnibus
