#include "runtime/loss_check.hpp"

#include <algorithm>
#include <cstdint>


namespace omnibus::detail {

std::uint64_t lowest_unhandled(queue& q, const stream_config& stream, const consumer_info& ci, const std::string& subject,
                               std::uint64_t first_sequence, std::uint64_t last_sequence) {
  if (ci.pending + ci.ack_pending == 0) return last_sequence + 1;
  // Everything up to the ack floor is handled; the consumer's first stored event after it is
  // the lowest it may not have handled.
  const std::uint64_t from = std::max(ci.ack_floor + 1, first_sequence);
  if (subject.empty()) return from;
  return q.first_stored(stream, subject, from).value_or(from);
}

std::optional<mark_check> check_losses(queue& q, const stream_config& stream, const std::string& group,
                                       const checked_consumer& c, const std::optional<stream_mark>& last) {
  const std::string& subject = c.subject;
  // The stream before and after the consumer: every event up to before->last_sequence existed
  // when the consumer's counts were taken, and none after after->last_sequence did.
  const std::optional<stream_state> before = q.state(stream);
  if (!before) return std::nullopt;
  const std::optional<consumer_info> ci = q.info(stream, c.consumer);
  if (!ci) return std::nullopt;
  const std::optional<stream_state> after = q.state(stream);
  if (!after) return std::nullopt;

  mark_check out;
  stream_mark& m = out.next;
  m.listener = c.listener;
  m.consumer_created = ci->created;
  m.pending = ci->pending;
  m.deliveries = ci->deliveries;
  m.last_sequence = after->last_sequence;
  m.lowest_unhandled = lowest_unhandled(q, stream, *ci, subject, after->first_sequence, before->last_sequence);
  // Events that left the stream while this check read it (after the consumer's counts, before
  // the lookup above) are in those counts but were skipped by the lookup: such a mark would sit
  // above them, and the next check would never see them pass. Keep it below them.
  const std::optional<stream_state> settled = q.state(stream);
  if (!settled) return std::nullopt;
  if (settled->first_sequence != before->first_sequence && ci->pending + ci->ack_pending > 0) {
    m.lowest_unhandled = std::min(m.lowest_unhandled, std::max(ci->ack_floor + 1, before->first_sequence));
  }

  // A new consumer (a replay, a recreation) starts new counts. (The database keeps microseconds.)
  const auto micros = [](const std::optional<std::chrono::system_clock::time_point>& t) {
    return t ? std::chrono::duration_cast<std::chrono::microseconds>(t->time_since_epoch()).count() : -1;
  };
  if (!last || micros(last->consumer_created) != micros(ci->created) || after->first_sequence <= last->lowest_unhandled) {
    return out;
  }

  // Events of the listener stored since the last check, up to before->last_sequence: counted
  // from the later start second, so that arrivals meanwhile can only make this smaller.
  std::uint64_t arrivals = 0;
  if (before->last_sequence > last->last_sequence) {
    consumer_config probe;
    probe.name = c.consumer + "__loss_check";
    probe.group = group;
    probe.filter_subject = subject;
    probe.start_sequence = last->last_sequence + 1;
    const std::uint64_t from_last = q.count_deliverable(stream, probe);
    probe.start_sequence = before->last_sequence + 1;
    const std::uint64_t from_before = q.count_deliverable(stream, probe);
    arrivals = from_last > from_before ? from_last - from_before : 0;
    // Events after before->last_sequence that left between the probes would count as arrivals:
    // then the probes say nothing reliable, and the check counts none (a lower bound).
    if (const auto settled = q.state(stream); !settled || settled->first_sequence > before->last_sequence + 1) arrivals = 0;
  }
  const auto delivered = static_cast<std::int64_t>(ci->deliveries) - static_cast<std::int64_t>(last->deliveries);
  const std::int64_t lost = static_cast<std::int64_t>(last->pending) + static_cast<std::int64_t>(arrivals) -
                            static_cast<std::int64_t>(ci->pending) - std::max<std::int64_t>(delivered, 0);
  // They were among the sequences that left: never more than those.
  const auto gone = static_cast<std::int64_t>(after->first_sequence - last->lowest_unhandled);
  if (lost > 0) {
    out.lost = lost_events{last->lowest_unhandled, after->first_sequence - 1,
                           static_cast<std::uint64_t>(std::min(lost, gone))};
  }
  return out;
}

}  // namespace omnibus::detail
