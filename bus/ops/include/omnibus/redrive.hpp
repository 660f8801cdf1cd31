#pragma once
// Redrives: dead letters retried or discarded in bulk, by filter, at a chosen rate. A redrive
// is a job in PostgreSQL: the matching dead letters are snapshotted when it is asked for (one
// that arrives later is not swept in), each one's fate is a row, and any worker (or the CLI)
// carries it on from where it stopped. The rows are the audit: who asked, when, for what,
// and what became of each dead letter.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stop_token>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "omnibus/event_bus.hpp"
#include "omnibus/dead_letters.hpp"
#include "omnibus/export.hpp"
#include "omnibus/fwd.hpp"

namespace spdlog {
class logger;
}

namespace omnibus {

/// Which dead letters: every set field must match (all empty: every dead letter).
struct OMNIBUS_API dead_letter_filter {
  std::string listener;    ///< exactly this listener's
  std::string event_name;  ///< exactly this event name's
  std::string error_like;  ///< the error text matches this SQL LIKE pattern ("%timeout%")
  std::optional<std::chrono::system_clock::time_point> since;  ///< last failed at or after
  std::optional<std::chrono::system_clock::time_point> until;  ///< last failed before
  /// Only these dead letters (ids); empty: any. At most 1,000 (std::invalid_argument beyond).
  std::vector<std::int64_t> ids;

  /// The filter as people read it: "listener=loyalty error~%timeout%", or "every dead letter".
  [[nodiscard]] std::string describe() const;
};

/// One page of the dead letters matching a filter, newest (highest id) first.
struct OMNIBUS_API dead_letter_page {
  /// Each without its body and headers (find_dead_letter has them); error cut at 300 bytes.
  std::vector<dead_letter> rows;
  bool more = false;  ///< more match below the last row's id
};

/// The dead letters matching `filter` with ids below `before_id` (none: from the newest), at
/// most `limit` (1 to 1,000; std::invalid_argument otherwise). Pages are read by id, so
/// following `rows.back().id` visits each dead letter once even while new ones arrive.
[[nodiscard]] OMNIBUS_API dead_letter_page list_dead_letter_page(pqxx::connection_base& conn, std::string_view schema,
                                                                 const dead_letter_filter& filter,
                                                                 std::optional<std::int64_t> before_id, std::size_t limit);

/// How many dead letters match now, leaving out those still pending in a running or paused
/// redrive (start_redrive leaves them out too). A dry run of a redrive.
[[nodiscard]] OMNIBUS_API std::uint64_t count_dead_letters(pqxx::connection_base& conn, std::string_view schema,
                                                           const dead_letter_filter& filter);

/// What a redrive does with each dead letter.
enum class redrive_action {
  retry,    ///< run it through its own listener alone (retry_dead_letter)
  discard,  ///< delete it
};

/// A redrive to start.
struct OMNIBUS_API redrive_request {
  dead_letter_filter filter;  ///< which dead letters (matched once, when it starts)
  redrive_action action = redrive_action::retry;  ///< what to do with each
  double rate = 0;  ///< dead letters per second; 0: as fast as they go
  std::string requested_by;  ///< who asks (a user name, "dashboard:alice"): kept in the audit
};

/// A redrive and its progress.
struct OMNIBUS_API redrive_status {
  std::int64_t id = 0;  ///< assigned by the database
  redrive_action action = redrive_action::retry;  ///< what it does with each dead letter
  std::string filter;  ///< as dead_letter_filter::describe() put it
  double rate = 0;     ///< dead letters per second; 0: as fast as they go
  std::string requested_by;  ///< who asked for it
  std::string state;  ///< running, paused, cancelled or done
  std::string updated_by;  ///< who made the last state change
  std::uint64_t total = 0;    ///< dead letters in its snapshot
  std::uint64_t pending = 0;  ///< not yet taken (or taken by a run that stopped and will go on)
  std::uint64_t ok = 0;       ///< retried and handled, or discarded: the dead letter is gone
  std::uint64_t failed = 0;   ///< retried and failed again: the dead letter stays, one attempt more
  std::uint64_t gone = 0;     ///< no longer there when its turn came (retried or discarded meanwhile)
  /// A run stopped (killed) while retrying it, for a listener without an inbox: it is not run a
  /// second time, in case its effects were made; its dead letter stays for a retry by hand.
  std::uint64_t interrupted = 0;
  /// In run_redrive's result: another process was running it, so this one did not.
  bool busy = false;
  /// In run_redrive's result: dead letters of listeners this build does not have, left pending
  /// for a worker that has them.
  std::uint64_t skipped = 0;
  std::chrono::system_clock::time_point created_at{};  ///< when it was asked for
  std::optional<std::chrono::system_clock::time_point> finished_at;  ///< when it was done or cancelled
};

/// "retry" or "discard".
[[nodiscard]] OMNIBUS_API std::string_view to_string(redrive_action a) noexcept;

/// Starts a redrive: snapshots the dead letters matching the filter and records the request,
/// in one transaction. It is then `running`: a worker (or run_redrive) carries it out. A dead
/// letter still pending in another running or paused redrive is left out: it belongs to that
/// one. Throws std::invalid_argument for a rate that is not 0 or within [0.001, 1,000,000], or
/// an empty requested_by.
[[nodiscard]] OMNIBUS_API redrive_status start_redrive(pqxx::connection_base& conn, std::string_view schema,
                                                       const redrive_request& request);

/// One redrive, or nullopt.
[[nodiscard]] OMNIBUS_API std::optional<redrive_status> find_redrive(pqxx::connection_base& conn, std::string_view schema,
                                                                     std::int64_t id);
/// The newest redrives first.
[[nodiscard]] OMNIBUS_API std::vector<redrive_status> list_redrives(pqxx::connection_base& conn, std::string_view schema,
                                                                    std::size_t limit = 20);

/// Pauses, resumes or cancels a redrive ("paused", "running", "cancelled"); `by` goes into the
/// audit. A run in progress sees it within a quarter of a second, or once the dead letter it is
/// retrying returns. Throws omnibus::error for an unknown redrive, one already done or
/// cancelled, or another state.
OMNIBUS_API redrive_status set_redrive_state(pqxx::connection_base& conn, std::string_view schema, std::int64_t id,
                                             std::string_view state, std::string_view by);

/// Carries out redrive `id` in this process until it is done, paused or cancelled, or `stop`
/// is requested, at its rate, oldest first: retries run each dead letter through its own
/// listener alone (retry_dead_letter), discards delete it. Only one run at a time per redrive,
/// across processes (a PostgreSQL advisory lock on `conn`'s session): another returns at once
/// with `busy`. Dead letters of listeners this build lacks stay pending (`skipped`). A dead
/// letter a killed run had started is run again only when that cannot repeat its effects (its
/// listener has an inbox, or the action is discard); otherwise it is `interrupted`. Should
/// `conn` reconnect (losing the lock with its session), the run stops before the next one.
/// `progress` (may be empty) is called after each dead letter. Returns the status it left.
OMNIBUS_API redrive_status run_redrive(const event_bus& bus, pqxx::connection_base& conn, std::int64_t id,
                                       std::stop_token stop,
                                       const std::function<void(const redrive_status&)>& progress = {});

/// What redrive_runner needs.
struct OMNIBUS_API redrive_runner_options {
  std::string database_url;  ///< the connection it uses (the retries' handlers get it too)
  std::chrono::milliseconds poll{1000};  ///< how often to look for running redrives
};

/// Runs every `running` redrive of the bus's schema, one at a time, in the background: a
/// worker runs one so that a redrive asked for from the dashboard or the CLI goes on after the
/// process that asked is gone, and after a worker's restart. Errors are logged and retried.
class OMNIBUS_API redrive_runner {
 public:
  /// `bus` (with the services' listeners) and `log` must outlive the runner.
  redrive_runner(const event_bus& bus, redrive_runner_options options, std::shared_ptr<spdlog::logger> log);
  ~redrive_runner();  ///< stop()s it
  redrive_runner(const redrive_runner&) = delete;
  redrive_runner& operator=(const redrive_runner&) = delete;

  /// Starts its thread.
  void start();
  /// Stops it; a redrive it was running stays running, for the next runner to carry on.
  void stop();

 private:
  void run(std::stop_token stop);

  const event_bus& bus_;
  redrive_runner_options options_;
  std::shared_ptr<spdlog::logger> log_;
  std::jthread thread_;
};

}  // namespace omnibus
