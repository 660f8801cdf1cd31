#pragma once
// Scheduled and recurring events (README "Scheduling", DESIGN decision 19). A scheduled event
// is a row in <schema>.bus_scheduled until it is due; then a scheduler (in every worker)
// moves it into the outbox in the transaction that deletes it, and the relay publishes it.

#include <chrono>
#include <functional>
#include <string>
#include <string_view>

#include "omnibus/cron.hpp"
#include "omnibus/envelope.hpp"
#include "omnibus/export.hpp"

namespace omnibus {

/// How one scheduled event is made unique.
struct OMNIBUS_API schedule_options {
  /// Empty: none. Otherwise at most one pending (scheduled and not yet fired or cancelled)
  /// event has this key: scheduling another returns the pending one's id and schedules
  /// nothing. A database constraint enforces it, so two concurrent publishers never both win.
  /// Once the event fires or is cancelled, the key is free again. At most 200 bytes.
  std::string unique_key;
};

/// What a recurring schedule does with occurrences that passed while no worker ran it.
enum class missed_policy {
  latest,  ///< fire the latest missed occurrence once, never a burst (the default)
  skip,    ///< fire the latest due occurrence only while it is at most missed_window late; never more than one
  all,     ///< fire every missed occurrence at most missed_window late, in order (1000 at most at once)
};

/// How a recurring schedule runs.
struct OMNIBUS_API recurring_options {
  missed_policy missed = missed_policy::latest;       ///< what to do with occurrences missed
  std::chrono::seconds missed_window{std::chrono::minutes(1)};  ///< for skip and all: how late is still fired
};

/// A recurring schedule as the scheduler runs it: type-erased, making its event inside.
struct OMNIBUS_API recurring_schedule {
  std::string name;        ///< unique in the bus, [A-Za-z0-9_-]
  omnibus::cron when;      ///< the cron expression and its time zone
  std::string event_name;  ///< E::name
  recurring_options options;  ///< as given to add_schedule()
  /// Makes one occurrence's event: calls the user's function (with the occurrence, when it
  /// takes one) and wraps the event in a fresh envelope. Runs on the scheduler's thread (or
  /// the operator's, for schedules trigger). Throws what the user's function throws.
  std::function<envelope(cron::time_point occurrence)> make;
};

/// `t` as an ISO 8601 UTC instant: "2026-11-29T09:00:00Z", with ".uuuuuuZ" when it has
/// fractional seconds.
[[nodiscard]] OMNIBUS_API std::string to_iso8601(std::chrono::system_clock::time_point t);

/// Parses "YYYY-MM-DDTHH:MM[:SS[.fraction]]" followed by "Z" or an offset "+HH:MM"/"-HH:MM"
/// (a space may stand for the T). Throws std::invalid_argument naming what is wrong.
[[nodiscard]] OMNIBUS_API std::chrono::system_clock::time_point parse_iso8601(std::string_view text);

}  // namespace omnibus
