#pragma once
// Dead letters and failure history in PostgreSQL (<schema>.bus_dead_letters, bus_failures).

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "omnibus/export.hpp"
#include "omnibus/fwd.hpp"
#include "omnibus/message.hpp"

namespace omnibus {

/// One message a listener gave up on.
struct OMNIBUS_API dead_letter {
  std::int64_t id = 0;  ///< assigned by the database
  std::string listener;  ///< the async listener that gave up on it
  /// Nats-Msg-Id as received, or "seq:<stream sequence>" without one. Stored as text: bytes
  /// that are not UTF-8 read `\xHH` there (omnibus::to_text); msg keeps the exact bytes.
  std::string event_id;
  std::string event_name;  ///< the Omnibus-Event header (as text, like event_id), or empty
  message msg;             ///< subject, headers and body exactly as delivered
  /// The header block byte for byte, when it did not parse (reason malformed_headers); msg
  /// then has no headers. Empty otherwise, or when the broker could not read it back.
  std::string raw_header_block;
  /// handler_failed, permanent, malformed_headers, max_deliveries, or a decode_failure name
  std::string reason;
  std::string error;  ///< the last failure's text (a handler's what(), or why it did not decode)
  int attempts = 0;   ///< deliveries made when it gave up; a rewrite keeps the larger count
  /// The first recorded failure. Read back only: write_dead_letter() takes it from the history.
  std::chrono::system_clock::time_point first_failed_at{};
  /// The latest write of this letter. Read back only: write_dead_letter() sets it to now.
  std::chrono::system_clock::time_point last_failed_at{};
  std::uint64_t stream_sequence = 0;  ///< the message's sequence in the stream (0: not known)
};

/// Records one failed attempt (upsert on (listener, event id)), in its own transaction.
OMNIBUS_API void record_failure(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                    std::string_view event_id, std::string_view error);

/// Forgets the failure history of an event its listener has now handled.
OMNIBUS_API void clear_failure(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                   std::string_view event_id);

/// Writes the dead letter and removes its failure history, in one transaction that has
/// committed when this returns. Producers' bytes are stored exactly (bytea) or as text made
/// valid with omnibus::to_text (event id, event name, subject, error). Idempotent on
/// (listener, event id): a second write updates attempts, error and last_failed_at.
/// first_failed_at comes from the failure history (now when there is none).
OMNIBUS_API void write_dead_letter(pqxx::connection_base& conn, std::string_view schema, const dead_letter& dl);

/// Dead letters, newest first, optionally only one listener's or one event name's.
[[nodiscard]] OMNIBUS_API std::vector<dead_letter> list_dead_letters(pqxx::connection_base& conn, std::string_view schema,
                                                         std::string_view listener = {},
                                                         std::string_view event_name = {}, std::size_t limit = 100);

/// One dead letter by id, or nullopt.
[[nodiscard]] OMNIBUS_API std::optional<dead_letter> find_dead_letter(pqxx::connection_base& conn, std::string_view schema,
                                                          std::int64_t id);

/// Deletes one dead letter; false when it did not exist.
OMNIBUS_API bool discard_dead_letter(pqxx::connection_base& conn, std::string_view schema, std::int64_t id);

/// An ordered listener stopped at an event.
struct OMNIBUS_API parked_event {
  std::string listener;               ///< the ordered listener; at most one parked event each
  std::string event_id;               ///< the event it stopped at, as text
  std::string event_name;             ///< empty when not known
  std::uint64_t stream_sequence = 0;  ///< the event's sequence in the stream (0: not known)
  std::string error;                  ///< the last failure's text
  int attempts = 0;                   ///< attempts made before it parked
  std::string action;  ///< "", "retry" or "skip"
};

/// Every parked listener.
[[nodiscard]] OMNIBUS_API std::vector<parked_event> list_parked(pqxx::connection_base& conn, std::string_view schema);
/// The listener's parked event, if any.
[[nodiscard]] OMNIBUS_API std::optional<parked_event> find_parked(pqxx::connection_base& conn, std::string_view schema,
                                                      std::string_view listener);
/// Parks `listener` at an event (or updates its error and attempts), clearing any request.
OMNIBUS_API void park(pqxx::connection_base& conn, std::string_view schema, const parked_event& p);
/// Asks the worker to "retry" or "skip" the listener's parked event. False when not parked.
OMNIBUS_API bool request_parked_action(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                           std::string_view action);
/// Removes the listener's parked row (its event was handled or skipped).
OMNIBUS_API void unpark(pqxx::connection_base& conn, std::string_view schema, std::string_view listener);

}  // namespace omnibus
