#pragma once
// What a publisher hands to listeners besides the event: its transaction, its metadata, and
// (in the worker) a deadline and a stop token.

#include <chrono>
#include <cstdint>
#include <stop_token>
#include <string>
#include <utility>
#include <vector>

#include "omnibus/event_id.hpp"
#include "omnibus/export.hpp"
#include "omnibus/fwd.hpp"

namespace omnibus {

/// Metadata that travels with every event published under a context (see "Wire format").
struct OMNIBUS_API metadata {
  std::string correlation_id;  ///< Omnibus-Correlation-Id; empty: not sent
  std::string traceparent;     ///< W3C trace context; empty: not sent
  std::string tracestate;      ///< W3C trace context; empty: not sent
  /// User key/values, sent as `Omnibus-Meta-<key>`. Keys: [A-Za-z0-9_-]; values: no CR or LF.
  std::vector<std::pair<std::string, std::string>> values;

  /// The value of user key `key`, or nullptr.
  [[nodiscard]] const std::string* value(std::string_view key) const noexcept;
};

namespace detail {
struct context_access;
struct phase_log;
}  // namespace detail

/// Where a handler's context gets its database connection: the worker's pool. Implemented
/// by the worker; a context never owns the connection.
class OMNIBUS_API connection_source {
 public:
  virtual ~connection_source() = default;
  /// A connection for the rest of the handler call, on the calling thread. Throws omnibus::error.
  virtual pqxx::connection_base& connection() = 0;
};

/// The publisher's side of a publish, or the worker's side of a handler call. Not
/// thread-safe: one context belongs to one call chain on one thread.
class OMNIBUS_API context {
 public:
  /// The clock of deadline(): steady, so wall-clock changes never move a deadline.
  using clock = std::chrono::steady_clock;

  /// No transaction: async events go straight to the stream.
  context() = default;
  /// Borrows `tx` (a pqxx::work or any transaction), which must outlive this context. Sync
  /// listeners write through it; async events go to the outbox in it.
  explicit context(pqxx::transaction_base& tx) noexcept : tx_(&tx) {}

  /// The caller's transaction, or nullptr.
  [[nodiscard]] pqxx::transaction_base* transaction() const noexcept { return tx_; }
  /// The caller's transaction; throws std::logic_error when the context has none.
  [[nodiscard]] pqxx::transaction_base& tx() const;

  /// In a worker's handler: a pooled connection, leased on first use for the rest of the
  /// call (the same one each time). Throws std::logic_error outside the worker.
  [[nodiscard]] pqxx::connection_base& db() const;

  /// In a handler: the id of the event being handled (a good idempotency key). Nil elsewhere.
  [[nodiscard]] const omnibus::event_id& event_id() const noexcept { return event_id_; }
  /// In a handler: which attempt this is (1 the first; JetStream's delivery count). 0 elsewhere.
  [[nodiscard]] std::uint64_t attempt() const noexcept { return attempt_; }

  /// The metadata: a publisher fills it before publishing; in a handler, the handled event's.
  [[nodiscard]] omnibus::metadata& meta() noexcept { return meta_; }
  /// The metadata, read-only.
  [[nodiscard]] const omnibus::metadata& meta() const noexcept { return meta_; }

  /// When the worker gives up on this handler call (time_point::max(): never).
  [[nodiscard]] clock::time_point deadline() const noexcept { return deadline_; }
  /// Requested when the deadline passes or the worker shuts down; long handlers poll it.
  [[nodiscard]] std::stop_token stop_token() const noexcept { return stop_; }

 private:
  // The worker (and a dead letter's retry) set the handler-side fields through this; users
  // never do.
  friend struct detail::context_access;

  pqxx::transaction_base* tx_ = nullptr;  // borrowed
  connection_source* db_ = nullptr;       // borrowed
  omnibus::metadata meta_;
  omnibus::event_id event_id_;
  std::uint64_t attempt_ = 0;
  clock::time_point deadline_ = clock::time_point::max();
  std::stop_token stop_;
  detail::phase_log* phases_ = nullptr;   // set by event_bus::transact(): where phased events wait
};

}  // namespace omnibus
