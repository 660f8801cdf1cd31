#pragma once
// The Bus: a registry of listeners per event type, and publish().
//
// Dispatch rules:
// - Sync listeners run on the publisher's thread, in registration order, before publish()
//   returns. The first one that throws stops the rest; its exception reaches the publisher
//   unchanged, and no async event is emitted.
// - Then, unless the type is local-only, the event leaves the process: into the outbox in the
//   context's transaction when it has one, else straight to the stream (waiting for the ack).
// - The registry freezes at the first provision() or publish(): adding a listener after that
//   throws std::logic_error. Once frozen, publish() is safe from any number of threads.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "omnibus/codec.hpp"
#include "omnibus/context.hpp"
#include "omnibus/envelope.hpp"
#include "omnibus/event_id.hpp"
#include "omnibus/event_traits.hpp"
#include "omnibus/export.hpp"
#include "omnibus/fwd.hpp"
#include "omnibus/observer.hpp"
#include "omnibus/queue.hpp"
#include "omnibus/schedule.hpp"

namespace omnibus {

/// How a bus names, sizes and sends its events.
struct OMNIBUS_API bus_options {
  /// The application's fixed name: consumers are "<group>_<listener>". Never a host or pid.
  std::string group = "omnibus";
  /// The stream events are sent to, and its limits; provision() creates it.
  stream_config stream;
  /// The PostgreSQL schema of the library's tables (outbox, dead letters, inbox).
  std::string schema = "omnibus";
  /// The largest encoded event body, in bytes (default 1 MiB): a bigger one throws
  /// event_too_large at publish, and fails to decode (decode_error, oversized) when received.
  std::size_t max_body_bytes = default_max_body_bytes;
  /// How long publish() without a transaction waits for the stream's ack.
  std::chrono::milliseconds publish_timeout = std::chrono::seconds(5);
  /// The most deliveries of one message to one listener, counting every kind of redelivery
  /// (retries, deadlines, newer versions, restarts). The worker settles a message at this
  /// delivery at the latest (dead letter, reason max_deliveries), and the server stops at it
  /// (consumers' MaxDeliver) if the worker could not, reporting it so that it becomes a dead
  /// letter too: no message is redelivered forever. Must exceed every listener's max_attempts.
  std::int64_t max_deliveries = 1000;
  /// publish() in a transaction writes its outbox row with a prepared statement, prepared on
  /// each connection at its first use there (about a fifth more one-event transactions per
  /// second). Set false when the connection goes through a proxy that does not keep session
  /// state from one transaction to the next (PgBouncer in transaction pooling mode before 1.21),
  /// or when something runs DISCARD ALL or DEALLOCATE ALL on the connections.
  bool prepared_statements = true;
};

/// Throws std::invalid_argument unless `schema` is a name Omnibus accepts for its tables'
/// schema: [a-z_][a-z0-9_]*, at most 63 characters. event_bus, the relay and migrate() check it;
/// a worker's configuration checks it before touching any server.
OMNIBUS_API void check_schema_name(std::string_view schema);

/// When and how often a failing async handler is retried (decision 9). The delay before
/// attempt n+1 is min(initial * multiplier^(n-1), max), then spread by +-jitter.
struct OMNIBUS_API retry_policy {
  int max_attempts = 10;  ///< deliveries in all; then the event is dead-lettered
  std::chrono::milliseconds initial = std::chrono::seconds(1);  ///< the delay after the first failure
  double multiplier = 2.0;                                      ///< each further delay is this times the last
  std::chrono::milliseconds max = std::chrono::minutes(5);      ///< the longest delay, before jitter
  double jitter = 0.2;  ///< 0.2: each delay is drawn from [0.8, 1.2] times its nominal value
};

/// A circuit breaker (README "Flow control"), judged by each worker on its own calls: after
/// `failures` handler failures (a throw or a passed deadline) within `window`, the worker
/// fetches nothing for the listener for `cool_down`, then lets one trial event through; the
/// trial's success closes the breaker, its failure opens it again. Off unless enabled.
struct OMNIBUS_API breaker_policy {
  bool enabled = false;  ///< opt-in
  int failures = 5;                                                ///< within window, to open
  std::chrono::milliseconds window = std::chrono::seconds(60);     ///< how far back failures count
  std::chrono::milliseconds cool_down = std::chrono::seconds(30);  ///< open this long before a trial
};

/// A rate limit shared by every worker of the schema (README "Flow control"): a token bucket
/// in PostgreSQL that refills at per_second and holds at most burst tokens; a worker draws a
/// few at a time and fetches one event per token. Off while per_second is 0.
struct OMNIBUS_API rate_limit {
  double per_second = 0;  ///< events per second across all workers; 0: no limit
  int burst = 0;          ///< the bucket's size; 0: a tenth of a second's worth, at least 1
};

/// In what order an async listener's events run (README "Ordering").
enum class ordering {
  none,     ///< in parallel, up to the concurrency of each worker
  total,    ///< one event at a time across all workers, in stream order (listener_options::ordered)
  per_key,  ///< each key's events one at a time in stream order; keys in parallel (a keyed event)
};

/// How one async listener runs in the worker.
struct OMNIBUS_API listener_options {
  int concurrency = 4;  ///< handler slots: messages of this listener in flight in one worker
  std::chrono::milliseconds ack_wait = std::chrono::seconds(30);  ///< server redelivers after this
  std::chrono::milliseconds deadline = std::chrono::minutes(1);   ///< per handler call
  retry_policy retry;  ///< when a failed handler call runs again, and how often
  /// Strictly in stream order, one event in flight across all workers (MaxAckPending 1,
  /// concurrency 1). A failure is nak'd with a delay and stays pending, so nothing overtakes it.
  bool ordered = false;
  /// ordering::total is `ordered`; ordering::per_key needs a keyed event (omnibus::keyed_event):
  /// each key's events run one at a time, in stream order, across every worker, while other
  /// keys run in parallel (up to `concurrency` per worker). Breaker and rate limits are not
  /// available with per_key yet.
  omnibus::ordering order = omnibus::ordering::none;
  /// For an ordered listener whose attempts ran out: true parks it at that event until an
  /// operator retries or skips it (omnibus-worker parked ...); false dead-letters the event and
  /// goes on (a dead letter retried later runs out of order). A per_key listener parks the
  /// event's key only: that event and every later one of its key are set aside in order while
  /// other keys go on (omnibus-worker parked retry LISTENER KEY).
  bool park_when_exhausted = true;
  /// Exactly-once effects: the worker opens a transaction, records (listener, event id) in
  /// `<schema>.bus_inbox`, runs the handler with that transaction in its context (ctx.tx();
  /// events it publishes go to the outbox in it), commits, and only then acks. An event
  /// already recorded is acked without running the handler.
  bool inbox = false;
  /// A new consumer starts now; set this to replay from a time within the stream's MaxAge.
  std::optional<std::chrono::system_clock::time_point> replay_from;
  /// The most events of this listener in flight across all workers at once (the consumer's
  /// MaxAckPending); 0: no cap beyond the workers' slots (1000). Ordered listeners have 1.
  int max_in_flight = 0;
  breaker_policy breaker;  ///< off by default
  rate_limit rate;         ///< off by default
};

/// An async listener as the worker runs it: type-erased, decoding inside.
struct OMNIBUS_API async_listener {
  std::string name;           ///< the listener's own name, [A-Za-z0-9_-]
  std::string consumer_name;  ///< "<group>_<name>"
  std::string event_name;     ///< E::name: the event type it handles
  int event_version = 0;      ///< E::version: the newest version it decodes; newer ones are deferred
  int partitions = 0;         ///< E::partitions for a keyed event, else 0
  listener_options options;   ///< as given to add_async_listener()
  /// Whether it runs per key: its consumers are "<consumer_name>_k<n>", one per partition.
  [[nodiscard]] bool per_key() const noexcept { return options.order == ordering::per_key; }
  /// The durable consumers it reads: consumer_name, or one per partition for per_key.
  [[nodiscard]] std::vector<std::string> consumer_names() const;
  /// Decodes the envelope as the listener's event type and calls the user's handler.
  /// Throws decode_error for a bad body, or whatever the handler throws.
  std::function<void(context&, const envelope&)> handler;
};

/// The server's counters of `l`'s consumer, or of a per-key listener's partition consumers summed
/// (pending, ack_pending, redelivered, deliveries added; oldest_unacked the oldest); nullopt
/// when none of them exists.
[[nodiscard]] OMNIBUS_API std::optional<consumer_info> listener_info(queue& q, const stream_config& stream,
                                                                     const async_listener& l);

/// What publish_batch() did with each event, in the batch's order.
struct OMNIBUS_API batch_report {
  std::vector<event_id> ids;          ///< the id given to each event
  std::vector<batch_result> results;  ///< one per event: an ack, or why it failed
  /// True when every event was stored.
  [[nodiscard]] bool ok() const noexcept;
  /// The positions of the events that failed.
  [[nodiscard]] std::vector<std::size_t> failed() const;
};

/// Thrown by a handler to skip the remaining attempts: the event is dead-lettered at once.
class OMNIBUS_API permanent_error : public error {
 public:
  using error::error;
};

/// Thrown by event_bus::transact() when the connection broke during COMMIT: the transaction
/// may or may not have committed, so neither after-commit nor after-rollback listeners ran.
class OMNIBUS_API commit_unknown : public error {
 public:
  using error::error;
  ~commit_unknown() override;
};

/// Thrown by a handler when a dependency it needs is down (a partner API, a cache), not when
/// the event is bad: the attempt does not count. The worker treats it as an outage, as when
/// it cannot reach PostgreSQL: the listener stops fetching, and the event is tried again with
/// backoff (without spending attempts) until a call gets past it; then the listener resumes.
class OMNIBUS_API transient_error : public error {
 public:
  using error::error;
};

namespace detail {
OMNIBUS_API std::size_t next_type_slot() noexcept;
/// `env` with E's ordering key when E is keyed.
template <class E>
envelope keyed(envelope env, const E& event) {
  if constexpr (keyed_event<E>) {
    env.key = std::string(std::string_view(E::ordering_key(event)));
    env.partitions = E::partitions;
  }
  return env;
}
/// A dense per-type index, the same in every bus. A variable, not a function-local static, so
/// reading it on the publish path costs a load and no initialization guard.
template <class E>
inline const std::size_t type_slot = next_type_slot();
}  // namespace detail

/// The typed event bus. Construct it, let every service add its listeners, then publish.
/// Not copyable or movable (listeners may capture services that hold a reference to it).
class OMNIBUS_API event_bus {
 public:
  /// A bus for local-only events only (no queue): any other publish throws std::logic_error.
  explicit event_bus(bus_options options = {});
  /// A bus whose events leave the process through `q`, which must outlive the bus.
  explicit event_bus(queue& q, bus_options options = {});
  ~event_bus();
  event_bus(const event_bus&) = delete;
  event_bus& operator=(const event_bus&) = delete;

  /// Adds a sync listener for E: `handler(omnibus::context&, const E&)`, run inline by publish().
  /// Throws std::logic_error when the bus is frozen or another type already has E's name.
  /// Thread-safe.
  template <class E, class F>
  void add_sync_listener(F&& handler);

  /// Publishes many events of one type: each one's sync listeners run first, in order (the
  /// first throw stops everything, and nothing is sent). Then all leave together, pipelined,
  /// in order: without a transaction every PubAck is awaited and the report says which
  /// events failed. Every event carries the context's metadata as it is once all the sync
  /// listeners have run. Throws what a listener threw, event_too_large, std::logic_error.
  template <class E>
  [[nodiscard]] batch_report publish_batch(context& ctx, std::span<const E> events);

  /// Adds an async listener for E, run by the worker: `handler(omnibus::context&, const E&)`.
  /// `name` ([A-Za-z0-9_-]+, unique in the bus) names its durable consumer "<group>_<name>":
  /// renaming a listener makes a new consumer that starts from now. Throws std::logic_error
  /// when frozen, for a bad or duplicate name, or a name clash of event types. Thread-safe.
  template <class E, class F>
  void add_async_listener(std::string name, F&& handler, listener_options options = {});

  /// Adds a listener for E that runs in this process after the transaction E was published in
  /// commits (phase::after_commit: evict a cache, wake a waiter) or rolls back
  /// (phase::after_rollback: log, compensate), in publish order: `handler(omnibus::context&,
  /// const E&)`, whose context has the event's metadata and no transaction (a publish from it
  /// is a fresh one). Only transactions run by transact() have phases: publishing E with a
  /// context whose transaction was opened elsewhere throws std::logic_error (its phase
  /// listeners would silently never run). Without a transaction, after-commit listeners run
  /// right after the publish succeeds, after-rollback ones never. Thread-safe until frozen.
  template <class E, class F>
  void add_listener(phase when, F&& handler);

  /// Opens a transaction on `conn`, runs `body(ctx)` with it, and commits; then runs the
  /// after-commit listeners of every event published in it, in publish order. If body throws
  /// or the commit fails, the transaction is rolled back, the after-rollback listeners run,
  /// and the exception goes on to the caller. When the commit's outcome is unknown (the
  /// connection broke during COMMIT) neither phase runs and commit_unknown is thrown. A phase
  /// listener that throws never undoes the commit nor stops the others: it is logged (spdlog's
  /// default logger), counted (phase_errors()) and told to the observers. Returns what body does.
  template <class F>
  auto transact(pqxx::connection_base& conn, F&& body);
  /// The same in `tx`, a transaction the caller opened: transact() commits it (or aborts it).
  template <class F>
  auto transact(pqxx::transaction_base& tx, F&& body);
  /// Phase listeners that threw, since the bus was made.
  [[nodiscard]] std::uint64_t phase_errors() const noexcept { return phase_errors_.load(std::memory_order_relaxed); }

  /// Runs E's sync listeners, then sends the event on (see the dispatch rules above).
  /// Returns the event's id (nil for a local-only event). Throws what a listener threw,
  /// event_too_large, publish_error (no transaction), or std::logic_error for a name clash.
  template <class E>
  [[gnu::always_inline]] inline event_id publish(context& ctx, const E& event);

  /// Schedules `event` to be published at `when` (README "Scheduling"): a row in
  /// `<schema>.bus_scheduled`, written in the context's transaction when it has one (a rollback
  /// schedules nothing), else in a transaction of its own on the worker handler's connection
  /// (ctx.db()); a context with neither throws std::logic_error (use the connection overload).
  /// When due, a scheduler moves it to the outbox and the relay publishes it, once; a time in
  /// the past fires at once. Sync and phase listeners do not run: only async listeners get
  /// scheduled events. Returns the schedule's id, which is also the event's id (or, for a live
  /// `options.unique_key`, the pending event's id). Throws event_too_large now, never at
  /// firing; std::invalid_argument for a bad unique key; what pqxx throws (in a REPEATABLE READ
  /// or SERIALIZABLE transaction, pqxx::serialization_failure when another transaction took
  /// the key after this one began: retry the transaction).
  template <class E>
  event_id publish_at(context& ctx, std::chrono::system_clock::time_point when, const E& event,
                      const schedule_options& options = {});
  /// publish_at() in a transaction of its own on `conn`, committed before it returns.
  template <class E>
  event_id publish_at(pqxx::connection_base& conn, std::chrono::system_clock::time_point when, const E& event,
                      const schedule_options& options = {});
  /// publish_at() for `delay` from now, by the database's clock (the scheduler's clock too).
  template <class E>
  event_id publish_after(context& ctx, std::chrono::milliseconds delay, const E& event,
                         const schedule_options& options = {});
  /// publish_after() in a transaction of its own on `conn`, committed before it returns.
  template <class E>
  event_id publish_after(pqxx::connection_base& conn, std::chrono::milliseconds delay, const E& event,
                         const schedule_options& options = {});
  /// Cancels a scheduled event, in the context's transaction (as publish_at() chooses one).
  /// True when it cancelled; false when the event already fired, was cancelled, or is unknown.
  /// A scheduler firing it at that moment makes this wait for the firing, then return false
  /// (in a REPEATABLE READ or SERIALIZABLE transaction PostgreSQL throws
  /// pqxx::serialization_failure instead: retry the transaction).
  bool cancel(context& ctx, const event_id& id);
  /// cancel() in a transaction of its own on `conn`.
  bool cancel(pqxx::connection_base& conn, const event_id& id);
  /// Moves a pending scheduled event to `when`; false when it is no longer pending. As cancel().
  bool reschedule(context& ctx, const event_id& id, std::chrono::system_clock::time_point when);
  /// reschedule() in a transaction of its own on `conn`.
  bool reschedule(pqxx::connection_base& conn, const event_id& id, std::chrono::system_clock::time_point when);

  /// Adds a recurring schedule: every worker's scheduler calls `make()` or `make(occurrence)`
  /// (an omnibus::cron::time_point; it returns the event to publish) at each occurrence of
  /// `expression` in time zone `zone`, once across all workers. `name` ([A-Za-z0-9_-]+, unique) keys its occurrences in PostgreSQL: keep it when
  /// changing the expression. Throws cron_error for a bad expression or zone (quoting it and
  /// naming the field), std::logic_error when frozen or for a bad or duplicate name. Thread-safe.
  template <class F>
  void add_schedule(std::string name, std::string_view expression, std::string_view zone, F&& make,
                    recurring_options options = {});
  /// The recurring schedules, in registration order. Stable once frozen.
  [[nodiscard]] const std::vector<recurring_schedule>& schedules() const noexcept { return recurring_; }

  /// Freezes the registry, then creates the stream and every async listener's consumer that
  /// is missing (publishers call it too, so that events published before any worker ran
  /// still reach every listener). Throws std::logic_error without a queue, omnibus::error for a
  /// conflicting existing consumer or stream.
  void provision();

  /// The async listeners, in registration order. Stable once frozen.
  [[nodiscard]] const std::vector<async_listener>& async_listeners() const noexcept { return async_; }
  /// The consumer each async listener needs.
  [[nodiscard]] std::vector<consumer_config> consumer_configs() const;
  /// The queue this bus sends through, or nullptr.
  [[nodiscard]] queue* target() const noexcept { return queue_; }

  /// Adds an observer of publishes and (in the worker) handler calls; shared with the caller.
  /// Throws std::logic_error when the bus is frozen, std::invalid_argument for a null one.
  void add_observer(std::shared_ptr<observer> o);
  /// The observers, in registration order. Stable once frozen.
  [[nodiscard]] const std::vector<std::shared_ptr<observer>>& observers() const noexcept { return observers_; }

  /// Freezes the registry. Idempotent; publish() and provision() call it.
  void freeze();
  /// Whether the registry is frozen (no listener can be added). Thread-safe.
  [[nodiscard]] bool frozen() const noexcept { return frozen_.load(std::memory_order_acquire); }
  /// The options the bus was constructed with.
  [[nodiscard]] const bus_options& options() const noexcept { return options_; }

 private:
  struct sync_listener {
    void (*call)(void* fn, context& ctx, const void* event) = nullptr;
    std::unique_ptr<void, void (*)(void*)> fn{nullptr, [](void*) {}};  // the type-erased callable, owned
  };
  struct type_entry {
    std::string_view name;  // E::name (static storage); empty: slot unused by this bus
    std::vector<sync_listener> sync;
    std::vector<sync_listener> after_commit;    // phase listeners
    std::vector<sync_listener> after_rollback;
  };
  // What publish() reads, built at freeze: a type's sync listeners as [first, last); first is
  // nullptr for a type no listener registered (publish then checks its name).
  struct dispatch_range {
    const sync_listener* first = nullptr;
    const sync_listener* last = nullptr;
    const type_entry* phased = nullptr;  // the type's entry when it has phase listeners
  };
  friend struct detail::phase_log;

  // handler(context&, const E&) as a type-erased listener that owns it.
  template <class E, class F>
  static sync_listener erase(F&& handler);
  type_entry& entry_for(std::size_t slot, std::string_view name);  // under mutex_, not frozen
  void add_async(std::size_t slot, std::string_view event_name, async_listener l);  // event_name: E::name
  void check_name_free(std::size_t slot, std::string_view name) const;
  event_id emit(context& ctx, std::string_view name, int version, std::string body, std::string_view key = {},
               int partitions = 0);
  [[nodiscard]] envelope make_envelope(const context& ctx, std::string_view name, int version, std::string body) const;
  // Events `name` whose msgpack bodies lie end to end in `bodies`, body i ending at ends[i].
  // A keyed type's keys are keys[i] (one per event) with `partitions`; otherwise keys is empty.
  [[nodiscard]] batch_report emit_batch(context& ctx, std::string_view name, int version, std::string_view bodies,
                                        std::span<const std::size_t> ends, std::span<const std::string> keys = {},
                                        int partitions = 0);
  // The scheduling calls' one body: in ctx's transaction (or its handler connection), or on conn.
  event_id schedule(context* ctx, pqxx::connection_base* conn, std::optional<std::chrono::system_clock::time_point> at,
                    std::chrono::milliseconds after, envelope env, const schedule_options& options);
  void add_recurring(std::size_t slot, std::string_view event_name, recurring_schedule s);  // event_name: E::name
  void notify_publish(std::string_view name, publish_path path, std::size_t count) const noexcept;
  void notify_publish_error(std::string_view name, std::string_view what) const noexcept;
  // Phases: refuse a transaction transact() does not own, then note (or run) a published event.
  void check_phased(const context& ctx, std::string_view name) const;
  void record_phased(context& ctx, const type_entry& e, std::shared_ptr<const void> event);
  void run_phase(phase when, const detail::phase_log& log);
  template <class F>
  auto transact_on(pqxx::connection_base* conn, pqxx::transaction_base* tx, F& body);
  // transact()'s work: a transaction on conn (tx null) or tx, body, commit, phases.
  void run_transaction(pqxx::connection_base* conn, pqxx::transaction_base* tx, const std::function<void(context&)>& body);

  bus_options options_;
  queue* queue_ = nullptr;  // borrowed; outlives the bus
  std::mutex mutex_;        // guards registration until frozen
  std::atomic<bool> frozen_{false};
  std::vector<type_entry> types_;                            // by detail::type_slot
  std::vector<dispatch_range> dispatch_;                     // by detail::type_slot, once frozen
  sync_listener no_listeners_{};                             // the range of a type with none
  std::unordered_map<std::string_view, std::size_t> names_;  // event name -> slot
  std::vector<async_listener> async_;
  std::vector<recurring_schedule> recurring_;
  std::vector<std::shared_ptr<observer>> observers_;
  std::atomic<std::uint64_t> phase_errors_{0};
  std::unique_ptr<detail::fill_guard> fill_;  // direct publishes: keeps them below stream.hold_above
};

template <class E, class F>
event_bus::sync_listener event_bus::erase(F&& handler) {
  using fn_t = std::decay_t<F>;
  return {[](void* fn, context& ctx, const void* ev) { (*static_cast<fn_t*>(fn))(ctx, *static_cast<const E*>(ev)); },
          {new fn_t(std::forward<F>(handler)), [](void* fn) { delete static_cast<fn_t*>(fn); }}};
}

template <class E, class F>
void event_bus::add_sync_listener(F&& handler) {
  detail::check_event<E>();
  using fn_t = std::decay_t<F>;
  static_assert(std::is_invocable_v<fn_t&, context&, const E&>,
                "bus: a sync listener is callable as handler(omnibus::context&, const E&)");
  sync_listener l = erase<E>(std::forward<F>(handler));
  std::lock_guard lock(mutex_);
  entry_for(detail::type_slot<E>, E::name).sync.push_back(std::move(l));
}

template <class E, class F>
void event_bus::add_async_listener(std::string name, F&& handler, listener_options options) {
  detail::check_event<E>();
  static_assert(!is_local_only<E>, "bus: a local-only event never leaves the process, so it cannot have async listeners");
  using fn_t = std::decay_t<F>;
  static_assert(std::is_invocable_v<fn_t&, context&, const E&>,
                "bus: an async listener is callable as handler(omnibus::context&, const E&)");
  async_listener l;
  l.name = std::move(name);
  l.event_name = E::name;
  l.event_version = E::version;
  l.partitions = partitions_of<E>;
  l.options = options;
  l.handler = [fn = fn_t(std::forward<F>(handler))](context& ctx, const envelope& env) mutable {
    const E event = decode_event<E>(env);
    fn(ctx, event);
  };
  add_async(detail::type_slot<E>, E::name, std::move(l));
}

template <class E, class F>
void event_bus::add_listener(phase when, F&& handler) {
  detail::check_event<E>();
  static_assert(std::is_copy_constructible_v<E>, "bus: a phase listener's event waits for the commit as a copy");
  using fn_t = std::decay_t<F>;
  static_assert(std::is_invocable_v<fn_t&, context&, const E&>,
                "bus: a phase listener is callable as handler(omnibus::context&, const E&)");
  sync_listener l = erase<E>(std::forward<F>(handler));
  std::lock_guard lock(mutex_);
  type_entry& e = entry_for(detail::type_slot<E>, E::name);
  (when == phase::after_commit ? e.after_commit : e.after_rollback).push_back(std::move(l));
}

template <class F>
auto event_bus::transact(pqxx::connection_base& conn, F&& body) {
  return transact_on(&conn, nullptr, body);
}

template <class F>
auto event_bus::transact(pqxx::transaction_base& tx, F&& body) {
  return transact_on(nullptr, &tx, body);
}

template <class F>
auto event_bus::transact_on(pqxx::connection_base* conn, pqxx::transaction_base* tx, F& body) {
  using result_t = std::invoke_result_t<F&, context&>;
  if constexpr (std::is_void_v<result_t>) {
    run_transaction(conn, tx, [&](context& ctx) { body(ctx); });
  } else {
    std::optional<result_t> out;
    run_transaction(conn, tx, [&](context& ctx) { out.emplace(body(ctx)); });
    return std::move(*out);
  }
}

template <class E>
batch_report event_bus::publish_batch(context& ctx, std::span<const E> events) {
  detail::check_event<E>();
  static_assert(!is_local_only<E>, "bus: publish_batch() sends events on; a local-only event goes through publish()");
  if (!frozen_.load(std::memory_order_acquire)) freeze();
  const std::size_t slot = detail::type_slot<E>;
  const dispatch_range r = slot < dispatch_.size() ? dispatch_[slot] : dispatch_range{};
  if (r.first == nullptr) check_name_free(slot, E::name);
  if (r.phased != nullptr) check_phased(ctx, E::name);
  for (const E& event : events) {
    for (const sync_listener* l = r.first; l != r.last; ++l) l->call(l->fn.get(), ctx, &event);
  }
  // Every body packed into one buffer that grows, rather than a string per event.
  msgpack::sbuffer bodies(events.size() * 64 + 64);
  std::vector<std::size_t> ends;
  ends.reserve(events.size());
  for (const E& event : events) {
    msgpack::pack(bodies, event);
    ends.push_back(bodies.size());
  }
  std::vector<std::string> keys;
  if constexpr (keyed_event<E>) {
    keys.reserve(events.size());
    for (const E& event : events) keys.emplace_back(E::ordering_key(event));
  }
  batch_report report = emit_batch(ctx, E::name, E::version, std::string_view(bodies.data(), bodies.size()), ends, keys,
                                   partitions_of<E>);
  if (r.phased != nullptr) {
    for (std::size_t i = 0; i < events.size(); ++i) {
      if (report.results[i].ack || ctx.transaction() != nullptr) record_phased(ctx, *r.phased, std::make_shared<E>(events[i]));
    }
  }
  return report;
}

template <class E>
inline event_id event_bus::publish(context& ctx, const E& event) {
  detail::check_event<E>();
  if (!frozen_.load(std::memory_order_acquire)) [[unlikely]] freeze();
  const std::size_t slot = detail::type_slot<E>;
  const dispatch_range r = slot < dispatch_.size() ? dispatch_[slot] : dispatch_range{};
  if (r.phased != nullptr) [[unlikely]] check_phased(ctx, E::name);  // before any listener runs
  if (r.first != nullptr) [[likely]] {
    for (const sync_listener* l = r.first; l != r.last; ++l) l->call(l->fn.get(), ctx, &event);
  } else {
    check_name_free(slot, E::name);
  }
  event_id id;
  if constexpr (keyed_event<E>) {
    id = emit(ctx, E::name, E::version, detail::encode_body(event), E::ordering_key(event), E::partitions);
  } else if constexpr (!is_local_only<E>) {
    id = emit(ctx, E::name, E::version, detail::encode_body(event));
  }
  if (r.phased != nullptr) [[unlikely]] record_phased(ctx, *r.phased, std::make_shared<E>(event));
  return id;
}

template <class E>
event_id event_bus::publish_at(context& ctx, std::chrono::system_clock::time_point when, const E& event,
                               const schedule_options& options) {
  detail::check_event<E>();
  static_assert(!is_local_only<E>, "bus: a local-only event never leaves the process, so it cannot be scheduled");
  return schedule(&ctx, nullptr, when, {}, detail::keyed(make_envelope(ctx, E::name, E::version, detail::encode_body(event)), event), options);
}

template <class E>
event_id event_bus::publish_at(pqxx::connection_base& conn, std::chrono::system_clock::time_point when, const E& event,
                               const schedule_options& options) {
  detail::check_event<E>();
  static_assert(!is_local_only<E>, "bus: a local-only event never leaves the process, so it cannot be scheduled");
  return schedule(nullptr, &conn, when, {}, detail::keyed(make_envelope(context{}, E::name, E::version, detail::encode_body(event)), event), options);
}

template <class E>
event_id event_bus::publish_after(context& ctx, std::chrono::milliseconds delay, const E& event,
                                  const schedule_options& options) {
  detail::check_event<E>();
  static_assert(!is_local_only<E>, "bus: a local-only event never leaves the process, so it cannot be scheduled");
  return schedule(&ctx, nullptr, std::nullopt, delay, detail::keyed(make_envelope(ctx, E::name, E::version, detail::encode_body(event)), event),
                  options);
}

template <class E>
event_id event_bus::publish_after(pqxx::connection_base& conn, std::chrono::milliseconds delay, const E& event,
                                  const schedule_options& options) {
  detail::check_event<E>();
  static_assert(!is_local_only<E>, "bus: a local-only event never leaves the process, so it cannot be scheduled");
  return schedule(nullptr, &conn, std::nullopt, delay,
                  detail::keyed(make_envelope(context{}, E::name, E::version, detail::encode_body(event)), event), options);
}

template <class F>
void event_bus::add_schedule(std::string name, std::string_view expression, std::string_view zone, F&& make,
                             recurring_options options) {
  using fn_t = std::decay_t<F>;
  constexpr bool takes_occurrence = std::is_invocable_v<fn_t&, cron::time_point>;
  static_assert(takes_occurrence || std::is_invocable_v<fn_t&>,
                "bus: a recurring schedule's make is callable as make() or make(omnibus::cron::time_point occurrence) "
                "and returns the event to publish");
  using E = std::decay_t<
      typename std::conditional_t<takes_occurrence, std::invoke_result<fn_t&, cron::time_point>, std::invoke_result<fn_t&>>::type>;
  detail::check_event<E>();
  static_assert(!is_local_only<E>, "bus: a local-only event never leaves the process, so it cannot be scheduled");
  recurring_schedule s{std::move(name), cron(expression, zone), std::string(E::name), options, {}};
  // One call at a time: the scheduler's thread and an operator's trigger may both call it.
  s.make = [this, fn = fn_t(std::forward<F>(make)), once = std::make_shared<std::mutex>()](
               cron::time_point occurrence) mutable {
    std::lock_guard lock(*once);
    const E event = [&] {
      if constexpr (takes_occurrence) {
        return fn(occurrence);
      } else {
        (void)occurrence;
        return fn();
      }
    }();
    return detail::keyed(make_envelope(context{}, E::name, E::version, detail::encode_body(event)), event);
  };
  add_recurring(detail::type_slot<E>, E::name, std::move(s));
}

}  // namespace omnibus
