#include "omnibus/worker.hpp"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <stdexcept>
#include <mutex>
#include <limits>
#include <list>
#include <optional>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include <boost/asio/post.hpp>
#include <boost/asio/thread_pool.hpp>
#include <pqxx/pqxx>
#include <spdlog/spdlog.h>

#include "omnibus/connection_pool.hpp"
#include "omnibus/dead_letters.hpp"
#include "omnibus/envelope.hpp"
#include "omnibus/migrations.hpp"
#include "omnibus/text.hpp"
#include "failpoint.hpp"
#include "settle.hpp"
#include "stop_wait.hpp"

namespace omnibus {

std::chrono::milliseconds retry_delay(const retry_policy& p, std::uint64_t attempt, double unit_random) noexcept {
  const double exponent = attempt > 0 ? static_cast<double>(attempt - 1) : 0.0;
  double nominal = static_cast<double>(p.initial.count()) * std::pow(p.multiplier, exponent);
  nominal = std::min(nominal, static_cast<double>(p.max.count()));
  const double factor = 1.0 + p.jitter * (2.0 * unit_random - 1.0);
  return std::chrono::milliseconds(std::llround(std::max(0.0, nominal * factor)));
}

namespace {

using clock = std::chrono::steady_clock;

double unit_random() {
  thread_local std::mt19937_64 random{std::random_device{}()};
  return std::uniform_real_distribution<double>(0.0, 1.0)(random);
}

struct listener_state;
struct job;
using job_list = std::list<std::shared_ptr<job>>;

// One delivery from fetch to settlement.
struct job {
  listener_state* l = nullptr;
  std::unique_ptr<delivery> d;
  std::mutex settle_mutex;  // ack/nak/term/in_progress on one message never run at once
  bool settled = false;     // under settle_mutex: the first to settle (handler or deadline) wins
  bool timed_out = false;   // under the listener's mutex
  clock::time_point deadline;
  clock::time_point last_progress;
  std::stop_source stop;
  job_list::iterator self;  // its place in the listener's list, for O(1) removal
};

struct listener_state {
  const async_listener* def = nullptr;
  std::unique_ptr<consumer> cons;
  std::mutex mutex;
  std::condition_variable_any slot_freed;
  int in_flight = 0;  // slots taken, stuck ones included
  int stuck = 0;      // past the deadline, handler still running
  int refill_at = 0;  // the fetcher fetches again once in_flight is at or below this
  job_list jobs;

  // Under mutex. Refill when half the usable slots are free: fewer, larger fetches than one
  // per freed slot. Slots held by handlers stuck past their deadline are not usable, and do
  // not stop the others from fetching.
  [[nodiscard]] bool may_fetch() const {
    const int slots = def->options.concurrency;
    const int free = slots - in_flight;
    return free > 0 && free >= slots - stuck - refill_at;
  }
};

// A handler's database connection, leased from the pool on first use.
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

std::string event_id_of(const delivery& d) {
  if (const std::string* id = d.msg().header(header::msg_id); id != nullptr && !id->empty()) return *id;
  return "seq:" + std::to_string(d.stream_sequence());
}

std::string event_name_of(const delivery& d) {
  const std::string* n = d.msg().header(header::event);
  return n != nullptr ? *n : std::string();
}

// A failure to write a dead letter that writing again cannot cure: the row itself is refused
// (data, constraint or size), not the database's availability.
bool lasting(const std::exception& e) {
  if (const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e)) {
    const std::string& state = sql->sqlstate();
    return state.rfind("22", 0) == 0 || state.rfind("23", 0) == 0 || state.rfind("54", 0) == 0;
  }
  return dynamic_cast<const pqxx::conversion_error*>(&e) != nullptr ||
         dynamic_cast<const pqxx::argument_error*>(&e) != nullptr || dynamic_cast<const std::length_error*>(&e) != nullptr;
}

dead_letter letter_of(const async_listener& def, const delivery& d, std::string reason, std::string error,
                      std::uint64_t attempt) {
  dead_letter dl;
  dl.listener = def.name;
  dl.event_id = event_id_of(d);
  dl.event_name = event_name_of(d);
  dl.msg = d.msg();
  dl.raw_header_block = std::string(d.raw_header_block());
  dl.reason = std::move(reason);
  dl.error = std::move(error);
  dl.attempts = static_cast<int>(std::min<std::uint64_t>(attempt, std::numeric_limits<int>::max()));
  dl.stream_sequence = d.stream_sequence();
  return dl;
}

enum class parked_outcome { not_parked, retry, settled };

}  // namespace

struct worker::impl {
  impl(event_bus& b, worker_options o, std::shared_ptr<spdlog::logger> l)
      : bus(b), opts(std::move(o)), log(std::move(l)) {}

  event_bus& bus;
  worker_options opts;
  std::shared_ptr<spdlog::logger> log;
  worker_stats stats;
  std::vector<std::unique_ptr<listener_state>> listeners;
  std::unique_ptr<connection_pool> pool;
  std::unique_ptr<boost::asio::thread_pool> threads;
  std::atomic<bool> shutting_down{false};
  std::string inbox_insert;  // INSERT ... ON CONFLICT DO NOTHING into <schema>.bus_inbox
  clock::time_point next_prune{};

  // Deletes inbox rows older than the retention, by the database's clock, now and then.
  void prune_inbox() {
    if (clock::now() < next_prune) return;
    next_prune = clock::now() + opts.inbox_prune_every;
    try {
      auto lease = pool->acquire(opts.db_wait);
      pqxx::nontransaction tx{*lease};
      auto r = tx.exec_params("DELETE FROM \"" + bus.options().schema +
                                  "\".bus_inbox WHERE handled_at < now() - make_interval(secs => $1)",
                              static_cast<double>(opts.inbox_retention.count()));
      if (r.affected_rows() > 0) log->info("worker: pruned {} inbox row(s)", r.affected_rows());
    } catch (const std::exception& e) {
      log->warn("worker: pruning the inbox failed: {}", e.what());
    }
  }

  // Warns when the stream is nearly full. On a thread of its own: a slow answer from the
  // server must not delay deadlines.
  void watch_stream(std::stop_token stop) {
    do {
      check_stream();
    } while (detail::wait_for(stop, opts.stream_check_every));
  }
  void check_stream() {
    const stream_config& stream = bus.options().stream;
    try {
      auto st = bus.target()->state(stream);
      if (!st || st->max_bytes <= 0) return;
      const double fill = static_cast<double>(st->bytes) / static_cast<double>(st->max_bytes);
      if (fill < opts.stream_full_warning) return;
      log->warn("worker: stream {} is {:.0f}% full ({} of {} bytes, {} events): when full every publish is "
                "refused. Raise max_bytes or lower max_age; near full, nats-server 2.9 may drop the "
                "oldest events despite DiscardNew (nats-io/nats-server#4771)",
                stream.name, fill * 100, st->bytes, st->max_bytes, st->messages);
    } catch (const std::exception& e) {
      log->warn("worker: cannot read the state of stream {}: {}", stream.name, e.what());
    }
  }

  // Settles `j` with `f` unless someone already did. Returns whether this call settled it.
  template <class F>
  bool settle(job& j, const char* what, F&& f) {
    std::lock_guard lock(j.settle_mutex);
    if (j.settled) return false;
    j.settled = true;
    try {
      f(*j.d);
    } catch (const std::exception& e) {
      // The message is not lost: unsettled, the server redelivers it after AckWait.
      log->error("listener {}: {} event {} failed: {}", j.l->def->name, what, event_id_of(*j.d), e.what());
    }
    return true;
  }

  void fetch_loop(listener_state& l, std::stop_token stop) {
    const int slots = l.def->options.concurrency;
    while (!stop.stop_requested()) {
      int free = 0;
      {
        // Never more messages than free slots (they would wait out their AckWait).
        std::unique_lock lock(l.mutex);
        if (!l.slot_freed.wait(lock, stop, [&] { return l.may_fetch(); })) break;
        free = slots - l.in_flight;
      }
      std::vector<std::unique_ptr<delivery>> batch;
      try {
        batch = l.cons->fetch(static_cast<std::size_t>(free), opts.fetch_wait);
      } catch (const std::exception& e) {
        log->warn("listener {}: fetch failed: {}; retrying in 1 s", l.def->name, e.what());
        if (!detail::wait_for(stop, std::chrono::seconds(1))) break;
        continue;
      }
      for (auto& d : batch) {
        if (stop.stop_requested() || shutting_down) {
          // Fetched but not started: give it back at once for another worker.
          auto j = std::make_shared<job>();
          j->l = &l;
          j->d = std::move(d);
          settle(*j, "returning", [](delivery& x) { x.nak(std::chrono::milliseconds(0)); });
          continue;
        }
        auto j = std::make_shared<job>();
        j->l = &l;
        j->d = std::move(d);
        j->deadline = clock::now() + l.def->options.deadline;
        j->last_progress = clock::now();
        {
          std::lock_guard lock(l.mutex);
          ++l.in_flight;
          j->self = l.jobs.insert(l.jobs.end(), j);
        }
        boost::asio::post(*threads, [this, j] {
          run_job(*j);
          finish(j);
        });
      }
    }
  }

  void finish(const std::shared_ptr<job>& j) {
    listener_state& l = *j->l;
    bool wake = false;
    {
      std::lock_guard lock(l.mutex);
      --l.in_flight;
      if (j->timed_out) --l.stuck;
      l.jobs.erase(j->self);
      wake = l.may_fetch();
    }
    if (wake) l.slot_freed.notify_one();
  }

  void run_job(job& j) {
    const async_listener& def = *j.l->def;
    delivery& d = *j.d;
    if (shutting_down) {
      settle(j, "returning", [](delivery& x) { x.nak(std::chrono::milliseconds(0)); });
      return;
    }
    const std::uint64_t attempt = d.delivery_count();
    detail::settle_decision first =
        detail::before_handler(d.msg(), d.header_error(), bus.options().stream.subject_prefix, bus.options().max_body_bytes);
    if (first.what != detail::settle_decision::action::run) {
      dead_letter_now(j, first.reason, first.error, attempt);
      return;
    }
    const envelope env = std::move(first.env);

    // An ordered listener parked at this event runs it only when an operator says so.
    const bool parks = def.options.ordered && def.options.park_when_exhausted;
    bool operator_retry = false;
    if (parks && attempt > 1) {
      switch (wait_while_parked(j, env)) {
        case parked_outcome::not_parked: break;
        case parked_outcome::retry: operator_retry = true; break;
        case parked_outcome::settled: return;
      }
    }

    std::string failure;
    bool duplicate = false;
    bool in_doubt = false;
    {
      context ctx;
      ctx.meta() = env.meta;
      ctx.set_event_id(env.id);
      ctx.set_attempt(attempt);
      ctx.set_deadline(j.deadline);
      ctx.set_stop_token(j.stop.get_token());
      lazy_connection db{*pool, opts.db_wait};  // returned to the pool at the end of this scope
      ctx.set_connection_source(&db);
      std::optional<pqxx::work> inbox_tx;  // aborted by its destructor unless committed
      try {
        if (def.options.inbox) {
          inbox_tx.emplace(db.connection());
          // Past the deadline PostgreSQL ends the session of a handler that hangs (idle in its
          // transaction) or runs one endless statement: its inbox row's lock goes with it, so
          // the redelivered copy is not blocked for as long as the hung thread lives.
          const auto left = std::max<std::int64_t>(
              1, std::chrono::duration_cast<std::chrono::milliseconds>(j.deadline - clock::now()).count());
          inbox_tx->exec0("SET LOCAL lock_timeout = " + std::to_string(opts.inbox_lock_timeout.count()) +
                          "; SET LOCAL idle_in_transaction_session_timeout = " + std::to_string(left) +
                          "; SET LOCAL statement_timeout = " + std::to_string(left));
          duplicate = inbox_tx->exec_params(inbox_insert, def.name, env.id.to_string()).affected_rows() == 0;
          ctx.set_transaction(&*inbox_tx);
        }
        if (!duplicate) def.handler(ctx, env);
        if (inbox_tx && !duplicate) {
          inbox_tx->commit();
          detail::failpoint("worker_after_inbox_commit");
        }
      } catch (const decode_error& e) {
        const detail::settle_decision then = detail::after_decode_error(e);
        if (then.what == detail::settle_decision::action::defer) {
          log->info("listener {}: {} {} is a newer version than this build knows; retrying in {} ms", def.name,
                    env.name, env.id.to_string(), opts.newer_version_delay.count());
          if (retry_later(j, opts.newer_version_delay, "deferring", then.error)) {
            stats.deferred.fetch_add(1, std::memory_order_relaxed);
          }
          return;
        }
        dead_letter_now(j, then.reason, then.error, attempt);
        return;
      } catch (const permanent_error& e) {
        dead_letter_now(j, "permanent", e.what(), attempt);
        return;
      } catch (const pqxx::in_doubt_error& e) {
        in_doubt = true;
        failure = e.what();
      } catch (const std::exception& e) {
        failure = e.what();
      } catch (...) {
        failure = "a handler threw something that is not a std::exception";
      }
    }
    if (in_doubt) {
      // Committed or not, nobody knows: never ack. The redelivery asks the inbox.
      stats.in_doubt.fetch_add(1, std::memory_order_relaxed);
      log->error("listener {}: {} {}: the inbox commit's outcome is unknown ({}); not acked, it will be redelivered",
                 def.name, env.name, env.id.to_string(), failure);
      (void)retry_later(j, retry_delay(def.options.retry, attempt, unit_random()), "naking", failure);
      return;
    }
    if (duplicate) {
      settle(j, "acking a duplicate", [](delivery& x) { x.ack(); });
      stats.duplicates.fetch_add(1, std::memory_order_relaxed);
      log->debug("listener {}: {} {} was handled already (inbox): acked", def.name, env.name, env.id.to_string());
      return;
    }
    if (!failure.empty()) {
      failed(j, env, failure, attempt, operator_retry);
      return;
    }
    if (!settle(j, "acking", [](delivery& x) { x.ack(); })) {
      log->warn("listener {}: {} {} finished after its deadline; the late result is discarded", def.name, env.name,
                env.id.to_string());
      return;
    }
    stats.handled.fetch_add(1, std::memory_order_relaxed);
    if (attempt > 1) {
      try {
        auto lease = pool->acquire(opts.db_wait);
        clear_failure(*lease, bus.options().schema, def.name, env.id.to_string());
        if (operator_retry) {
          unpark(*lease, bus.options().schema, def.name);
          log->info("listener {}: {} {} succeeded on an operator's retry; the listener goes on", def.name, env.name,
                    env.id.to_string());
        }
      } catch (const std::exception& e) {
        log->warn("listener {}: could not clear the failure history of {}: {}", def.name, env.id.to_string(), e.what());
      }
    }
  }

  void failed(job& j, const envelope& env, const std::string& error, std::uint64_t attempt, bool operator_retry) {
    const async_listener& def = *j.l->def;
    const auto max = static_cast<std::uint64_t>(def.options.retry.max_attempts);
    log->warn("listener {}: {} {} attempt {}/{} failed: {}", def.name, env.name, env.id.to_string(), attempt, max, error);
    if (attempt >= max || operator_retry) {
      if (def.options.ordered && def.options.park_when_exhausted) {
        park_now(j, env, error, attempt);
      } else {
        dead_letter_now(j, "handler_failed", error, attempt);
      }
      return;
    }
    try {
      auto lease = pool->acquire(opts.db_wait);
      record_failure(*lease, bus.options().schema, def.name, env.id.to_string(), error);
    } catch (const std::exception& e) {
      log->warn("listener {}: could not record the failure of {}: {}", def.name, env.id.to_string(), e.what());
    }
    if (retry_later(j, retry_delay(def.options.retry, attempt, unit_random()), "naking", error)) {
      stats.failed.fetch_add(1, std::memory_order_relaxed);
    }
  }

  void park_now(job& j, const envelope& env, const std::string& error, std::uint64_t attempt) {
    const async_listener& def = *j.l->def;
    try {
      auto lease = pool->acquire(opts.db_wait);
      park(*lease, bus.options().schema,
           {def.name, env.id.to_string(), env.name, j.d->stream_sequence(), error, static_cast<int>(attempt), ""});
      stats.parked.fetch_add(1, std::memory_order_relaxed);
      log->error("listener {}: parked at {} {} after {} attempt(s): {}. Nothing after it runs until "
                 "`omnibus-worker parked retry {}` or `... skip {}`",
                 def.name, env.name, env.id.to_string(), attempt, error, def.name, def.name);
    } catch (const std::exception& e) {
      log->error("listener {}: could not park at {}: {}", def.name, env.id.to_string(), e.what());
    }
    // Redelivered at once, the event is held (wait_while_parked) until an operator's word.
    (void)retry_later(j, std::chrono::milliseconds(0), "naking a parked", error);
  }

  // Holds a parked ordered listener's event until an operator retries or skips it: the
  // message stays in flight (the monitor signals in-progress, no deadline applies), so waiting
  // costs no redeliveries however long it lasts. At shutdown the message goes back.
  parked_outcome wait_while_parked(job& j, const envelope& env) {
    const async_listener& def = *j.l->def;
    const std::string id = env.id.to_string();
    bool held = false;
    bool warned = false;
    for (;;) {
      try {
        auto lease = pool->acquire(opts.db_wait);
        const std::optional<parked_event> parked = find_parked(*lease, bus.options().schema, def.name);
        if (!parked || parked->event_id != id) {
          if (held) set_deadline(j, clock::now() + def.options.deadline);
          return parked_outcome::not_parked;
        }
        if (parked->action == "skip") {
          unpark(*lease, bus.options().schema, def.name);
          settle(j, "acking a skipped", [](delivery& x) { x.ack(); });
          stats.skipped.fetch_add(1, std::memory_order_relaxed);
          log->warn("listener {}: {} {} skipped by an operator; the listener goes on", def.name, env.name, id);
          return parked_outcome::settled;
        }
        if (parked->action == "retry") {
          set_deadline(j, clock::now() + def.options.deadline);
          return parked_outcome::retry;
        }
      } catch (const std::exception& e) {
        if (!warned) log->warn("listener {}: cannot read its parked state (holding {} meanwhile): {}", def.name, id, e.what());
        warned = true;
      }
      if (!held) {
        set_deadline(j, clock::time_point::max());
        held = true;
      }
      for (const auto until = clock::now() + opts.parked_poll; clock::now() < until;) {
        if (shutting_down) {
          settle(j, "returning a parked", [](delivery& x) { x.nak(std::chrono::milliseconds(0)); });
          return parked_outcome::settled;
        }
        std::this_thread::sleep_for(std::min<clock::duration>(opts.tick, until - clock::now()));
      }
    }
  }

  void set_deadline(job& j, clock::time_point deadline) {
    std::lock_guard lock(j.l->mutex);
    j.deadline = deadline;
  }

  // Naks for a redelivery after `delay`, unless this delivery is the last the server makes
  // (bus_options::max_deliveries): then the message becomes a dead letter instead, so that
  // nothing is redelivered forever. Returns whether it was nak'd.
  bool retry_later(job& j, std::chrono::milliseconds delay, const char* what, const std::string& why) {
    const std::uint64_t attempt = j.d->delivery_count();
    const auto ceiling = static_cast<std::uint64_t>(bus.options().max_deliveries);
    if (attempt >= ceiling) {
      dead_letter_now(j, "max_deliveries",
                      "delivered " + std::to_string(attempt) + " times, the most bus_options::max_deliveries allows; "
                      "the last time: " + why, attempt);
      return false;
    }
    settle(j, what, [&](delivery& x) { x.nak(delay); });
    return true;
  }

  void dead_letter_now(job& j, const std::string& reason, const std::string& error, std::uint64_t attempt) {
    const async_listener& def = *j.l->def;
    const dead_letter dl = letter_of(def, *j.d, reason, error, attempt);
    try {
      auto lease = pool->acquire(opts.db_wait);
      write_dead_letter(*lease, bus.options().schema, dl);  // committed before the term below
    } catch (const std::exception& e) {
      if (!lasting(e) && attempt < static_cast<std::uint64_t>(bus.options().max_deliveries)) {
        log->error("listener {}: could not write the dead letter of {} ({}): {}; it will be retried", def.name,
                   to_text(dl.event_id), to_text(error), e.what());
        settle(j, "naking", [&](delivery& x) { x.nak(retry_delay(def.options.retry, attempt, unit_random())); });
        return;
      }
      // Writing again would fail again: never loop on it. The stream still holds the message.
      log->error("listener {}: could not write the dead letter of stream message #{} on {} ({}: {}): {}; "
                 "terminated without one: read it from the stream by its sequence",
                 def.name, dl.stream_sequence, to_text(dl.msg.subject), reason, to_text(error), e.what());
      if (settle(j, "terminating", [](delivery& x) { x.term(); })) {
        stats.unrecorded.fetch_add(1, std::memory_order_relaxed);
      }
      return;
    }
    log->error("listener {}: {} {} dead-lettered after {} attempt(s) ({}): {}", def.name,
               dl.event_name.empty() ? "message" : to_text(dl.event_name), to_text(dl.event_id), attempt, reason,
               to_text(error));
    settle(j, "terminating", [](delivery& x) { x.term(); });
    stats.dead_lettered.fetch_add(1, std::memory_order_relaxed);
  }

  // The server's reports of messages it stopped delivering (max_deliveries reached while no
  // worker could settle them): each becomes a dead letter of its listener.
  void abandoned_loop(consumer& reports, std::stop_token stop) {
    while (!stop.stop_requested()) {
      std::vector<std::unique_ptr<delivery>> batch;
      try {
        batch = reports.fetch(16, opts.fetch_wait);
      } catch (const std::exception& e) {
        log->warn("worker: reading the server's max-deliveries reports failed: {}; retrying in 1 s", e.what());
        if (!detail::wait_for(stop, std::chrono::seconds(1))) break;
        continue;
      }
      for (auto& d : batch) record_abandoned(*d);
    }
  }

  void record_abandoned(delivery& d) {
    const async_listener* def = nullptr;
    for (const auto& l : listeners) {
      if (l->def->consumer_name == d.abandoned_by()) def = l->def;
    }
    try {
      if (def == nullptr) {  // another group's consumer: that group's workers record it
        const std::string own = bus.options().group + "_";
        if (d.abandoned_by().substr(0, own.size()) == own) {
          log->warn("worker: nats-server stopped delivering stream message #{} to consumer {}, which no listener of "
                    "this build owns (renamed?); no dead letter is written for it",
                    d.stream_sequence(), to_text(d.abandoned_by()));
        }
        d.ack();
        return;
      }
      std::string error = "nats-server stopped delivering it after " + std::to_string(d.delivery_count()) +
                          " deliveries (bus_options::max_deliveries) without the worker settling it";
      if (!d.header_error().empty()) error += "; " + std::string(d.header_error());
      const dead_letter dl = letter_of(*def, d, "max_deliveries", error, d.delivery_count());
      try {
        auto lease = pool->acquire(opts.db_wait);
        write_dead_letter(*lease, bus.options().schema, dl);
      } catch (const std::exception& e) {
        if (!lasting(e)) {
          log->warn("listener {}: could not write the dead letter of abandoned stream message #{}: {}; retrying",
                    def->name, dl.stream_sequence, e.what());
          d.nak(std::chrono::seconds(1));
          return;
        }
        log->error("listener {}: could not write the dead letter of abandoned stream message #{}: {}; read it "
                   "from the stream by its sequence", def->name, dl.stream_sequence, e.what());
        stats.unrecorded.fetch_add(1, std::memory_order_relaxed);
        d.ack();
        return;
      }
      d.ack();
      stats.dead_lettered.fetch_add(1, std::memory_order_relaxed);
      log->error("listener {}: stream message #{} ({}) dead-lettered: {}", def->name, dl.stream_sequence,
                 to_text(dl.event_id), error);
    } catch (const std::exception& e) {  // settling the report failed: it comes back
      log->warn("worker: settling a max-deliveries report failed: {}", e.what());
    }
  }

  // Signals progress for long handlers, and enforces deadlines. Returns the name of a listener
  // whose every slot is stuck, or "".
  std::string monitor() {
    const auto now = clock::now();
    for (auto& lp : listeners) {
      listener_state& l = *lp;
      const auto progress_every = std::max<clock::duration>(l.def->options.ack_wait / 4, opts.tick);
      std::lock_guard lock(l.mutex);
      for (const auto& jp : l.jobs) {
        job& j = *jp;
        if (j.timed_out) continue;
        if (now >= j.deadline) {
          j.timed_out = true;
          ++l.stuck;
          l.slot_freed.notify_one();  // fewer usable slots: the fetcher may refill sooner
          stats.timed_out.fetch_add(1, std::memory_order_relaxed);
          const auto attempt = j.d->delivery_count();
          const auto delay = retry_delay(l.def->options.retry, attempt, unit_random());
          if (settle(j, "naking a timed-out", [&](delivery& x) { x.nak(delay); })) {
            log->warn("listener {}: event {} attempt {} passed its {} ms deadline; retrying in {} ms", l.def->name,
                      event_id_of(*j.d), attempt, l.def->options.deadline.count(), delay.count());
          }
          j.stop.request_stop();
        } else if (now - j.last_progress >= progress_every) {
          std::lock_guard settle_lock(j.settle_mutex);
          if (!j.settled) {
            try {
              j.d->in_progress();
            } catch (const std::exception& e) {
              log->warn("listener {}: in-progress signal for {} failed: {}", l.def->name, event_id_of(*j.d), e.what());
            }
          }
          j.last_progress = now;
        }
      }
      if (l.stuck >= l.def->options.concurrency) return l.def->name;
    }
    return {};
  }

  int in_flight() {
    int n = 0;
    for (auto& l : listeners) {
      std::lock_guard lock(l->mutex);
      n += l->in_flight;
    }
    return n;
  }
  int running_in_time() {  // in flight and not yet past the deadline
    int n = 0;
    for (auto& l : listeners) {
      std::lock_guard lock(l->mutex);
      n += l->in_flight - l->stuck;
    }
    return n;
  }
};

worker::worker(event_bus& bus, worker_options options, std::shared_ptr<spdlog::logger> log)
    : impl_(std::make_unique<impl>(bus, std::move(options), std::move(log))) {
  if (!impl_->log) throw std::invalid_argument("omnibus::worker needs a logger");
  if (impl_->opts.database_url.empty()) throw std::invalid_argument("omnibus::worker needs a database_url (dead letters live there)");
  if (bus.target() == nullptr) throw std::invalid_argument("omnibus::worker needs a bus with a queue");
}

worker::~worker() {
  // After an abandoned shutdown the pool's threads may be stuck in handlers: never join them.
  if (impl_->threads && impl_->shutting_down && impl_->in_flight() > 0) (void)impl_->threads.release();
}

const worker_stats& worker::stats() const noexcept { return impl_->stats; }

void worker::run(std::stop_token stop) {
  impl& w = *impl_;
  std::size_t slots = 0;
  for (const async_listener& l : w.bus.async_listeners()) slots += static_cast<std::size_t>(l.options.concurrency);
  w.pool = std::make_unique<connection_pool>(w.opts.database_url, w.opts.pool_size > 0 ? w.opts.pool_size : std::max<std::size_t>(slots, 1));
  {
    auto lease = w.pool->acquire(w.opts.db_wait);
    migrate(*lease, w.bus.options().schema);
  }
  w.bus.provision();
  w.inbox_insert = "INSERT INTO \"" + w.bus.options().schema +
                   "\".bus_inbox (listener, event_id) VALUES ($1, $2::uuid) ON CONFLICT DO NOTHING";
  bool any_inbox = false;
  for (const async_listener& l : w.bus.async_listeners()) any_inbox = any_inbox || l.options.inbox;
  if (any_inbox && w.opts.inbox_retention <= w.bus.options().stream.max_age) {
    throw std::invalid_argument("worker: inbox_retention must exceed the stream's max_age: while the stream holds an "
                                "event it can be delivered again, and only its inbox row stops a second run");
  }
  for (const async_listener& l : w.bus.async_listeners()) {
    auto st = std::make_unique<listener_state>();
    st->def = &l;
    st->refill_at = l.options.concurrency / 2;
    st->cons = w.bus.target()->open_consumer(w.bus.options().stream, l.consumer_name);
    w.listeners.push_back(std::move(st));
  }
  // Opened before any thread starts: a failure here leaves nothing running.
  std::unique_ptr<consumer> reports =
      w.listeners.empty() ? nullptr : w.bus.target()->open_abandoned(w.bus.options().stream, w.bus.options().group);
  w.threads = std::make_unique<boost::asio::thread_pool>(std::max<std::size_t>(slots, 1));
  w.log->info("worker: {} listener(s), {} handler slot(s)", w.listeners.size(), slots);

  std::stop_source fetch_stop;
  std::vector<std::jthread> fetchers;
  for (auto& l : w.listeners) {
    fetchers.emplace_back([&w, &l, token = fetch_stop.get_token()] { w.fetch_loop(*l, token); });
  }

  std::jthread stream_watch([&w](std::stop_token st) { w.watch_stream(st); });
  std::jthread report_reader;
  if (reports) report_reader = std::jthread([&w, &reports](std::stop_token st) { w.abandoned_loop(*reports, st); });

  std::string stuck;
  while (!stop.stop_requested() && stuck.empty()) {
    (void)detail::wait_for(stop, w.opts.tick);
    stuck = w.monitor();
    if (any_inbox) w.prune_inbox();
  }

  // Graceful shutdown (decision 14).
  stream_watch.request_stop();
  if (report_reader.joinable()) {
    report_reader.request_stop();
    report_reader.join();
  }
  w.shutting_down = true;
  fetch_stop.request_stop();
  for (auto& l : w.listeners) l->slot_freed.notify_all();
  fetchers.clear();  // joins: no fetch after this
  const auto grace_end = clock::now() + (stuck.empty() ? w.opts.shutdown_grace : std::chrono::milliseconds(0));
  // Handlers past their deadline were nak'd already: the grace is for the others only.
  while (w.running_in_time() > 0 && clock::now() < grace_end) {
    std::this_thread::sleep_for(w.opts.tick);
    (void)w.monitor();
  }
  int abandoned = 0;
  for (auto& l : w.listeners) {
    std::lock_guard lock(l->mutex);
    for (auto& j : l->jobs) {
      j->stop.request_stop();
      if (w.settle(*j, "returning", [](delivery& x) { x.nak(std::chrono::milliseconds(0)); })) ++abandoned;
    }
  }
  try {
    w.bus.target()->flush(std::chrono::seconds(5));
  } catch (const std::exception& e) {
    w.log->error("worker: flushing acks at shutdown failed: {}", e.what());
  }
  if (w.in_flight() == 0) {
    w.threads->join();
  } else {
    w.log->error("worker: {} handler(s) still running after the shutdown grace; their messages were returned",
                 w.in_flight());
  }
  if (abandoned > 0) w.log->warn("worker: returned {} unfinished message(s) for redelivery", abandoned);
  if (!stuck.empty()) {
    throw worker_stuck("every handler slot of listener " + stuck +
                       " is stuck past its deadline; exit so that the supervisor restarts this worker");
  }
  w.log->info("worker: stopped");
}

}  // namespace omnibus
