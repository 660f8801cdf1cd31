#pragma once
// What an operator does to a running bus: retry dead letters, list and prune consumers.
// The worker binary's CLI calls these; they are a library so that tests call them too.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "omnibus/event_bus.hpp"
#include "omnibus/export.hpp"
#include "omnibus/fwd.hpp"
#include "omnibus/queue.hpp"

namespace omnibus {

/// What happened to one retried dead letter.
struct OMNIBUS_API retry_outcome {
  std::int64_t id = 0;  ///< the dead letter's id (bus_dead_letters.id)
  std::string listener;  ///< the listener it belongs to: the only one run
  std::string event_id;  ///< the event's id, in canonical form
  bool ok = false;    ///< the handler returned: the dead letter is gone
  std::string error;  ///< why not (the dead letter stays, with this error and one more attempt)
  /// Another process was retrying it at that moment: nothing was run or changed.
  bool busy = false;
};

/// Runs dead letter `id` through **its own listener alone**, on the stored message, in this
/// process (a republish would re-run every listener of the event: 2.9 consumers take one
/// filter). `bus` must hold the services' listeners. On success the dead letter is deleted.
/// One retry of a dead letter runs at a time across processes (an advisory lock on `conn`):
/// while another runs, this returns `busy` and changes nothing.
/// Throws omnibus::error when there is no such dead letter.
OMNIBUS_API retry_outcome retry_dead_letter(const event_bus& bus, pqxx::connection_base& conn, std::int64_t id);

/// Retries every dead letter matching the filters (empty: any), oldest first.
OMNIBUS_API std::vector<retry_outcome> retry_dead_letters(const event_bus& bus, pqxx::connection_base& conn,
                                              std::string_view listener, std::string_view event_name);

/// A consumer on the bus's stream, and whether a registered listener owns it.
struct OMNIBUS_API consumer_status {
  consumer_info info;  ///< the server's view: name, group, filter, counters
  bool owned = false;  ///< a listener registered on the bus has this consumer name
};

/// Every durable consumer on the bus's stream.
[[nodiscard]] OMNIBUS_API std::vector<consumer_status> list_consumers(const event_bus& bus);

/// Deletes the consumers of this bus's group that no registered listener owns (left behind by
/// renamed or removed listeners). Only consumers that provisioning marked with this group
/// (consumer_info::group) qualify: other groups' are never touched, whatever their names, and
/// neither are consumers made before 0.2 or by other tools. Returns their names. With
/// `dry_run`, deletes nothing.
OMNIBUS_API std::vector<std::string> prune_consumers(const event_bus& bus, bool dry_run);

/// A replay: one listener gets the events of its subject again, from a point in the stream.
struct OMNIBUS_API replay_request {
  std::string listener;  ///< an async listener of the bus
  /// From when (the time the stream stored them); set this or from_sequence, not both.
  std::optional<std::chrono::system_clock::time_point> from_time;
  std::optional<std::uint64_t> from_sequence;  ///< from which stream sequence

  /// Keep the listener's inbox rows: an inbox listener then runs only what it never handled.
  /// By default its rows from the replayed range are deleted, so that every effect runs again.
  bool keep_inbox = false;
};

/// What a replay does.
struct OMNIBUS_API replay_plan {
  std::uint64_t events = 0;  ///< events of the listener's subject delivered again
  std::uint64_t stream_first_sequence = 0;  ///< the oldest event the stream still holds
  std::optional<std::chrono::system_clock::time_point> stream_first_time;  ///< and when it was stored
  /// When the first replayed event was stored (from_time, or read for from_sequence); nullopt:
  /// nothing to replay.
  std::optional<std::chrono::system_clock::time_point> from_time;
};

/// Checks a replay and counts what it would redeliver, changing nothing. Throws omnibus::error
/// for an unknown listener, a request without exactly one `from`, a point before the oldest
/// event the stream still holds (the message says how far back it reaches: its max_age), or
/// a point after events the listener has not handled yet (the new consumer would skip them).
[[nodiscard]] OMNIBUS_API replay_plan plan_replay(const event_bus& bus, const replay_request& request);

/// Replays: pauses the listener in every worker of the schema (bus_paused) and waits, at most
/// `settle`, until every running worker reports it paused; recreates its consumer to deliver
/// from the requested point; deletes its inbox rows from that point on (less a 5-minute margin
/// for clocks), unless keep_inbox; then resumes it, even if it was paused before. Other
/// listeners are not touched. Returns the plan it carried out.
OMNIBUS_API replay_plan replay_listener(const event_bus& bus, pqxx::connection_base& conn, const replay_request& request,
                                        std::chrono::milliseconds settle = std::chrono::seconds(10));

/// The stream sequence below which every consumer of `stream` (of every group) has handled
/// every event: purging below it loses nothing a listener still needs (replays from before it
/// can no longer reach those events). Throws omnibus::error where the queue keeps no stream.
[[nodiscard]] OMNIBUS_API std::uint64_t handled_by_all(queue& q, const stream_config& stream);

}  // namespace omnibus
