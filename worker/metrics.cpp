#include "metrics.hpp"

#include <algorithm>
#include <array>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <unordered_map>
#include <vector>

#include <pqxx/pqxx>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>
#include <spdlog/spdlog.h>

#include "omnibus/bus_state.hpp"
#include "omnibus/migrations.hpp"
#include "omnibus/nats_connection.hpp"
#include "omnibus/relay.hpp"
#include "omnibus/worker.hpp"
#include "connect_timeout.hpp"
#include "json_log.hpp"

namespace omnibus::detail {

namespace {

constexpr std::array outcomes{handle_outcome::handled,  handle_outcome::retry,     handle_outcome::dead_letter,
                              handle_outcome::parked,   handle_outcome::skipped,   handle_outcome::deferred,
                              handle_outcome::timed_out, handle_outcome::returned};

// The flow states a listener is in (worker::listener_states), as runtime/flow.hpp names them.
constexpr std::array<std::string_view, 6> flow_state_names{"running",      "paused",           "outage",
                                                           "breaker_open", "breaker_half_open", "rate_limited"};

// Handler durations, in seconds: from a millisecond to a minute (the default deadline).
const prometheus::Histogram::BucketBoundaries duration_buckets{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                               0.25,  0.5,    1,     2.5,  5,     10,   30, 60};

// Lets the per-listener map be searched by the string_view observers get, without a copy.
struct name_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};

}  // namespace

struct worker_metrics::impl {
  struct listener_series {
    const async_listener* def = nullptr;  // the bus's, stable once frozen
    std::array<prometheus::Counter*, outcomes.size()> handled{};
    prometheus::Histogram* duration = nullptr;
    prometheus::Gauge* in_flight = nullptr;
    prometheus::Gauge* pending = nullptr;
    prometheus::Gauge* ack_pending = nullptr;
    prometheus::Gauge* redelivered = nullptr;
    prometheus::Gauge* oldest_age = nullptr;
    prometheus::Gauge* dead_letters = nullptr;
    prometheus::Gauge* parked = nullptr;
    prometheus::Gauge* parked_keys = nullptr;
    prometheus::Gauge* paused = nullptr;
    prometheus::Gauge* lost = nullptr;
    prometheus::Gauge* lost_unacknowledged = nullptr;
    std::array<prometheus::Gauge*, flow_state_names.size()> flow{};
    std::vector<std::string> consumers;  // the listener's durable consumers (a per-key one's: one per partition)
    [[nodiscard]] bool reads(const std::string& consumer) const {
      return std::find(consumers.begin(), consumers.end(), consumer) != consumers.end();
    }
  };

  impl(metrics_sources s, std::shared_ptr<spdlog::logger> l, std::chrono::milliseconds c)
      : src(std::move(s)), log(std::move(l)), cache(c), registry(std::make_shared<prometheus::Registry>()) {
    auto& reg = *registry;
    handled_family = &prometheus::BuildCounter().Name("omnibus_handled_total")
                          .Help("Deliveries settled by the worker, by listener and outcome").Register(reg);
    duration_family = &prometheus::BuildHistogram().Name("omnibus_handler_duration_seconds")
                           .Help("From the start of a delivery's handling to its settlement").Register(reg);
    in_flight_family = &prometheus::BuildGauge().Name("omnibus_handlers_in_flight")
                            .Help("Deliveries being handled now, by listener").Register(reg);
    pending_family = &prometheus::BuildGauge().Name("omnibus_consumer_pending")
                          .Help("Events in the stream not yet delivered to the listener's consumer").Register(reg);
    ack_pending_family = &prometheus::BuildGauge().Name("omnibus_consumer_ack_pending")
                              .Help("Events delivered to the listener and not yet settled").Register(reg);
    redelivered_family = &prometheus::BuildGauge().Name("omnibus_consumer_redelivered")
                              .Help("Events delivered more than once and not yet settled").Register(reg);
    oldest_age_family = &prometheus::BuildGauge().Name("omnibus_consumer_oldest_unacked_age_seconds")
                             .Help("How long ago the stream stored the oldest event the listener has not acked "
                                   "(0: none waits)").Register(reg);
    dead_letters_family = &prometheus::BuildGauge().Name("omnibus_dead_letters")
                               .Help("Dead letters waiting for an operator, by listener").Register(reg);
    parked_family = &prometheus::BuildGauge().Name("omnibus_parked")
                         .Help("1 when the ordered listener is parked at an event").Register(reg);
    parked_keys_family = &prometheus::BuildGauge().Name("omnibus_parked_keys")
                              .Help("Keys a per-key listener has parked, each at an event that ran out of attempts")
                              .Register(reg);
    lost_family = &prometheus::BuildGauge().Name("omnibus_events_lost")
                       .Help("Events that left the stream before the listener handled them (max_age, the stream's "
                             "limits), as the database records them for all workers")
                       .Register(reg);
    lost_unack_family = &prometheus::BuildGauge().Name("omnibus_events_lost_unacknowledged")
                            .Help("Lost events no operator acknowledged yet (listeners losses --acknowledge); "
                                  "/readyz fails while any")
                            .Register(reg);
    paused_family = &prometheus::BuildGauge().Name("omnibus_listener_paused")
                         .Help("1 while an operator has paused the listener").Register(reg);
    flow_family = &prometheus::BuildGauge().Name("omnibus_listener_flow_state")
                       .Help("1 for the state the listener is in in this worker (running, paused, outage, "
                             "breaker_open, breaker_half_open, rate_limited), 0 for the others").Register(reg);
    outage_held = &prometheus::BuildCounter().Name("omnibus_outage_held_calls_total")
                       .Help("Handler calls that met an outage (database unreachable, transient_error) and were "
                             "held for another call without spending an attempt").Register(reg).Add({});
    published_family = &prometheus::BuildCounter().Name("omnibus_published_total")
                            .Help("Events this process published, by event and path (direct, outbox)").Register(reg);
    publish_errors_family = &prometheus::BuildCounter().Name("omnibus_publish_errors_total")
                                 .Help("Publishes from this process that failed, by event").Register(reg);
    auto gauge = [&](const char* name, const char* help) -> prometheus::Gauge& {
      return prometheus::BuildGauge().Name(name).Help(help).Register(reg).Add({});
    };
    stream_messages = &gauge("omnibus_stream_messages", "Events stored in the stream");
    stream_bytes = &gauge("omnibus_stream_bytes", "Bytes stored in the stream, as the server counts them");
    stream_max_bytes = &gauge("omnibus_stream_max_bytes", "The stream's byte limit (it refuses publishes beyond)");
    stream_fill = &gauge("omnibus_stream_fill_ratio",
                         "How full the stream is: bytes / max bytes, or events / max events when that is higher");
    outbox_rows = &gauge("omnibus_outbox_backlog_rows", "Outbox rows not yet sent to the stream");
    outbox_age = &gauge("omnibus_outbox_oldest_age_seconds", "How long the oldest outbox row has waited (0: none)");
    relay_lock = &gauge("omnibus_relay_lock_held", "1 when some process holds the schema's relay lock");
    scheduled_pending = &gauge("omnibus_scheduled_pending", "Scheduled events not yet fired");
    scheduled_overdue = &gauge("omnibus_scheduled_overdue_seconds",
                               "How late the most overdue scheduled event is (0: none is due; growing: no scheduler runs)");
    unrelayed = &gauge("omnibus_outbox_unrelayed",
                       "1 when outbox rows have waited past the alert threshold and no process relays them");
    relay_active = &gauge("omnibus_relay_active", "1 when this process is the schema's active relay");
    relay_holding = &gauge("omnibus_relay_holding",
                           "1 while this process's relay holds outbox rows back: the stream is above hold_above");
    worker_ready = &gauge("omnibus_worker_ready", "1 while the worker drains its listeners");
    relayed = &prometheus::BuildCounter().Name("omnibus_relayed_total")
                   .Help("Outbox rows this process's relay sent to the stream").Register(reg).Add({});
    relay_batches = &prometheus::BuildCounter().Name("omnibus_relay_batches_total")
                         .Help("Publish batches this process's relay landed (relayed / batches: their mean size)")
                         .Register(reg).Add({});
    auto& errors = prometheus::BuildCounter().Name("omnibus_scrape_errors_total")
                       .Help("Server-side values a scrape could not read, by source").Register(reg);
    nats_errors = &errors.Add({{"source", "nats"}});
    postgres_errors = &errors.Add({{"source", "postgres"}});

    for (const async_listener& l : src.bus->async_listeners()) {
      listener_series series;
      for (std::size_t i = 0; i < outcomes.size(); ++i) {
        series.handled[i] = &handled_family->Add({{"listener", l.name}, {"outcome", to_string(outcomes[i])}});
      }
      series.duration = &duration_family->Add({{"listener", l.name}}, duration_buckets);
      series.in_flight = &in_flight_family->Add({{"listener", l.name}});
      series.pending = &pending_family->Add({{"listener", l.name}});
      series.ack_pending = &ack_pending_family->Add({{"listener", l.name}});
      series.redelivered = &redelivered_family->Add({{"listener", l.name}});
      series.oldest_age = &oldest_age_family->Add({{"listener", l.name}});
      series.dead_letters = &dead_letters_family->Add({{"listener", l.name}});
      series.parked = &parked_family->Add({{"listener", l.name}});
      series.parked_keys = &parked_keys_family->Add({{"listener", l.name}});
      series.paused = &paused_family->Add({{"listener", l.name}});
      series.lost = &lost_family->Add({{"listener", l.name}});
      series.lost_unacknowledged = &lost_unack_family->Add({{"listener", l.name}});
      for (std::size_t i = 0; i < flow_state_names.size(); ++i) {
        series.flow[i] = &flow_family->Add({{"listener", l.name}, {"state", std::string(flow_state_names[i])}});
      }
      series.consumers = l.consumer_names();
      series.def = &l;
      listeners.emplace(l.name, std::move(series));
      // The events the bus knows get their publish series at zero, so that every family is in
      // the exposition from the first scrape (others are added at their first publish).
      if (!published.contains(l.event_name)) {
        published.emplace(l.event_name, std::array<prometheus::Counter*, 2>{
                                            &published_family->Add({{"event", l.event_name}, {"path", "direct"}}),
                                            &published_family->Add({{"event", l.event_name}, {"path", "outbox"}})});
        publish_errors.emplace(l.event_name, &publish_errors_family->Add({{"event", l.event_name}}));
      }
    }
  }

  metrics_sources src;
  std::shared_ptr<spdlog::logger> log;
  std::chrono::milliseconds cache;
  std::shared_ptr<prometheus::Registry> registry;
  prometheus::Family<prometheus::Counter>* handled_family;
  prometheus::Family<prometheus::Histogram>* duration_family;
  prometheus::Family<prometheus::Gauge>* in_flight_family;
  prometheus::Family<prometheus::Gauge>* pending_family;
  prometheus::Family<prometheus::Gauge>* ack_pending_family;
  prometheus::Family<prometheus::Gauge>* redelivered_family;
  prometheus::Family<prometheus::Gauge>* oldest_age_family;
  prometheus::Family<prometheus::Gauge>* dead_letters_family;
  prometheus::Family<prometheus::Gauge>* parked_family;
  prometheus::Family<prometheus::Gauge>* parked_keys_family;
  prometheus::Family<prometheus::Gauge>* paused_family;
  prometheus::Family<prometheus::Gauge>* lost_family;
  prometheus::Family<prometheus::Gauge>* lost_unack_family;
  prometheus::Family<prometheus::Gauge>* flow_family;
  prometheus::Counter* outage_held;
  double outage_held_seen = 0;
  prometheus::Family<prometheus::Counter>* published_family;
  prometheus::Family<prometheus::Counter>* publish_errors_family;
  prometheus::Gauge *stream_messages, *stream_bytes, *stream_max_bytes, *stream_fill;
  prometheus::Gauge *scheduled_pending, *scheduled_overdue;
  prometheus::Gauge *outbox_rows, *outbox_age, *relay_lock, *unrelayed, *relay_active, *relay_holding, *worker_ready;
  prometheus::Counter* relayed;
  prometheus::Counter* relay_batches;
  double batches_seen = 0;
  prometheus::Counter *nats_errors, *postgres_errors;
  std::unordered_map<std::string, listener_series, name_hash, std::equal_to<>> listeners;  // fixed after construction

  std::mutex publish_mutex;  // guards the two maps below
  std::unordered_map<std::string, std::array<prometheus::Counter*, 2>> published;  // by event name, by path
  std::unordered_map<std::string, prometheus::Counter*> publish_errors;

  // Scrape-time state, under refresh_mutex.
  std::mutex refresh_mutex;
  std::chrono::steady_clock::time_point refreshed{};
  std::optional<pqxx::connection> db;
  double relayed_seen = 0;
  bool postgres_ok = false;
  bool migrations_current = false;
  bool outbox_unrelayed = false;
  std::string lost_unacknowledged;  // "mailer lost 3, ...": unacknowledged losses, for /readyz
  std::chrono::milliseconds outbox_age_seen{0};
  std::string postgres_error;

  listener_series* find(std::string_view listener) {
    auto it = listeners.find(listener);
    return it == listeners.end() ? nullptr : &it->second;
  }

  // This process's own values: read at every scrape, they cost nothing.
  void refresh_local() {
    if (src.worker != nullptr) {
      const auto total = static_cast<double>(src.worker->outage_retries.load(std::memory_order_relaxed));
      if (total > outage_held_seen) outage_held->Increment(total - outage_held_seen);
      outage_held_seen = total;
    }
    if (src.flow == nullptr) return;
    for (const listener_report& r : src.flow->listener_states()) {
      auto* s = find(r.listener);
      if (s == nullptr) continue;
      for (std::size_t i = 0; i < flow_state_names.size(); ++i) s->flow[i]->Set(flow_state_names[i] == r.state ? 1 : 0);
    }
  }

  // Re-reads what the servers hold, unless that was done less than `cache` ago.
  void refresh() {
    refresh_local();
    const auto now = std::chrono::steady_clock::now();
    if (refreshed != std::chrono::steady_clock::time_point{} && now - refreshed < cache) return;
    refreshed = now;
    refresh_nats();
    refresh_postgres();
    if (src.relay != nullptr) {
      const auto total = static_cast<double>(src.relay->relayed.load(std::memory_order_relaxed));
      if (total > relayed_seen) relayed->Increment(total - relayed_seen);
      relayed_seen = total;
      const auto batches = static_cast<double>(src.relay->batches.load(std::memory_order_relaxed));
      if (batches > batches_seen) relay_batches->Increment(batches - batches_seen);
      batches_seen = batches;
      relay_active->Set(src.relay->active.load() ? 1 : 0);
      relay_holding->Set(src.relay->holding.load() ? 1 : 0);
    }
    worker_ready->Set(src.worker != nullptr && src.worker->ready.load() ? 1 : 0);
  }

  void refresh_nats() {
    queue* q = src.bus->target();
    const stream_config& stream = src.bus->options().stream;
    try {
      if (auto st = q->state(stream)) {
        stream_messages->Set(static_cast<double>(st->messages));
        stream_bytes->Set(static_cast<double>(st->bytes));
        stream_max_bytes->Set(static_cast<double>(st->max_bytes));
        const double by_bytes = st->max_bytes > 0 ? static_cast<double>(st->bytes) / static_cast<double>(st->max_bytes) : 0;
        const double by_count =
            st->max_msgs > 0 ? static_cast<double>(st->messages) / static_cast<double>(st->max_msgs) : 0;
        stream_fill->Set(std::max(by_bytes, by_count));
      }
      for (auto& [name, s] : listeners) {
        if (auto info = s.def != nullptr ? listener_info(*q, stream, *s.def) : std::nullopt) {
          s.pending->Set(static_cast<double>(info->pending));
          s.ack_pending->Set(static_cast<double>(info->ack_pending));
          s.redelivered->Set(static_cast<double>(info->redelivered));
          s.oldest_age->Set(info->oldest_unacked ? std::max(0.0, std::chrono::duration<double>(
                                                                     std::chrono::system_clock::now() - *info->oldest_unacked)
                                                                     .count())
                                                 : 0.0);
        }
      }
    } catch (const std::exception& e) {
      nats_errors->Increment();
      log->warn("metrics: cannot read the stream and consumers: {}", e.what());
    }
  }

  void refresh_postgres() {
    try {
      if (!db || !db->is_open()) {
        db.emplace(with_connect_timeout(src.database_url));  // a probe gives up rather than hang
        pqxx::nontransaction(*db).exec0("SET statement_timeout = '5s'");
      }
      const bus_state st = read_bus_state(*db, src.bus->options().schema);
      postgres_ok = true;
      postgres_error.clear();
      migrations_current = st.schema_version == latest_schema_version();
      outbox_rows->Set(static_cast<double>(st.outbox_rows));
      outbox_age->Set(st.outbox_oldest_age ? static_cast<double>(st.outbox_oldest_age->count()) / 1000.0 : 0.0);
      relay_lock->Set(st.relay_active ? 1 : 0);
      scheduled_pending->Set(static_cast<double>(st.scheduled_pending));
      scheduled_overdue->Set(st.scheduled_overdue ? static_cast<double>(st.scheduled_overdue->count()) / 1000.0 : 0.0);
      outbox_unrelayed = st.unrelayed(src.outbox_alert_after);
      outbox_age_seen = st.outbox_oldest_age.value_or(std::chrono::milliseconds(0));
      unrelayed->Set(outbox_unrelayed ? 1 : 0);
      for (auto& [name, s] : listeners) {
        s.dead_letters->Set(0);
        s.parked->Set(0);
        s.parked_keys->Set(0);
        s.paused->Set(0);
        s.lost->Set(0);
        s.lost_unacknowledged->Set(0);
      }
      // Summed over the listener's consumers: a per-key listener has one per partition.
      std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> lost;  // listener -> (events, unacknowledged)
      for (const auto& x : st.lost_events) {
        auto* s = find(x.listener);
        if (s == nullptr || !s->reads(x.consumer)) continue;  // another group's listener in the same schema
        lost[x.listener].first += x.events;
        lost[x.listener].second += x.unacknowledged;
      }
      lost_unacknowledged.clear();
      for (const auto& [listener, n] : lost) {
        auto* s = find(listener);
        s->lost->Set(static_cast<double>(n.first));
        s->lost_unacknowledged->Set(static_cast<double>(n.second));
        if (n.second > 0) {
          lost_unacknowledged += (lost_unacknowledged.empty() ? "" : ", ") + listener + " lost " + std::to_string(n.second);
        }
      }
      for (const auto& listener : st.paused) {
        if (auto* s = find(listener)) s->paused->Set(1);
      }
      for (const auto& [listener, n] : st.dead_letters) {
        if (auto* s = find(listener)) s->dead_letters->Set(static_cast<double>(n));
      }
      for (const auto& listener : st.parked) {
        if (auto* s = find(listener)) s->parked->Set(1);
      }
      for (const auto& [listener, n] : st.parked_keys) {
        if (auto* s = find(listener)) s->parked_keys->Set(static_cast<double>(n));
      }
    } catch (const std::exception& e) {
      db.reset();  // reconnect next time
      postgres_ok = false;
      // libpq's text can repeat parts of the connection string: never pass it on.
      postgres_error = dynamic_cast<const pqxx::broken_connection*>(&e) != nullptr ? "cannot connect to PostgreSQL"
                                                                                   : e.what();
      postgres_errors->Increment();
      log->warn("metrics: cannot read the bus's tables: {}", postgres_error);
    }
  }
};

worker_metrics::worker_metrics(metrics_sources sources, std::shared_ptr<spdlog::logger> log,
                               std::chrono::milliseconds cache)
    : impl_(std::make_unique<impl>(std::move(sources), std::move(log), cache)) {}

worker_metrics::~worker_metrics() = default;

std::string worker_metrics::scrape() {
  {
    std::lock_guard lock(impl_->refresh_mutex);
    impl_->refresh();
  }
  std::ostringstream out;
  prometheus::TextSerializer{}.Serialize(out, impl_->registry->Collect());
  return out.str();
}

std::pair<bool, std::string> worker_metrics::readiness() {
  std::lock_guard lock(impl_->refresh_mutex);
  impl_->refresh();
  const bool nats = impl_->src.nats != nullptr && impl_->src.nats->connected();
  const bool consumers = impl_->src.worker != nullptr && impl_->src.worker->ready.load();
  const bool postgres = impl_->postgres_ok;
  const bool migrations = postgres && impl_->migrations_current;
  std::string reason;
  if (!nats) {
    reason = "not connected to NATS";
  } else if (!postgres) {
    reason = "PostgreSQL: " + impl_->postgres_error;
  } else if (!migrations) {
    reason = "the schema's migrations are not current";
  } else if (impl_->outbox_unrelayed) {
    reason = "outbox rows have waited " + std::to_string(impl_->outbox_age_seen.count() / 1000) +
             " s and no process holds the relay lock: run a worker with its relay (run without --no-relay)";
  } else if (!consumers) {
    reason = "the worker is not draining (starting or stopping)";
  } else if (!impl_->lost_unacknowledged.empty()) {
    reason = "events left the stream before their listener handled them (" + impl_->lost_unacknowledged +
             "): see `listeners losses`, then acknowledge them with `listeners losses --acknowledge`";
  }
  const bool ready = reason.empty();
  std::string body = std::string("{\"ready\":") + (ready ? "true" : "false") + ",\"nats\":" + (nats ? "true" : "false") +
                     ",\"postgres\":" + (postgres ? "true" : "false") + ",\"migrations\":" +
                     (migrations ? "true" : "false") + ",\"consumers\":" + (consumers ? "true" : "false") +
                     ",\"events_lost\":" + (impl_->lost_unacknowledged.empty() ? "false" : "true");
  if (!ready) body += ",\"reason\":" + json_quote(reason);
  return {ready, body + "}\n"};
}

void worker_metrics::on_publish(std::string_view event_name, publish_path path) {
  std::lock_guard lock(impl_->publish_mutex);
  auto it = impl_->published.find(std::string(event_name));
  if (it == impl_->published.end()) {
    std::array<prometheus::Counter*, 2> pair{
        &impl_->published_family->Add({{"event", std::string(event_name)}, {"path", "direct"}}),
        &impl_->published_family->Add({{"event", std::string(event_name)}, {"path", "outbox"}})};
    it = impl_->published.emplace(std::string(event_name), pair).first;
  }
  it->second[path == publish_path::direct ? 0 : 1]->Increment();
}

void worker_metrics::on_publish_error(std::string_view event_name, std::string_view) {
  std::lock_guard lock(impl_->publish_mutex);
  auto it = impl_->publish_errors.find(std::string(event_name));
  if (it == impl_->publish_errors.end()) {
    it = impl_->publish_errors
             .emplace(std::string(event_name), &impl_->publish_errors_family->Add({{"event", std::string(event_name)}}))
             .first;
  }
  it->second->Increment();
}

void worker_metrics::on_handle_start(const handle_info& info) {
  if (auto* s = impl_->find(info.listener)) s->in_flight->Increment();
}

void worker_metrics::on_handle_end(const handle_info& info, handle_outcome outcome, std::chrono::nanoseconds took,
                                   std::string_view) {
  auto* s = impl_->find(info.listener);
  if (s == nullptr) return;
  s->in_flight->Decrement();
  s->handled[static_cast<std::size_t>(outcome)]->Increment();
  s->duration->Observe(std::chrono::duration<double>(took).count());
}

}  // namespace omnibus::detail
