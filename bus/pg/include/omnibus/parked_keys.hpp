#pragma once
// Per-key ordering's state in PostgreSQL (README "Ordered per key"): which worker holds each
// partition of a per-key listener (leases), and the keys parked after an event of theirs ran
// out of attempts, with that event and every later one of the key, in order.

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "omnibus/export.hpp"
#include "omnibus/message.hpp"

namespace pqxx {
class connection_base;
class transaction_base;
}

namespace omnibus {

/// One parked key of a per-key listener.
struct OMNIBUS_API parked_key {
  std::string listener;  ///< the per-key listener
  std::string key;       ///< the parked key
  int partition = 0;     ///< the key's partition
  std::string first_event_id;  ///< the event that ran out of attempts (the first of the key to run again)
  std::string event_name;      ///< that event's name
  std::string error;           ///< its last error
  int attempts = 0;            ///< its attempts so far
  std::int64_t waiting = 0;    ///< events of the key set aside, the failed one included
  std::chrono::system_clock::time_point parked_at;  ///< when the key was parked
  std::string action;  ///< "retry", "skip", "discard" while a worker has yet to carry it out; else empty
};

/// Every parked key, by listener then time parked; `listener` empty: all listeners. `limit`:
/// at most that many (0: all).
[[nodiscard]] OMNIBUS_API std::vector<parked_key> list_parked_keys(pqxx::connection_base& conn, std::string_view schema,
                                                                   std::string_view listener = {},
                                                                   std::size_t limit = 0);

/// Asks the worker holding the key's partition to act (within a second or so): "retry" runs the
/// parked events again in order, then releases the key to live events; "skip" drops the first
/// and does the same with the rest; "discard" drops them all and releases the key. False when
/// the key is not parked. Throws std::invalid_argument for another action.
OMNIBUS_API bool request_parked_key_action(pqxx::connection_base& conn, std::string_view schema,
                                           std::string_view listener, std::string_view key, std::string_view action);

/// One partition's lease.
struct OMNIBUS_API partition_lease {
  std::string listener;  ///< the per-key listener
  int partition = 0;     ///< 0 .. partitions - 1
  std::string owner;   ///< "host:pid" of the worker holding it; empty: free
  std::uint64_t epoch = 0;  ///< bumped at each claim
  bool live = false;   ///< its owner renewed within its lease
};

/// The leases of every per-key listener's partitions, by listener and partition.
[[nodiscard]] OMNIBUS_API std::vector<partition_lease> list_partition_leases(pqxx::connection_base& conn,
                                                                             std::string_view schema);

namespace detail {

/// What one heartbeat left a worker holding: (partition, epoch) pairs, and how many workers
/// share the listener now.
struct lease_round {
  std::vector<std::pair<int, std::uint64_t>> held;  ///< (partition, epoch) held after the heartbeat
  int live = 1;  ///< workers whose membership is live
  int share = 0;  ///< ceil(partitions / live): above it, the worker hands partitions back
};

/// One heartbeat of `owner` for `listener` (one transaction): renews its membership for
/// `lease`, releases `release` (drained partitions, by epoch), and claims free or expired
/// partitions up to its share. Never takes a partition whose old owner's handler transaction
/// still holds the fence (SKIP LOCKED).
OMNIBUS_API lease_round lease_partitions(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                                         int partitions, std::string_view owner, std::chrono::milliseconds lease,
                                         const std::vector<std::pair<int, std::uint64_t>>& release);
/// At shutdown: releases `release` and ends `owner`'s membership, so others claim at once.
OMNIBUS_API void leave_partitions(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                                  std::string_view owner, const std::vector<std::pair<int, std::uint64_t>>& release);
/// In `tx`: whether `owner` still holds (partition, epoch); locks the lease row (FOR SHARE) so
/// that nobody claims it until `tx` ends.
OMNIBUS_API bool hold_fence(pqxx::transaction_base& tx, std::string_view schema, std::string_view listener, int partition,
                            std::string_view owner, std::uint64_t epoch);

/// An event set aside for its parked key.
struct stored_event {
  std::uint64_t stream_sequence = 0;  ///< its place in the stream: the key's order
  std::string event_id;               ///< its id
  message msg;                        ///< subject, headers and body as delivered
  int attempts = 0;                   ///< attempts so far
};

/// Sets `ev` aside for (listener, key), parking the key when it is not yet (with `error` and
/// `ev` as its first event), fenced by the lease: false, and nothing written, when `owner` no
/// longer holds (partition, epoch).
OMNIBUS_API bool park_event(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                            std::string_view key, int partition, std::string_view owner, std::uint64_t epoch,
                            std::string_view event_name, const stored_event& ev, std::string_view error);
/// The keys of `listener`'s `partition` that are parked.
[[nodiscard]] OMNIBUS_API std::vector<std::string> parked_keys_of(pqxx::connection_base& conn, std::string_view schema,
                                                                  std::string_view listener, int partition);
/// Keys of `listener` with an operator's request: (key, partition, action).
struct key_request {
  std::string key;     ///< the parked key
  int partition = 0;   ///< its partition
  std::string action;  ///< "retry", "skip" or "discard"
};
[[nodiscard]] OMNIBUS_API std::vector<key_request> key_requests(pqxx::connection_base& conn, std::string_view schema,
                                                                std::string_view listener);
/// The key's first parked event (lowest stream sequence), if any.
[[nodiscard]] OMNIBUS_API std::optional<stored_event> first_parked_event(pqxx::connection_base& conn,
                                                                         std::string_view schema, std::string_view listener,
                                                                         std::string_view key);
/// Drops one parked event (handled, or skipped); `skip` also turns the key's request into "retry".
OMNIBUS_API void drop_parked_event(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                                   std::string_view key, std::uint64_t stream_sequence, bool skip);
/// Releases the key when none of its events waits: true when released.
OMNIBUS_API bool release_parked_key(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                                    std::string_view key);
/// The retry failed: the key stays parked at `stream_sequence` with `error`; the request is done
/// unless an operator made another one meanwhile (its action is no longer `done_action`).
OMNIBUS_API void repark_key(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                            std::string_view key, std::uint64_t stream_sequence, std::string_view error,
                            std::string_view done_action);
/// Drops every parked event of the key and releases it.
OMNIBUS_API std::int64_t discard_parked_key(pqxx::connection_base& conn, std::string_view schema,
                                            std::string_view listener, std::string_view key);

}  // namespace detail
}  // namespace omnibus
