#include "omnibus/redrive.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>
#include <stdexcept>

#include <pqxx/pqxx>
#include <spdlog/spdlog.h>

#include "omnibus/dead_letters.hpp"
#include "omnibus/envelope.hpp"
#include "omnibus/error.hpp"
#include "omnibus/operations.hpp"
#include "core/schema.hpp"
#include "core/failpoint.hpp"
#include "core/stop_wait.hpp"
#include "ops/session_lock.hpp"

namespace omnibus {
namespace {

using clock = std::chrono::steady_clock;
using sys_clock = std::chrono::system_clock;

std::string t(std::string_view schema, std::string_view table) { return detail::table_name(schema, table); }

std::string time_text(const std::optional<sys_clock::time_point>& tp) {
  if (!tp) return {};
  return format_time(std::chrono::time_point_cast<std::chrono::microseconds>(*tp));
}

// The filter's WHERE clause over bus_dead_letters d, its values in $1..$6 (filter_values).
constexpr const char* filter_sql =
    "($1 = '' OR d.listener = $1) AND ($2 = '' OR d.event_name = $2) AND ($3 = '' OR d.error LIKE $3) "
    "AND d.last_failed_at >= coalesce(NULLIF($4, '')::timestamptz, '-infinity') "
    "AND d.last_failed_at < coalesce(NULLIF($5, '')::timestamptz, 'infinity') "
    "AND ($6 = '' OR d.id = ANY(string_to_array($6, ',')::bigint[]))";

constexpr std::size_t max_filter_ids = 1000;

// Leaves out dead letters still pending in a running or paused redrive: they belong to it.
std::string not_held(std::string_view schema) {
  return " AND NOT EXISTS (SELECT 1 FROM " + t(schema, "bus_redrive_items") + " o JOIN " + t(schema, "bus_redrives") +
         " r ON r.id = o.redrive_id WHERE o.dead_letter_id = d.id AND o.state IN ('pending', 'started') AND r.state IN "
         "('running', 'paused'))";
}

std::string ids_text(const std::vector<std::int64_t>& ids) {
  if (ids.size() > max_filter_ids) {
    throw std::invalid_argument("a dead-letter filter takes at most 1,000 ids; filter by listener, event or error instead");
  }
  std::string out;
  for (const auto id : ids) {
    if (!out.empty()) out += ',';
    out += std::to_string(id);
  }
  return out;
}

sys_clock::time_point from_micros(double us) {
  return sys_clock::time_point{std::chrono::duration_cast<sys_clock::duration>(std::chrono::microseconds{std::llround(us)})};
}

// The status columns, in redrive_status's order, from bus_redrives r and its items i.
constexpr const char* status_columns =
    "r.id, r.action, r.filter, r.rate, r.requested_by, r.state, r.updated_by, r.total, "
    "count(i.*) FILTER (WHERE i.state IN ('pending', 'started')), count(i.*) FILTER (WHERE i.state = 'ok'), "
    "count(i.*) FILTER (WHERE i.state = 'failed'), count(i.*) FILTER (WHERE i.state = 'gone'), "
    "count(i.*) FILTER (WHERE i.state = 'interrupted'), extract(epoch FROM r.created_at) * 1e6, "
    "extract(epoch FROM r.finished_at) * 1e6";

redrive_status status_of(const pqxx::row& r) {
  redrive_status s;
  s.id = r[0].as<std::int64_t>();
  s.action = r[1].as<std::string>() == "discard" ? redrive_action::discard : redrive_action::retry;
  s.filter = r[2].as<std::string>();
  s.rate = r[3].as<double>();
  s.requested_by = r[4].as<std::string>();
  s.state = r[5].as<std::string>();
  s.updated_by = r[6].as<std::string>();
  s.total = r[7].as<std::uint64_t>();
  s.pending = r[8].as<std::uint64_t>();
  s.ok = r[9].as<std::uint64_t>();
  s.failed = r[10].as<std::uint64_t>();
  s.gone = r[11].as<std::uint64_t>();
  s.interrupted = r[12].as<std::uint64_t>();
  s.created_at = from_micros(r[13].as<double>());
  if (!r[14].is_null()) s.finished_at = from_micros(r[14].as<double>());
  return s;
}

std::vector<redrive_status> query_status(pqxx::connection_base& conn, std::string_view schema, const std::string& where,
                                         std::int64_t id, std::size_t limit) {
  pqxx::read_transaction tx{conn};
  std::vector<redrive_status> out;
  for (const auto& row : tx.exec_params(std::string("SELECT ") + status_columns + " FROM " + t(schema, "bus_redrives") +
                                            " r LEFT JOIN " + t(schema, "bus_redrive_items") +
                                            " i ON i.redrive_id = r.id " + where +
                                            " GROUP BY r.id ORDER BY r.id DESC LIMIT $2",
                                        id, static_cast<std::int64_t>(limit))) {
    out.push_back(status_of(row));
  }
  return out;
}

}  // namespace

std::string dead_letter_filter::describe() const {
  std::string out;
  auto add = [&](std::string_view name, std::string_view op, const std::string& value) {
    if (value.empty()) return;
    if (!out.empty()) out += ' ';
    out += name;
    out += op;
    out += value;
  };
  add("listener", "=", listener);
  add("event", "=", event_name);
  add("error", "~", error_like);
  add("since", "=", time_text(since));
  add("until", "=", time_text(until));
  add("ids", "=", ids.size() > 10 ? std::to_string(ids.size()) + " chosen" : ids_text(ids));
  return out.empty() ? "every dead letter" : out;
}

std::string_view to_string(redrive_action a) noexcept { return a == redrive_action::discard ? "discard" : "retry"; }

std::uint64_t count_dead_letters(pqxx::connection_base& conn, std::string_view schema, const dead_letter_filter& f) {
  pqxx::read_transaction tx{conn};
  return tx
      .exec_params1("SELECT count(*) FROM " + t(schema, "bus_dead_letters") + " d WHERE " + filter_sql + not_held(schema),
                    f.listener,
                    f.event_name, f.error_like, time_text(f.since), time_text(f.until), ids_text(f.ids))[0]
      .as<std::uint64_t>();
}

dead_letter_page list_dead_letter_page(pqxx::connection_base& conn, std::string_view schema, const dead_letter_filter& f,
                                       std::optional<std::int64_t> before_id, std::size_t limit) {
  if (limit < 1 || limit > 1000) throw std::invalid_argument("a page of dead letters holds 1 to 1,000 rows");
  pqxx::read_transaction tx{conn};
  const auto rows = tx.exec_params(
      "SELECT d.id, d.listener, d.event_id, d.event_name, d.subject, d.reason, left(d.error, 300), d.attempts, "
      "extract(epoch FROM d.first_failed_at)::float8, extract(epoch FROM d.last_failed_at)::float8, d.stream_sequence FROM " +
          t(schema, "bus_dead_letters") + " d WHERE " + filter_sql +
          " AND d.id < $7::bigint ORDER BY d.id DESC LIMIT $8",
      f.listener, f.event_name, f.error_like, time_text(f.since), time_text(f.until), ids_text(f.ids), before_id.value_or(std::numeric_limits<std::int64_t>::max()),
      static_cast<std::int64_t>(limit + 1));
  dead_letter_page page;
  for (const auto& r : rows) {
    if (page.rows.size() == limit) {
      page.more = true;
      break;
    }
    dead_letter d;
    d.id = r[0].as<std::int64_t>();
    d.listener = r[1].as<std::string>();
    d.event_id = r[2].as<std::string>();
    d.event_name = r[3].is_null() ? std::string() : r[3].as<std::string>();
    d.msg.subject = r[4].as<std::string>();
    d.reason = r[5].is_null() ? std::string() : r[5].as<std::string>();
    d.error = r[6].is_null() ? std::string() : r[6].as<std::string>();
    d.attempts = r[7].as<int>();
    auto at = [](double epoch) {
      return std::chrono::system_clock::time_point(
          std::chrono::duration_cast<std::chrono::system_clock::duration>(std::chrono::duration<double>(epoch)));
    };
    d.first_failed_at = at(r[8].as<double>());
    d.last_failed_at = at(r[9].as<double>());
    d.stream_sequence = r[10].is_null() ? 0 : r[10].as<std::uint64_t>();
    page.rows.push_back(std::move(d));
  }
  return page;
}

redrive_status start_redrive(pqxx::connection_base& conn, std::string_view schema, const redrive_request& req) {
  if (!std::isfinite(req.rate) || req.rate < 0 || (req.rate > 0 && req.rate < 0.001) || req.rate > 1e6) {
    throw std::invalid_argument("a redrive's rate must be 0 (no limit) or from 0.001 to 1,000,000 per second");
  }
  if (req.requested_by.empty()) throw std::invalid_argument("a redrive needs requested_by: who asks, for the audit");
  const dead_letter_filter& f = req.filter;
  pqxx::work tx{conn};
  const auto id = tx.exec_params1("INSERT INTO " + t(schema, "bus_redrives") +
                                      " (action, filter, rate, requested_by, total, updated_by) VALUES ($1, $2, $3, $4, 0, $4) "
                                      "RETURNING id",
                                  std::string(to_string(req.action)), f.describe(), req.rate, req.requested_by)[0]
                      .as<std::int64_t>();
  // The snapshot: these dead letters and no other, whatever arrives later.
  const auto items = tx.exec_params("INSERT INTO " + t(schema, "bus_redrive_items") +
                                        " (redrive_id, dead_letter_id) SELECT $7::bigint, d.id FROM " + t(schema, "bus_dead_letters") +
                                        " d WHERE " + filter_sql + not_held(schema),
                                    f.listener, f.event_name, f.error_like, time_text(f.since), time_text(f.until),
                                    ids_text(f.ids), id);
  tx.exec_params0("UPDATE " + t(schema, "bus_redrives") + " SET total = $2::bigint, state = CASE WHEN $2::bigint = 0 THEN 'done' ELSE state END, "
                  "finished_at = CASE WHEN $2::bigint = 0 THEN now() END WHERE id = $1",
                  id, static_cast<std::int64_t>(items.affected_rows()));
  tx.commit();
  return *find_redrive(conn, schema, id);
}

std::optional<redrive_status> find_redrive(pqxx::connection_base& conn, std::string_view schema, std::int64_t id) {
  auto all = query_status(conn, schema, "WHERE r.id = $1", id, 1);
  if (all.empty()) return std::nullopt;
  return all.front();
}

std::vector<redrive_status> list_redrives(pqxx::connection_base& conn, std::string_view schema, std::size_t limit) {
  return query_status(conn, schema, "WHERE $1::bigint IS NOT NULL", 0, limit);
}

redrive_status set_redrive_state(pqxx::connection_base& conn, std::string_view schema, std::int64_t id,
                                 std::string_view state, std::string_view by) {
  if (state != "paused" && state != "running" && state != "cancelled") {
    throw error("a redrive can be set paused, running or cancelled, not '" + std::string(state) + "'");
  }
  if (by.empty()) throw error("set_redrive_state needs who asks, for the audit");
  {
    pqxx::work tx{conn};
    const auto r = tx.exec_params("UPDATE " + t(schema, "bus_redrives") +
                                      " SET state = $2, updated_by = $3, updated_at = now(), "
                                      "finished_at = CASE WHEN $2 = 'cancelled' THEN now() END "
                                      "WHERE id = $1 AND state IN ('running', 'paused')",
                                  id, std::string(state), std::string(by));
    tx.commit();
    if (r.affected_rows() == 1) return *find_redrive(conn, schema, id);
  }
  const auto now = find_redrive(conn, schema, id);
  if (!now) throw error("no redrive " + std::to_string(id) + " in schema " + std::string(schema));
  throw error("redrive " + std::to_string(id) + " is " + now->state + ": it can no longer change");
}

redrive_status run_redrive(const event_bus& bus, pqxx::connection_base& conn, std::int64_t id, std::stop_token stop,
                           const std::function<void(const redrive_status&)>& progress) {
  const std::string schema = bus.options().schema;
  const std::string items = t(schema, "bus_redrive_items");
  const std::string redrives = t(schema, "bus_redrives");
  auto current = [&] { return *find_redrive(conn, schema, id); };
  auto status = find_redrive(conn, schema, id);
  if (!status) throw error("no redrive " + std::to_string(id) + " in schema " + schema);
  const detail::session_lock lock{conn, "omnibus:redrive:" + schema + ":" + std::to_string(id)};
  if (!lock.held()) {
    status->busy = true;
    return *status;
  }
  if (status->state != "running") return *status;
  // The session the lock is on: libpqxx reconnects a broken connection on its own, without it.
  const int session = conn.backendpid();
  const auto& listeners = bus.async_listeners();
  auto listener_of = [&](const std::string& name) -> const async_listener* {
    const auto it = std::find_if(listeners.begin(), listeners.end(), [&](const async_listener& l) { return l.name == name; });
    return it == listeners.end() ? nullptr : &*it;
  };

  // What a run that stopped had started: run again only what cannot repeat an effect.
  {
    pqxx::work tx{conn};
    for (const auto& row : tx.exec_params("SELECT i.dead_letter_id, d.listener FROM " + items + " i LEFT JOIN " +
                                              t(schema, "bus_dead_letters") +
                                              " d ON d.id = i.dead_letter_id WHERE i.redrive_id = $1 AND i.state = 'started'",
                                          id)) {
      std::string state = "pending";
      std::string why;
      if (row[1].is_null()) {
        state = "ok";
        why = "gone when a later run looked: finished by the run that stopped (a success deletes the dead letter), or "
              "retried or discarded by someone else meanwhile";
      } else if (status->action == redrive_action::retry) {
        const async_listener* l = listener_of(row[1].as<std::string>());
        if (l == nullptr || !l->options.inbox) {
          state = "interrupted";
          why = "a run stopped while retrying it: not run again, in case its effects were made (its listener has no "
                "inbox, or this build does not have it); retry it by hand";
        }
      }
      tx.exec_params0("UPDATE " + items + " SET state = $3, error = NULLIF($4, ''), done_at = CASE WHEN $3 = 'pending' "
                      "THEN NULL ELSE now() END WHERE redrive_id = $1 AND dead_letter_id = $2",
                      id, row[0].as<std::int64_t>(), state, why);
    }
    tx.commit();
  }
  status = current();

  const auto gap = status->rate > 0 ? std::chrono::duration_cast<clock::duration>(std::chrono::duration<double>(1.0 / status->rate))
                                    : clock::duration::zero();
  auto next_at = clock::now();
  auto checked_at = clock::now();
  // Whether an operator paused or cancelled it: looked at every quarter of a second at most.
  auto still_running = [&](bool now) {
    if (!now && clock::now() - checked_at < std::chrono::milliseconds(250)) return true;
    checked_at = clock::now();
    pqxx::read_transaction tx{conn};
    return tx.exec_params1("SELECT state FROM " + redrives + " WHERE id = $1", id)[0].as<std::string>() == "running";
  };
  std::int64_t after = std::numeric_limits<std::int64_t>::min();
  std::uint64_t skipped = 0;
  for (;;) {
    std::vector<std::pair<std::int64_t, std::string>> batch;  // dead letter, its listener ("" when gone)
    {
      pqxx::read_transaction tx{conn};
      for (const auto& row : tx.exec_params("SELECT i.dead_letter_id, coalesce(d.listener, '') FROM " + items + " i LEFT JOIN " +
                                                t(schema, "bus_dead_letters") +
                                                " d ON d.id = i.dead_letter_id WHERE i.redrive_id = $1 AND i.state = 'pending' "
                                                "AND i.dead_letter_id > $2 ORDER BY i.dead_letter_id LIMIT 100",
                                            id, after)) {
        batch.emplace_back(row[0].as<std::int64_t>(), row[1].as<std::string>());
      }
    }
    if (batch.empty()) break;
    for (const auto& [dl, listener] : batch) {
      after = dl;
      if (status->action == redrive_action::retry && !listener.empty() && listener_of(listener) == nullptr) {
        ++skipped;  // another build's listener: left pending for a worker that has it
        continue;
      }
      // Wait for its turn in slices, so that a pause or cancel is seen while waiting.
      for (;;) {
        if (stop.stop_requested()) return current();
        if (!still_running(false)) return current();
        const auto now = clock::now();
        if (now >= next_at) break;
        if (!detail::wait_until(stop, std::min(next_at, now + std::chrono::milliseconds(250)))) return current();
      }
      if (!still_running(gap >= std::chrono::milliseconds(250))) return current();
      next_at = std::max(next_at, clock::now()) + gap;
      {
        pqxx::work tx{conn};
        // On the lock's session only: after a silent reconnect another run may hold it now.
        const auto taken = tx.exec_params("UPDATE " + items + " SET state = 'started' WHERE redrive_id = $1 AND "
                                          "dead_letter_id = $2 AND state = 'pending' AND pg_backend_pid() = $3",
                                          id, dl, session);
        tx.commit();
        if (taken.affected_rows() != 1) {
          if (conn.backendpid() != session) {
            throw error("redrive " + std::to_string(id) + ": the database connection was re-established, and its lock "
                        "with the old session; stopping (a later run carries it on)");
          }
          continue;
        }
      }
      detail::failpoint("redrive_after_start");
      std::string state;
      std::string why;
      if (status->action == redrive_action::discard) {
        state = discard_dead_letter(conn, schema, dl) ? "ok" : "gone";
      } else if (!find_dead_letter(conn, schema, dl)) {
        state = "gone";
      } else {
        retry_outcome r;
        try {
          r = retry_dead_letter(bus, conn, dl);
        } catch (const error&) {  // retried or discarded by somebody else meanwhile
          if (find_dead_letter(conn, schema, dl)) throw;
          r.error = "gone";
        }
        if (r.busy) {  // someone retries it by hand right now: its turn comes again in a later run
          pqxx::work tx{conn};
          tx.exec_params0("UPDATE " + items + " SET state = 'pending' WHERE redrive_id = $1 AND dead_letter_id = $2", id, dl);
          tx.commit();
          ++skipped;
          continue;
        }
        state = r.ok ? "ok" : r.error == "gone" ? "gone" : "failed";
        if (state == "failed") why = r.error;
      }
      detail::failpoint("redrive_after_run");
      {
        pqxx::work tx{conn};
        tx.exec_params0("UPDATE " + items + " SET state = $3, error = NULLIF($4, ''), done_at = now() WHERE redrive_id = $1 "
                        "AND dead_letter_id = $2",
                        id, dl, state, why);
        tx.commit();
      }
      --status->pending;
      if (state == "ok") ++status->ok;
      if (state == "failed") ++status->failed;
      if (state == "gone") ++status->gone;
      if (progress) progress(*status);
    }
  }
  if (skipped == 0) {
    pqxx::work tx{conn};
    tx.exec_params0("UPDATE " + redrives + " SET state = 'done', finished_at = now(), updated_at = now() WHERE id = $1 AND "
                    "state = 'running' AND NOT EXISTS (SELECT 1 FROM " + items +
                    " WHERE redrive_id = $1 AND state IN ('pending', 'started'))",
                    id);
    tx.commit();
  }
  redrive_status end = current();
  end.skipped = skipped;
  return end;
}

redrive_runner::redrive_runner(const event_bus& bus, redrive_runner_options options, std::shared_ptr<spdlog::logger> log)
    : bus_(bus), options_(std::move(options)), log_(std::move(log)) {
  if (!log_) throw std::invalid_argument("omnibus::redrive_runner needs a logger");
  if (options_.database_url.empty()) throw std::invalid_argument("omnibus::redrive_runner needs a database_url");
  if (options_.poll.count() <= 0) throw std::invalid_argument("omnibus::redrive_runner needs a positive poll");
}

redrive_runner::~redrive_runner() { stop(); }

void redrive_runner::start() {
  thread_ = std::jthread([this](std::stop_token st) { run(st); });
}

void redrive_runner::stop() {
  if (thread_.joinable()) {
    thread_.request_stop();
    thread_.join();
  }
}

void redrive_runner::run(std::stop_token stop) {
  const std::string& schema = bus_.options().schema;
  auto backoff = options_.poll;  // doubles while errors repeat, up to a minute: no tight loop, no log flood
  while (!stop.stop_requested()) {
    try {
      pqxx::connection conn{options_.database_url};
      while (!stop.stop_requested()) {
        std::vector<std::int64_t> running;
        {
          pqxx::read_transaction tx{conn};
          for (const auto& row : tx.exec("SELECT id FROM " + t(schema, "bus_redrives") + " WHERE state = 'running' ORDER BY id")) {
            running.push_back(row[0].as<std::int64_t>());
          }
        }
        for (const std::int64_t id : running) {
          const redrive_status s = run_redrive(bus_, conn, id, stop);
          if (s.state != "running") {
            log_->info("redrive {} ({} {}): {}; {} ok, {} failed, {} gone, {} interrupted of {}", s.id, to_string(s.action),
                       s.filter, s.state, s.ok, s.failed, s.gone, s.interrupted, s.total);
          }
        }
        backoff = options_.poll;
        if (!detail::wait_until(stop, clock::now() + options_.poll)) return;
      }
    } catch (const std::exception& e) {
      log_->error("redrives of schema {}: {}; trying again in {} ms", schema, e.what(), backoff.count());
      if (!detail::wait_until(stop, clock::now() + backoff)) return;
      backoff = std::min<std::chrono::milliseconds>(backoff * 2, std::chrono::minutes(1));
    }
  }
}

}  // namespace omnibus
