#include "omnibus/scheduler.hpp"

#include <algorithm>
#include <charconv>
#include <limits>
#include <optional>
#include <stdexcept>
#include <vector>

#include <pqxx/pqxx>
#include <spdlog/spdlog.h>

#include "omnibus/envelope.hpp"
#include "omnibus/migrations.hpp"
#include "core/failpoint.hpp"
#include "core/outbox.hpp"
#include "core/scheduled.hpp"
#include "core/schema.hpp"
#include "core/stop_wait.hpp"

namespace omnibus {
namespace {

using clock = std::chrono::steady_clock;
using sys_time = std::chrono::system_clock::time_point;

// The earliest due time (epoch ms) the schedulers' NOTIFYs announced since the last reset.
class due_listener final : public pqxx::notification_receiver {
 public:
  due_listener(pqxx::connection_base& c, const std::string& channel) : notification_receiver(c, channel) {}
  void operator()(const std::string& payload, int) override {
    long long ms = 0;
    auto [end, ec] = std::from_chars(payload.data(), payload.data() + payload.size(), ms);
    if (ec != std::errc{} || end != payload.data() + payload.size()) ms = std::numeric_limits<long long>::min();
    earliest = std::min(earliest, ms);  // unreadable: wake now
  }
  long long earliest = std::numeric_limits<long long>::max();
};

sys_time from_epoch_micros(long long us) { return sys_time(std::chrono::microseconds(us)); }

// The occurrences of `c` in [from, now], at most `cap` of the latest, and how many there were.
// A schedule that has been down for long (a per-second cron over a week) is not walked one by
// one from `from`: the walk starts a day back and only counts, not lists, what it skipped.
struct due_occurrences {
  std::vector<cron::time_point> latest;  // ascending
  std::uint64_t total = 0;
};
due_occurrences occurrences(const cron& c, cron::time_point from, sys_time now, std::size_t cap) {
  due_occurrences out;
  std::optional<cron::time_point> t = from;
  if (now - from > std::chrono::hours(24)) {
    // Those before a day ago are counted as one batch of "at least one" missed occurrence.
    t = c.next(now - std::chrono::hours(24));
    out.total = 1;
    if (!t || *t > now) {
      // Fewer than one a day: walk from `from` after all (at most a few per year of outage).
      t = from;
      out.total = 0;
    }
  }
  while (t && *t <= now) {
    ++out.total;
    out.latest.push_back(*t);
    if (out.latest.size() > cap) out.latest.erase(out.latest.begin());
    t = c.next(*t);
  }
  return out;
}

}  // namespace

// One connection: LISTEN for sooner due times, and every statement of the scheduler.
class scheduler::session {
 public:
  session(const scheduler_options& o, std::string_view schema)
      : conn(o.database_url), wake(conn, detail::scheduler_channel(schema)) {}
  pqxx::connection conn;
  due_listener wake;
};

scheduler::scheduler(event_bus& bus, scheduler_options options, std::shared_ptr<spdlog::logger> log)
    : bus_(bus), options_(std::move(options)), log_(std::move(log)) {
  if (!log_) throw std::invalid_argument("omnibus::scheduler needs a logger");
  if (options_.database_url.empty()) throw std::invalid_argument("omnibus::scheduler needs a database_url");
  if (options_.batch_size == 0) throw std::invalid_argument("omnibus::scheduler needs a batch_size of at least 1");
  if (options_.sweep_interval.count() <= 0) throw std::invalid_argument("omnibus::scheduler needs a positive sweep_interval");
}

scheduler::~scheduler() { stop(); }

void scheduler::start() {
  thread_ = std::jthread([this](std::stop_token st) { run(st); });
}

void scheduler::stop() {
  if (thread_.joinable()) {
    thread_.request_stop();
    thread_.join();
  }
}

void scheduler::register_recurring(session& s) {
  const std::string& schema = bus_.options().schema;
  for (const recurring_schedule& r : bus_.schedules()) {
    pqxx::work tx{s.conn};
    const pqxx::result now_r = tx.exec("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint");
    const sys_time now = from_epoch_micros(now_r[0][0].as<long long>());
    const std::optional<cron::time_point> next = r.when.next(now);
    const long long next_us = next ? detail::epoch_micros(*next) : 0;
    const pqxx::result old = tx.exec_params(
        detail::with_schema("SELECT expression, zone FROM {s}.bus_recurring WHERE name = $1 FOR UPDATE", schema), r.name);
    if (old.empty()) {
      tx.exec_params0(detail::with_schema("INSERT INTO {s}.bus_recurring (name, expression, zone, event_name, next_fire_at) "
                                          "VALUES ($1, $2, $3, $4, CASE WHEN $5::bigint = 0 THEN NULL ELSE timestamptz "
                                          "'epoch' + $5::bigint * interval '1 microsecond' END) ON CONFLICT (name) DO NOTHING",
                                          schema),
                      r.name, r.when.expression(), r.when.zone(), r.event_name, next_us);
    } else if (old[0][0].as<std::string>() != r.when.expression() || old[0][1].as<std::string>() != r.when.zone()) {
      // Changed in code: the new expression counts from now, and says so.
      log_->info("scheduler: recurring schedule {} changed from \"{}\" ({}) to \"{}\" ({}); it next fires at {}", r.name,
                 old[0][0].as<std::string>(), old[0][1].as<std::string>(), r.when.expression(), r.when.zone(),
                 next ? to_iso8601(*next) : std::string("never"));
      tx.exec_params0(detail::with_schema("UPDATE {s}.bus_recurring SET expression = $2, zone = $3, event_name = $4, "
                                          "next_fire_at = CASE WHEN $5::bigint = 0 THEN NULL ELSE timestamptz 'epoch' + "
                                          "$5::bigint * interval '1 microsecond' END, updated_at = now() WHERE name = $1",
                                          schema),
                      r.name, r.when.expression(), r.when.zone(), r.event_name, next_us);
    }
    tx.commit();
  }
}

std::size_t scheduler::move_due(session& s) {
  const std::string& schema = bus_.options().schema;
  // One statement: claim due rows (rows another scheduler holds are skipped, not waited for),
  // delete them and insert them into the outbox in due order; the commit makes both happen or
  // neither, so a crash at any point loses nothing and fires nothing twice. The clock is read
  // once, in a subquery: clock_timestamp() itself is volatile, so the index scan could not stop
  // at the first row not yet due and would read every pending row (330 ms with a million).
  const std::string sql = detail::with_schema(
      "WITH due AS (SELECT id FROM {s}.bus_scheduled WHERE due_at <= (SELECT clock_timestamp()) ORDER BY due_at "
      "LIMIT $1 FOR UPDATE SKIP LOCKED), "
      "moved AS (DELETE FROM {s}.bus_scheduled d USING due WHERE d.id = due.id "
      "RETURNING d.id, d.subject, d.headers, d.body, d.due_at), "
      "sent AS (INSERT INTO {s}.bus_outbox (event_id, subject, headers, body) "
      "SELECT id, subject, headers, body FROM moved ORDER BY due_at, id RETURNING 1) "
      "SELECT count(*) FROM sent",
      schema);
  pqxx::work tx{s.conn};
  const auto moved = tx.exec_params1(sql, static_cast<long long>(options_.batch_size))[0].as<std::size_t>();
  if (moved > 0) (void)tx.exec_params("SELECT pg_notify($1, '')", outbox_channel(schema));
  detail::failpoint("scheduler_before_commit");
  tx.commit();
  detail::failpoint("scheduler_after_commit");
  stats_.moved.fetch_add(moved, std::memory_order_relaxed);
  return moved;
}

void scheduler::fire_recurring(session& s, const recurring_schedule& r) {
  const std::string& schema = bus_.options().schema;
  pqxx::work tx{s.conn};
  // Locked, skipping a row another scheduler is firing: it fires, we go on.
  const pqxx::result row = tx.exec_params(
      detail::with_schema("SELECT expression, zone, paused, (extract(epoch FROM next_fire_at) * 1000000)::bigint, "
                          "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint "
                          "FROM {s}.bus_recurring WHERE name = $1 FOR UPDATE SKIP LOCKED",
                          schema),
      r.name);
  if (row.empty() || row[0][2].as<bool>() || row[0][3].is_null()) return;
  // Another build's expression (a rolling deploy): its workers fire it, not this one.
  if (row[0][0].as<std::string>() != r.when.expression() || row[0][1].as<std::string>() != r.when.zone()) return;
  const sys_time now = from_epoch_micros(row[0][4].as<long long>());
  const auto next = std::chrono::time_point_cast<std::chrono::seconds>(from_epoch_micros(row[0][3].as<long long>()));
  if (next > now) return;

  const bool fire_all = r.options.missed == missed_policy::all;
  const due_occurrences due = occurrences(r.when, next, now, fire_all ? 1000 : 1);
  std::vector<cron::time_point> fire;
  for (const cron::time_point t : due.latest) {
    if (r.options.missed == missed_policy::latest || now - t <= r.options.missed_window) fire.push_back(t);
  }
  std::string result = "fired";
  std::optional<event_id> last_id;
  std::uint64_t fired = 0;
  for (const cron::time_point t : fire) {
    message msg;
    event_id id;
    try {
      const envelope env = r.make(t);
      id = env.id;
      msg = encode(env, bus_.options().stream.subject_prefix, bus_.options().max_body_bytes);
    } catch (const std::exception& e) {
      result = std::string("error: ") + e.what();
      stats_.recurring_errors.fetch_add(1, std::memory_order_relaxed);
      log_->error("scheduler: recurring schedule {} could not make its event for {}: {}; the occurrence is not fired",
                  r.name, to_iso8601(t), e.what());
      continue;
    }
    const pqxx::result claimed = tx.exec_params(
        detail::with_schema("INSERT INTO {s}.bus_recurring_fired (name, occurrence, event_id) VALUES ($1, timestamptz "
                            "'epoch' + $2::bigint * interval '1 microsecond', $3::uuid) ON CONFLICT DO NOTHING RETURNING 1",
                            schema),
        r.name, detail::epoch_micros(t), id.to_string());
    if (claimed.empty()) continue;  // fired already: the unique key makes it once
    outbox_insert(tx, schema, msg);
    last_id = id;
    ++fired;
  }
  const std::uint64_t skipped = due.total - fire.size();
  if (skipped > 0) {
    result += "; skipped " + std::to_string(skipped) + " missed";
    log_->warn("scheduler: recurring schedule {} missed {} occurrence(s) while no scheduler ran it; by its missed "
               "policy it fired {}",
               r.name, due.total, fire.size());
  }
  const std::optional<cron::time_point> after = r.when.next(now);
  tx.exec_params0(
      detail::with_schema(
          "UPDATE {s}.bus_recurring SET next_fire_at = CASE WHEN $2::bigint = 0 THEN NULL ELSE timestamptz 'epoch' + "
          "$2::bigint * interval '1 microsecond' END, last_occurrence = timestamptz 'epoch' + $3::bigint * interval "
          "'1 microsecond', last_fired_at = clock_timestamp(), last_event_id = coalesce($4::uuid, last_event_id), "
          "last_result = $5, updated_at = now() WHERE name = $1",
          schema),
      r.name, after ? detail::epoch_micros(*after) : 0LL, detail::epoch_micros(due.latest.back()),
      last_id ? std::optional<std::string>(last_id->to_string()) : std::nullopt, result);
  detail::failpoint("scheduler_recurring_before_commit");
  tx.commit();
  stats_.recurring_fired.fetch_add(fired, std::memory_order_relaxed);
  stats_.recurring_skipped.fetch_add(skipped, std::memory_order_relaxed);
}

void scheduler::run(std::stop_token stop) {
  bus_.freeze();
  const std::string& schema = bus_.options().schema;
  std::string names = "{";
  for (const recurring_schedule& r : bus_.schedules()) names += (names.size() > 1 ? "," : "") + r.name;
  names += "}";
  while (!stop.stop_requested()) {
    try {
      session s{options_, schema};
      migrate(s.conn, schema);
      if (!registered_) {
        register_recurring(s);
        registered_ = true;
      }
      stats_.connected = true;
      const std::string next_sql = detail::with_schema(
          "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint, "
          "(SELECT (extract(epoch FROM min(due_at)) * 1000)::bigint FROM {s}.bus_scheduled), "
          "(SELECT (extract(epoch FROM min(next_fire_at)) * 1000)::bigint FROM {s}.bus_recurring "
          "WHERE NOT paused AND name = ANY($1::text[]))",
          schema);
      while (!stop.stop_requested()) {
        s.wake.earliest = std::numeric_limits<long long>::max();
        bool more = false;
        if (move_due(s) == options_.batch_size) more = true;  // a full batch: more may be due
        for (const recurring_schedule& r : bus_.schedules()) fire_recurring(s, r);
        if (clock::now() - last_prune_ > std::chrono::hours(1)) {
          pqxx::nontransaction tx{s.conn};
          tx.exec_params0(detail::with_schema("DELETE FROM {s}.bus_recurring_fired WHERE fired_at < now() - $1::bigint * "
                                              "interval '1 hour'",
                                              schema),
                          static_cast<long long>(options_.fired_retention.count()));
          last_prune_ = clock::now();
        }
        if (more) continue;
        long long now_ms = 0;
        long long wake_ms = 0;
        {
          pqxx::nontransaction tx{s.conn};
          const pqxx::row n = tx.exec_params1(next_sql, names);
          now_ms = n[0].as<long long>();
          wake_ms = now_ms + options_.sweep_interval.count();
          if (!n[1].is_null()) wake_ms = std::min(wake_ms, n[1].as<long long>());
          if (!n[2].is_null()) wake_ms = std::min(wake_ms, n[2].as<long long>());
        }
        // Due now but not moved: another scheduler holds those rows. Look again shortly.
        wake_ms = std::max(wake_ms, now_ms + 2);
        const auto deadline = clock::now() + std::chrono::milliseconds(wake_ms - now_ms);
        // Short waits keep stop() prompt; a NOTIFY of something due before our wake-up ends the wait.
        while (!stop.stop_requested() && s.wake.earliest > wake_ms) {
          const auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline - clock::now());
          if (left.count() <= 0) break;
          const auto slice = std::min<std::chrono::microseconds>(left, std::chrono::milliseconds(100));
          s.conn.await_notification(0, slice.count());
        }
      }
      stats_.connected = false;
      return;
    } catch (const std::exception& e) {
      stats_.connected = false;
      log_->error("scheduler for schema {}: {}; retrying in {} ms", schema, e.what(), options_.retry_backoff.count());
      if (!detail::wait_until(stop, clock::now() + options_.retry_backoff)) return;
    }
  }
}

}  // namespace omnibus
