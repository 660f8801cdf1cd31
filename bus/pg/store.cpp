#include "pg/store.hpp"

#include <algorithm>
#include <stdexcept>

#include <pqxx/pqxx>

#include "core/schema.hpp"
#include "omnibus/listener_control.hpp"
#include "omnibus/migrations.hpp"
#include "omnibus/parked_keys.hpp"
#include "pg/connection_pool.hpp"

namespace omnibus::detail {

row_refused::~row_refused() = default;
store_unavailable::~store_unavailable() = default;

bool is_unavailable(const std::exception& e) noexcept {
  if (dynamic_cast<const store_unavailable*>(&e) != nullptr) return true;
  if (dynamic_cast<const pqxx::broken_connection*>(&e) != nullptr) return true;
  if (const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e)) {
    const std::string& state = sql->sqlstate();
    return state.rfind("08", 0) == 0 || state.rfind("57P", 0) == 0;  // connection exception; shutting down
  }
  return false;
}
commit_in_doubt::~commit_in_doubt() = default;

bool claim_inbox(pqxx::transaction_base& tx, std::string_view schema, std::string_view listener,
                 std::string_view event_id) {
  return tx.exec_params("INSERT INTO " + table_name(schema, "bus_inbox") +
                            " (listener, event_id) VALUES ($1, $2::uuid) ON CONFLICT DO NOTHING",
                        std::string(listener), std::string(event_id))
             .affected_rows() == 1;
}

namespace {

// A failure that writing again cannot cure: the row itself is refused (data, constraint or
// size), not the database's availability.
bool lasting(const std::exception& e) {
  if (const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e)) {
    const std::string& state = sql->sqlstate();
    return state.rfind("22", 0) == 0 || state.rfind("23", 0) == 0 || state.rfind("54", 0) == 0;
  }
  return dynamic_cast<const pqxx::conversion_error*>(&e) != nullptr ||
         dynamic_cast<const pqxx::argument_error*>(&e) != nullptr || dynamic_cast<const std::length_error*>(&e) != nullptr;
}

// A handler's database connection, leased from the pool on its first use.
class lazy_connection final : public connection_source {
 public:
  lazy_connection(connection_pool& pool, std::chrono::milliseconds wait) : pool_(pool), wait_(wait) {}
  pqxx::connection_base& connection() override {
    if (!lease_) lease_.emplace(pool_.acquire(wait_));
    return **lease_;
  }

 private:
  connection_pool& pool_;
  std::chrono::milliseconds wait_;
  std::optional<connection_pool::lease> lease_;
};

class pg_session final : public job_session {
 public:
  pg_session(connection_pool& pool, const pg_store_options& o) : opts_(o), db_(pool, o.db_wait) {}

  connection_source* connections() noexcept override { return &db_; }

  bool claim(std::string_view listener, std::string_view event_id, std::chrono::milliseconds time_left) override {
    tx_.emplace(db_.connection());
    // Past the deadline PostgreSQL ends the session of a handler that hangs (idle in its
    // transaction) or runs one endless statement: its inbox row's lock goes with it, so the
    // redelivered copy is not blocked for as long as the hung thread lives.
    const auto left = std::to_string(std::max<std::int64_t>(1, time_left.count()));
    tx_->exec0("SET LOCAL lock_timeout = " + std::to_string(opts_.inbox_lock_timeout.count()) +
               "; SET LOCAL idle_in_transaction_session_timeout = " + left + "; SET LOCAL statement_timeout = " + left);
    return claim_inbox(*tx_, opts_.schema, listener, event_id);
  }

  pqxx::transaction_base* transaction() noexcept override { return tx_ ? &*tx_ : nullptr; }

  bool fence(std::string_view listener, int partition, std::string_view owner, std::uint64_t epoch) override {
    return !tx_ || hold_fence(*tx_, opts_.schema, listener, partition, owner, epoch);
  }

  void commit() override {
    if (!tx_) return;
    try {
      tx_->commit();
    } catch (const pqxx::in_doubt_error& e) {
      throw commit_in_doubt(e.what());
    }
  }

 private:
  const pg_store_options& opts_;
  lazy_connection db_;           // declared before tx_: the transaction ends first
  std::optional<pqxx::work> tx_;  // rolled back by its destructor unless committed
};

class pg_store final : public store {
 public:
  explicit pg_store(pg_store_options o) : opts_(std::move(o)), pool_(opts_.database_url, std::max<std::size_t>(opts_.pool_size, 1)) {
    check_schema_name(opts_.schema);
  }

  void migrate() override {
    auto lease = pool_.acquire(opts_.db_wait);
    (void)omnibus::migrate(*lease, opts_.schema);
  }

  std::unique_ptr<job_session> open_session() override { return std::make_unique<pg_session>(pool_, opts_); }

  void record_failure(std::string_view listener, std::string_view event_id, std::string_view error) override {
    auto lease = pool_.acquire(opts_.db_wait);
    omnibus::record_failure(*lease, opts_.schema, listener, event_id, error);
  }

  void clear_failure(std::string_view listener, std::string_view event_id) override {
    auto lease = pool_.acquire(opts_.db_wait);
    omnibus::clear_failure(*lease, opts_.schema, listener, event_id);
  }

  void write_dead_letter(const dead_letter& dl) override {
    auto lease = pool_.acquire(opts_.db_wait);
    try {
      omnibus::write_dead_letter(*lease, opts_.schema, dl);
    } catch (const std::exception& e) {
      if (lasting(e)) throw row_refused(e.what());
      throw;
    }
  }

  void park(const parked_event& p) override {
    auto lease = pool_.acquire(opts_.db_wait);
    omnibus::park(*lease, opts_.schema, p);
  }

  std::optional<parked_event> find_parked(std::string_view listener) override {
    auto lease = pool_.acquire(opts_.db_wait);
    return omnibus::find_parked(*lease, opts_.schema, listener);
  }

  void unpark(std::string_view listener) override {
    auto lease = pool_.acquire(opts_.db_wait);
    omnibus::unpark(*lease, opts_.schema, listener);
  }

  bool has_partitions() const noexcept override { return true; }
  lease_round lease_partitions(std::string_view listener, int partitions, std::string_view owner,
                               std::chrono::milliseconds lease,
                               const std::vector<std::pair<int, std::uint64_t>>& release) override {
    auto c = pool_.acquire(opts_.db_wait);
    return detail::lease_partitions(*c, opts_.schema, listener, partitions, owner, lease, release);
  }
  void leave_partitions(std::string_view listener, std::string_view owner,
                        const std::vector<std::pair<int, std::uint64_t>>& release) override {
    auto c = pool_.acquire(opts_.db_wait);
    detail::leave_partitions(*c, opts_.schema, listener, owner, release);
  }
  bool park_event(std::string_view listener, std::string_view key, int partition, std::string_view owner,
                  std::uint64_t epoch, std::string_view event_name, const stored_event& ev,
                  std::string_view error) override {
    auto c = pool_.acquire(opts_.db_wait);
    return detail::park_event(*c, opts_.schema, listener, key, partition, owner, epoch, event_name, ev, error);
  }
  std::vector<std::string> parked_keys_of(std::string_view listener, int partition) override {
    auto c = pool_.acquire(opts_.db_wait);
    return detail::parked_keys_of(*c, opts_.schema, listener, partition);
  }
  std::vector<key_request> key_requests(std::string_view listener) override {
    auto c = pool_.acquire(opts_.db_wait);
    return detail::key_requests(*c, opts_.schema, listener);
  }
  std::optional<stored_event> first_parked_event(std::string_view listener, std::string_view key) override {
    auto c = pool_.acquire(opts_.db_wait);
    return detail::first_parked_event(*c, opts_.schema, listener, key);
  }
  void drop_parked_event(std::string_view listener, std::string_view key, std::uint64_t seq, bool skip) override {
    auto c = pool_.acquire(opts_.db_wait);
    detail::drop_parked_event(*c, opts_.schema, listener, key, seq, skip);
  }
  bool release_parked_key(std::string_view listener, std::string_view key) override {
    auto c = pool_.acquire(opts_.db_wait);
    return detail::release_parked_key(*c, opts_.schema, listener, key);
  }
  void repark_key(std::string_view listener, std::string_view key, std::uint64_t seq, std::string_view error,
                  std::string_view done_action) override {
    auto c = pool_.acquire(opts_.db_wait);
    detail::repark_key(*c, opts_.schema, listener, key, seq, error, done_action);
  }
  std::int64_t discard_parked_key(std::string_view listener, std::string_view key) override {
    auto c = pool_.acquire(opts_.db_wait);
    return detail::discard_parked_key(*c, opts_.schema, listener, key);
  }

  std::vector<paused_listener> paused_listeners() override {
    auto lease = pool_.acquire(opts_.db_wait);
    return list_paused_listeners(*lease, opts_.schema);
  }

  int take_tokens(std::string_view listener, double per_second, int burst, int want) override {
    auto lease = pool_.acquire(opts_.db_wait);
    pqxx::nontransaction tx{*lease};
    // One statement, under the row's lock, on one timestamp (statement_timestamp() is the same
    // wherever it appears): refill by the time since the last draw, never negative, cap at
    // burst, take what is whole. refreshed_at never goes back, so no time is counted twice.
    const std::string t = table_name(opts_.schema, "bus_rate_limits");
    return tx
        .exec_params1(
            "INSERT INTO " + t + " AS r (listener, tokens, refreshed_at, last_taken) VALUES ($1, $3::float8 - "
            "least($3::float8, $4::int), statement_timestamp(), least($3::float8, $4::int)::int) "
            "ON CONFLICT (listener) DO UPDATE SET (tokens, refreshed_at, last_taken) = ("
            "  SELECT f.refilled - f.took, f.at, f.took FROM ("
            "    SELECT g.refilled, g.at, least(greatest(floor(g.refilled), 0)::int, $4::int) AS took FROM ("
            "      SELECT least($3::float8, greatest(r.tokens, 0) + $2::float8 * "
            "        greatest(extract(epoch FROM statement_timestamp() - r.refreshed_at)::float8, 0)) AS refilled, "
            "        greatest(r.refreshed_at, statement_timestamp()) AS at) g) f) "
            "RETURNING last_taken",
            std::string(listener), per_second, static_cast<double>(burst), want)[0]
        .as<int>();
  }

  void report_states(std::string_view worker, const std::vector<listener_report>& reports) override {
    auto lease = pool_.acquire(opts_.db_wait);
    pqxx::work tx{*lease};
    const std::string t = table_name(opts_.schema, "bus_listener_states");
    for (const listener_report& r : reports) {
      tx.exec_params0("INSERT INTO " + t + " (listener, worker, state, reason, since, reported_at) VALUES ($1, $2, $3, "
                      "$4, to_timestamp($5::float8 / 1000000), now()) ON CONFLICT (listener, worker) DO UPDATE SET "
                      "state = EXCLUDED.state, reason = EXCLUDED.reason, since = EXCLUDED.since, reported_at = now()",
                      r.listener, std::string(worker), r.state, r.reason,
                      static_cast<double>(std::chrono::duration_cast<std::chrono::microseconds>(
                                              r.since.time_since_epoch()).count()));
    }
    // The calls since the last report, added to this minute's row of each listener (summed over
    // the workers): the dashboard's per-minute rates. Two hours are kept.
    const std::string minutes = table_name(opts_.schema, "bus_listener_minutes");
    bool any = false;
    // In name order: programs sharing the schema take the rows' locks in one order (no deadlock).
    std::vector<const listener_report*> by_name;
    for (const listener_report& r : reports) by_name.push_back(&r);
    std::sort(by_name.begin(), by_name.end(), [](const auto* a, const auto* b) { return a->listener < b->listener; });
    for (const listener_report* rp : by_name) {
      const listener_report& r = *rp;
      if (r.handled == 0 && r.failed == 0) continue;
      any = true;
      tx.exec_params0("INSERT INTO " + minutes + " (listener, minute, handled, failed) VALUES ($1, date_trunc('minute', "
                      "now()), $2, $3) ON CONFLICT (listener, minute) DO UPDATE SET handled = " + minutes +
                      ".handled + EXCLUDED.handled, failed = " + minutes + ".failed + EXCLUDED.failed",
                      r.listener, static_cast<std::int64_t>(r.handled), static_cast<std::int64_t>(r.failed));
    }
    if (any && ++reports_since_trim_ >= 60) {
      reports_since_trim_ = 0;
      tx.exec0("DELETE FROM " + minutes + " WHERE minute < now() - interval '2 hours'");
    }
    tx.commit();
  }

  void forget_states(std::string_view worker) override {
    auto lease = pool_.acquire(opts_.db_wait);
    pqxx::nontransaction tx{*lease};
    tx.exec_params0("DELETE FROM " + table_name(opts_.schema, "bus_listener_states") + " WHERE worker = $1",
                    std::string(worker));
  }

  std::optional<mark_check> check_mark(std::string_view consumer, std::chrono::milliseconds min_gap,
                                       const std::function<mark_check(const std::optional<stream_mark>&)>& check) override {
    const std::string marks = table_name(opts_.schema, "bus_stream_marks");
    std::optional<stream_mark> last;
    std::int64_t checks = 0;
    {
      auto lease = pool_.acquire(opts_.db_wait);
      pqxx::nontransaction tx{*lease};
      // A row the first time: lowest_unhandled 0 stands for "no mark yet".
      tx.exec_params0("INSERT INTO " + marks + " (consumer, listener, lowest_unhandled, pending, deliveries, "
                      "last_sequence, checked_at) VALUES ($1, '', 0, 0, 0, 0, '-infinity') ON CONFLICT DO NOTHING",
                      std::string(consumer));
      const pqxx::row row = tx.exec_params1(
          "SELECT listener, (extract(epoch FROM consumer_created) * 1000000)::bigint, lowest_unhandled, pending, "
          "deliveries, last_sequence, checks, checked_at > now() - make_interval(secs => $2) FROM " + marks +
              " WHERE consumer = $1",
          std::string(consumer), static_cast<double>(min_gap.count()) / 1000.0);
      if (row[7].as<bool>()) return std::nullopt;  // another worker just checked it
      checks = row[6].as<std::int64_t>();
      if (row[2].as<std::int64_t>() > 0) {
        last = stream_mark{row[0].as<std::string>(),
                           row[1].is_null() ? std::nullopt
                                            : std::optional(std::chrono::system_clock::time_point{
                                                  std::chrono::microseconds{row[1].as<std::int64_t>()}}),
                           row[2].as<std::uint64_t>(), row[3].as<std::uint64_t>(), row[4].as<std::uint64_t>(),
                           row[5].as<std::uint64_t>()};
      }
    }
    // The broker's side, with no connection leased and no row locked: it may take a while.
    mark_check found = check(last);
    const stream_mark& m = found.next;
    std::optional<std::int64_t> created;  // in microseconds, as timestamptz keeps it
    if (m.consumer_created) {
      created = std::chrono::duration_cast<std::chrono::microseconds>(m.consumer_created->time_since_epoch()).count();
    }
    auto lease = pool_.acquire(opts_.db_wait);
    pqxx::work tx{*lease};
    const auto stored = tx.exec_params(
        "UPDATE " + marks + " SET listener = $2, consumer_created = timestamptz 'epoch' + $3::bigint * "
        "interval '1 microsecond', lowest_unhandled = $4, pending = $5, deliveries = $6, last_sequence = $7, "
        "checks = checks + 1, checked_at = now() WHERE consumer = $1 AND checks = $8",
        std::string(consumer), m.listener, created, m.lowest_unhandled, m.pending, m.deliveries, m.last_sequence, checks);
    if (stored.affected_rows() == 0) return std::nullopt;  // another worker's check landed first
    if (found.lost) {
      tx.exec_params0("INSERT INTO " + table_name(opts_.schema, "bus_lost_events") +
                          " (consumer, listener, first_sequence, last_sequence, events) VALUES ($1, $2, $3, $4, $5)",
                      std::string(consumer), m.listener, found.lost->first_sequence, found.lost->last_sequence,
                      found.lost->events);
    }
    tx.commit();
    return found;
  }

  std::size_t prune_inbox(std::chrono::seconds older_than) override {
    auto lease = pool_.acquire(opts_.db_wait);
    pqxx::nontransaction tx{*lease};
    auto r = tx.exec_params("DELETE FROM " + table_name(opts_.schema, "bus_inbox") +
                                " WHERE handled_at < now() - make_interval(secs => $1)",
                            static_cast<double>(older_than.count()));
    return static_cast<std::size_t>(r.affected_rows());
  }

 private:
  pg_store_options opts_;
  connection_pool pool_;
  int reports_since_trim_ = 0;  // report_states runs on the worker's control thread only
};

}  // namespace

std::unique_ptr<store> make_pg_store(pg_store_options options) { return std::make_unique<pg_store>(std::move(options)); }

}  // namespace omnibus::detail
