#pragma once
// The loss check: whether events of a listener left the stream (max_age, the stream's limits,
// nats-server#4771) before the listener handled them. The server forgets such events at once
// (it takes an undelivered one off the consumer's pending count), so each check leaves a mark
// in the database, and the next one compares: when the stream's first sequence has passed the
// lowest sequence the listener had not handled, the events gone are those its pending count
// lost without deliveries to explain it.

#include <cstdint>
#include <optional>
#include <string>

#include "omnibus/event_bus.hpp"
#include "omnibus/queue.hpp"
#include "pg/store.hpp"

namespace omnibus::detail {

/// The lowest stream sequence the consumer `ci` (filtering `subject`; empty: every subject) may
/// not have handled; `last_sequence` is the stream's last sequence read before `ci`. Everything
/// of its below it is handled.
[[nodiscard]] std::uint64_t lowest_unhandled(queue& q, const stream_config& stream, const consumer_info& ci,
                                             const std::string& subject, std::uint64_t first_sequence,
                                             std::uint64_t last_sequence);

/// One durable consumer the loss check reads: a listener's, or one partition's of a per-key
/// listener (each partition consumer has a mark of its own).
struct checked_consumer {
  std::string listener;  ///< the async listener's name
  std::string consumer;  ///< its durable consumer
  std::string subject;   ///< what the consumer filters (a keyed event's other listeners: "<prefix>.<event>.*")
};

/// Reads the stream and the consumer and compares them with `last`: the mark to keep, and the
/// events lost since `last` (a lower bound: redeliveries count as deliveries). Throws what the
/// queue throws; nullopt when the queue keeps no stream (memory_queue) or the consumer is
/// missing.
[[nodiscard]] std::optional<mark_check> check_losses(queue& q, const stream_config& stream, const std::string& group,
                                                     const checked_consumer& c,
                                                     const std::optional<stream_mark>& last);

}  // namespace omnibus::detail
