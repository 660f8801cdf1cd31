#include "stats.hpp"

#include <algorithm>
#include <cstdio>

#include "json_log.hpp"

namespace omnibus::detail {

stats_view read_stats(const event_bus& bus, pqxx::connection_base& db) {
  stats_view v;
  v.db = read_bus_state(db, bus.options().schema);
  queue& q = *bus.target();
  const stream_config& stream = bus.options().stream;
  v.stream_name = stream.name;
  v.stream = q.state(stream);
  const auto reports = list_listener_reports(db, bus.options().schema, std::chrono::seconds(15));
  for (const async_listener& l : bus.async_listeners()) {
    listener_stats s;
    s.name = l.name;
    s.consumer = l.consumer_name;
    if (auto info = listener_info(q, stream, l)) {
      s.consumer_found = true;
      s.pending = info->pending;
      s.ack_pending = info->ack_pending;
      s.redelivered = info->redelivered;
      if (info->oldest_unacked) {
        s.oldest_unacked_age = std::max(std::chrono::milliseconds(0), std::chrono::duration_cast<std::chrono::milliseconds>(
                                                                          std::chrono::system_clock::now() - *info->oldest_unacked));
      }
    }
    for (const auto& [name, n] : v.db.dead_letters) {
      if (name == l.name) s.dead_letters = n;
    }
    for (const auto& name : v.db.parked) s.parked = s.parked || name == l.name;
    for (const auto& [name, n] : v.db.parked_keys) {
      if (name == l.name) s.parked_keys = n;
    }
    for (const auto& name : v.db.paused) s.paused = s.paused || name == l.name;
    for (const auto& r : reports) {
      if (r.listener != l.name) continue;
      ++s.workers;
      if (r.state != "running" && r.state != "paused" && std::find(s.flow.begin(), s.flow.end(), r.state) == s.flow.end()) {
        s.flow.push_back(r.state);
      }
    }
    v.listeners.push_back(std::move(s));
  }
  return v;
}

namespace {

std::string format(const char* fmt, auto... args) {
  char buf[512];
  std::snprintf(buf, sizeof buf, fmt, args...);
  return buf;
}

std::string age(const std::optional<std::chrono::milliseconds>& a) {
  if (!a) return "-";
  return format("%.1f s", static_cast<double>(a->count()) / 1000.0);
}

}  // namespace

std::string stats_text(const stats_view& v, std::chrono::milliseconds alert_after, bool colour) {
  std::string out = format("%-24s %10s %12s %12s %10s %13s %9s %7s %8s  %s\n", "listener", "pending", "ack pending",
                           "redelivered", "oldest", "dead letters", "parked", "paused", "workers", "flow");
  for (const auto& l : v.listeners) {
    std::string flow;
    for (const auto& f : l.flow) flow += (flow.empty() ? "" : ",") + f;
    // A per-key listener parks keys, not itself: how many.
    const std::string parked = l.parked_keys > 0 ? format("%llu key%s", static_cast<unsigned long long>(l.parked_keys),
                                                          l.parked_keys == 1 ? "" : "s")
                               : l.parked ? "YES" : "no";
    out += format("%-24s %10llu %12llu %12llu %10s %13llu %9s %7s %8zu  %s%s\n", l.name.c_str(),
                  static_cast<unsigned long long>(l.pending), static_cast<unsigned long long>(l.ack_pending),
                  static_cast<unsigned long long>(l.redelivered), age(l.oldest_unacked_age).c_str(),
                  static_cast<unsigned long long>(l.dead_letters),
                  parked.c_str(), l.paused ? "YES" : "no", l.workers, flow.empty() ? "-" : flow.c_str(),
                  l.consumer_found ? "" : "  (no consumer: run the worker once to provision it)");
  }
  out += format("\noutbox     %llu row(s) waiting, oldest %s\n", static_cast<unsigned long long>(v.db.outbox_rows),
                age(v.db.outbox_oldest_age).c_str());
  out += format("scheduled  %llu pending, %llu due now%s\n", static_cast<unsigned long long>(v.db.scheduled_pending),
                static_cast<unsigned long long>(v.db.scheduled_due),
                v.db.scheduled_overdue ? (", the most overdue " + age(v.db.scheduled_overdue) + " late").c_str() : "");
  if (v.db.relay_active) {
    out += "relay      active (some process holds the relay lock)\n";
  } else {
    out += "relay      NONE: no process holds the relay lock; outbox rows are not being sent\n";
  }
  if (v.db.unrelayed(alert_after)) {
    out += std::string(colour ? "\033[1;31m" : "") + "ALERT      outbox rows have waited " + age(v.db.outbox_oldest_age) +
           " with no relay: events are written and nothing sends them. Run a worker with its relay." +
           (colour ? "\033[0m" : "") + "\n";
  }
  if (v.stream) {
    const double fill = v.stream->max_bytes > 0 ? 100.0 * static_cast<double>(v.stream->bytes) /
                                                      static_cast<double>(v.stream->max_bytes)
                                                : 0.0;
    out += format("stream     %s: %llu event(s), %llu of %lld bytes (%.1f%% full)\n", v.stream_name.c_str(),
                  static_cast<unsigned long long>(v.stream->messages), static_cast<unsigned long long>(v.stream->bytes),
                  static_cast<long long>(v.stream->max_bytes), fill);
  }
  out += format("schema     version %d\n", v.db.schema_version);
  return out;
}

std::string stats_json(const stats_view& v, std::chrono::milliseconds alert_after) {
  std::string out = "{\"listeners\":[";
  bool first = true;
  for (const auto& l : v.listeners) {
    if (!first) out += ",";
    first = false;
    out += "{\"name\":" + json_quote(l.name) + ",\"consumer\":" + json_quote(l.consumer) +
           ",\"consumer_found\":" + (l.consumer_found ? "true" : "false") +
           format(",\"pending\":%llu,\"ack_pending\":%llu,\"redelivered\":%llu,\"dead_letters\":%llu",
                  static_cast<unsigned long long>(l.pending), static_cast<unsigned long long>(l.ack_pending),
                  static_cast<unsigned long long>(l.redelivered), static_cast<unsigned long long>(l.dead_letters)) +
           ",\"oldest_unacked_age_seconds\":" +
           (l.oldest_unacked_age ? format("%.3f", static_cast<double>(l.oldest_unacked_age->count()) / 1000.0) : "null") +
           ",\"parked\":" + (l.parked ? "true" : "false") +
           format(",\"parked_keys\":%llu", static_cast<unsigned long long>(l.parked_keys)) + ",\"paused\":" + (l.paused ? "true" : "false") +
           format(",\"workers\":%zu,\"flow\":[", l.workers);
    for (std::size_t i = 0; i < l.flow.size(); ++i) out += (i > 0 ? "," : "") + json_quote(l.flow[i]);
    out += "]}";
  }
  out += "],\"outbox\":" + format("{\"rows\":%llu,\"oldest_age_seconds\":", static_cast<unsigned long long>(v.db.outbox_rows));
  out += v.db.outbox_oldest_age ? format("%.3f", static_cast<double>(v.db.outbox_oldest_age->count()) / 1000.0) : "null";
  out += std::string("},\"relay_active\":") + (v.db.relay_active ? "true" : "false");
  out += format(",\"scheduled\":{\"pending\":%llu,\"due\":%llu,\"overdue_seconds\":",
                static_cast<unsigned long long>(v.db.scheduled_pending), static_cast<unsigned long long>(v.db.scheduled_due));
  out += v.db.scheduled_overdue ? format("%.3f", static_cast<double>(v.db.scheduled_overdue->count()) / 1000.0) : "null";
  out += "}";
  out += std::string(",\"outbox_unrelayed\":") + (v.db.unrelayed(alert_after) ? "true" : "false");
  if (v.stream) {
    out += ",\"stream\":{\"name\":" + json_quote(v.stream_name) +
           format(",\"messages\":%llu,\"bytes\":%llu,\"max_bytes\":%lld}", static_cast<unsigned long long>(v.stream->messages),
                  static_cast<unsigned long long>(v.stream->bytes), static_cast<long long>(v.stream->max_bytes));
  }
  out += format(",\"schema_version\":%d}\n", v.db.schema_version);
  return out;
}

}  // namespace omnibus::detail
