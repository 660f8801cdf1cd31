#pragma once
// The queue the core needs: a stream of subjects, durable pull consumers, publish with ack,
// and per-message settlement. omnibus::jetstream implements it over NATS.c; omnibus::memory_queue
// implements it in memory for users' own unit tests.

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "omnibus/error.hpp"
#include "omnibus/event_id.hpp"
#include "omnibus/export.hpp"
#include "omnibus/message.hpp"

namespace omnibus {

/// The stream every event goes to. Defaults are documented in the README ("Configuration").
struct OMNIBUS_API stream_config {
  std::string name = "OMNIBUS";  ///< the stream's name on the server
  std::string subject_prefix = "omnibus";  ///< the stream takes "<prefix>.>"
  /// How long an event is kept: a listener may be down this long without missing events.
  std::chrono::seconds max_age = std::chrono::hours(24 * 7);
  std::int64_t max_bytes = std::int64_t{1} << 30;  ///< full stream: publishes are refused (DiscardNew)
  std::int64_t max_msgs = -1;  ///< the most events kept (-1: no limit but max_bytes); full: publishes are refused
  /// Publishers stop above this fraction of max_bytes or max_msgs: the relay holds rows back in
  /// the outbox and a direct publish throws publish_error ("stream nearly full"). nats-server
  /// 2.9.10 drops the oldest events near its limits despite DiscardNew (nats-io/nats-server#4771),
  /// so the bus keeps out of that region. 1 turns the hold off. Not a server setting.
  double hold_above = 0.9;
  /// Nats-Msg-Id dedup window: a re-publish of an event id within it lands once.
  std::chrono::seconds duplicate_window = std::chrono::minutes(2);
  std::int32_t max_msg_size = 1024 * 1024;  ///< bodies plus headers; matches the bus's body limit
  bool memory_storage = false;              ///< file storage unless set (tests use memory)
  int replicas = 1;                         ///< copies kept in a cluster (1: a single server; 3 survives a node's loss)
  /// The cluster the stream's copies go to (a supercluster's member); empty: where the server decides.
  /// Used when the stream is created.
  std::string placement_cluster;
  /// Server tags every copy's server must have (e.g. "az:1"); used when the stream is created.
  std::vector<std::string> placement_tags;
};

/// One durable pull consumer, the one an async listener reads.
struct OMNIBUS_API consumer_config {
  std::string name;            ///< durable name: "<group>_<listener>", [A-Za-z0-9_-]
  /// The application that owns it, kept with the consumer (its description) so that operator
  /// tools never take another group's consumer for theirs: "shop_eu_mailer" could be group
  /// "shop" or "shop_eu" by its name alone.
  std::string group;
  std::string filter_subject;  ///< "<prefix>.<event name>"
  /// How long a delivery may stay unsettled before the server redelivers it; in_progress()
  /// restarts the clock.
  std::chrono::milliseconds ack_wait = std::chrono::seconds(30);
  std::int64_t max_ack_pending = 1000;  ///< 1 for ordered listeners
  /// Where a new consumer starts: nullopt is "now" (new events only); a time replays from it.
  std::optional<std::chrono::system_clock::time_point> start_time;
  /// Where a new consumer starts, by stream sequence (a replay); takes precedence over start_time.
  std::optional<std::uint64_t> start_sequence;
  /// The server's ceiling on deliveries of one message (-1: none). The worker settles every
  /// message well before it; the ceiling only catches what the worker cannot act on (a
  /// message that crashes it, say), and the queue reports each one (queue::open_abandoned).
  std::int64_t max_deliver = -1;
};

/// The server's answer to a publish.
struct OMNIBUS_API publish_ack {
  std::uint64_t sequence = 0;  ///< the message's stream sequence (for a duplicate: the first copy's)
  bool duplicate = false;  ///< the id was seen within the duplicate window: nothing was added
};

/// Thrown by publish when the event did not reach the stream, or may not have.
class OMNIBUS_API publish_error : public error {
 public:
  /// Whether the event may have been stored: decides how it is safe to retry.
  enum class outcome {
    not_sent,  ///< certainly not stored (refused, not connected): safe to retry or report
    unknown,   ///< may still be stored (timeout, buffered during reconnect): retry with the same id
  };
  /// `what` becomes what(); `id` is the event's (nil when the message carried none that parses).
  publish_error(outcome o, event_id id, const std::string& what) : error(what), outcome_(o), id_(id) {}
  /// Whether the event may have been stored.
  [[nodiscard]] outcome result() const noexcept { return outcome_; }
  /// The event the publish was for, from its Nats-Msg-Id; nil when it had none that parses.
  [[nodiscard]] event_id id() const noexcept { return id_; }

 private:
  outcome outcome_;
  event_id id_;
};

/// One message's outcome in publish_batch: an ack, or the error it would have thrown.
struct OMNIBUS_API batch_result {
  std::optional<publish_ack> ack;                 ///< set when the server stored (or deduplicated) it
  std::optional<publish_error::outcome> failure;  ///< set instead of ack: whether it may have been stored
  std::string error;  ///< empty when acked
};

/// One fetched message. Settle it exactly once (ack, nak or term); in_progress() any number of
/// times before. Settling is thread-safe with respect to other deliveries, not to itself.
class OMNIBUS_API delivery {
 public:
  virtual ~delivery() = default;
  /// The message as delivered; owned by this delivery and valid as long as it.
  [[nodiscard]] virtual const message& msg() const noexcept = 0;
  /// 1 on the first delivery; JetStream's count, so a redelivery after a crash counts too.
  [[nodiscard]] virtual std::uint64_t delivery_count() const noexcept = 0;
  /// The message's sequence in the stream (from open_abandoned(): the abandoned message's).
  [[nodiscard]] virtual std::uint64_t stream_sequence() const noexcept = 0;
  /// Handled: never redeliver. Sent without waiting (queue::flush() waits); throws
  /// omnibus::error when it cannot be sent.
  virtual void ack() = 0;
  /// Redeliver after `delay` (0: at once).
  virtual void nak(std::chrono::milliseconds delay) = 0;
  /// Never redeliver.
  virtual void term() = 0;
  /// Restart the AckWait clock: the handler is still working.
  virtual void in_progress() = 0;
  /// Why the message's header block could not be read, or empty. msg() then has no headers,
  /// and the worker dead-letters the message without decoding it.
  [[nodiscard]] virtual std::string_view header_error() const noexcept { return {}; }
  /// With header_error(): the header block exactly as the broker stores it (empty when it
  /// could not be read back).
  [[nodiscard]] virtual std::string_view raw_header_block() const noexcept { return {}; }
  /// For a delivery from queue::open_abandoned(): the consumer the broker stopped delivering
  /// msg() to. Settling it settles that report, never the original message.
  [[nodiscard]] virtual std::string_view abandoned_by() const noexcept { return {}; }
};

/// A pull subscription on one durable consumer. fetch() may be called from one thread at a time.
class OMNIBUS_API consumer {
 public:
  virtual ~consumer() = default;
  /// Up to `max` messages, waiting at most `timeout` for the first; empty when none came.
  /// `max` is what the caller has room for now; a consumer may ask the broker ahead for up to
  /// that many more, and hands them out on a later call.
  [[nodiscard]] virtual std::vector<std::unique_ptr<delivery>> fetch(std::size_t max,
                                                                      std::chrono::milliseconds timeout) = 0;
  /// Returns to the broker, unhandled, what the consumer received ahead of fetch() (the worker
  /// calls it while a listener is paused or its breaker is open). By default nothing is held.
  virtual void give_back() {}
};

/// What the server knows of one consumer.
struct OMNIBUS_API consumer_info {
  std::string name;  ///< the durable name
  std::string group;  ///< the owning group, as provisioned; empty for a consumer made otherwise (or before 0.2)
  std::string filter_subject;  ///< "<prefix>.<event name>"; empty when the server reports none
  std::uint64_t pending = 0;      ///< in the stream, not yet delivered
  std::uint64_t ack_pending = 0;  ///< delivered, not yet acked
  std::uint64_t redelivered = 0;  ///< delivered more than once and not yet acked
  /// When the server last delivered a message to it; nullopt: never, or not known (memory_queue).
  std::optional<std::chrono::system_clock::time_point> last_delivered;
  /// When the stream stored the oldest event this consumer has not acked (delivered or still
  /// waiting); nullopt: none waits, or not known (memory_queue, a consumer list).
  std::optional<std::chrono::system_clock::time_point> oldest_unacked;
  /// Every event up to this stream sequence is acked (or gone from the stream); 0 when not known.
  std::uint64_t ack_floor = 0;
  /// Deliveries so far, redeliveries included (the consumer's delivered sequence); 0 when not known.
  std::uint64_t deliveries = 0;
  /// The stream sequence of the newest message it delivered; 0 when none, or not known.
  std::uint64_t delivered_sequence = 0;
  /// When the server created the consumer; a replay recreates it. nullopt when not known.
  std::optional<std::chrono::system_clock::time_point> created;
};

/// How full the stream is.
struct OMNIBUS_API stream_state {
  std::uint64_t messages = 0;        ///< messages stored now
  std::uint64_t bytes = 0;           ///< bytes stored now, as the server counts them (against max_bytes)
  std::uint64_t first_sequence = 0;  ///< sequence of the oldest message still stored
  std::uint64_t last_sequence = 0;   ///< sequence of the newest message ever stored (0: none)
  std::int64_t max_bytes = 0;  ///< the server's limit (<= 0: none)
  std::int64_t max_msgs = 0;   ///< the server's limit on messages (<= 0: none)
  /// When the oldest message still stored was stored; nullopt: the stream is empty.
  std::optional<std::chrono::system_clock::time_point> first_time;
  int replicas = 1;  ///< the stream's copies, as the server keeps it
  /// A replicated stream's leader now (its server name); empty for one copy, or during an election.
  std::string leader;
  /// A replicated stream's copies that are up to date: its leader's and its current followers'
  /// (replicas when all are); 0 during an election.
  int current = 0;
};

/// The broker. Implementations are thread-safe.
class OMNIBUS_API queue {
 public:
  virtual ~queue() = default;
  /// Creates the stream and consumers that are missing; updates what may change; throws
  /// omnibus::error when an existing one conflicts (another filter, other stream settings).
  virtual void provision(const stream_config& stream, std::span<const consumer_config> consumers) = 0;
  /// Publishes and waits for the ack. Throws publish_error carrying the Nats-Msg-Id's event id.
  virtual publish_ack publish(const message& msg, std::chrono::milliseconds timeout) = 0;
  /// Publishes all, pipelined, in order; waits for every ack. Never throws for one message's
  /// failure: result i belongs to msgs[i].
  [[nodiscard]] virtual std::vector<batch_result> publish_batch(std::span<const message> msgs,
                                                                std::chrono::milliseconds timeout) = 0;
  /// publish_batch for messages made one at a time: next(i) returns message i (valid until the
  /// next call), or nullptr to stop before it. One result per message made, in order. A batch
  /// too large to hold twice in memory goes out this way; this default makes them all first.
  [[nodiscard]] virtual std::vector<batch_result> publish_each(std::size_t count,
                                                               const std::function<const message*(std::size_t)>& next,
                                                               std::chrono::milliseconds timeout) {
    std::vector<message> msgs;
    for (std::size_t i = 0; i < count; ++i) {
      const message* m = next(i);
      if (m == nullptr) break;
      msgs.push_back(*m);
    }
    return publish_batch(msgs, timeout);
  }
  /// A pull subscription on an existing durable consumer of `stream`.
  [[nodiscard]] virtual std::unique_ptr<consumer> open_consumer(const stream_config& stream,
                                                                const std::string& consumer_name) = 0;
  /// The consumer's counters; nullopt when it does not exist.
  [[nodiscard]] virtual std::optional<consumer_info> info(const stream_config& stream,
                                                          const std::string& consumer_name) = 0;
  /// Every durable consumer on the stream.
  [[nodiscard]] virtual std::vector<consumer_info> consumers(const stream_config& stream) = 0;
  /// Deletes a durable consumer; false when it did not exist.
  virtual bool delete_consumer(const stream_config& stream, const std::string& consumer_name) = 0;
  /// Waits until every ack, nak and term sent so far has reached the server, at most `timeout`.
  virtual void flush(std::chrono::milliseconds timeout) = 0;
  /// The stream's fill; nullopt where the broker has no such limit (memory_queue).
  [[nodiscard]] virtual std::optional<stream_state> state(const stream_config&) { return std::nullopt; }
  /// How many messages a consumer made as `probe` would deliver (its filter, its start): made,
  /// counted and deleted again. Throws omnibus::error where the broker cannot say (memory_queue).
  [[nodiscard]] virtual std::uint64_t count_deliverable(const stream_config&, const consumer_config& /*probe*/) {
    throw error("this queue cannot count what a consumer would deliver");
  }
  /// When the stream stored its first message on `subject` at or after `sequence`; nullopt: none.
  [[nodiscard]] virtual std::optional<std::chrono::system_clock::time_point> stored_time(const stream_config&,
                                                                                         const std::string& /*subject*/,
                                                                                         std::uint64_t /*sequence*/) {
    return std::nullopt;
  }
  /// The sequence of the first message the stream still stores on `subject` at or after
  /// `sequence`; nullopt: none, or the broker cannot say.
  [[nodiscard]] virtual std::optional<std::uint64_t> first_stored(const stream_config&, const std::string& /*subject*/,
                                                                  std::uint64_t /*sequence*/) {
    return std::nullopt;
  }
  /// Messages the broker gave up delivering (consumer_config::max_deliver reached), for the
  /// consumers of every group: each delivery's msg() is the abandoned message, read back from
  /// the stream, and abandoned_by() names its consumer. Durable per `group`: a report waits
  /// until that group's worker settles it. nullptr where the broker never gives up (memory_queue).
  [[nodiscard]] virtual std::unique_ptr<consumer> open_abandoned(const stream_config&, const std::string& /*group*/) {
    return nullptr;
  }
};

}  // namespace omnibus
