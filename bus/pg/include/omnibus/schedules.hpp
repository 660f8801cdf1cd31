#pragma once
// Operator access to scheduled and recurring events (omnibus-worker schedules ...): list, show,
// pause, resume, trigger. Cancelling and rescheduling are event_bus::cancel/reschedule.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "omnibus/event_bus.hpp"
#include "omnibus/export.hpp"
#include "omnibus/fwd.hpp"

namespace omnibus {

/// A pending scheduled event, as stored in `<schema>.bus_scheduled`.
struct OMNIBUS_API scheduled_event {
  event_id id;             ///< the schedule's id and the event's
  std::string event_name;  ///< E::name
  std::chrono::system_clock::time_point due_at;      ///< when it fires
  std::chrono::system_clock::time_point created_at;  ///< when it was scheduled
  std::string unique_key;  ///< empty: none
  std::string subject;     ///< where it will be published
  std::string headers;     ///< only from find_scheduled(): "Name: value" lines joined by CR LF
  std::string body;        ///< only from find_scheduled(): the msgpack body
};

/// Which pending scheduled events list_scheduled() returns.
struct OMNIBUS_API scheduled_filter {
  std::optional<std::chrono::system_clock::time_point> due_before;  ///< due strictly before this
  std::string unique_key;  ///< empty: any
  std::size_t limit = 100; ///< the most rows returned, soonest first
};

/// Pending scheduled events, soonest first. Throws what pqxx throws.
[[nodiscard]] OMNIBUS_API std::vector<scheduled_event> list_scheduled(pqxx::connection_base& conn, std::string_view schema,
                                                                      const scheduled_filter& filter = {});
/// How many scheduled events are pending, and how many of them are due (late) now.
struct OMNIBUS_API scheduled_counts {
  std::uint64_t pending = 0;  ///< rows in bus_scheduled
  std::uint64_t due = 0;      ///< of those, due by the database's clock (waiting for a scheduler)
};
/// Counts the pending scheduled events.
[[nodiscard]] OMNIBUS_API scheduled_counts count_scheduled(pqxx::connection_base& conn, std::string_view schema);
/// One pending scheduled event with its headers and body, or nullopt (fired, cancelled, unknown).
[[nodiscard]] OMNIBUS_API std::optional<scheduled_event> find_scheduled(pqxx::connection_base& conn,
                                                                        std::string_view schema, const event_id& id);

/// A recurring schedule as the workers registered it in `<schema>.bus_recurring`.
struct OMNIBUS_API recurring_state {
  std::string name;        ///< the schedule's name
  std::string expression;  ///< its cron expression
  std::string zone;        ///< its time zone
  std::string event_name;  ///< the event it publishes
  bool paused = false;     ///< paused by an operator
  std::optional<std::chrono::system_clock::time_point> next_fire_at;     ///< the next occurrence; none: never
  std::optional<std::chrono::system_clock::time_point> last_occurrence;  ///< the last occurrence fired
  std::optional<std::chrono::system_clock::time_point> last_fired_at;    ///< when it was fired or triggered
  std::string last_event_id;  ///< the last event it published; empty: none yet
  std::string last_result;    ///< "fired", "triggered by hand", "...; skipped N missed" or "error: ..."
};

/// Every recurring schedule a worker registered, by name. Throws what pqxx throws.
[[nodiscard]] OMNIBUS_API std::vector<recurring_state> list_recurring(pqxx::connection_base& conn, std::string_view schema);

/// Pauses (or resumes) recurring schedule `name` for every worker: a paused schedule fires
/// nothing; on resume its missed_policy decides what it fires for the time it was paused.
/// False when no worker has registered that name yet.
OMNIBUS_API bool set_recurring_paused(pqxx::connection_base& conn, std::string_view schema, std::string_view name,
                                      bool paused);

/// Fires recurring schedule `name` of `bus` once, now, outside its expression: its event goes
/// into the outbox (the relay sends it) and is recorded as a manual occurrence. Returns the
/// event's id. Throws std::invalid_argument when `bus` has no schedule of that name, or what
/// the schedule's make() or pqxx throws.
OMNIBUS_API event_id trigger_recurring(pqxx::connection_base& conn, event_bus& bus, std::string_view name);

}  // namespace omnibus
