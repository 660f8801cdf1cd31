#pragma once
// Hooks for what the bus and its worker do, so that metrics, tracing (OpenTelemetry, ...) and
// logging can be fed without Omnibus depending on any of them. Register observers on the bus
// before it freezes (event_bus::add_observer); the worker's Prometheus metrics are one.
//
// Calls come from the thread doing the work (the publisher's, a handler slot's) and must be
// quick: an observer that needs I/O queues it. An exception thrown by an observer is caught
// and ignored: observing never changes what the bus does.

#include <chrono>
#include <cstdint>
#include <string_view>

#include "omnibus/export.hpp"
#include "omnibus/fwd.hpp"

namespace omnibus {

/// When a phase listener runs (event_bus::add_listener, event_bus::transact).
enum class phase {
  after_commit,    ///< in the publishing process, once the transaction committed
  after_rollback,  ///< in the publishing process, once the transaction rolled back
};

/// "after_commit" or "after_rollback".
[[nodiscard]] OMNIBUS_API const char* to_string(phase when) noexcept;

/// How an event left the publishing process.
enum class publish_path {
  direct,  ///< straight to the stream (no transaction), its ack awaited
  outbox,  ///< into the outbox, in the publisher's transaction; the relay sends it after commit
};

/// The short stable name of a publish path ("direct", "outbox"), as used in metric labels.
[[nodiscard]] OMNIBUS_API const char* to_string(publish_path path) noexcept;

/// What the worker did with one delivery to one listener.
enum class handle_outcome {
  handled,      ///< the handler returned; acked
  retry,        ///< the handler failed (or its inbox commit's outcome was unknown); redelivered later
  dead_letter,  ///< written to the dead letters (or terminated when that was impossible)
  parked,       ///< an ordered listener stopped at this event until an operator's word
  skipped,      ///< acked without running: already in the inbox, or skipped by an operator
  deferred,     ///< a newer version than this build reads; redelivered later
  timed_out,    ///< the handler passed its deadline; its late result was discarded
  returned,     ///< given back unhandled (shutdown); redelivered at once
};

/// The short stable name of an outcome ("handled", "dead_letter", ...), as used in metric labels.
[[nodiscard]] OMNIBUS_API const char* to_string(handle_outcome outcome) noexcept;

/// The delivery a handle hook is about. The views are valid during the call only.
struct OMNIBUS_API handle_info {
  std::string_view listener;    ///< the async listener's name
  std::string_view event_name;  ///< the event's name (empty when its headers did not say)
  std::string_view event_id;    ///< the event's id as text (or "seq:<n>" without one)
  std::uint64_t attempt = 0;    ///< 1 for the first delivery
  std::string_view traceparent;  ///< the W3C trace context the event carries; empty: none
  std::string_view tracestate;   ///< its vendor part; empty: none
};

/// Override what you need; every hook does nothing by default.
class OMNIBUS_API observer {
 public:
  virtual ~observer();

  /// An event left the process through `path`, after its sync listeners ran (publisher's thread).
  virtual void on_publish(std::string_view event_name, publish_path path);
  /// A publish (or a batch's event) failed to reach the stream or the outbox; `what` says why.
  virtual void on_publish_error(std::string_view event_name, std::string_view what);
  /// The worker is about to handle a delivery (handler slot's thread).
  virtual void on_handle_start(const handle_info& info);
  /// The worker settled that delivery: once per on_handle_start, with the outcome, how long it
  /// took from on_handle_start, and the failure's text for retry, dead_letter and parked. It
  /// comes after the settlement, so with several handler slots the next attempt's
  /// on_handle_start may come first.
  virtual void on_handle_end(const handle_info& info, handle_outcome outcome, std::chrono::nanoseconds took,
                             std::string_view error);
  /// An after-commit or after-rollback listener of `event_name` threw `what` (publisher's
  /// thread). The commit stands and the other phase listeners ran.
  virtual void on_phase_error(std::string_view event_name, phase when, std::string_view what);
};

}  // namespace omnibus
