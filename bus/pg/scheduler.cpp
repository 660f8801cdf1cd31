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

// How overdue another build's recurring schedule must be before this build takes it over.
std::chrono::milliseconds takeover_after(const scheduler_options& o) {
  return std::max<std::chrono::milliseconds>(std::chrono::minutes(1), o.sweep_interval * 10);
}

// The occurrences of `c` in [from, now]: at most `cap` of the latest, how many were walked, and
// whether older ones were left unwalked. A schedule that has been down for long (a per-second
// cron over a week) is walked from `now - lookback` only.
struct due_occurrences {
  std::vector<cron::time_point> latest;  // ascending
  std::uint64_t total = 0;               // walked; more when older_unwalked
  bool older_unwalked = false;
};
due_occurrences occurrences(const cron& c, cron::time_point from, sys_time now, std::size_t cap,
                            std::chrono::seconds lookback) {
  due_occurrences out;
  std::optional<cron::time_point> t = from;
  if (now - from > lookback) {
    const std::optional<cron::time_point> recent = c.next(now - lookback);
    if (recent && *recent <= now) {
      t = recent;
      out.older_unwalked = true;
    }  // else fewer than one per lookback: walk from `from` after all (a few per year of outage)
  }
  while (t && *t <= now) {
    ++out.total;
    out.latest.push_back(*t);
    if (out.latest.size() > cap) out.latest.erase(out.latest.begin());
    t = c.next(*t);
  }
  return out;
}

// The schedules' names as a PostgreSQL text[] literal, each element quoted (a schedule named
// NULL is a name, not a null). Names are [A-Za-z0-9_-], so nothing needs escaping.
std::string name_array(const std::vector<recurring_schedule>& schedules) {
  std::string out = "{";
  for (const recurring_schedule& r : schedules) out += (out.size() > 1 ? ",\"" : "\"") + r.name + "\"";
  return out + "}";
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

void scheduler::register_one(session& s, const recurring_schedule& r, bool take_over) {
  const std::string& schema = bus_.options().schema;
  pqxx::work tx{s.conn};
  const pqxx::result now_r = tx.exec("SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint");
  const sys_time now = from_epoch_micros(now_r[0][0].as<long long>());
  const std::optional<cron::time_point> next = r.when.next(now);
  const long long next_us = next ? detail::epoch_micros(*next) : 0;
  const pqxx::result old = tx.exec_params(
      detail::with_schema("SELECT expression, zone, (extract(epoch FROM next_fire_at) * 1000000)::bigint FROM "
                          "{s}.bus_recurring WHERE name = $1 FOR UPDATE",
                          schema),
      r.name);
  const std::string set_next = "CASE WHEN $5::bigint = 0 THEN NULL ELSE timestamptz 'epoch' + $5::bigint * interval "
                               "'1 microsecond' END";
  if (old.empty()) {
    tx.exec_params0(detail::with_schema("INSERT INTO {s}.bus_recurring (name, expression, zone, event_name, next_fire_at) "
                                        "VALUES ($1, $2, $3, $4, " + set_next + ") ON CONFLICT (name) DO NOTHING",
                                        schema),
                    r.name, r.when.expression(), r.when.zone(), r.event_name, next_us);
  } else if (old[0][0].as<std::string>() != r.when.expression() || old[0][1].as<std::string>() != r.when.zone()) {
    if (take_over) {
      // Still another build's, and overdue: nobody runs that build any more (a rolling deploy
      // ended, or an old worker wrote it back), so this one takes the schedule over.
      const bool overdue = !old[0][2].is_null() &&
                           from_epoch_micros(old[0][2].as<long long>()) + takeover_after(options_) < now;
      if (!overdue) return;
      log_->warn("scheduler: recurring schedule {} was stored as \"{}\" ({}) by another build and is overdue; this "
                 "build takes it over as \"{}\" ({}); it next fires at {}",
                 r.name, old[0][0].as<std::string>(), old[0][1].as<std::string>(), r.when.expression(), r.when.zone(),
                 next ? to_iso8601(*next) : std::string("never"));
    } else {
      // Changed in code: the new expression counts from now, and says so.
      log_->info("scheduler: recurring schedule {} changed from \"{}\" ({}) to \"{}\" ({}); it next fires at {}", r.name,
                 old[0][0].as<std::string>(), old[0][1].as<std::string>(), r.when.expression(), r.when.zone(),
                 next ? to_iso8601(*next) : std::string("never"));
    }
    tx.exec_params0(detail::with_schema("UPDATE {s}.bus_recurring SET expression = $2, zone = $3, event_name = $4, "
                                        "next_fire_at = " + set_next + ", updated_at = now() WHERE name = $1",
                                        schema),
                    r.name, r.when.expression(), r.when.zone(), r.event_name, next_us);
  }
  tx.commit();
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
  if (moved > 0) {
    (void)tx.exec_params("SELECT pg_notify($1, '')", outbox_channel(schema));
    detail::failpoint("scheduler_before_commit");  // rows deleted and in the outbox, not committed
  }
  tx.commit();
  detail::failpoint("scheduler_after_commit");
  stats_.moved.fetch_add(moved, std::memory_order_relaxed);
  return moved;
}

void scheduler::fire_recurring(session& s, const recurring_schedule& r) {
  const std::string& schema = bus_.options().schema;
  pqxx::work tx{s.conn};
  // Locked only when due, skipping a row another scheduler is firing: it fires, we go on.
  const pqxx::result row = tx.exec_params(
      detail::with_schema("SELECT expression, zone, (extract(epoch FROM next_fire_at) * 1000000)::bigint, "
                          "(extract(epoch FROM clock_timestamp()) * 1000000)::bigint FROM {s}.bus_recurring "
                          "WHERE name = $1 AND NOT paused AND next_fire_at <= clock_timestamp() FOR UPDATE SKIP LOCKED",
                          schema),
      r.name);
  if (row.empty()) return;
  // Another build's expression (a rolling deploy): its workers fire it, not this one.
  if (row[0][0].as<std::string>() != r.when.expression() || row[0][1].as<std::string>() != r.when.zone()) return;
  const sys_time now = from_epoch_micros(row[0][3].as<long long>());
  const auto next = std::chrono::floor<std::chrono::seconds>(from_epoch_micros(row[0][2].as<long long>()));

  // latest: the latest due occurrence, however late. skip: the latest, only while at most
  // missed_window late. all: every one at most missed_window late, oldest first.
  const bool fire_all = r.options.missed == missed_policy::all;
  const auto lookback = std::max<std::chrono::seconds>(std::chrono::hours(24), r.options.missed_window);
  const due_occurrences due = occurrences(r.when, next, now, fire_all ? 1000 : 1, lookback);
  std::vector<cron::time_point> fire;
  for (const cron::time_point t : due.latest) {
    if (r.options.missed == missed_policy::latest || now - t <= r.options.missed_window) fire.push_back(t);
  }
  std::string error;
  std::optional<event_id> last_id;
  std::optional<cron::time_point> last_fired;
  std::uint64_t fired = 0;
  for (const cron::time_point t : fire) {
    message msg;
    event_id id;
    std::string why;
    try {
      const envelope env = r.make(t);
      id = env.id;
      msg = encode(env, bus_.options().stream.subject_prefix, bus_.options().max_body_bytes);
    } catch (const std::exception& e) {
      why = e.what();
    } catch (...) {
      why = "make() threw something that is not a std::exception";
    }
    if (!why.empty()) {
      error = why;
      stats_.recurring_errors.fetch_add(1, std::memory_order_relaxed);
      log_->error("scheduler: recurring schedule {} could not make its event for {}: {}; the occurrence is not fired",
                  r.name, to_iso8601(t), why);
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
    last_fired = t;
    ++fired;
  }
  const std::uint64_t skipped = due.total - fire.size();
  std::string result = fired > 0 ? "fired" : "nothing fired";
  if (!error.empty()) result += "; error: " + error;
  if (skipped > 0 || due.older_unwalked) {
    const std::string missed = (due.older_unwalked ? "more than " : "") + std::to_string(skipped);
    result += "; skipped " + missed + " missed";
    log_->warn("scheduler: recurring schedule {} missed {} occurrence(s) while no scheduler ran it (or it was "
               "paused); by its missed policy it fired {}",
               r.name, missed, fire.size());
  }
  const std::optional<cron::time_point> after = r.when.next(now);
  tx.exec_params0(
      detail::with_schema(
          "UPDATE {s}.bus_recurring SET next_fire_at = CASE WHEN $2::bigint = 0 THEN NULL ELSE timestamptz 'epoch' + "
          "$2::bigint * interval '1 microsecond' END, last_occurrence = CASE WHEN $3::bigint = 0 THEN last_occurrence "
          "ELSE timestamptz 'epoch' + $3::bigint * interval '1 microsecond' END, last_fired_at = CASE WHEN $3::bigint = "
          "0 THEN last_fired_at ELSE clock_timestamp() END, last_event_id = coalesce($4::uuid, last_event_id), "
          "last_result = $5, updated_at = now() WHERE name = $1",
          schema),
      r.name, after ? detail::epoch_micros(*after) : 0LL, last_fired ? detail::epoch_micros(*last_fired) : 0LL,
      last_id ? std::optional<std::string>(last_id->to_string()) : std::nullopt, result);
  detail::failpoint("scheduler_recurring_before_commit");
  tx.commit();
  stats_.recurring_fired.fetch_add(fired, std::memory_order_relaxed);
  stats_.recurring_skipped.fetch_add(skipped, std::memory_order_relaxed);
}

void scheduler::run(std::stop_token stop) {
  bus_.freeze();
  const std::string& schema = bus_.options().schema;
  const std::string names = name_array(bus_.schedules());
  const std::string due_sql = detail::with_schema(
      "SELECT (extract(epoch FROM clock_timestamp()) * 1000)::bigint, (extract(epoch FROM min(due_at)) * 1000)::bigint "
      "FROM {s}.bus_scheduled",
      schema);
  const std::string recurring_sql = detail::with_schema(
      "SELECT name, expression, zone, paused, (extract(epoch FROM next_fire_at) * 1000)::bigint, "
      "(extract(epoch FROM clock_timestamp()) * 1000)::bigint FROM {s}.bus_recurring WHERE name = ANY($1::text[])",
      schema);
  auto busy_wait = std::chrono::milliseconds(2);  // grows while due rows stay locked by others
  while (!stop.stop_requested()) {
    try {
      session s{options_, schema};
      migrate(s.conn, schema);
      if (!registered_) {
        for (const recurring_schedule& r : bus_.schedules()) register_one(s, r, false);
        registered_ = true;
      }
      stats_.connected = true;
      while (!stop.stop_requested()) {
        s.wake.earliest = std::numeric_limits<long long>::max();
        const std::size_t moved = move_due(s);
        if (moved == options_.batch_size) continue;  // a full batch: more may be due
        long long now_ms = 0;
        long long wake_ms = 0;
        bool due_but_held = false;
        {
          pqxx::nontransaction tx{s.conn};
          const pqxx::row n = tx.exec1(due_sql);
          now_ms = n[0].as<long long>();
          wake_ms = now_ms + options_.sweep_interval.count();
          if (!n[1].is_null()) {
            wake_ms = std::min(wake_ms, n[1].as<long long>());
            due_but_held = moved == 0 && n[1].as<long long>() <= now_ms;  // others hold those rows
          }
        }
        if (!bus_.schedules().empty()) {
          pqxx::result rows;
          {
            pqxx::nontransaction tx{s.conn};
            rows = tx.exec_params(recurring_sql, names);
          }
          for (const recurring_schedule& r : bus_.schedules()) {
            std::optional<pqxx::row> row;  // by value: a result's iterator is its own row
            for (pqxx::result::size_type i = 0; i < rows.size(); ++i) {
              if (rows[i][0].as<std::string>() == r.name) row.emplace(rows[i]);
            }
            if (!row) {  // deleted by hand: registered anew
              register_one(s, r, false);
              continue;
            }
            if ((*row)[3].as<bool>() || (*row)[4].is_null()) continue;  // paused, or never fires
            const long long next_ms = (*row)[4].as<long long>();
            const long long row_now_ms = (*row)[5].as<long long>();
            if ((*row)[1].as<std::string>() != r.when.expression() || (*row)[2].as<std::string>() != r.when.zone()) {
              // Another build's: fired by its workers; taken over once overdue past the grace.
              const long long takeover_ms = next_ms + std::chrono::duration_cast<std::chrono::milliseconds>(
                                                          takeover_after(options_)).count();
              if (takeover_ms < row_now_ms) {
                register_one(s, r, true);
              } else {
                wake_ms = std::min(wake_ms, takeover_ms + 1);
              }
              continue;
            }
            if (next_ms <= row_now_ms) {
              fire_recurring(s, r);
            } else {
              wake_ms = std::min(wake_ms, next_ms);
            }
          }
        }
        if (clock::now() - last_prune_ > std::chrono::hours(1)) {
          pqxx::nontransaction tx{s.conn};
          tx.exec_params0(detail::with_schema("DELETE FROM {s}.bus_recurring_fired WHERE fired_at < now() - $1::bigint * "
                                              "interval '1 hour'",
                                              schema),
                          static_cast<long long>(options_.fired_retention.count()));
          last_prune_ = clock::now();
        }
        // Due rows another scheduler holds (or a caller's open cancel): look again soon, less
        // and less often while they stay held, never hot.
        if (due_but_held) {
          wake_ms = std::max(wake_ms, now_ms + busy_wait.count());
          busy_wait = std::min<std::chrono::milliseconds>(busy_wait * 2, options_.sweep_interval);
        } else {
          busy_wait = std::chrono::milliseconds(2);
        }
        wake_ms = std::max(wake_ms, now_ms + 1);
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
