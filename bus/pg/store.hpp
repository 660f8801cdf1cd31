#pragma once
// What the worker runtime and the operator actions keep in PostgreSQL, behind one interface:
// failure history, dead letters, parked listeners and the inbox. pg_store is the real one (all
// of its SQL is in store.cpp and dead_letters.cpp); Omnibus's unit tests hand the worker an
// in-memory one (tests/support/memory_store.hpp). Internal to bus/: not installed.

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "omnibus/context.hpp"
#include "omnibus/dead_letters.hpp"
#include "omnibus/error.hpp"
#include "omnibus/export.hpp"
#include "omnibus/fwd.hpp"
#include "omnibus/listener_control.hpp"
#include "omnibus/parked_keys.hpp"

namespace omnibus::detail {

/// The store refused a row for good (bad data, a constraint, a size limit): writing it again
/// would fail again, so the caller must not retry it.
class OMNIBUS_API row_refused : public error {
 public:
  using error::error;
  ~row_refused() override;
};

/// A commit whose outcome is unknown (the connection broke during COMMIT).
class OMNIBUS_API commit_in_doubt : public error {
 public:
  using error::error;
  ~commit_in_doubt() override;
};

/// The store cannot reach its database (PostgreSQL refuses or drops connections): an outage,
/// not a fault of the row or of the handler.
class OMNIBUS_API store_unavailable : public error {
 public:
  using error::error;
  ~store_unavailable() override;
};

/// Whether `e` says the database cannot be reached: store_unavailable, a broken connection,
/// or a server going down (SQLSTATE classes 08 and 57P). The worker then holds the event and
/// tries again without spending an attempt.
[[nodiscard]] bool is_unavailable(const std::exception& e) noexcept;

/// One handler call's side of the store: the connection a handler's context leases, and the
/// inbox transaction of an inbox listener. Used by one thread; ends (rolling back what was not
/// committed, giving its connection back) when destroyed.
class job_session {
 public:
  virtual ~job_session() = default;
  /// What the handler's ctx.db() leases from; nullptr when the store has no database.
  [[nodiscard]] virtual connection_source* connections() noexcept = 0;
  /// Opens the inbox transaction (its statements and idle time bounded by `time_left`) and
  /// claims (listener, event id) in it. False: already handled, the handler must not run.
  virtual bool claim(std::string_view listener, std::string_view event_id, std::chrono::milliseconds time_left) = 0;
  /// The inbox transaction after claim(), for the handler's context; nullptr when the store has
  /// no database transaction to share.
  [[nodiscard]] virtual pqxx::transaction_base* transaction() noexcept = 0;
  /// Commits the inbox transaction. Throws commit_in_doubt when its outcome is unknown.
  virtual void commit() = 0;
  /// After claim(), for a per-key listener: whether `owner` still holds the partition's lease
  /// at `epoch`, holding it (nobody claims it) until the transaction ends.
  virtual bool fence(std::string_view /*listener*/, int /*partition*/, std::string_view /*owner*/, std::uint64_t /*epoch*/) {
    return true;
  }
};

/// A listener's position in the stream, as a worker last checked it (the loss check, README
/// "Operations"): what lets the next check tell events the stream dropped from events handled.
struct stream_mark {
  std::string listener;
  std::optional<std::chrono::system_clock::time_point> consumer_created;  ///< whose counts these are
  std::uint64_t lowest_unhandled = 0;  ///< everything of the listener below this sequence was handled
  std::uint64_t pending = 0;           ///< its events not yet delivered, up to last_sequence
  std::uint64_t deliveries = 0;        ///< the consumer's deliveries so far
  std::uint64_t last_sequence = 0;     ///< the stream's last sequence then
};

/// A listener's events the stream dropped before it handled them.
struct lost_events {
  std::uint64_t first_sequence = 0;  ///< the stream sequences they were among
  std::uint64_t last_sequence = 0;
  std::uint64_t events = 0;          ///< how many of the listener's
};

/// What one loss check found: the mark to keep, and the loss, if any.
struct mark_check {
  stream_mark next;
  std::optional<lost_events> lost;
};

/// Thread-safe.
class store {
 public:
  virtual ~store() = default;
  /// Brings the tables up to date (pg: migrations). Called once, before anything else.
  virtual void migrate() = 0;
  /// One handler call's session.
  [[nodiscard]] virtual std::unique_ptr<job_session> open_session() = 0;
  /// Records one failed attempt of (listener, event id).
  virtual void record_failure(std::string_view listener, std::string_view event_id, std::string_view error) = 0;
  /// Forgets (listener, event id)'s failures: it was handled.
  virtual void clear_failure(std::string_view listener, std::string_view event_id) = 0;
  /// Writes (or rewrites) a dead letter, committed when this returns. Throws row_refused when
  /// the row itself is refused, anything else when the store is unavailable.
  virtual void write_dead_letter(const dead_letter& dl) = 0;
  /// Parks a listener at an event (or updates its error and attempts), clearing any request.
  virtual void park(const parked_event& p) = 0;
  /// The listener's parked event, with the operator's request, if any.
  [[nodiscard]] virtual std::optional<parked_event> find_parked(std::string_view listener) = 0;
  /// Removes the listener's parked row.
  virtual void unpark(std::string_view listener) = 0;
  /// The listeners an operator paused.
  [[nodiscard]] virtual std::vector<paused_listener> paused_listeners() = 0;
  /// Draws up to `want` tokens from `listener`'s shared bucket (refilled at per_second, at
  /// most `burst`, created full); returns how many it got.
  virtual int take_tokens(std::string_view listener, double per_second, int burst, int want) = 0;
  /// Replaces what worker `worker` reports of its listeners (listener, state, reason, since).
  virtual void report_states(std::string_view worker, const std::vector<listener_report>& reports) = 0;
  /// Deletes worker `worker`'s reports: it stops.
  virtual void forget_states(std::string_view worker) = 0;
  /// Unless some worker checked `consumer` within `min_gap`: calls `check` with its last mark
  /// (nullopt: none yet) outside any transaction, then keeps the mark `check` returns and records
  /// the loss it reports, in one transaction, only if no other worker stored a check meanwhile.
  /// Returns what was stored; nullopt when nothing was (too soon, or another worker won).
  virtual std::optional<mark_check> check_mark(std::string_view consumer, std::chrono::milliseconds min_gap,
                                               const std::function<mark_check(const std::optional<stream_mark>&)>& check) = 0;
  /// Deletes inbox rows older than `older_than`; returns how many.
  virtual std::size_t prune_inbox(std::chrono::seconds older_than) = 0;

  // Per-key listeners (omnibus/parked_keys.hpp has what each does). A store without them
  // throws: the worker refuses per-key listeners on it at start.
  [[nodiscard]] virtual bool has_partitions() const noexcept { return false; }
  virtual lease_round lease_partitions(std::string_view, int, std::string_view, std::chrono::milliseconds,
                                       const std::vector<std::pair<int, std::uint64_t>>&) {
    throw error("this store has no partition leases");
  }
  virtual void leave_partitions(std::string_view, std::string_view, const std::vector<std::pair<int, std::uint64_t>>&) {}
  virtual bool park_event(std::string_view, std::string_view, int, std::string_view, std::uint64_t, std::string_view,
                          const stored_event&, std::string_view) {
    throw error("this store cannot park keys");
  }
  [[nodiscard]] virtual std::vector<std::string> parked_keys_of(std::string_view, int) { return {}; }
  [[nodiscard]] virtual std::vector<key_request> key_requests(std::string_view) { return {}; }
  [[nodiscard]] virtual std::optional<stored_event> first_parked_event(std::string_view, std::string_view) {
    return std::nullopt;
  }
  virtual void drop_parked_event(std::string_view, std::string_view, std::uint64_t, bool) {}
  virtual bool release_parked_key(std::string_view, std::string_view) { return true; }
  virtual void repark_key(std::string_view, std::string_view, std::uint64_t, std::string_view, std::string_view) {}
  virtual std::int64_t discard_parked_key(std::string_view, std::string_view) { return 0; }
};

/// Timings of the PostgreSQL store.
struct pg_store_options {
  std::string database_url;                      ///< libpq URL; never logged
  std::string schema;                            ///< the library's tables' schema
  std::size_t pool_size = 1;                     ///< connections at most
  std::chrono::milliseconds db_wait{5000};       ///< to lease a pooled connection
  std::chrono::milliseconds inbox_lock_timeout{5000};  ///< an inbox transaction's lock_timeout
};

/// The PostgreSQL store, over a pool of pool_size connections. Connects on first use.
[[nodiscard]] std::unique_ptr<store> make_pg_store(pg_store_options options);

/// Claims (listener, event id) in an inbox listener's transaction `tx`: false when the row was
/// there already (handled before). The worker's and a dead letter retry's one inbox INSERT.
bool claim_inbox(pqxx::transaction_base& tx, std::string_view schema, std::string_view listener,
                 std::string_view event_id);

}  // namespace omnibus::detail
