#include "omnibus/relay.hpp"

#include <future>
#include <span>
#include <stdexcept>
#include <vector>

#include <pqxx/pqxx>

#include <unistd.h>
#include <spdlog/spdlog.h>

#include "omnibus/envelope.hpp"
#include "omnibus/migrations.hpp"
#include "core/outbox.hpp"
#include "core/schema.hpp"
#include "core/failpoint.hpp"
#include "core/fill_guard.hpp"
#include "core/stop_wait.hpp"

namespace omnibus {
namespace {

using clock = std::chrono::steady_clock;

struct relay_statements {
  std::string select_first;      // the first rows
  std::string select_but_range;  // $1, $2: the rows but those from $1 to $2 (the batch on the network)
  std::string select_but_ids;    // $1: the rows but those in a bigint[] literal
  std::string delete_ids;    // $1: a bigint[] literal
  std::string delete_range;  // $1, $2: the first and last id
};

class wake_flag final : public pqxx::notification_receiver {
 public:
  wake_flag(pqxx::connection_base& c, const std::string& channel) : notification_receiver(c, channel) {}
  void operator()(const std::string&, int) override { woken = true; }
  bool woken = false;
};

}  // namespace

// One connection: the session lock, LISTEN, and the autocommit reads and deletes.
class relay::session {
 public:
  explicit session(const relay_options& o)
      : conn(o.database_url),
        lock_key("omnibus:relay:" + o.schema),
        sql{select(o, ""), select(o, "WHERE id NOT BETWEEN $1 AND $2 "), select(o, "WHERE id <> ALL($1::bigint[]) "),
            "DELETE FROM " + detail::table_name(o.schema, "bus_outbox") + " WHERE id = ANY($1::bigint[])",
            "DELETE FROM " + detail::table_name(o.schema, "bus_outbox") + " WHERE id BETWEEN $1 AND $2"} {}

  static std::string select(const relay_options& o, const char* where) {
    return "SELECT id, subject, headers, body FROM " + detail::table_name(o.schema, "bus_outbox") + " " + where +
           "ORDER BY id LIMIT " + std::to_string(o.batch_size);
  }

  bool try_lock() {
    pqxx::nontransaction tx{conn};
    // Named, so that whoever looks (the dashboard, pg_stat_activity) sees which process holds it.
    char host[256] = {};
    if (::gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
    tx.exec0("SET application_name = " + tx.quote("omnibus relay " + std::string(host) + ":" + std::to_string(::getpid())));
    return tx.exec_params1("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", lock_key)[0].as<bool>();
  }

  pqxx::connection conn;
  std::string lock_key;
  relay_statements sql;
};

relay::relay(queue& q, relay_options options, std::shared_ptr<spdlog::logger> log)
    : queue_(q), options_(std::move(options)), log_(std::move(log)) {
  check_schema_name(options_.schema);
  if (!log_) throw std::invalid_argument("omnibus::relay needs a logger");
  if (options_.batch_size == 0) throw std::invalid_argument("omnibus::relay needs a batch_size of at least 1");
  if (!(options_.stream.hold_above > 0 && options_.stream.hold_above <= 1)) {
    throw std::invalid_argument("omnibus::relay: stream.hold_above must be in (0, 1]");
  }
  fill_ = std::make_unique<detail::fill_guard>(q, options_.stream);
  detail::relay_created();  // last: a constructor that throws has no destructor to undo it
}

relay::~relay() {
  stop();
  detail::relay_destroyed();
}

void relay::start() {
  thread_ = std::jthread([this](std::stop_token st) { run(st); });
}

void relay::stop() {
  if (thread_.joinable()) {
    thread_.request_stop();
    thread_.join();
  }
}

namespace {

// Rows read from the outbox, in id order, ready to publish.
struct outbox_batch {
  std::vector<std::int64_t> ids;
  std::vector<message> msgs;
};

// An id list as a bigint[] literal.
std::string id_array(std::span<const std::int64_t> ids) {
  std::string array = "{";
  for (std::size_t i = 0; i < ids.size(); ++i) {
    if (i > 0) array += ',';
    array += std::to_string(ids[i]);
  }
  array += '}';
  return array;
}

// Whether `ids` (ascending) are every id from the first to the last.
bool no_gap(std::span<const std::int64_t> ids) {
  return !ids.empty() && ids.back() - ids.front() + 1 == static_cast<std::int64_t>(ids.size());
}

// The first rows in id order, but those of `sending` (the batch on the network, still in the
// outbox), read in autocommit: no row lock is held while they are on the network. Every read
// starts from the lowest id, so a row that commits after rows above it waits one batch at most.
outbox_batch read_batch(pqxx::connection& conn, const relay_statements& sql, std::span<const std::int64_t> sending) {
  outbox_batch b;
  pqxx::nontransaction tx{conn};
  pqxx::result rows = sending.empty()   ? tx.exec(sql.select_first)
                      : no_gap(sending) ? tx.exec_params(sql.select_but_range, sending.front(), sending.back())
                                        : tx.exec_params(sql.select_but_ids, id_array(sending));
  b.ids.reserve(rows.size());
  b.msgs.reserve(rows.size());
  for (const auto& row : rows) {
    b.ids.push_back(row[0].as<std::int64_t>());
    message m;
    m.subject = row[1].as<std::string>();
    detail::split_headers(row[2].c_str(), m);
    pqxx::binarystring body{row[3]};
    m.body.assign(body.get(), body.size());
    b.msgs.push_back(std::move(m));
  }
  return b;
}

// Deletes rows the stream has acked, as a range when they have no gap: every id in it is one
// we sent, so a range cannot touch a row that committed after our read.
void forget(pqxx::connection& conn, const relay_statements& sql, std::vector<std::int64_t>& ids) {
  if (ids.empty()) return;
  pqxx::nontransaction tx{conn};
  if (no_gap(ids)) {
    tx.exec_params0(sql.delete_range, ids.front(), ids.back());
  } else {
    tx.exec_params0(sql.delete_ids, id_array(ids));
  }
  ids.clear();
}

}  // namespace

std::size_t relay::sweep(session& s) {
  std::size_t sent = 0;
  if (stats_.holding.load() && fill_->holding_fresh()) return 0;  // nothing would go: do not read the rows
  // Pipelined: while one batch is on the network, the database deletes the batch before it
  // and reads the next. A batch is published only once the one before it is acked in full,
  // so a row after a failed one waits and the stream keeps the outbox's order (a re-send of
  // a stored row is dropped by the duplicate window).
  outbox_batch batch = read_batch(s.conn, s.sql, {});
  std::vector<std::int64_t> acked;  // on the stream, still in the outbox
  auto settle = [&] {
    const std::size_t n = acked.size();
    forget(s.conn, s.sql, acked);
    stats_.relayed.fetch_add(n, std::memory_order_relaxed);
    sent += n;
  };
  while (!batch.msgs.empty()) {
    const std::size_t fit = room_for(batch.msgs);
    if (fit == 0) break;  // held: the next sweep looks again
    const bool last = fit < batch.msgs.size() || batch.msgs.size() < options_.batch_size;
    batch.msgs.resize(fit);
    batch.ids.resize(fit);
    detail::failpoint("relay_before_publish");
    // The future's destructor waits for the publish, should the database throw meanwhile. With
    // nothing to do on the database meanwhile (a sweep of one batch: the common case when
    // events come one transaction at a time), the batch goes out from this thread.
    const bool overlap = !last || !acked.empty();
    auto sending = std::async(overlap ? std::launch::async : std::launch::deferred,
                              [&] { return queue_.publish_batch(batch.msgs, options_.publish_timeout); });
    settle();
    outbox_batch next;
    if (!last) next = read_batch(s.conn, s.sql, batch.ids);
    const std::vector<batch_result> results = sending.get();
    detail::failpoint("relay_after_pub_ack");

    std::size_t prefix = 0;
    while (prefix < results.size() && results[prefix].ack) {
      if (results[prefix].ack->duplicate) stats_.duplicates.fetch_add(1, std::memory_order_relaxed);
      ++prefix;
    }
    acked.assign(batch.ids.begin(), batch.ids.begin() + static_cast<std::ptrdiff_t>(prefix));
    if (prefix > 0) stats_.batches.fetch_add(1, std::memory_order_relaxed);
    if (prefix < results.size()) {
      settle();
      stats_.failures.fetch_add(1, std::memory_order_relaxed);
      throw error("relay: " + std::to_string(results.size() - prefix) + " of " + std::to_string(results.size()) +
                  " outbox rows did not reach the stream; they stay in the outbox. First error: " +
                  results[prefix].error);
    }
    batch = std::move(next);
  }
  settle();
  return sent;
}

std::size_t relay::room_for(std::span<const message> msgs) {
  const detail::fill_guard::verdict v = fill_->admit(msgs);
  if (const std::string why = fill_->unreadable(); !why.empty() && why != unreadable_logged_) {
    log_->warn("relay for schema {}: cannot read how full stream {} is ({}); sending without the hold check. Is "
               "relay_options::stream the bus's stream?",
               options_.schema, options_.stream.name, why);
  }
  unreadable_logged_ = fill_->unreadable();
  const bool holding = v.admitted < msgs.size();
  stats_.holding = holding;
  // Near the line, room comes and goes as old events leave: a hold is logged once a minute at
  // most, and its release only after a logged hold.
  const auto now = clock::now();
  if (holding && !hold_logged_ && now - last_hold_log_ >= std::chrono::minutes(1)) {
    log_->warn("relay for schema {}: holding outbox rows back: {}", options_.schema, v.why);
    hold_logged_ = true;
    last_hold_log_ = now;
  } else if (!holding && hold_logged_) {
    log_->info("relay for schema {}: stream {} has room again; sending the outbox", options_.schema, options_.stream.name);
    hold_logged_ = false;
  }
  return v.admitted;
}

void relay::run(std::stop_token stop) {
  while (!stop.stop_requested()) {
    try {
      session s{options_};
      migrate(s.conn, options_.schema);
      bool announced_standby = false;
      while (!s.try_lock()) {
        if (!announced_standby) {
          log_->info("relay for schema {}: standing by; another process holds the relay lock", options_.schema);
          announced_standby = true;
        }
        if (!detail::wait_until(stop, clock::now() + options_.standby_poll)) return;
      }
      stats_.active = true;
      log_->info("relay for schema {}: active", options_.schema);
      wake_flag wake{s.conn, outbox_channel(options_.schema)};
      // A full sweep after every (re)connect: rows left by publishers that died.
      std::size_t last_sent = sweep(s);
      auto next_sweep = clock::now() + options_.sweep_interval;
      while (!stop.stop_requested()) {
        // Short waits keep stop() prompt; a NOTIFY wakes the relay at once.
        constexpr auto slice = std::chrono::milliseconds(100);
        s.conn.await_notification(0, std::chrono::duration_cast<std::chrono::microseconds>(slice).count());
        if (wake.woken || clock::now() >= next_sweep) {
          // Gathering NOTIFYs pays when events come a few per transaction; after a sweep that
          // filled a batch, rows come in bulk (publish_batch, the scheduler), and waiting only
          // leaves the stream idle.
          if (wake.woken && options_.coalesce.count() > 0 && last_sent < options_.batch_size) {
            if (!detail::wait_until(stop, clock::now() + options_.coalesce)) break;
            s.conn.get_notifs();  // the ones that came meanwhile are served by this sweep
          }
          wake.woken = false;
          last_sent = sweep(s);
          next_sweep = clock::now() + options_.sweep_interval;
        }
      }
      stats_.active = false;
      stats_.holding = false;
      return;  // the session's end releases the lock
    } catch (const std::exception& e) {
      stats_.active = false;
      stats_.holding = false;
      log_->error("relay for schema {}: {}; retrying in {} ms", options_.schema, e.what(), options_.retry_backoff.count());
      if (!detail::wait_until(stop, clock::now() + options_.retry_backoff)) return;
    }
  }
}

}  // namespace omnibus
