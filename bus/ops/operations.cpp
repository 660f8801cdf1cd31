#include "omnibus/operations.hpp"

#include <algorithm>
#include <chrono>
#include <ctime>
#include <span>
#include <thread>

#include <pqxx/pqxx>

#include "omnibus/dead_letters.hpp"
#include "omnibus/envelope.hpp"
#include "omnibus/listener_control.hpp"
#include "core/schema.hpp"
#include "core/context_access.hpp"
#include "pg/store.hpp"
#include "runtime/loss_check.hpp"
#include "ops/session_lock.hpp"

namespace omnibus {
namespace {

class borrowed_connection final : public connection_source {
 public:
  explicit borrowed_connection(pqxx::connection_base& c) : conn_(c) {}
  pqxx::connection_base& connection() override { return conn_; }

 private:
  pqxx::connection_base& conn_;
};

queue& queue_of(const event_bus& bus) {
  if (bus.target() == nullptr) throw std::logic_error("bus: this operation needs a bus with a queue");
  return *bus.target();
}

}  // namespace

retry_outcome retry_dead_letter(const event_bus& bus, pqxx::connection_base& conn, std::int64_t id) {
  const std::string& schema = bus.options().schema;
  auto dl = find_dead_letter(conn, schema, id);
  if (!dl) throw error("no dead letter " + std::to_string(id) + " in schema " + schema);
  retry_outcome out{id, dl->listener, dl->event_id, false, {}, false};
  // One retry of a dead letter at a time, whoever asks (two redrives, a redrive and a retry by
  // hand): a listener without an inbox would otherwise run twice.
  const detail::session_lock one_at_a_time{conn, "omnibus:dead_letter:" + schema + ":" + std::to_string(id)};
  if (!one_at_a_time.held()) {
    out.error = "another process is retrying it now";
    out.busy = true;
    return out;
  }
  const auto& listeners = bus.async_listeners();
  auto it = std::find_if(listeners.begin(), listeners.end(), [&](const async_listener& l) { return l.name == dl->listener; });
  if (it == listeners.end()) {
    out.error = "no listener named " + dl->listener + " is registered in this build";
    return out;
  }
  try {
    // The stored subject is "<prefix>.<event name>": take the prefix the event was sent under,
    // so a retry never depends on the operator repeating --subject-prefix.
    std::string prefix = bus.options().stream.subject_prefix;
    const std::string suffix = "." + dl->event_name;
    if (!dl->event_name.empty() && dl->msg.subject.size() > suffix.size() &&
        dl->msg.subject.compare(dl->msg.subject.size() - suffix.size(), suffix.size(), suffix) == 0) {
      prefix = dl->msg.subject.substr(0, dl->msg.subject.size() - suffix.size());
    }
    envelope env = decode(dl->msg, prefix, bus.options().max_body_bytes);
    context ctx;
    ctx.meta() = env.meta;
    detail::context_access::set_event_id(ctx, env.id);
    borrowed_connection db{conn};
    detail::context_access::set_connection_source(ctx, &db);
    if (it->options.inbox) {
      // As the worker runs it: the inbox row, the handler's writes and its outbox rows commit
      // together, and an event already recorded is not run again.
      pqxx::work tx{conn};
      if (detail::claim_inbox(tx, schema, it->name, env.id.to_string())) {
        detail::context_access::set_transaction(ctx, &tx);
        it->handler(ctx, env);
        tx.commit();
      }
    } else {
      it->handler(ctx, env);
    }
    out.ok = true;
  } catch (const std::exception& e) {
    out.error = e.what();
  }
  if (out.ok) {
    discard_dead_letter(conn, schema, id);
  } else {
    dead_letter again = *dl;
    again.error = out.error;
    again.attempts = dl->attempts + 1;
    write_dead_letter(conn, schema, again);
  }
  return out;
}

std::vector<retry_outcome> retry_dead_letters(const event_bus& bus, pqxx::connection_base& conn,
                                              std::string_view listener, std::string_view event_name) {
  auto letters = list_dead_letters(conn, bus.options().schema, listener, event_name, 100000);
  std::reverse(letters.begin(), letters.end());  // oldest first
  std::vector<retry_outcome> out;
  out.reserve(letters.size());
  for (const dead_letter& dl : letters) out.push_back(retry_dead_letter(bus, conn, dl.id));
  return out;
}

std::vector<consumer_status> list_consumers(const event_bus& bus) {
  std::vector<consumer_status> out;
  for (consumer_info& c : queue_of(bus).consumers(bus.options().stream)) {
    const bool owned = std::any_of(bus.async_listeners().begin(), bus.async_listeners().end(),
                                   [&](const async_listener& l) {
                                     const std::vector<std::string> names = l.consumer_names();
                                     return std::find(names.begin(), names.end(), c.name) != names.end();
                                   });
    out.push_back({std::move(c), owned});
  }
  return out;
}

std::vector<std::string> prune_consumers(const event_bus& bus, bool dry_run) {
  std::vector<std::string> pruned;
  for (const consumer_status& c : list_consumers(bus)) {
    // Only what provisioning marked as this group's: a name prefix cannot tell group "shop"
    // from "shop_eu", and a consumer made by anything else is never ours to delete.
    if (c.owned || c.info.group != bus.options().group) continue;
    if (!dry_run) (void)queue_of(bus).delete_consumer(bus.options().stream, c.info.name);
    pruned.push_back(c.info.name);
  }
  return pruned;
}

namespace {

const async_listener& listener_named(const event_bus& bus, const std::string& name) {
  for (const async_listener& l : bus.async_listeners()) {
    if (l.name == name) return l;
  }
  std::string names;
  for (const async_listener& l : bus.async_listeners()) names += (names.empty() ? "" : ", ") + l.name;
  throw error("no listener named '" + name + "' in this build; its listeners: " + names);
}

std::string utc(std::chrono::system_clock::time_point t) {
  const std::time_t secs = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

// The listener's consumer as provisioned, starting where the replay asks.
consumer_config replay_config(const event_bus& bus, const async_listener& l, const replay_request& r) {
  for (consumer_config c : bus.consumer_configs()) {
    if (c.name != l.consumer_name) continue;
    c.start_time = r.from_time;
    c.start_sequence = r.from_sequence;
    return c;
  }
  throw error("listener " + l.name + " has no consumer configuration");  // not reached: every listener has one
}

}  // namespace

replay_plan plan_replay(const event_bus& bus, const replay_request& r) {
  const async_listener& l = listener_named(bus, r.listener);
  if (l.per_key()) throw error("replay of " + l.name + ": a per-key listener cannot be replayed yet");
  if (r.from_time.has_value() == r.from_sequence.has_value()) {
    throw error("replay: say where from: a time or a stream sequence (one of them)");
  }
  queue& q = queue_of(bus);
  const stream_config& stream = bus.options().stream;
  const std::optional<stream_state> st = q.state(stream);
  replay_plan plan;
  if (st) {
    plan.stream_first_sequence = st->first_sequence;
    plan.stream_first_time = st->first_time;
  }
  const std::string reach = plan.stream_first_time
                                ? "sequence " + std::to_string(plan.stream_first_sequence) + ", stored " +
                                      utc(*plan.stream_first_time)
                                : std::string("nothing: it is empty");
  const auto max_age = std::chrono::duration_cast<std::chrono::hours>(stream.max_age).count();
  if (r.from_sequence && st && *r.from_sequence < st->first_sequence) {
    throw error("replay from sequence " + std::to_string(*r.from_sequence) + ": stream " + stream.name +
                " reaches back to " + reach + " (its max_age keeps " + std::to_string(max_age) +
                " h); events before that are gone");
  }
  if (r.from_time && st && st->first_time && *r.from_time < *st->first_time && st->first_sequence > 1) {
    throw error("replay from " + utc(*r.from_time) + ": stream " + stream.name + " reaches back to " + reach +
                " (its max_age keeps " + std::to_string(max_age) + " h); events before that are gone");
  }
  consumer_config probe = replay_config(bus, l, r);
  probe.name = l.consumer_name + "_replay_probe";
  probe.group.clear();
  plan.events = q.count_deliverable(stream, probe);
  plan.from_time = r.from_time;
  if (r.from_sequence && plan.events > 0) {
    plan.from_time = q.stored_time(stream, probe.filter_subject, *r.from_sequence);
    if (!plan.from_time) {
      throw error("replay of " + l.name + ": cannot read when stream message #" + std::to_string(*r.from_sequence) +
                  " or the next of its subject was stored; nothing was changed");
    }
  }
  // Deleting the consumer forgets everything it has not acked: refuse a point after any of it.
  if (const auto info = q.info(stream, l.consumer_name); info && info->oldest_unacked && plan.from_time &&
                                                          *info->oldest_unacked < *plan.from_time) {
    throw error("replay of " + l.name + ": it has events it has not handled yet, the oldest stored " +
                utc(*info->oldest_unacked) + ", before the replay point, and a replay from there would skip them. "
                "Replay from that time or earlier, or let it catch up first; nothing was changed");
  }
  return plan;
}

replay_plan replay_listener(const event_bus& bus, pqxx::connection_base& conn, const replay_request& r,
                            std::chrono::milliseconds settle) {
  const replay_plan plan = plan_replay(bus, r);
  const async_listener& l = listener_named(bus, r.listener);
  if (l.per_key()) throw error("replay of " + l.name + ": a per-key listener cannot be replayed yet");
  const std::string& schema = bus.options().schema;
  (void)pause_listener(conn, schema, l.name, "replaying");
  // Every running worker stops fetching within its control poll, finishes what it runs of the
  // listener, and then reports it "paused": after that, nothing of the old consumer runs.
  for (const auto until = std::chrono::steady_clock::now() + settle;;) {
    const auto reports = list_listener_reports(conn, schema, std::chrono::seconds(15));
    const auto busy = std::find_if(reports.begin(), reports.end(), [&](const listener_report& x) {
      return x.listener == l.name && x.state != "paused";
    });
    if (busy == reports.end()) break;
    if (std::chrono::steady_clock::now() >= until) {
      throw error("replay of " + l.name + ": worker " + busy->worker + " still reports it " + busy->state +
                  (busy->reason.empty() ? "" : " (" + busy->reason + ")") +
                  "; nothing was changed and the listener stays paused: try again, or resume it");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  queue& q = queue_of(bus);
  const stream_config& stream = bus.options().stream;
  (void)q.delete_consumer(stream, l.consumer_name);
  const consumer_config c = replay_config(bus, l, r);
  q.provision(stream, std::span<const consumer_config>(&c, 1));
  if (!r.keep_inbox) {
    const std::optional<std::chrono::system_clock::time_point> from = plan.from_time;
    if (from) {
      pqxx::work tx{conn};
      tx.exec_params0("DELETE FROM " + detail::table_name(schema, "bus_inbox") +
                          " WHERE listener = $1 AND handled_at >= to_timestamp($2::float8) - interval '5 minutes'",
                      l.name,
                      static_cast<double>(std::chrono::duration_cast<std::chrono::milliseconds>(from->time_since_epoch())
                                              .count()) /
                          1000.0);
      tx.commit();
    }
  }
  (void)resume_listener(conn, schema, l.name);
  return plan;
}

std::uint64_t handled_by_all(queue& q, const stream_config& stream) {
  const std::optional<stream_state> before = q.state(stream);
  if (!before) throw error("this queue keeps no stream to purge");
  std::uint64_t lowest = before->last_sequence + 1;
  for (const consumer_info& ci : q.consumers(stream)) {
    lowest = std::min(lowest, detail::lowest_unhandled(q, stream, ci, ci.filter_subject, before->first_sequence,
                                                       before->last_sequence));
  }
  return lowest;
}

}  // namespace omnibus
