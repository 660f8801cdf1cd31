#include "omnibus/event_bus.hpp"

#include <algorithm>
#include <cmath>
#include <optional>
#include <stdexcept>

#include <pqxx/pqxx>
#include <spdlog/spdlog.h>

#include "core/context_access.hpp"
#include "core/fill_guard.hpp"
#include "core/outbox.hpp"
#include "core/scheduled.hpp"

namespace omnibus {

namespace detail {
std::size_t next_type_slot() noexcept {
  static std::atomic<std::size_t> next{0};
  return next.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace detail

namespace {
void check_options(const bus_options& o) {
  check_schema_name(o.schema);
  if (!(o.stream.hold_above > 0 && o.stream.hold_above <= 1)) {
    throw std::invalid_argument("bus: stream_config::hold_above must be in (0, 1]: a fraction of the stream's limits");
  }
}
}  // namespace

event_bus::event_bus(bus_options options) : options_(std::move(options)) { check_options(options_); }

event_bus::event_bus(queue& q, bus_options options)
    : options_(std::move(options)), queue_(&q), fill_(std::make_unique<detail::fill_guard>(q, options_.stream)) {
  check_options(options_);
}

event_bus::~event_bus() = default;

void event_bus::freeze() {
  std::lock_guard lock(mutex_);
  if (frozen_.load(std::memory_order_relaxed)) return;
  // Nothing is added after this, so the listener vectors never move again.
  // A keyed event's listeners that are not per key read "<prefix>.<name>.*": no other event
  // may be named "<name>.<word>" in the same bus.
  for (const async_listener& l : async_) {
    if (l.partitions == 0) continue;
    for (const auto& [other, slot] : names_) {
      if (other.size() > l.event_name.size() && other.substr(0, l.event_name.size()) == l.event_name &&
          other[l.event_name.size()] == '.') {
        throw std::logic_error("bus: event " + std::string(other) + " extends the name of keyed event " + l.event_name +
                               ", whose subjects are " + l.event_name + ".k<n>: rename one of them");
      }
    }
  }
  dispatch_.assign(types_.size(), dispatch_range{});
  for (std::size_t slot = 0; slot < types_.size(); ++slot) {
    const type_entry& e = types_[slot];
    if (e.name.empty()) continue;
    dispatch_[slot] = e.sync.empty() ? dispatch_range{&no_listeners_, &no_listeners_}
                                     : dispatch_range{e.sync.data(), e.sync.data() + e.sync.size()};
    if (!e.after_commit.empty() || !e.after_rollback.empty()) dispatch_[slot].phased = &e;
  }
  frozen_.store(true, std::memory_order_release);
}

event_bus::type_entry& event_bus::entry_for(std::size_t slot, std::string_view name) {
  if (frozen_.load(std::memory_order_relaxed)) {
    throw std::logic_error("bus: cannot add a listener for " + std::string(name) +
                           ": the bus is frozen (it has published, provisioned or run); add every "
                           "listener first, in the services' constructors");
  }
  if (auto it = names_.find(name); it != names_.end() && it->second != slot) {
    throw std::logic_error("bus: two event types are named " + std::string(name) +
                           "; an event name belongs to one type");
  }
  if (types_.size() <= slot) types_.resize(slot + 1);
  type_entry& e = types_[slot];
  e.name = name;
  names_.emplace(name, slot);
  return e;
}

namespace {
bool valid_consumer_name(std::string_view n) {
  if (n.empty() || n.size() > 200) return false;
  for (char c : n) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

// The flow-control options of listener `l`, checked when it is added.
void check_flow_options(const async_listener& l) {
  const auto refuse = [&](const std::string& what) { throw std::logic_error("bus: listener " + l.name + ": " + what); };
  const listener_options& o = l.options;
  if (o.max_in_flight < 0) refuse("max_in_flight must not be negative (0: no cap)");
  if (o.breaker.enabled) {
    if (o.breaker.failures < 1) refuse("breaker.failures must be at least 1");
    if (o.breaker.window.count() <= 0) refuse("breaker.window must be positive");
    if (o.breaker.cool_down.count() <= 0) refuse("breaker.cool_down must be positive");
  }
  if (!std::isfinite(o.rate.per_second) || o.rate.per_second < 0) {
    refuse("rate.per_second must be a finite number, at least 0 (0: no limit)");
  }
  if (o.rate.burst < 0) refuse("rate.burst must not be negative (0: a tenth of a second's worth)");
}
}  // namespace

void event_bus::add_async(std::size_t slot, std::string_view event_name, async_listener l) {
  if (!valid_consumer_name(l.name)) {
    throw std::logic_error("bus: listener name '" + l.name + "' must be 1-200 characters of [A-Za-z0-9_-]");
  }
  if (!valid_consumer_name(options_.group)) {
    throw std::logic_error("bus: group '" + options_.group + "' must be 1-200 characters of [A-Za-z0-9_-]");
  }
  if (l.options.concurrency < 1) throw std::logic_error("bus: listener " + l.name + " needs a concurrency of at least 1");
  if (l.options.retry.max_attempts < 1) throw std::logic_error("bus: listener " + l.name + " needs max_attempts of at least 1");
  if (l.options.retry.max_attempts >= options_.max_deliveries) {
    throw std::logic_error("bus: listener " + l.name + "'s max_attempts (" + std::to_string(l.options.retry.max_attempts) +
                           ") must be below bus_options::max_deliveries (" + std::to_string(options_.max_deliveries) + ")");
  }
  check_flow_options(l);
  if (l.name == "_abandoned") throw std::logic_error("bus: the listener name _abandoned is the worker's own");
  l.consumer_name = options_.group + "_" + l.name;
  if (l.options.order == ordering::total) l.options.ordered = true;
  if (l.options.ordered) {
    if (l.options.order == ordering::per_key) {
      throw std::logic_error("bus: listener " + l.name + " is both ordered (total) and ordering::per_key: choose one");
    }
    l.options.order = ordering::total;
    l.options.concurrency = 1;  // one in flight, across all workers
  }
  if (l.per_key()) {
    if (l.partitions == 0) {
      throw std::logic_error("bus: listener " + l.name + " has ordering::per_key, but event " + l.event_name +
                             " names no ordering key (static constexpr int partitions and ordering_key(), README "
                             "\"Ordered per key\")");
    }
    if (l.options.breaker.enabled || l.options.rate.per_second > 0) {
      throw std::logic_error("bus: listener " + l.name + ": a circuit breaker or rate limit is not available with "
                             "ordering::per_key yet");
    }
  }
  std::lock_guard lock(mutex_);
  // Checks frozen and the name; an async-only type has an entry too. The entry keeps a view of
  // the name: E::name's static storage, never l.event_name (a short one lives inside `l`).
  entry_for(slot, event_name);
  for (const async_listener& other : async_) {
    if (other.name == l.name) {
      throw std::logic_error("bus: two async listeners are named " + l.name + " (on " + other.event_name + " and " +
                             l.event_name + "); a listener name owns one durable consumer");
    }
  }
  async_.push_back(std::move(l));
}

std::vector<std::string> async_listener::consumer_names() const {
  if (!per_key()) return {consumer_name};
  std::vector<std::string> out;
  out.reserve(static_cast<std::size_t>(partitions));
  for (int p = 0; p < partitions; ++p) out.push_back(consumer_name + "_k" + std::to_string(p));
  return out;
}

std::optional<consumer_info> listener_info(queue& q, const stream_config& stream, const async_listener& l) {
  if (!l.per_key()) return q.info(stream, l.consumer_name);
  std::optional<consumer_info> sum;
  for (const std::string& name : l.consumer_names()) {
    const std::optional<consumer_info> one = q.info(stream, name);
    if (!one) continue;
    if (!sum) {
      sum = one;
      sum->name = l.consumer_name;
      continue;
    }
    sum->pending += one->pending;
    sum->ack_pending += one->ack_pending;
    sum->redelivered += one->redelivered;
    sum->deliveries += one->deliveries;
    if (one->oldest_unacked && (!sum->oldest_unacked || *one->oldest_unacked < *sum->oldest_unacked)) {
      sum->oldest_unacked = one->oldest_unacked;
    }
  }
  return sum;
}

std::vector<consumer_config> event_bus::consumer_configs() const {
  std::vector<consumer_config> out;
  out.reserve(async_.size());
  for (const async_listener& l : async_) {
    if (l.per_key()) {  // one consumer per partition; a worker holding its lease reads it
      for (int p = 0; p < l.partitions; ++p) {
        consumer_config c;
        c.name = l.consumer_name + "_k" + std::to_string(p);
        c.group = options_.group;
        c.filter_subject = partition_subject(options_.stream.subject_prefix, l.event_name, p);
        c.ack_wait = l.options.ack_wait;
        c.max_ack_pending = l.options.max_in_flight > 0 ? l.options.max_in_flight
                                                        : std::max<std::int64_t>(1000, l.options.concurrency);
        c.start_time = l.options.replay_from;
        c.max_deliver = options_.max_deliveries;
        out.push_back(std::move(c));
      }
      continue;
    }
    consumer_config c;
    c.name = l.consumer_name;
    c.group = options_.group;
    // A keyed event travels on one subject per partition: its other listeners read them all.
    c.filter_subject = l.partitions > 0 ? subject_for(options_.stream.subject_prefix, l.event_name) + ".*"
                                        : subject_for(options_.stream.subject_prefix, l.event_name);
    c.ack_wait = l.options.ack_wait;
    c.max_ack_pending = l.options.ordered           ? 1
                        : l.options.max_in_flight > 0 ? l.options.max_in_flight
                                                      : std::max<std::int64_t>(1000, l.options.concurrency);
    c.start_time = l.options.replay_from;
    c.max_deliver = options_.max_deliveries;
    out.push_back(std::move(c));
  }
  return out;
}

void event_bus::provision() {
  freeze();
  if (queue_ == nullptr) throw std::logic_error("bus: provision() needs a queue: construct the bus with one");
  queue_->provision(options_.stream, consumer_configs());
}

void event_bus::check_name_free(std::size_t slot, std::string_view name) const {
  if (auto it = names_.find(name); it != names_.end() && it->second != slot) {
    throw std::logic_error("bus: two event types are named " + std::string(name) +
                           "; an event name belongs to one type");
  }
}

bool batch_report::ok() const noexcept {
  return std::all_of(results.begin(), results.end(), [](const batch_result& r) { return r.ack.has_value(); });
}

std::vector<std::size_t> batch_report::failed() const {
  std::vector<std::size_t> out;
  for (std::size_t i = 0; i < results.size(); ++i) {
    if (!results[i].ack) out.push_back(i);
  }
  return out;
}

envelope event_bus::make_envelope(const context& ctx, std::string_view name, int version, std::string body) const {
  envelope env;
  env.id = event_id::generate();
  env.name = name;
  env.version = version;
  env.published_at = std::chrono::time_point_cast<std::chrono::microseconds>(std::chrono::system_clock::now());
  env.meta = ctx.meta();
  env.body = std::move(body);
  return env;
}

batch_report event_bus::emit_batch(context& ctx, std::string_view name, int version, std::string_view bodies,
                                   std::span<const std::size_t> ends, std::span<const std::string> keys, int partitions) {
  batch_report report;
  const std::size_t count = ends.size();
  report.ids.reserve(count);
  for (std::size_t i = 0; i < count; ++i) report.ids.push_back(event_id::generate());
  auto body_of = [&](std::size_t i) {
    const std::size_t from = i == 0 ? 0 : ends[i - 1];
    return bodies.substr(from, ends[i] - from);
  };
  // One envelope, made into each event in turn (its memory reused), as one message is.
  envelope env = make_envelope(ctx, name, version, {});
  env.partitions = keys.empty() ? 0 : partitions;
  auto envelope_of = [&](std::size_t i) -> const envelope& {
    env.id = report.ids[i];
    if (!keys.empty()) env.key.assign(keys[i]);
    env.published_at = std::chrono::time_point_cast<std::chrono::microseconds>(std::chrono::system_clock::now());
    env.body.assign(body_of(i));
    return env;
  };
  message current;
  // Checked before anything is written or sent: an oversized event stops the batch. What else
  // encoding checks (the name, the context's metadata) is the same for every event of a batch,
  // so encoding the first checks it for all.
  for (std::size_t i = 0; i < count; ++i) {
    if (i == 0 || body_of(i).size() > options_.max_body_bytes || !keys.empty()) {  // each key is checked too
      encode_into(current, envelope_of(i), options_.stream.subject_prefix, options_.max_body_bytes);
    }
  }
  if (ctx.transaction() != nullptr) {
    std::vector<message> msgs;
    msgs.reserve(count);
    for (std::size_t i = 0; i < count; ++i) msgs.push_back(encode(envelope_of(i), options_.stream.subject_prefix, options_.max_body_bytes));
    // All rows in one COPY; a batch_report of the rows written (the relay sends them after commit).
    try {
      outbox_insert_batch(*ctx.transaction(), options_.schema, msgs);
    } catch (const std::exception& e) {
      notify_publish_error(name, e.what());
      throw;
    }
    report.results.assign(msgs.size(), batch_result{publish_ack{}, std::nullopt, {}});
    notify_publish(name, publish_path::outbox, msgs.size());
    return report;
  }
  if (queue_ == nullptr) throw std::logic_error("bus: publish_batch() needs a queue: construct the bus with one");
  // Admitted below the stream's hold line all at once, before anything is sent, as one batch:
  // every event of it has the same subject and headers but for their values' fixed widths, so
  // what the stream stores for each is what it stores for the first, less its body, plus its own.
  const std::size_t around_body = count == 0 ? 0 : detail::stored_size(current) - current.body.size();
  std::vector<std::size_t> sizes(count);
  // (Keys differ in length: each counts its own, with room for its partition's digits.)
  for (std::size_t i = 0; i < count; ++i) sizes[i] = around_body + body_of(i).size() + (keys.empty() ? 0 : keys[i].size() + 4);
  const detail::fill_guard::verdict room = fill_->admit_sizes(sizes);
  // Then each is encoded just before it is sent: a large batch is never held twice in memory,
  // and the stream starts storing while the rest are made.
  report.results = queue_->publish_each(
      room.admitted,
      [&](std::size_t i) -> const message* {
        encode_into(current, envelope_of(i), options_.stream.subject_prefix, options_.max_body_bytes);
        return &current;
      },
      options_.publish_timeout);
  for (std::size_t i = report.results.size(); i < count; ++i) {  // not sent: the stream is nearly full
    report.results.push_back(batch_result{std::nullopt, publish_error::outcome::not_sent, room.why});
  }
  if (!observers_.empty()) {
    for (const batch_result& r : report.results) {
      if (r.ack) {
        notify_publish(name, publish_path::direct, 1);
      } else {
        notify_publish_error(name, r.error);
      }
    }
  }
  return report;
}

event_id event_bus::emit(context& ctx, std::string_view name, int version, std::string body, std::string_view key,
                         int partitions) {
  envelope env = make_envelope(ctx, name, version, std::move(body));
  if (partitions > 0) {
    env.key = key;
    env.partitions = partitions;
  }
  message msg = encode(env, options_.stream.subject_prefix, options_.max_body_bytes);
  const publish_path path = ctx.transaction() != nullptr ? publish_path::outbox : publish_path::direct;
  if (path == publish_path::direct && queue_ == nullptr) {
    throw std::logic_error("bus: " + env.name +
                           " is not local-only, and this bus has no queue: construct it with one");
  }
  try {
    if (path == publish_path::outbox) {
      outbox_insert(*ctx.transaction(), options_.schema, msg,  // sent by the relay after commit
                    options_.prepared_statements ? statement_mode::prepared : statement_mode::text);
    } else {
      if (const detail::fill_guard::verdict room = fill_->admit(std::span<const message>(&msg, 1)); room.admitted == 0) {
        throw publish_error(publish_error::outcome::not_sent, env.id, "bus: " + env.name + " not sent: " + room.why);
      }
      queue_->publish(msg, options_.publish_timeout);
    }
  } catch (const std::exception& e) {
    notify_publish_error(name, e.what());
    throw;
  }
  notify_publish(name, path, 1);
  return env.id;
}

void event_bus::add_observer(std::shared_ptr<observer> o) {
  if (!o) throw std::invalid_argument("bus: add_observer() needs an observer");
  std::lock_guard lock(mutex_);
  if (frozen_.load(std::memory_order_relaxed)) {
    throw std::logic_error("bus: cannot add an observer: the bus is frozen; add observers with the listeners");
  }
  observers_.push_back(std::move(o));
}

void event_bus::notify_publish(std::string_view name, publish_path path, std::size_t count) const noexcept {
  for (const auto& o : observers_) {
    for (std::size_t i = 0; i < count; ++i) {
      try {
        o->on_publish(name, path);
      } catch (...) {  // observing never changes what the bus does
      }
    }
  }
}

void event_bus::notify_publish_error(std::string_view name, std::string_view what) const noexcept {
  for (const auto& o : observers_) {
    try {
      o->on_publish_error(name, what);
    } catch (...) {
    }
  }
}

namespace {
// Runs `f(tx)` in the context's transaction, or in one of its own on `conn` or on the worker
// handler's connection, committed here.
template <class F>
auto in_schedule_tx(context* ctx, pqxx::connection_base* conn, std::string_view what, F&& f) {
  if (ctx != nullptr && ctx->transaction() != nullptr) return f(*ctx->transaction());
  if (conn == nullptr && ctx != nullptr) {
    if (connection_source* source = detail::context_access::connection_source_of(*ctx)) conn = &source->connection();
  }
  if (conn == nullptr) {
    throw std::logic_error("bus: " + std::string(what) +
                           " writes to PostgreSQL: give it a context with a transaction (omnibus::context ctx{tx}), "
                           "or a connection (bus." + std::string(what) + "(conn, ...))");
  }
  pqxx::work tx{*conn};
  auto out = f(static_cast<pqxx::transaction_base&>(tx));
  tx.commit();
  return out;
}
}  // namespace

event_id event_bus::schedule(context* ctx, pqxx::connection_base* conn,
                             std::optional<std::chrono::system_clock::time_point> at, std::chrono::milliseconds after,
                             envelope env, const schedule_options& options) {
  if (options.unique_key.size() > 200) {
    throw std::invalid_argument("bus: a schedule's unique_key is at most 200 bytes; this one has " +
                                std::to_string(options.unique_key.size()));
  }
  if (after.count() < 0) after = std::chrono::milliseconds(0);  // a delay in the past fires at once
  // Encoded now: an event too large is refused to its publisher, never at firing.
  const message msg = encode(env, options_.stream.subject_prefix, options_.max_body_bytes);
  const detail::due_time due{at, after};
  const std::string id = in_schedule_tx(ctx, conn, at ? "publish_at" : "publish_after", [&](pqxx::transaction_base& tx) {
    return detail::scheduled_insert(tx, options_.schema, msg, env.name, due, options.unique_key);
  });
  return event_id::parse(id);
}

bool event_bus::cancel(context& ctx, const event_id& id) {
  return in_schedule_tx(&ctx, nullptr, "cancel",
                        [&](pqxx::transaction_base& tx) { return detail::scheduled_cancel(tx, options_.schema, id.to_string()); });
}

bool event_bus::cancel(pqxx::connection_base& conn, const event_id& id) {
  return in_schedule_tx(nullptr, &conn, "cancel",
                        [&](pqxx::transaction_base& tx) { return detail::scheduled_cancel(tx, options_.schema, id.to_string()); });
}

bool event_bus::reschedule(context& ctx, const event_id& id, std::chrono::system_clock::time_point when) {
  return in_schedule_tx(&ctx, nullptr, "reschedule", [&](pqxx::transaction_base& tx) {
    return detail::scheduled_move(tx, options_.schema, id.to_string(), when);
  });
}

bool event_bus::reschedule(pqxx::connection_base& conn, const event_id& id, std::chrono::system_clock::time_point when) {
  return in_schedule_tx(nullptr, &conn, "reschedule", [&](pqxx::transaction_base& tx) {
    return detail::scheduled_move(tx, options_.schema, id.to_string(), when);
  });
}

void event_bus::add_recurring(std::size_t slot, std::string_view event_name, recurring_schedule s) {
  if (!valid_consumer_name(s.name)) {
    throw std::logic_error("bus: schedule name '" + s.name + "' must be 1-200 characters of [A-Za-z0-9_-]");
  }
  if (s.options.missed_window.count() <= 0) {
    throw std::logic_error("bus: schedule " + s.name + ": missed_window must be positive");
  }
  std::lock_guard lock(mutex_);
  entry_for(slot, event_name);  // checks frozen and the event name (static storage)
  for (const recurring_schedule& other : recurring_) {
    if (other.name == s.name) throw std::logic_error("bus: two recurring schedules are named " + s.name);
  }
  recurring_.push_back(std::move(s));
}

commit_unknown::~commit_unknown() = default;

// The events published in one transact() transaction that have phase listeners, in order.
struct detail::phase_log {
  struct item {
    const event_bus::type_entry* entry;
    std::shared_ptr<const void> event;  // a copy of the E, kept until the phase runs
    metadata meta;
  };
  std::vector<item> items;
};

void event_bus::check_phased(const context& ctx, std::string_view name) const {
  if (ctx.transaction() != nullptr && detail::context_access::phases(ctx) == nullptr) {
    throw std::logic_error("bus: " + std::string(name) +
                           " has after-commit or after-rollback listeners, which run only for events published "
                           "in event_bus::transact(); this context's transaction was opened elsewhere, so they would "
                           "never run. Publish it inside bus.transact(conn, [&](omnibus::context& ctx) { ... })");
  }
}

void event_bus::record_phased(context& ctx, const type_entry& e, std::shared_ptr<const void> event) {
  if (detail::phase_log* log = detail::context_access::phases(ctx)) {
    log->items.push_back({&e, std::move(event), ctx.meta()});
    return;
  }
  // No transaction: the publish itself was the commit.
  detail::phase_log now;
  now.items.push_back({&e, std::move(event), ctx.meta()});
  run_phase(phase::after_commit, now);
}

void event_bus::run_phase(phase when, const detail::phase_log& log) {
  for (const auto& item : log.items) {
    const auto& listeners = when == phase::after_commit ? item.entry->after_commit : item.entry->after_rollback;
    for (const sync_listener& l : listeners) {
      context ctx;
      ctx.meta() = item.meta;
      std::string what;
      try {
        l.call(l.fn.get(), ctx, item.event.get());
        continue;
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
        what = "a phase listener threw something that is not a std::exception";
      }
      phase_errors_.fetch_add(1, std::memory_order_relaxed);
      spdlog::error("bus: an {} listener of {} threw: {}; the other listeners ran{}", to_string(when),
                    item.entry->name, what, when == phase::after_commit ? " and the commit stands" : "");
      for (const auto& o : observers_) {
        try {
          o->on_phase_error(item.entry->name, when, what);
        } catch (...) {  // observing never changes what the bus does
        }
      }
    }
  }
}

void event_bus::run_transaction(pqxx::connection_base* conn, pqxx::transaction_base* given,
                                const std::function<void(context&)>& body) {
  std::optional<pqxx::work> own;
  if (given == nullptr) own.emplace(*conn);
  pqxx::transaction_base& tx = given != nullptr ? *given : *own;
  detail::phase_log log;
  context ctx{tx};
  detail::context_access::set_phases(ctx, &log);
  try {
    body(ctx);
  } catch (...) {
    try {
      tx.abort();
    } catch (...) {  // the body's exception is the one the caller needs
    }
    run_phase(phase::after_rollback, log);
    throw;
  }
  try {
    tx.commit();
  } catch (const pqxx::in_doubt_error& e) {
    throw commit_unknown(std::string("bus: the connection broke during COMMIT; the transaction may or may not have "
                                     "committed, so no after-commit or after-rollback listener ran: ") + e.what());
  } catch (...) {
    run_phase(phase::after_rollback, log);
    throw;
  }
  run_phase(phase::after_commit, log);
}

}  // namespace omnibus
