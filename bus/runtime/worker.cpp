#include "omnibus/worker.hpp"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <unordered_map>
#include <unordered_set>
#include <stdexcept>
#include <mutex>
#include <limits>
#include <list>
#include <optional>
#include <random>
#include <thread>
#include <unistd.h>
#include <utility>
#include <vector>

#include <spdlog/spdlog.h>

#include "omnibus/dead_letters.hpp"
#include "omnibus/envelope.hpp"
#include "omnibus/text.hpp"
#include "core/context_access.hpp"
#include "core/failpoint.hpp"
#include "pg/store.hpp"
#include "runtime/flow.hpp"
#include "runtime/loss_check.hpp"
#include "runtime/settle.hpp"
#include "runtime/slot_pool.hpp"
#include "core/stop_wait.hpp"

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
struct partition_state;
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
  clock::time_point called;  // when the handler was last called (outages tell late echoes by it)
  bool trial = false;        // the circuit breaker's half-open trial
  std::atomic<bool> judged{false};  // its outcome was told to the breaker
  // What observers are told (run_job's thread only): the last settlement this thread made.
  handle_outcome outcome = handle_outcome::returned;
  std::string error;
  // Per-key listeners only.
  partition_state* part = nullptr;  // the partition it came from (set: a per-key job)
  std::uint64_t epoch = 0;          // the partition's lease when it was fetched
  std::string key;                  // its Omnibus-Key; empty: none (dead-lettered on arrival)
  std::uint64_t attempt = 0;        // attempts so far, local retries included
  std::string drain;                // a parked key's drain: "retry", "skip" or "discard" (no delivery)
  clock::time_point retry_at{};     // waiting for a local retry (in the listener's `retrying`)
  bool wants_retry = false;         // its slot asked for a local retry: finish_keyed() files it
};

// One partition of a per-key listener, as this worker holds it (or not). Under the listener's
// mutex but for `parked` (under park_mutex, taken before the listener's mutex).
struct partition_state {
  int n = 0;
  std::string consumer_name;
  std::unique_ptr<consumer> cons;  // open while held
  std::uint64_t epoch = 0;         // the lease held; 0: none
  std::uint64_t open_epoch = 0;    // the lease `cons` was opened under
  // Bumped whenever the partition is lost here, even if the same lease comes back later: what
  // was fetched or opened before a loss never mixes with what comes after.
  std::uint64_t generation = 0;
  std::uint64_t open_generation = 0;
  bool releasing = false;          // above this worker's share: fetch no more, hand it back once empty
  int held = 0;                    // deliveries fetched and not settled, and drains running
  std::unordered_set<std::uint64_t> sequences;  // the stream sequences held (a redelivery of one is dropped)
  // Each key's jobs in stream order: the front runs (or waits for its retry), the rest wait.
  std::unordered_map<std::string, std::deque<std::shared_ptr<job>>> keys;
  std::unordered_set<std::string> draining;  // keys whose parked events a drain job runs
  // After a claim: what the previous owner left unacked (stream sequences <= gather_below)
  // comes back first; nothing runs until all `gather_count` are here, then in stream order.
  bool gathering = false;
  std::uint64_t gather_below = 0;
  std::uint64_t gather_count = 0;
  std::uint64_t gathered_old = 0;
  clock::time_point gather_until{};
  std::vector<std::shared_ptr<job>> gathered;
  std::mutex park_mutex;
  std::unordered_set<std::string> parked;  // under park_mutex: keys parked (loaded at the claim)
};

struct listener_state {
  const async_listener* def = nullptr;
  std::unique_ptr<consumer> cons;
  std::mutex mutex;
  std::condition_variable_any slot_freed;
  std::unique_ptr<detail::flow_gate> gate;  // pause, outage, breaker: whether to fetch
  int tokens = 0;  // the fetcher's: rate-limit tokens drawn and not yet spent
  std::chrono::milliseconds token_wait{0};  // the fetcher's: after a draw that got none
  int in_flight = 0;  // fetched and not finished: running (stuck ones included) or waiting for a slot
  int stuck = 0;      // past the deadline, handler still running
  // Since when every slot has been stuck (time_point{}: not so now), for monitor().
  clock::time_point all_stuck_since{};
  int read_ahead = 0;  // events fetched beyond the slots, to wait for one (see set_read_ahead)
  double mean_call_us = 0;  // handler calls' duration, a moving average; 0 until the first
  // Calls that handled their event, and calls that failed (retry, dead letter, parked, timed
  // out), since the worker started; reported to the store as deltas (the dashboard's per-minute
  // rates across workers).
  std::atomic<std::uint64_t> calls_handled{0}, calls_failed{0};
  std::uint64_t reported_handled = 0, reported_failed = 0;  // the control thread's: what the store has
  job_list jobs;
  // Per-key listeners: the partitions, the lease's known end (local clock, from the last
  // heartbeat's start), and jobs waiting for a local retry.
  std::vector<std::unique_ptr<partition_state>> parts;
  std::chrono::milliseconds lease{0};
  clock::time_point valid_until{};  // under mutex
  std::vector<std::shared_ptr<job>> retrying;  // under mutex
  // The listener's handler slots: `concurrency` threads. Last: its threads go first.
  std::unique_ptr<detail::slot_pool<std::shared_ptr<job>>> slots;

  // Under mutex. How many events may be in flight: the slots, and what waits for one.
  [[nodiscard]] int capacity() const { return def->options.concurrency + read_ahead; }
  // Under mutex. Refill when a quarter of the usable capacity is free: fewer, larger fetches
  // than one per freed slot, and the next events on their way while the rest still run. Slots
  // held by handlers stuck past their deadline are not usable, and do not stop the others from
  // fetching.
  [[nodiscard]] bool may_fetch() const {
    const int free = capacity() - in_flight;
    return free > 0 && free >= std::max(1, capacity() / 4 - stuck);
  }
  // Under mutex. After a handler call of `us` microseconds: events may wait for a slot as long
  // as the slots can start them all within `window` (worker_options::read_ahead_window) at the
  // calls' average pace, up to read_ahead_max. Fast handlers so get batches as large as the
  // broker's round trips need; slow ones none, so that another worker can take what this one
  // would only hold. Ordered listeners never read ahead (one event in flight).
  void set_read_ahead(double us, std::chrono::microseconds window) {
    mean_call_us = mean_call_us == 0 ? us : 0.95 * mean_call_us + 0.05 * us;
    if (def->options.ordered || window.count() <= 0) return;
    const double fits = static_cast<double>(std::max(def->options.concurrency - stuck, 0)) *
                        static_cast<double>(window.count()) / std::max(mean_call_us, 1.0);
    read_ahead = static_cast<int>(std::min(fits, static_cast<double>(read_ahead_max())));
  }
  // At most 1,024, and half of what the server lets all workers hold (max_in_flight, or
  // MaxAckPending's default 1,000): one worker's read-ahead never takes the others' share.
  [[nodiscard]] int read_ahead_max() const {
    const int budget = def->options.max_in_flight > 0 ? def->options.max_in_flight : 1000;
    return std::min(1024, budget / 2);
  }
};

std::string event_id_of(const delivery& d) {
  if (const std::string* id = d.msg().header(header::msg_id); id != nullptr && !id->empty()) return *id;
  return "seq:" + std::to_string(d.stream_sequence());
}

std::string event_name_of(const delivery& d) {
  const std::string* n = d.msg().header(header::event);
  return n != nullptr ? *n : std::string();
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

// A parked key's event as its drain runs it again: read from PostgreSQL, settled there (its
// row deleted or kept), so settling the delivery itself does nothing.
class stored_delivery final : public delivery {
 public:
  stored_delivery(message m, std::uint64_t seq, std::uint64_t count) : msg_(std::move(m)), seq_(seq), count_(count) {}
  const message& msg() const noexcept override { return msg_; }
  std::uint64_t delivery_count() const noexcept override { return count_; }
  std::uint64_t stream_sequence() const noexcept override { return seq_; }
  void ack() override {}
  void nak(std::chrono::milliseconds) override {}
  void term() override {}
  void in_progress() override {}

 private:
  message msg_;
  std::uint64_t seq_;
  std::uint64_t count_;
};

// How many of a partition's events a worker holds at once (running, waiting behind their key,
// or for a retry): enough to keep the slots busy across keys, few enough that a partition
// handed to a newcomer drains quickly. At most what its consumer lets out (MaxAckPending).
int partition_cap(const async_listener& def) {
  const int consumer = def.options.max_in_flight > 0 ? def.options.max_in_flight : std::max(1000, def.options.concurrency);
  return std::min(consumer, std::max(64, 8 * def.options.concurrency));
}

// Max-deliveries reports read per fetch: they are rare, and each is one small write.
constexpr std::size_t abandoned_batch = 16;

}  // namespace

struct worker::impl {
  impl(event_bus& b, worker_options o, std::shared_ptr<spdlog::logger> l, std::unique_ptr<detail::store> s)
      : bus(b), opts(std::move(o)), log(std::move(l)), db(std::move(s)) {}

  event_bus& bus;
  worker_options opts;
  std::shared_ptr<spdlog::logger> log;
  worker_stats stats;
  std::vector<std::unique_ptr<listener_state>> listeners;
  std::unique_ptr<detail::store> db;  // given, or made from database_url by run()
  std::atomic<bool> shutting_down{false};
  std::atomic<bool> gates_ready{false};  // listeners (and their gates) are built: never changed after
  clock::time_point next_prune{};
  const std::string worker_id = this_worker();

  // host:pid, as this worker reports its listeners' states.
  static std::string this_worker() {
    static std::atomic<int> made{0};
    char host[256] = {};
    if (gethostname(host, sizeof host - 1) != 0) host[0] = '\0';
    std::string id = std::string(host[0] != '\0' ? host : "localhost") + ":" + std::to_string(getpid());
    if (const int n = made.fetch_add(1); n > 0) id += "#" + std::to_string(n + 1);  // a second worker in this process
    return id;
  }

  // Deletes inbox rows older than the retention, by the database's clock, now and then.
  void prune_inbox() {
    if (clock::now() < next_prune) return;
    next_prune = clock::now() + opts.inbox_prune_every;
    try {
      const std::size_t pruned = db->prune_inbox(opts.inbox_retention);
      if (pruned > 0) log->info("worker: pruned {} inbox row(s)", pruned);
    } catch (const std::exception& e) {
      log->warn("worker: pruning the inbox failed: {}", e.what());
    }
  }

  // Warns when the stream is nearly full. On a thread of its own: a slow answer from the
  // server must not delay deadlines.
  void watch_stream(std::stop_token stop) {
    do {
      check_stream();
      check_losses(stop);
    } while (detail::wait_for(stop, opts.stream_check_every));
  }

  // Whether events of a listener left the stream before it was handled (README "Operations").
  // Every worker checks; the mark in the database makes each check follow the last one, and
  // lets only one worker check a listener per half interval.
  std::string loss_check_failed;  // the last failure logged (each once)
  void check_losses(const std::stop_token& stop) {
    std::unordered_map<std::string, std::string> filters;  // consumer -> the subject it filters
    for (const consumer_config& c : bus.consumer_configs()) filters.emplace(c.name, c.filter_subject);
    for (auto& l : listeners) {
      const async_listener& def = *l->def;
      // A per-key listener's partition consumers: each checked by the worker holding it.
      std::vector<std::string> consumers;
      if (def.per_key()) {
        std::lock_guard lock(l->mutex);
        for (const auto& p : l->parts) {
          if (p->epoch != 0) consumers.push_back(p->consumer_name);
        }
      } else {
        consumers.push_back(def.consumer_name);
      }
      for (const std::string& consumer : consumers) {
        if (stop.stop_requested()) return;
        const auto filter = filters.find(consumer);
        if (filter == filters.end()) continue;  // cannot be: every consumer the bus has is configured
        check_losses_of({def.name, consumer, filter->second}, def.per_key());
      }
    }
  }
  void check_losses_of(const detail::checked_consumer& c, bool partition) {
    const stream_config& stream = bus.options().stream;
    try {
      const std::optional<detail::mark_check> stored = db->check_mark(
          c.consumer, opts.stream_check_every / 2, [&](const std::optional<detail::stream_mark>& last) {
            std::optional<detail::mark_check> found = detail::check_losses(*bus.target(), stream, bus.options().group, c, last);
            return found ? std::move(*found) : detail::mark_check{last.value_or(detail::stream_mark{}), std::nullopt};
          });
      if (stored && stored->lost) {  // recorded: now say so, once
        const detail::lost_events& x = *stored->lost;
        stats.lost_events.fetch_add(x.events, std::memory_order_relaxed);
        log->error("listener {}{}: {} of its event(s) left stream {} before it handled them (among sequences {}..{}; "
                   "the stream now starts at {} or later): max_age or the stream's limits removed them, and no "
                   "replay can bring them back. Recorded in {}.bus_lost_events until acknowledged (listeners "
                   "losses --acknowledge)",
                   c.listener, partition ? " (partition consumer " + c.consumer + ")" : std::string(), x.events,
                   stream.name, x.first_sequence, x.last_sequence, x.last_sequence + 1, bus.options().schema);
      }
      loss_check_failed.clear();
    } catch (const std::exception& e) {
      if (loss_check_failed != e.what()) {
        log->warn("worker: cannot check listener {} ({}) for events that left the stream: {}", c.listener, c.consumer,
                  e.what());
      }
      loss_check_failed = e.what();
    }
  }
  void check_stream() {
    const stream_config& stream = bus.options().stream;
    try {
      auto st = bus.target()->state(stream);
      if (!st) return;
      const double by_bytes = st->max_bytes > 0 ? static_cast<double>(st->bytes) / static_cast<double>(st->max_bytes) : 0;
      const double by_count = st->max_msgs > 0 ? static_cast<double>(st->messages) / static_cast<double>(st->max_msgs) : 0;
      const double fill = std::max(by_bytes, by_count);
      if (fill < opts.stream_full_warning) return;
      log->warn("worker: stream {} is {:.0f}% full ({} of {} bytes, {} events): publishers stop at {:.0f}% "
                "(stream_config::hold_above) until events pass max_age ({} s) or an operator purges handled "
                "events (stream purge --handled). Raise max_bytes or lower max_age",
                stream.name, fill * 100, st->bytes, st->max_bytes, st->messages, stream.hold_above * 100,
                stream.max_age.count());
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
    if (j.d == nullptr) return true;  // a parked key's drain between its events: nothing to settle
    try {
      f(*j.d);
    } catch (const std::exception& e) {
      // The message is not lost: unsettled, the server redelivers it after AckWait.
      log->error("listener {}: {} event {} failed: {}", j.l->def->name, what, event_id_of(*j.d), e.what());
    }
    return true;
  }

  // Which listeners an operator paused: read from the store and handed to the gates (which log
  // each change once); then this worker's report of its listeners' states. A failed read keeps
  // the last known state.
  // Returns whether some listener is pausing (paused, events still in flight).
  bool refresh_controls() {
    bool pausing = false;
    const std::vector<paused_listener> paused = db->paused_listeners();
    std::uint64_t n = 0;
    std::vector<listener_report> reports;
    for (auto& l : listeners) {
      const paused_listener* p = nullptr;
      for (const auto& x : paused) p = x.listener == l->def->name ? &x : p;
      l->gate->set_paused(p != nullptr, p != nullptr ? p->reason : std::string());
      n += p != nullptr ? 1 : 0;
      const detail::flow_report r = l->gate->report();
      int busy = 0;
      {
        std::lock_guard lock(l->mutex);
        busy = l->in_flight;  // stuck handlers too: they may still write
      }
      // "paused" once nothing of it runs here any more; until then "pausing".
      if (r.state == detail::flow_state::paused && busy > 0) {
        pausing = true;
        reports.push_back({l->def->name, worker_id, "pausing", std::to_string(busy) + " event(s) still in flight; " + r.reason,
                           r.since, {}});
      } else {
        reports.push_back({l->def->name, worker_id, detail::to_string(r.state), r.reason, r.since, {}});
      }
      reports.back().handled = l->calls_handled.load(std::memory_order_relaxed) - l->reported_handled;
      reports.back().failed = l->calls_failed.load(std::memory_order_relaxed) - l->reported_failed;
    }
    stats.paused_now = n;
    db->report_states(worker_id, reports);
    // Stored: counted from here on. A failed report keeps its counts for the next one.
    for (std::size_t i = 0; i < listeners.size(); ++i) {
      listeners[i]->reported_handled += reports[i].handled;
      listeners[i]->reported_failed += reports[i].failed;
    }
    return pausing;
  }
  void watch_controls(std::stop_token stop) {
    bool warned = false;
    bool pausing = false;
    // While a listener is pausing, look again soon: "paused" is what a replay waits for.
    while (detail::wait_for(stop, pausing ? std::min(opts.control_poll, std::chrono::milliseconds(100)) : opts.control_poll)) {
      try {
        pausing = refresh_controls();
        warned = false;
      } catch (const std::exception& e) {
        if (!warned) log->warn("worker: cannot read which listeners are paused (keeping the last known): {}", e.what());
        warned = true;
      }
    }
  }

  void fetch_loop(listener_state& l, std::stop_token stop) {
    const auto hold_limit = std::clamp<std::chrono::milliseconds>(
        std::chrono::duration_cast<std::chrono::milliseconds>(l.def->options.ack_wait / 4), opts.tick,
        std::chrono::milliseconds(1000));
    const bool limited = l.def->options.rate.per_second > 0;
    bool failing = false;  // fetches fail (NATS unreachable?) since failing_since
    clock::time_point failing_since{};
    while (!stop.stop_requested()) {
      int free = 0;
      {
        // Never more messages than room for them (they would wait out their AckWait). No room for
        // a while (slow handlers, read-ahead shrunk): what the consumer received ahead goes back
        // rather than wait there, unsignalled, toward its AckWait.
        std::unique_lock lock(l.mutex);
        bool stopped = false;
        while (!l.slot_freed.wait_for(lock, stop, hold_limit, [&] { return l.may_fetch(); })) {
          if (stop.stop_requested()) {
            stopped = true;
            break;
          }
          lock.unlock();
          l.cons->give_back();
          lock.lock();
        }
        if (stopped) break;
        free = l.capacity() - l.in_flight;
      }
      const detail::flow_gate::allowance may = l.gate->may_take(free, clock::now());
      int take = may.take;
      if (take > 0 && limited) take = draw_tokens(l, take);
      if (take <= 0) {
        if (may.trial) l.gate->trial_unused();
        // Paused, breaker open, dependency down: what came ahead goes back instead of waiting
        // out its AckWait here. (Out of rate-limit tokens it stays: tokens come soon.)
        if (may.take == 0) l.cons->give_back();
        if (!detail::wait_for(stop, may.take == 0 ? std::min(may.wait, opts.tick) : l.token_wait)) break;
        continue;
      }
      std::vector<std::unique_ptr<delivery>> batch;
      try {
        batch = l.cons->fetch(static_cast<std::size_t>(take), opts.fetch_wait);
      } catch (const std::exception& e) {
        if (may.trial) l.gate->trial_unused();
        if (!failing) {
          log->warn("listener {}: fetch failed: {}; retrying every {} ms (logged again once it works)", l.def->name,
                    e.what(), opts.fetch_retry.count());
          failing = true;
          failing_since = clock::now();
        }
        if (!detail::wait_for(stop, opts.fetch_retry)) break;
        continue;
      }
      if (failing) {
        log->info("listener {}: fetching again after {} s of failed fetches", l.def->name,
                  std::chrono::duration_cast<std::chrono::seconds>(clock::now() - failing_since).count());
        failing = false;
      }
      if (limited) l.tokens -= static_cast<int>(batch.size());
      if (may.trial && batch.empty()) l.gate->trial_unused();
      // Paused while this fetch waited: what it brought goes back unhandled, so that once the
      // listener reports "paused" nothing of it runs any more (a replay relies on that). Checked
      // under the listener's mutex with the in-flight count that refresh_controls() reads.
      bool paused_meanwhile = false;
      if (!batch.empty()) {
        std::lock_guard lock(l.mutex);
        paused_meanwhile = l.gate->paused();
        if (!paused_meanwhile) l.in_flight += static_cast<int>(batch.size());  // the slots, taken now
      }
      if (paused_meanwhile && may.trial) l.gate->trial_unused();
      std::vector<std::shared_ptr<job>> ready;
      ready.reserve(batch.size());
      for (auto& d : batch) {
        if (stop.stop_requested() || shutting_down || paused_meanwhile) {
          // Fetched but not started: give it back at once for another worker.
          auto j = std::make_shared<job>();
          j->l = &l;
          j->d = std::move(d);
          settle(*j, "returning", [](delivery& x) { x.nak(std::chrono::milliseconds(0)); });
          if (!paused_meanwhile) {
            std::lock_guard lock(l.mutex);
            --l.in_flight;  // its slot, taken above
          }
          continue;
        }
        auto j = std::make_shared<job>();
        j->l = &l;
        j->d = std::move(d);
        j->trial = may.trial;
        j->deadline = clock::time_point::max();  // set when a slot starts it: waiting is not late
        j->last_progress = clock::now();
        {
          std::lock_guard lock(l.mutex);
          j->self = l.jobs.insert(l.jobs.end(), j);
        }
        ready.push_back(std::move(j));
      }
      l.slots->push(ready);  // one hand-off for the batch
    }
  }

  // Up to `take` of the tokens the listener's shared rate limit grants. When the fetcher holds
  // too few it draws from the store enough to hold a bucket's worth (one round trip per
  // bucket, not per fetch; held tokens still came out of the shared bucket). 0: wait token_wait.
  int draw_tokens(listener_state& l, int take) {
    const rate_limit& r = l.def->options.rate;
    const int burst = r.burst > 0 ? r.burst : std::max(1, static_cast<int>(std::ceil(r.per_second / 10)));
    if (l.tokens < take) {
      const int want = std::max(burst - l.tokens, 1);
      try {
        l.tokens += db->take_tokens(l.def->name, r.per_second, burst, want);
      } catch (const std::exception& e) {  // no tokens without the store: the limit holds
        log->warn("listener {}: cannot draw from its rate limit: {}; retrying in {} ms", l.def->name, e.what(),
                  opts.fetch_retry.count());
        l.token_wait = opts.fetch_retry;
        return 0;
      }
      // Asking again before `want` tokens can have come is a wasted round trip.
      const auto refill = std::chrono::milliseconds(static_cast<std::int64_t>(1000.0 * want / r.per_second));
      l.token_wait = std::clamp(refill, std::chrono::milliseconds(5), std::chrono::milliseconds(1000));
    }
    const int n = std::max(0, std::min(take, l.tokens));
    l.gate->set_rate_limited(n == 0);
    return n;
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
    // A trial that ended without a verdict (dead-lettered on arrival, returned at shutdown):
    // the breaker lets another one through.
    if (j->trial && !j->judged) l.gate->trial_unused();
    if (wake) l.slot_freed.notify_one();
  }

  // One delivery, from the fetch to its settlement, told to the bus's observers.
  void run_job(job& j) {
    listener_state& l = *j.l;
    // Read ahead, and paused or its breaker opened meanwhile: back to the server, for later
    // (after the consumer's open requests have ended, so that it does not come straight back).
    if (!j.trial && l.gate->holds_back()) {
      settle(j, "returning", [&](delivery& x) { x.nak(opts.fetch_wait + std::chrono::milliseconds(500)); });
      return;
    }
    const auto began = clock::now();
    set_deadline(j, began + l.def->options.deadline);
    run_observed(j);
    const double us = std::chrono::duration<double, std::micro>(clock::now() - began).count();
    std::lock_guard lock(l.mutex);
    switch (j.timed_out ? handle_outcome::timed_out : j.outcome) {  // the calls the dashboard rates
      case handle_outcome::handled:
        l.calls_handled.fetch_add(1, std::memory_order_relaxed);
        break;
      case handle_outcome::retry:
      case handle_outcome::dead_letter:
      case handle_outcome::parked:
      case handle_outcome::timed_out:
        l.calls_failed.fetch_add(1, std::memory_order_relaxed);
        break;
      default:
        break;
    }
    if (j.outcome == handle_outcome::handled || j.outcome == handle_outcome::skipped) {
      l.set_read_ahead(us, std::chrono::duration_cast<std::chrono::microseconds>(opts.read_ahead_window));
    } else {  // failing, or slow past its deadline: fetch only what the slots run until calls succeed
      l.read_ahead = 0;
      l.mean_call_us = 0;
    }
  }

  void run_observed(job& j) {
    if (bus.observers().empty()) {
      process(j);
      return;
    }
    // Views into the message's headers, not copies: this runs for every event.
    const message& m = j.d->msg();
    const std::string* msg_id = m.header(header::msg_id);
    const std::string fallback_id = msg_id != nullptr && !msg_id->empty() ? std::string() : event_id_of(*j.d);
    const std::string_view id = fallback_id.empty() ? std::string_view(*msg_id) : std::string_view(fallback_id);
    const std::string* event = m.header(header::event);
    const std::string_view name = event != nullptr ? std::string_view(*event) : std::string_view{};
    const std::string* trace = m.header(header::traceparent);
    const std::string* state = m.header(header::tracestate);
    const handle_info info{j.l->def->name, name, id, j.d->delivery_count(),
                           trace != nullptr ? std::string_view(*trace) : std::string_view{},
                           state != nullptr ? std::string_view(*state) : std::string_view{}};
    for (const auto& o : bus.observers()) {
      try {
        o->on_handle_start(info);
      } catch (...) {  // observing never changes what the worker does
      }
    }
    const auto started = clock::now();
    process(j);
    const auto took = clock::now() - started;
    {
      std::lock_guard lock(j.l->mutex);
      if (j.timed_out) j.outcome = handle_outcome::timed_out;
    }
    for (const auto& o : bus.observers()) {
      try {
        o->on_handle_end(info, j.outcome, took, j.error);
      } catch (...) {
      }
    }
  }

  struct handler_result {
    // deferred, permanent and fenced: per-key jobs only, which are never settled by call_handler.
    enum class kind { handled, duplicate, failed, unavailable, in_doubt, settled, deferred, permanent, fenced };
    kind what = kind::handled;
    std::string error;  // failed, unavailable, in_doubt
  };

  // Admit the message, hold it while its ordered listener is parked, call the handler, then
  // settle by the outcome.
  void process(job& j) {
    if (j.part != nullptr) {
      process_keyed(j);
      return;
    }
    if (shutting_down) {
      settle(j, "returning", [](delivery& x) { x.nak(std::chrono::milliseconds(0)); });
      return;
    }
    std::optional<envelope> env = admit(j);
    if (!env) return;
    bool operator_retry = false;
    if (!hold_while_parked(j, *env, operator_retry)) return;
    handler_result result = call_handler(j, *env);
    for (int round = 0; result.what == handler_result::kind::unavailable; ++round) {
      if (timed_out(j)) {
        // The monitor nak'd it at its deadline and it may run elsewhere now: never call it
        // again here. The outage it may hold ends with it; the next event finds out anew.
        j.l->gate->end_outage();
        return;
      }
      if (!hold_through_outage(j, *env, result.error, round)) return;
      result = call_handler(j, *env);
    }
    j.l->gate->leave_outage(j.called);
    conclude(j, *env, result, operator_retry);
    judge(j, result);
  }

  // A dependency is down (PostgreSQL unreachable, or the handler threw transient_error): the
  // listener stops fetching, and this event is held (in progress, no deadline, no attempt
  // spent) for a backoff before its next call. False when it was returned at shutdown.
  bool hold_through_outage(job& j, const envelope& env, const std::string& error, int round) {
    j.l->gate->enter_outage(error, j.called);
    stats.outage_retries.fetch_add(1, std::memory_order_relaxed);
    set_deadline(j, clock::time_point::max());
    const double nominal = static_cast<double>(opts.outage_retry.count()) * std::pow(2.0, std::min(round, 20));
    const auto delay = std::chrono::milliseconds(std::llround(
        std::min(nominal, static_cast<double>(opts.outage_retry_max.count())) * (0.8 + 0.4 * unit_random())));
    log->debug("listener {}: {} {} waits {} ms for a dependency ({}); no attempt spent", j.l->def->name, env.name,
               env.id.to_string(), delay.count(), error);
    if (!sleep_unless_shutdown(delay)) {
      settle(j, "returning a held", [](delivery& x) { x.nak(std::chrono::milliseconds(0)); });
      return false;
    }
    set_deadline(j, clock::now() + j.l->def->options.deadline);
    return true;
  }

  bool timed_out(job& j) {
    std::lock_guard lock(j.l->mutex);
    return j.timed_out;
  }

  // Sleeps for `d` in ticks; false as soon as the worker shuts down.
  bool sleep_unless_shutdown(clock::duration d) {
    for (const auto until = clock::now() + d; clock::now() < until;) {
      if (shutting_down) return false;
      std::this_thread::sleep_for(std::min<clock::duration>(opts.tick, until - clock::now()));
    }
    return !shutting_down;
  }

  // Tells the circuit breaker how the call went: a throw or a passed deadline is a failure, a
  // return a success. Other ends (a bad body, permanent_error, a duplicate) say nothing of the
  // dependency, and a trial that ends so lets another through (finish()).
  void judge(job& j, const handler_result& result) {
    using kind = handler_result::kind;
    if (result.what != kind::handled && result.what != kind::failed) return;
    if (j.judged.exchange(true)) return;  // timed out: the monitor judged it
    j.l->gate->on_result(result.what == kind::failed, j.trial, result.error, clock::now());
  }

  // The envelope to hand the handler, or nullopt when the message cannot reach it (it was
  // dead-lettered: bad headers, unknown version, undecodable envelope, too large).
  std::optional<envelope> admit(job& j) {
    detail::settle_decision first = detail::before_handler(j.d->msg(), j.d->header_error(),
                                                           bus.options().stream.subject_prefix, bus.options().max_body_bytes);
    if (first.what != detail::settle_decision::action::run) {
      dead_letter_now(j, first.reason, first.error, j.d->delivery_count());
      return std::nullopt;
    }
    return std::move(first.env);
  }

  // An ordered listener parked at this event runs it only when an operator says so. Returns
  // false when the event was settled meanwhile (skipped, or returned at shutdown).
  bool hold_while_parked(job& j, const envelope& env, bool& operator_retry) {
    const async_listener& def = *j.l->def;
    if (!(def.options.ordered && def.options.park_when_exhausted) || j.d->delivery_count() <= 1) return true;
    switch (wait_while_parked(j, env)) {
      case parked_outcome::not_parked: return true;
      case parked_outcome::retry: operator_retry = true; return true;
      case parked_outcome::settled: return false;
    }
    return true;
  }

  // Runs the handler with its context (and, for an inbox listener, inside the inbox
  // transaction, committed with the handler's writes). Errors that settle at once (decode
  // failures, permanent_error) are settled here; an unreachable database or a transient_error
  // is `unavailable`: an outage, not the handler's failure.
  handler_result call_handler(job& j, const envelope& env) {
    using kind = handler_result::kind;
    const async_listener& def = *j.l->def;
    j.called = clock::now();
    context ctx;
    ctx.meta() = env.meta;
    using access = detail::context_access;
    access::set_event_id(ctx, env.id);
    access::set_attempt(ctx, j.part != nullptr ? j.attempt : j.d->delivery_count());  // per key: retries in place count
    access::set_deadline(ctx, j.deadline);
    access::set_stop_token(ctx, j.stop.get_token());
    try {
      std::unique_ptr<detail::job_session> session = db->open_session();  // ends with this scope
      access::set_connection_source(ctx, session->connections());
      if (def.options.inbox) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(j.deadline - clock::now());
        if (!session->claim(def.name, env.id.to_string(), left)) return {kind::duplicate, {}};
        // Per key: the lease is still ours, and stays ours until this transaction ends.
        if (j.part != nullptr && !session->fence(def.name, j.part->n, worker_id, j.epoch)) return {kind::fenced, {}};
        access::set_transaction(ctx, session->transaction());
      }
      def.handler(ctx, env);
      if (def.options.inbox) {
        session->commit();
        detail::failpoint("worker_after_inbox_commit");
      }
      return {kind::handled, {}};
    } catch (const decode_error& e) {
      if (j.part != nullptr) {  // per key: held here, in order, rather than settled
        const detail::settle_decision then = detail::after_decode_error(e);
        return {then.what == detail::settle_decision::action::defer ? kind::deferred : kind::permanent, then.error};
      }
      settle_decode_error(j, env, e);
      return {kind::settled, {}};
    } catch (const permanent_error& e) {
      if (j.part != nullptr) return {kind::permanent, e.what()};
      dead_letter_now(j, "permanent", e.what(), j.d->delivery_count());
      return {kind::settled, {}};
    } catch (const detail::commit_in_doubt& e) {
      return {kind::in_doubt, e.what()};
    } catch (const transient_error& e) {
      return {kind::unavailable, e.what()};
    } catch (const std::exception& e) {
      return {detail::is_unavailable(e) ? kind::unavailable : kind::failed, e.what()};
    } catch (...) {
      return {kind::failed, "a handler threw something that is not a std::exception"};
    }
  }

  // A body this build cannot read: a newer version waits for a newer worker; anything else
  // is a dead letter.
  void settle_decode_error(job& j, const envelope& env, const decode_error& e) {
    const detail::settle_decision then = detail::after_decode_error(e);
    if (then.what == detail::settle_decision::action::defer) {
      log->info("listener {}: {} {} is a newer version than this build knows; retrying in {} ms", j.l->def->name,
                env.name, env.id.to_string(), opts.newer_version_delay.count());
      if (retry_later(j, opts.newer_version_delay, "deferring", then.error)) {
        j.outcome = handle_outcome::deferred;
        stats.deferred.fetch_add(1, std::memory_order_relaxed);
      }
      return;
    }
    dead_letter_now(j, then.reason, then.error, j.d->delivery_count());
  }

  void conclude(job& j, const envelope& env, const handler_result& result, bool operator_retry) {
    using kind = handler_result::kind;
    const async_listener& def = *j.l->def;
    const std::uint64_t attempt = j.d->delivery_count();
    switch (result.what) {
      case kind::settled:
      case kind::unavailable:  // held by process() until it is not
      case kind::deferred:     // per-key kinds: never here
      case kind::permanent:
      case kind::fenced:
        return;
      case kind::in_doubt:
        // Committed or not, nobody knows: never ack. The redelivery asks the inbox.
        stats.in_doubt.fetch_add(1, std::memory_order_relaxed);
        log->error("listener {}: {} {}: the inbox commit's outcome is unknown ({}); not acked, it will be redelivered",
                   def.name, env.name, env.id.to_string(), result.error);
        (void)retry_later(j, retry_delay(def.options.retry, attempt, unit_random()), "naking", result.error);
        return;
      case kind::duplicate:
        settle(j, "acking a duplicate", [](delivery& x) { x.ack(); });
        j.outcome = handle_outcome::skipped;
        stats.duplicates.fetch_add(1, std::memory_order_relaxed);
        log->debug("listener {}: {} {} was handled already (inbox): acked", def.name, env.name, env.id.to_string());
        return;
      case kind::failed:
        failed(j, env, result.error, attempt, operator_retry);
        return;
      case kind::handled:
        break;
    }
    if (!settle(j, "acking", [](delivery& x) { x.ack(); })) {
      log->warn("listener {}: {} {} finished after its deadline; the late result is discarded", def.name, env.name,
                env.id.to_string());
      j.outcome = handle_outcome::timed_out;
      return;
    }
    j.outcome = handle_outcome::handled;
    stats.handled.fetch_add(1, std::memory_order_relaxed);
    if (attempt > 1) forget_failures(j, env, operator_retry);
  }

  // After a success on a later attempt: the failure history goes, and a parked listener goes on.
  void forget_failures(job& j, const envelope& env, bool operator_retry) {
    const async_listener& def = *j.l->def;
    try {
      db->clear_failure(def.name, env.id.to_string());
      if (operator_retry) {
        db->unpark(def.name);
        log->info("listener {}: {} {} succeeded on an operator's retry; the listener goes on", def.name, env.name,
                  env.id.to_string());
      }
    } catch (const std::exception& e) {
      log->warn("listener {}: could not clear the failure history of {}: {}", def.name, env.id.to_string(), e.what());
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
      db->record_failure(def.name, env.id.to_string(), error);
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
      db->park({def.name, env.id.to_string(), env.name, j.d->stream_sequence(), error, static_cast<int>(attempt), ""});
      stats.parked.fetch_add(1, std::memory_order_relaxed);
      log->error("listener {}: parked at {} {} after {} attempt(s): {}. Nothing after it runs until "
                 "`omnibus-worker parked retry {}` or `... skip {}`",
                 def.name, env.name, env.id.to_string(), attempt, error, def.name, def.name);
    } catch (const std::exception& e) {
      log->error("listener {}: could not park at {}: {}", def.name, env.id.to_string(), e.what());
    }
    // Redelivered at once, the event is held (wait_while_parked) until an operator's word.
    if (retry_later(j, std::chrono::milliseconds(0), "naking a parked", error)) j.outcome = handle_outcome::parked;
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
        const std::optional<parked_event> parked = db->find_parked(def.name);
        if (!parked || parked->event_id != id) {
          if (held) set_deadline(j, clock::now() + def.options.deadline);
          return parked_outcome::not_parked;
        }
        if (parked->action == "skip") {
          db->unpark(def.name);
          settle(j, "acking a skipped", [](delivery& x) { x.ack(); });
          j.outcome = handle_outcome::skipped;
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
      if (!sleep_unless_shutdown(opts.parked_poll)) {
        settle(j, "returning a parked", [](delivery& x) { x.nak(std::chrono::milliseconds(0)); });
        return parked_outcome::settled;
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
    j.outcome = handle_outcome::retry;
    j.error = why;
    return true;
  }

  void dead_letter_now(job& j, const std::string& reason, const std::string& error, std::uint64_t attempt) {
    const async_listener& def = *j.l->def;
    const dead_letter dl = letter_of(def, *j.d, reason, error, attempt);
    j.outcome = handle_outcome::dead_letter;
    j.error = error;
    try {
      db->write_dead_letter(dl);  // committed before the term below
    } catch (const std::exception& e) {
      const bool refused = dynamic_cast<const detail::row_refused*>(&e) != nullptr;
      if (!refused && attempt < static_cast<std::uint64_t>(bus.options().max_deliveries)) {
        log->error("listener {}: could not write the dead letter of {} ({}): {}; it will be retried", def.name,
                   to_text(dl.event_id), to_text(error), e.what());
        if (j.part != nullptr) {  // per key: held here, so that nothing of its key overtakes it
          retry_locally(j, retry_delay(def.options.retry, attempt, unit_random()), false, e.what());
          return;
        }
        settle(j, "naking", [&](delivery& x) { x.nak(retry_delay(def.options.retry, attempt, unit_random())); });
        j.outcome = handle_outcome::retry;
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
        batch = reports.fetch(abandoned_batch, opts.fetch_wait);
      } catch (const std::exception& e) {
        log->warn("worker: reading the server's max-deliveries reports failed: {}; retrying in {} ms", e.what(),
                  opts.fetch_retry.count());
        if (!detail::wait_for(stop, opts.fetch_retry)) break;
        continue;
      }
      for (auto& d : batch) record_abandoned(*d);
    }
  }

  void record_abandoned(delivery& d) {
    const async_listener* def = nullptr;
    for (const auto& l : listeners) {
      const std::string& c = l->def->consumer_name;
      const std::string_view by = d.abandoned_by();
      if (c == by || (l->def->per_key() && by.size() > c.size() + 2 && by.substr(0, c.size() + 2) == c + "_k")) {
        def = l->def;
      }
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
        db->write_dead_letter(dl);
      } catch (const std::exception& e) {
        if (dynamic_cast<const detail::row_refused*>(&e) == nullptr) {
          log->warn("listener {}: could not write the dead letter of abandoned stream message #{}: {}; retrying",
                    def->name, dl.stream_sequence, e.what());
          d.nak(opts.fetch_retry);
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

  // ---- Per-key listeners (README "Ordered per key", DESIGN decision 22) ----
  //
  // Each partition has its own consumer, read only by the worker holding its lease. Its
  // fetcher opens and closes the consumer as the lease thread claims and hands back; a key's
  // events queue behind one another (the front runs); a failed event is retried here, in
  // place, so nothing of its key overtakes it; an exhausted one parks its key in PostgreSQL.

  // Under l.mutex: whether a job of `p` fetched at `epoch` may start: the lease is still that
  // one, and known valid past the handler's deadline.
  static bool may_start(const listener_state& l, const partition_state& p, std::uint64_t epoch, clock::time_point now) {
    return epoch != 0 && p.epoch == epoch && now + l.def->options.deadline + std::chrono::seconds(1) < l.valid_until;
  }
  // Whether `j`'s outcome may still be settled here (acked): the lease is the one it ran under.
  static bool still_held(const job& j) {
    std::lock_guard lock(j.l->mutex);
    return j.part->epoch == j.epoch && clock::now() < j.l->valid_until;
  }

  void keyed_fetch_loop(listener_state& l, partition_state& p, std::stop_token stop) {
    const async_listener& def = *l.def;
    const int cap = partition_cap(def);
    bool failing = false;
    while (!stop.stop_requested()) {
      enum class step { wait, open, close, fetch } what = step::wait;
      std::uint64_t epoch = 0, generation = 0;
      int take = 0;
      {
        std::unique_lock lock(l.mutex);
        const auto next = [&] {
          // A new lease opens only once nothing of an earlier one is held here any more.
          if (!p.cons && p.epoch != 0 && !p.releasing && p.held == 0) return step::open;
          if (p.cons && (p.epoch != p.open_epoch || p.generation != p.open_generation || (p.releasing && p.held == 0))) {
            return step::close;
          }
          // Gathering: fetch until the previous owner's events are all here, whatever is held
          // (the consumer's MaxAckPending bounds it), so that new events never crowd them out.
          const bool missing_old = p.gathering && p.gathered_old < p.gather_count;
          if (p.cons && !p.releasing && (p.held < cap || missing_old) && may_start(l, p, p.epoch, clock::now()) &&
              !l.gate->paused()) {
            return step::fetch;
          }
          return step::wait;
        };
        (void)l.slot_freed.wait_for(lock, stop, opts.tick, [&] { return next() != step::wait; });
        what = next();
        epoch = p.epoch;
        generation = p.generation;
        const int missing = p.gathering ? static_cast<int>(p.gather_count - std::min(p.gather_count, p.gathered_old)) : 0;
        take = std::max({1, cap - p.held, missing});
      }
      if (stop.stop_requested()) break;
      switch (what) {
        case step::wait:
          if (p.gathering) check_gather(l, p);
          continue;
        case step::open:
          open_partition(l, p, epoch, generation);
          continue;
        case step::close:
          close_partition(l, p);
          continue;
        case step::fetch:
          break;
      }
      std::vector<std::unique_ptr<delivery>> batch;
      try {
        batch = p.cons->fetch(static_cast<std::size_t>(take), opts.fetch_wait);
        if (failing) log->info("listener {}: partition {} fetches again", def.name, p.n);
        failing = false;
      } catch (const std::exception& e) {
        if (!failing) log->warn("listener {}: fetching partition {} failed: {}; retrying every {} ms", def.name, p.n,
                                e.what(), opts.fetch_retry.count());
        failing = true;
        (void)detail::wait_for(stop, opts.fetch_retry);
        continue;
      }
      std::vector<std::shared_ptr<job>> run, back;
      {
        std::lock_guard lock(l.mutex);
        for (auto& d : batch) {
          if (p.sequences.contains(d->stream_sequence())) continue;  // a redelivery of one held here: the held copy settles
          auto j = std::make_shared<job>();
          j->l = &l;
          j->part = &p;
          j->epoch = epoch;
          j->d = std::move(d);
          j->deadline = clock::time_point::max();
          j->last_progress = clock::now();
          j->attempt = j->d->delivery_count();
          if (const std::string* k = j->d->msg().header(header::key); k != nullptr) j->key = *k;
          if (p.epoch != epoch || p.generation != generation) {  // lost meanwhile: back for the next owner
            back.push_back(std::move(j));
            continue;
          }
          ++p.held;
          ++l.in_flight;
          p.sequences.insert(j->d->stream_sequence());
          j->self = l.jobs.insert(l.jobs.end(), j);
          if (p.gathering) {
            if (j->d->stream_sequence() <= p.gather_below) ++p.gathered_old;
            p.gathered.push_back(std::move(j));
          } else {
            route(p, j, run);
          }
        }
      }
      for (auto& j : back) (void)settle(*j, "returning", [](delivery& x) { x.nak(std::chrono::milliseconds(0)); });
      if (!run.empty()) l.slots->push(run);
      if (p.gathering) check_gather(l, p);
    }
  }

  // Under l.mutex: queues `j` behind its key's earlier events; adds it to `run` when it is the
  // key's first. A message without a key runs at once (to be dead-lettered).
  static void route(partition_state& p, const std::shared_ptr<job>& j, std::vector<std::shared_ptr<job>>& run) {
    if (j->key.empty()) {
      run.push_back(j);
      return;
    }
    auto& q = p.keys[j->key];
    q.push_back(j);
    if (q.size() == 1) run.push_back(j);
  }

  // A claimed partition: what the previous owner left unacked is gathered first (the server
  // redelivers it in no promised order), then everything runs in stream order.
  void open_partition(listener_state& l, partition_state& p, std::uint64_t epoch, std::uint64_t generation) {
    const async_listener& def = *l.def;
    try {
      const std::optional<consumer_info> info = bus.target()->info(bus.options().stream, p.consumer_name);
      std::unique_ptr<consumer> cons = bus.target()->open_consumer(bus.options().stream, p.consumer_name);
      std::vector<std::string> parked = db->parked_keys_of(def.name, p.n);
      {
        std::lock_guard park(p.park_mutex);
        p.parked = {parked.begin(), parked.end()};
      }
      std::lock_guard lock(l.mutex);
      if (p.epoch != epoch || p.generation != generation) return;  // lost meanwhile; `cons` closes
      p.cons = std::move(cons);
      p.open_epoch = epoch;
      p.open_generation = generation;
      p.gather_count = info ? info->ack_pending : 0;
      p.gather_below = info ? info->delivered_sequence : 0;
      p.gathered_old = 0;
      p.gathering = p.gather_count > 0;
      p.gather_until = clock::now() + def.options.ack_wait + std::chrono::seconds(5);
      log->info("listener {}: partition {} claimed (epoch {}){}", def.name, p.n, epoch,
                p.gathering ? "; gathering " + std::to_string(p.gather_count) + " unacked event(s) first" : "");
    } catch (const std::exception& e) {
      log->warn("listener {}: cannot open partition {}: {}; retrying", def.name, p.n, e.what());
      (void)sleep_unless_shutdown(opts.fetch_retry);
    }
  }

  // Gathering ends when every event the previous owner left unacked is here (or, should it
  // have acked some after all, once the server must have redelivered them all).
  void check_gather(listener_state& l, partition_state& p) {
    std::vector<std::shared_ptr<job>> run;
    {
      std::lock_guard lock(l.mutex);
      if (!p.gathering) return;
      const bool late = clock::now() >= p.gather_until;
      if (p.gathered_old < p.gather_count && !late) return;
      if (late) {
        log->warn("listener {}: partition {}: {} of {} unacked event(s) came back within AckWait; going on", l.def->name,
                  p.n, p.gathered_old, p.gather_count);
      }
      std::sort(p.gathered.begin(), p.gathered.end(),
                [](const auto& a, const auto& b) { return a->d->stream_sequence() < b->d->stream_sequence(); });
      for (auto& j : p.gathered) route(p, j, run);
      p.gathered.clear();
      p.gathering = false;
    }
    if (!run.empty()) l.slots->push(run);
  }

  // Handed back (or lost): the consumer closes once the pull requests it left open have
  // ended, so that nothing is delivered to it after the next owner counted what is unacked.
  void close_partition(listener_state& l, partition_state& p) {
    std::unique_ptr<consumer> cons;
    std::vector<std::shared_ptr<job>> back;
    {
      std::lock_guard lock(l.mutex);
      cons = std::move(p.cons);
      back.swap(p.gathered);
      p.gathering = false;
    }
    for (auto& j : back) {
      (void)settle(*j, "returning", [](delivery& x) { x.nak(std::chrono::milliseconds(0)); });
      unhold(l, j);
    }
    cons->give_back();
    std::this_thread::sleep_for(opts.fetch_wait + std::chrono::milliseconds(500));
    cons->give_back();
    cons.reset();
    std::lock_guard lock(l.mutex);
    p.open_epoch = 0;  // closed, its requests ended: a releasing partition may be handed back now
  }

  // A per-key job that leaves without running (returned): its place in the partition goes.
  void unhold(listener_state& l, const std::shared_ptr<job>& j) {
    std::lock_guard lock(l.mutex);
    --l.in_flight;
    --j->part->held;
    if (j->timed_out) --l.stuck;
    if (j->d != nullptr && j->drain.empty()) j->part->sequences.erase(j->d->stream_sequence());
    if (!j->drain.empty()) j->part->draining.erase(j->key);
    l.jobs.erase(j->self);
  }

  // One per-key job on a slot: a drain of a parked key, or an event.
  void run_keyed(job& j) {
    listener_state& l = *j.l;
    if (!j.drain.empty()) {
      run_drain(j);
      return;
    }
    run_observed(j);
    switch (j.outcome) {
      case handle_outcome::handled: l.calls_handled.fetch_add(1, std::memory_order_relaxed); break;
      case handle_outcome::retry:
      case handle_outcome::dead_letter:
      case handle_outcome::parked:
      case handle_outcome::timed_out: l.calls_failed.fetch_add(1, std::memory_order_relaxed); break;
      default: break;
    }
  }

  void return_job(job& j) {
    (void)settle(j, "returning", [](delivery& x) { x.nak(std::chrono::milliseconds(0)); });
    j.outcome = handle_outcome::returned;
  }

  void process_keyed(job& j) {
    listener_state& l = *j.l;
    partition_state& p = *j.part;
    const async_listener& def = *l.def;
    bool startable = false, ours = false;
    {
      std::lock_guard lock(l.mutex);
      startable = !shutting_down && may_start(l, p, j.epoch, clock::now());
      ours = !shutting_down && p.epoch == j.epoch;
    }
    if (!startable && ours) {  // held, but not known for long enough: after the next heartbeat
      retry_locally(j, opts.partition_heartbeat, false, "waiting for the partition's lease to be renewed");
      return;
    }
    if (!startable) {  // the lease is gone: back, for its next holder
      return_job(j);
      return;
    }
    std::optional<envelope> env = admit(j);  // a message that cannot be read is dead-lettered
    if (!env) return;
    if (env->key.empty() || partition_of(env->key, def.partitions) != p.n) {
      dead_letter_now(j, "bad_key",
                      env->key.empty() ? "a per-key listener's event without an Omnibus-Key header"
                                       : "key '" + to_text(env->key) + "' belongs to partition " +
                                             std::to_string(partition_of(env->key, def.partitions)) + " of " +
                                             std::to_string(def.partitions) + ", not " + std::to_string(p.n) +
                                             " (its subject's): the producer's hash or partition count differs",
                      j.attempt);
      return;
    }
    {
      std::unique_lock park(p.park_mutex);
      if (p.parked.contains(j.key)) {
        set_aside(j, *env, park);
        return;
      }
    }
    {
      std::lock_guard lock(l.mutex);
      j.stop = std::stop_source{};
      j.deadline = clock::now() + def.options.deadline;
    }
    const handler_result result = call_handler(j, *env);
    {
      std::lock_guard lock(l.mutex);
      j.deadline = clock::time_point::max();
      if (j.timed_out) {  // past its deadline, never nak'd (per key): its outcome counts as usual
        j.timed_out = false;
        --l.stuck;
      }
    }
    using kind = handler_result::kind;
    const auto max = static_cast<std::uint64_t>(def.options.retry.max_attempts);
    switch (result.what) {
      case kind::handled:
      case kind::duplicate:
        if (!still_held(j)) {  // the next owner runs it again (an inbox listener: once)
          return_job(j);
          return;
        }
        settle(j, "acking", [](delivery& x) { x.ack(); });
        j.outcome = result.what == kind::handled ? handle_outcome::handled : handle_outcome::skipped;
        (result.what == kind::handled ? stats.handled : stats.duplicates).fetch_add(1, std::memory_order_relaxed);
        if (j.attempt > 1) {
          try {
            db->clear_failure(def.name, env->id.to_string());
          } catch (const std::exception& e) {
            log->warn("listener {}: could not clear the failure history of {}: {}", def.name, env->id.to_string(), e.what());
          }
        }
        return;
      case kind::fenced:
        return_job(j);
        return;
      case kind::settled:
        return;
      case kind::unavailable:
      case kind::in_doubt:
        stats.outage_retries.fetch_add(1, std::memory_order_relaxed);
        retry_locally(j, opts.outage_retry, false, result.error);
        return;
      case kind::deferred:
        stats.deferred.fetch_add(1, std::memory_order_relaxed);
        retry_locally(j, opts.newer_version_delay, false, result.error);
        return;
      case kind::permanent:
        exhaust(j, *env, result.error, "permanent");
        return;
      case kind::failed:
        log->warn("listener {}: {} {} (key {}) attempt {}/{} failed: {}", def.name, env->name, env->id.to_string(),
                  to_text(j.key), j.attempt, max, result.error);
        if (j.attempt >= max) {
          exhaust(j, *env, result.error, "handler_failed");
          return;
        }
        try {
          db->record_failure(def.name, env->id.to_string(), result.error);
        } catch (const std::exception& e) {
          log->warn("listener {}: could not record the failure of {}: {}", def.name, env->id.to_string(), e.what());
        }
        stats.failed.fetch_add(1, std::memory_order_relaxed);
        retry_locally(j, retry_delay(def.options.retry, j.attempt, unit_random()), true, result.error);
        return;
    }
  }

  // Runs `j` again after `delay`, holding it (in progress) meanwhile: its key waits behind it.
  // finish_keyed() files it once its slot is done with it (or returns it: shutdown, lease gone).
  void retry_locally(job& j, std::chrono::milliseconds delay, bool spend, const std::string& why) {
    j.outcome = handle_outcome::retry;
    j.error = why;
    if (spend) ++j.attempt;
    std::lock_guard lock(j.l->mutex);
    j.retry_at = clock::now() + delay;
    j.wants_retry = true;
  }

  // Attempts ran out (or can never succeed): the key parks at this event, or, by the listener's
  // policy, the event is dead-lettered and the key goes on.
  void exhaust(job& j, const envelope& env, const std::string& error, const char* reason) {
    const async_listener& def = *j.l->def;
    partition_state& p = *j.part;
    if (!def.options.park_when_exhausted) {
      dead_letter_now(j, reason, error, j.attempt);
      return;
    }
    std::unique_lock park(p.park_mutex);
    if (!write_parked(j, env, error, park)) return;
    p.parked.insert(j.key);
    park.unlock();
    settle(j, "acking a parked", [](delivery& x) { x.ack(); });
    j.outcome = handle_outcome::parked;
    j.error = error;
    stats.parked.fetch_add(1, std::memory_order_relaxed);
    log->error("listener {}: key {} parked at {} {} after {} attempt(s): {}. Its later events wait in {}.bus_parked_events "
               "until `omnibus-worker parked retry {} {}` (or skip, or discard); other keys go on",
               def.name, to_text(j.key), env.name, env.id.to_string(), j.attempt, error, bus.options().schema, def.name,
               to_text(j.key));
  }

  // An event of a parked key: set aside behind the key's first, in order (park held).
  void set_aside(job& j, const envelope& env, std::unique_lock<std::mutex>& park) {
    if (!write_parked(j, env, "", park)) return;
    park.unlock();
    settle(j, "acking a set-aside", [](delivery& x) { x.ack(); });
    j.outcome = handle_outcome::parked;
    stats.set_aside.fetch_add(1, std::memory_order_relaxed);
  }

  // Writes `j` to its key's parked events (park held). False when it did not: the lease is
  // lost (returned), or the store failed (retried here, park released).
  bool write_parked(job& j, const envelope& env, const std::string& error, std::unique_lock<std::mutex>& park) {
    const async_listener& def = *j.l->def;
    detail::stored_event ev;
    ev.stream_sequence = j.d->stream_sequence();
    ev.event_id = env.id.to_string();
    ev.msg = j.d->msg();
    ev.attempts = static_cast<int>(std::min<std::uint64_t>(j.attempt, std::numeric_limits<int>::max()));
    try {
      if (db->park_event(def.name, j.key, j.part->n, worker_id, j.epoch, env.name, ev, error)) return true;
      park.unlock();
      return_job(j);
    } catch (const std::exception& e) {
      park.unlock();
      log->warn("listener {}: cannot set {} aside for parked key {}: {}; retrying", def.name, ev.event_id,
                to_text(j.key), e.what());
      retry_locally(j, opts.fetch_retry, false, e.what());
    }
    return false;
  }

  // An operator's request for a parked key, carried out by the partition's holder: its events
  // run again in stream order (a skip drops the first); new events of the key are set aside
  // behind them meanwhile; the key is released when none is left, in the transaction that
  // finds none. A failure parks the key again where it failed.
  void run_drain(job& j) {
    listener_state& l = *j.l;
    partition_state& p = *j.part;
    const async_listener& def = *l.def;
    std::string action = j.drain;
    try {
      while (!shutting_down && still_held(j)) {
        if (action == "discard") {
          std::lock_guard park(p.park_mutex);
          const std::int64_t n = db->discard_parked_key(def.name, j.key);
          p.parked.erase(j.key);
          log->warn("listener {}: parked key {} discarded by an operator ({} event(s) dropped)", def.name,
                    to_text(j.key), n);
          break;
        }
        std::optional<detail::stored_event> ev = db->first_parked_event(def.name, j.key);
        if (!ev) {
          std::lock_guard park(p.park_mutex);
          if (!db->release_parked_key(def.name, j.key)) continue;  // one was set aside meanwhile
          p.parked.erase(j.key);
          log->info("listener {}: key {} released: its parked events ran in order; live events go on", def.name,
                    to_text(j.key));
          break;
        }
        if (action == "skip") {
          db->drop_parked_event(def.name, j.key, ev->stream_sequence, true);
          stats.skipped.fetch_add(1, std::memory_order_relaxed);
          log->warn("listener {}: parked event {} of key {} skipped by an operator", def.name, ev->event_id,
                    to_text(j.key));
          action = "retry";
          continue;
        }
        {
          std::lock_guard lock(l.mutex);  // the monitor reads j.d under it
          j.d = std::make_unique<stored_delivery>(ev->msg, ev->stream_sequence, static_cast<std::uint64_t>(ev->attempts) + 1);
          j.attempt = static_cast<std::uint64_t>(ev->attempts) + 1;
        }
        detail::settle_decision first = detail::before_handler(j.d->msg(), j.d->header_error(),
                                                               bus.options().stream.subject_prefix, bus.options().max_body_bytes);
        handler_result result{handler_result::kind::permanent, first.error};
        if (first.what == detail::settle_decision::action::run) {
          {
            std::lock_guard lock(l.mutex);
            j.stop = std::stop_source{};
            j.deadline = clock::now() + def.options.deadline;
          }
          result = call_handler(j, first.env);
          std::lock_guard lock(l.mutex);
          j.deadline = clock::time_point::max();
          if (j.timed_out) {
            j.timed_out = false;
            --l.stuck;
          }
        }
        if (result.what == handler_result::kind::handled || result.what == handler_result::kind::duplicate) {
          db->drop_parked_event(def.name, j.key, ev->stream_sequence, false);
          stats.handled.fetch_add(1, std::memory_order_relaxed);
          l.calls_handled.fetch_add(1, std::memory_order_relaxed);
          continue;
        }
        if (result.what == handler_result::kind::fenced) break;
        l.calls_failed.fetch_add(1, std::memory_order_relaxed);
        db->repark_key(def.name, j.key, ev->stream_sequence, result.error, action);
        log->error("listener {}: retrying parked key {} failed at event {}: {}; the key stays parked there", def.name,
                   to_text(j.key), ev->event_id, result.error);
        break;
      }
    } catch (const std::exception& e) {  // the request stays: the next heartbeat starts it again
      log->warn("listener {}: carrying out {} of parked key {} failed: {}", def.name, j.drain, to_text(j.key), e.what());
    }
    std::lock_guard settled(j.settle_mutex);
    j.settled = true;
  }

  // After a slot ran a per-key job: unless it waits for a local retry, its key's next event
  // may run.
  void finish_keyed(const std::shared_ptr<job>& j) {
    listener_state& l = *j->l;
    partition_state& p = *j->part;
    bool settled = false;
    {
      std::lock_guard lock(j->settle_mutex);
      settled = j->settled;
    }
    if (!settled) {
      {
        std::lock_guard lock(l.mutex);
        const bool retry = j->wants_retry;
        j->wants_retry = false;
        if (retry && !shutting_down && p.epoch == j->epoch) {
          l.retrying.push_back(j);  // still its key's front; the monitor runs it again when due
          return;
        }
      }
      return_job(*j);  // shutting down, or the lease is gone: back, for the next holder
    }
    std::vector<std::shared_ptr<job>> run, back;
    {
      std::lock_guard lock(l.mutex);
      --l.in_flight;
      --p.held;
      if (j->timed_out) --l.stuck;
      l.jobs.erase(j->self);
      if (!j->drain.empty()) {
        p.draining.erase(j->key);
      } else {
        p.sequences.erase(j->d->stream_sequence());
        if (auto it = p.keys.find(j->key); !j->key.empty() && it != p.keys.end()) {
          if (!it->second.empty() && it->second.front() == j) it->second.pop_front();
          if (it->second.empty()) {
            p.keys.erase(it);
          } else if (shutting_down) {
            back.assign(it->second.begin(), it->second.end());
            p.keys.erase(it);
          } else {
            run.push_back(it->second.front());
          }
        }
      }
    }
    for (auto& b : back) {  // at shutdown: the key's waiting events go back, unstarted
      (void)settle(*b, "returning", [](delivery& x) { x.nak(std::chrono::milliseconds(0)); });
      unhold(l, b);
    }
    if (!run.empty()) l.slots->push(run);
    l.slot_freed.notify_all();
  }

  // Every heartbeat: renew, hand back what is drained, claim up to this worker's share, and
  // start the drains operators asked for.
  void lease_loop(std::stop_token stop) {
    std::vector<std::string> warned(listeners.size());
    do {
      for (std::size_t i = 0; i < listeners.size(); ++i) {
        if (listeners[i]->def->per_key()) heartbeat(*listeners[i], warned[i]);
      }
    } while (detail::wait_for(stop, opts.partition_heartbeat));
  }

  void heartbeat(listener_state& l, std::string& warned) {
    const async_listener& def = *l.def;
    std::vector<std::pair<int, std::uint64_t>> release;
    {
      std::lock_guard lock(l.mutex);
      for (auto& p : l.parts) {
        // Closed (its pull requests ended: close_partition clears open_epoch after that wait),
        // or never opened.
        if (p->releasing && p->epoch != 0 && !p->cons && p->held == 0 && p->open_epoch == 0) {
          release.emplace_back(p->n, p->epoch);
        }
      }
    }
    const auto began = clock::now();
    detail::lease_round round;
    try {
      round = db->lease_partitions(def.name, def.partitions, worker_id, l.lease, release);
      if (!warned.empty()) log->info("listener {}: renewing its partition leases again", def.name);
      warned.clear();
    } catch (const std::exception& e) {
      if (warned != e.what()) {
        log->warn("listener {}: cannot renew its partition leases: {}; its partitions stop {} ms after the last renewal",
                  def.name, e.what(), l.lease.count());
      }
      warned = e.what();
      std::vector<std::shared_ptr<job>> back;
      {
        std::lock_guard lock(l.mutex);
        if (clock::now() >= l.valid_until) {
          for (auto& p : l.parts) {
            if (p->epoch != 0) lose(l, *p, back);
          }
        }
      }
      give_back_all(l, back);
      l.slot_freed.notify_all();
      return;
    }
    std::vector<std::shared_ptr<job>> back;
    {
      std::lock_guard lock(l.mutex);
      l.valid_until = began + l.lease;
      for (const auto& [n, epoch] : release) {
        partition_state& p = *l.parts[static_cast<std::size_t>(n)];
        if (p.epoch != epoch) continue;
        p.epoch = 0;
        p.releasing = false;
        log->info("listener {}: partition {} handed back (epoch {})", def.name, n, epoch);
      }
      std::vector<bool> held(l.parts.size(), false);
      for (const auto& [n, epoch] : round.held) {
        partition_state& p = *l.parts[static_cast<std::size_t>(n)];
        held[static_cast<std::size_t>(n)] = true;
        if (p.epoch == epoch) continue;
        if (p.epoch != 0) lose(l, p, back);  // taken and given back to us meanwhile: start anew
        p.epoch = epoch;                     // its fetcher opens it
        p.releasing = false;
      }
      int count = 0;
      for (auto& p : l.parts) {
        if (p->epoch != 0 && !held[static_cast<std::size_t>(p->n)]) lose(l, *p, back);
        if (p->epoch != 0) ++count;
      }
      // Above its share (another worker came): hand back the highest partitions once drained.
      for (auto it = l.parts.rbegin(); it != l.parts.rend(); ++it) {
        partition_state& p = **it;
        if (p.epoch == 0) continue;
        if (count > round.share) {
          if (!p.releasing) log->info("listener {}: handing partition {} back ({} held, share {})", def.name, p.n, count,
                                      round.share);
          p.releasing = true;
          --count;
        } else if (p.releasing && p.cons) {
          p.releasing = false;  // the share grew again before it closed
        }
      }
    }
    give_back_all(l, back);
    l.slot_freed.notify_all();
    try {
      for (const detail::key_request& r : db->key_requests(def.name)) start_drain(l, r);
    } catch (const std::exception& e) {
      log->warn("listener {}: cannot read requests for parked keys: {}", def.name, e.what());
    }
  }

  // Under l.mutex: `p` is no longer ours. What waits for a local retry runs now (and goes
  // back, its lease gone) rather than at its time: the next owner gathers it.
  // Everything of it that is not running goes back (`back`, nak'd and let go by the caller
  // outside the mutex): the next holder gathers it. What runs goes back when it ends.
  void lose(listener_state& l, partition_state& p, std::vector<std::shared_ptr<job>>& back) {
    log->warn("listener {}: partition {} (epoch {}) is no longer held by this worker", l.def->name, p.n, p.epoch);
    p.epoch = 0;
    p.releasing = false;
    ++p.generation;
    std::erase_if(l.retrying, [&](const std::shared_ptr<job>& j) {
      if (j->part != &p) return false;
      back.push_back(j);  // a front waiting for its retry: its queue goes below
      return true;
    });
    for (auto it = p.keys.begin(); it != p.keys.end();) {
      auto& q = it->second;
      // The rest of each queue goes back; a front that runs (or waits on a slot) stays until it
      // ends (finish_keyed returns it), a front that waited for its retry went above.
      for (std::size_t i = 1; i < q.size(); ++i) back.push_back(q[i]);
      if (!q.empty() && std::find(back.begin(), back.end(), q.front()) == back.end()) {
        q.resize(1);
        ++it;
      } else {
        it = p.keys.erase(it);
      }
    }
    for (auto& j : p.gathered) back.push_back(j);
    p.gathered.clear();
    p.gathering = false;
  }

  void give_back_all(listener_state& l, std::vector<std::shared_ptr<job>>& back) {
    for (auto& j : back) {
      (void)settle(*j, "returning", [](delivery& x) { x.nak(std::chrono::milliseconds(0)); });
      unhold(l, j);
    }
    back.clear();
  }

  void start_drain(listener_state& l, const detail::key_request& r) {
    if (r.partition < 0 || static_cast<std::size_t>(r.partition) >= l.parts.size()) return;
    partition_state& p = *l.parts[static_cast<std::size_t>(r.partition)];
    auto j = std::make_shared<job>();
    {
      std::lock_guard lock(l.mutex);
      if (p.epoch == 0 || !p.cons || p.gathering || p.releasing || p.draining.contains(r.key)) return;
      j->l = &l;
      j->part = &p;
      j->epoch = p.epoch;
      j->key = r.key;
      j->drain = r.action;
      j->deadline = clock::time_point::max();
      j->last_progress = clock::now();
      p.draining.insert(r.key);
      ++p.held;
      ++l.in_flight;
      j->self = l.jobs.insert(l.jobs.end(), j);
    }
    log->info("listener {}: carrying out {} of parked key {}", l.def->name, r.action, to_text(r.key));
    std::vector<std::shared_ptr<job>> run{j};
    l.slots->push(run);
  }

  // The monitor's part for per-key listeners: local retries that are due run again.
  void due_retries(listener_state& l, clock::time_point now) {
    std::vector<std::shared_ptr<job>> run;
    {
      std::lock_guard lock(l.mutex);
      std::erase_if(l.retrying, [&](const std::shared_ptr<job>& j) {
        if (j->retry_at > now || shutting_down) return false;  // at shutdown return_waiting has them
        run.push_back(j);
        return true;
      });
    }
    if (!run.empty()) l.slots->push(run);
  }

  // At shutdown, before the slots' queues are emptied: every per-key event that waits (behind
  // its key, for a retry, or gathered) goes back unstarted.
  void return_waiting(listener_state& l) {
    std::vector<std::shared_ptr<job>> back;
    {
      std::lock_guard lock(l.mutex);
      for (auto& j : l.retrying) back.push_back(j);
      l.retrying.clear();
      for (auto& p : l.parts) {
        for (auto& j : p->gathered) back.push_back(j);
        p->gathered.clear();
        for (auto& [key, q] : p->keys) {
          // The front runs (or is queued on a slot); a retrying front is in `back` already.
          for (std::size_t i = 1; i < q.size(); ++i) back.push_back(q[i]);
          q.resize(1);
        }
      }
    }
    for (auto& j : back) {
      {
        std::lock_guard lock(l.mutex);
        if (auto it = j->part->keys.find(j->key); it != j->part->keys.end() && !it->second.empty() &&
                                                  it->second.front() == j) {
          j->part->keys.erase(it);  // a retrying front: its tail went above
        }
      }
      (void)settle(*j, "returning", [](delivery& x) { x.nak(std::chrono::milliseconds(0)); });
      unhold(l, j);
    }
  }

  // At shutdown, once nothing runs: the consumers close, their open requests end, and the
  // partitions are handed back at once (the others need not wait for the leases to expire).
  void leave_partitions(listener_state& l) {
    std::vector<std::pair<int, std::uint64_t>> release;
    for (auto& p : l.parts) {
      std::lock_guard lock(l.mutex);
      if (p->cons) p->cons->give_back();
    }
    std::this_thread::sleep_for(opts.fetch_wait + std::chrono::milliseconds(500));
    {
      std::lock_guard lock(l.mutex);
      for (auto& p : l.parts) {
        if (p->cons) p->cons->give_back();
        p->cons.reset();
        if (p->epoch != 0 && p->held == 0) release.emplace_back(p->n, p->epoch);
      }
    }
    try {
      db->leave_partitions(l.def->name, worker_id, release);
    } catch (const std::exception& e) {
      log->warn("listener {}: could not hand its partitions back ({}); the others take them when the leases expire",
                l.def->name, e.what());
    }
  }

  // Restarts `j`'s AckWait (in progress) unless it was settled meanwhile. Under l.mutex.
  void signal_progress(listener_state& l, job& j, clock::time_point now) {
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

  // Signals progress for long handlers, and enforces deadlines. Returns the name of a listener
  // whose every slot has been stuck for db_wait, or "".
  std::string monitor() {
    const auto now = clock::now();
    for (auto& lp : listeners) {
      listener_state& l = *lp;
      const auto progress_every = std::max<clock::duration>(l.def->options.ack_wait / 4, opts.tick);
      if (l.def->per_key()) due_retries(l, now);
      std::lock_guard lock(l.mutex);
      for (const auto& jp : l.jobs) {
        job& j = *jp;
        if (j.part != nullptr) {
          if (!j.drain.empty()) continue;  // a parked key's drain: its events are in PostgreSQL
          if (!j.timed_out && now >= j.deadline) {
            // Per key: never nak'd (its key's next event would overtake it); asked to stop, and
            // its outcome, whenever it comes, counts. It stays in progress meanwhile.
            j.timed_out = true;
            ++l.stuck;
            stats.timed_out.fetch_add(1, std::memory_order_relaxed);
            j.stop.request_stop();
            log->warn("listener {}: a handler call of key {} passed its {} ms deadline; asked to stop", l.def->name,
                      to_text(j.key), l.def->options.deadline.count());
          }
          // A job of a partition lost here is left to expire: the next holder gathers it.
          if (now - j.last_progress >= progress_every && j.part->epoch == j.epoch) signal_progress(l, j, now);
          continue;
        }
        if (j.timed_out) continue;
        if (now >= j.deadline) {
          j.timed_out = true;
          ++l.stuck;
          l.read_ahead = 0;  // a handler past its deadline: fetch only what the slots run
          l.mean_call_us = 0;
          l.slot_freed.notify_one();  // fewer usable slots: the fetcher may refill sooner
          stats.timed_out.fetch_add(1, std::memory_order_relaxed);
          const auto attempt = j.d->delivery_count();
          const auto delay = retry_delay(l.def->options.retry, attempt, unit_random());
          if (settle(j, "naking a timed-out", [&](delivery& x) { x.nak(delay); })) {
            // Settled by the deadline, not by the handler: a failure, for the breaker. (A job the
            // handler settled just before is the handler's to judge.)
            if (!j.judged.exchange(true)) l.gate->on_result(true, j.trial, "passed its deadline", now);
            log->warn("listener {}: event {} attempt {} passed its {} ms deadline; retrying in {} ms", l.def->name,
                      event_id_of(*j.d), attempt, l.def->options.deadline.count(), delay.count());
          }
          j.stop.request_stop();
        } else if (now - j.last_progress >= progress_every) {
          signal_progress(l, j, now);
        }
      }
      // Every slot stuck for db_wait on end: hung handlers. Less is a database outage's passing
      // block (a handler waits at most db_wait for a pooled connection, then fails and returns).
      if (l.stuck < l.def->options.concurrency) {
        l.all_stuck_since = {};
      } else if (l.all_stuck_since == clock::time_point{}) {
        l.all_stuck_since = now;
      } else if (now - l.all_stuck_since >= opts.db_wait) {
        return l.def->name;
      }
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

worker_stuck::~worker_stuck() = default;

worker::worker(event_bus& bus, worker_options options, std::shared_ptr<spdlog::logger> log)
    : worker(bus, std::move(options), std::move(log), nullptr) {}

worker::worker(event_bus& bus, worker_options options, std::shared_ptr<spdlog::logger> log,
               std::unique_ptr<detail::store> store)
    : impl_(std::make_unique<impl>(bus, std::move(options), std::move(log), std::move(store))) {
  if (!impl_->log) throw std::invalid_argument("omnibus::worker needs a logger");
  if (!impl_->db && impl_->opts.database_url.empty()) {
    throw std::invalid_argument("omnibus::worker needs a database_url (dead letters live there)");
  }
  if (bus.target() == nullptr) throw std::invalid_argument("omnibus::worker needs a bus with a queue");
}

worker::~worker() {
  // After an abandoned shutdown a listener's slots may be stuck in handlers: never join those
  // (their threads keep the pool alive). The other listeners' slots have ended: joined here.
  if (!impl_->shutting_down) return;
  for (auto& l : impl_->listeners) {
    std::lock_guard lock(l->mutex);
    if (l->in_flight > 0) (void)l->slots.release();
  }
}

const worker_stats& worker::stats() const noexcept { return impl_->stats; }

std::vector<listener_report> worker::listener_states() const {
  std::vector<listener_report> out;
  if (!impl_->gates_ready.load(std::memory_order_acquire)) return out;
  for (const auto& l : impl_->listeners) {
    const detail::flow_report r = l->gate->report();
    out.push_back({l->def->name, impl_->worker_id, detail::to_string(r.state), r.reason, r.since, {}});
  }
  return out;
}

namespace {

std::size_t handler_slots(const event_bus& bus) {
  std::size_t slots = 0;
  for (const async_listener& l : bus.async_listeners()) slots += static_cast<std::size_t>(l.options.concurrency);
  return slots;
}

bool any_inbox(const event_bus& bus) {
  for (const async_listener& l : bus.async_listeners()) {
    if (l.options.inbox) return true;
  }
  return false;
}

// Everything that can be checked before the worker touches a server.
void validate(const event_bus& bus, const worker_options& o) {
  const auto positive = [](std::chrono::milliseconds d, const char* name) {
    if (d.count() <= 0) throw std::invalid_argument(std::string("worker_options::") + name + " must be positive");
  };
  positive(o.fetch_wait, "fetch_wait");
  positive(o.tick, "tick");
  positive(o.db_wait, "db_wait");
  positive(o.parked_poll, "parked_poll");
  positive(o.fetch_retry, "fetch_retry");
  positive(o.flush_timeout, "flush_timeout");
  positive(o.control_poll, "control_poll");
  positive(o.outage_retry, "outage_retry");
  if (o.outage_retry_max < o.outage_retry) {
    throw std::invalid_argument("worker_options::outage_retry_max must be at least outage_retry");
  }
  positive(o.stream_check_every, "stream_check_every");
  if (o.shutdown_grace.count() < 0) throw std::invalid_argument("worker_options::shutdown_grace must not be negative");
  if (o.read_ahead_window.count() < 0) {
    throw std::invalid_argument("worker_options::read_ahead_window must not be negative (0: no read-ahead)");
  }
  positive(o.partition_heartbeat, "partition_heartbeat");
  if (o.partition_lease < 3 * o.partition_heartbeat) {
    throw std::invalid_argument("worker_options::partition_lease must be at least three partition_heartbeats");
  }
  if (any_inbox(bus) && o.inbox_retention <= bus.options().stream.max_age) {
    throw std::invalid_argument("worker: inbox_retention must exceed the stream's max_age: while the stream holds an "
                                "event it can be delivered again, and only its inbox row stops a second run");
  }
}

}  // namespace

void worker::run(std::stop_token stop) {
  impl& w = *impl_;
  validate(w.bus, w.opts);
  const std::size_t slots = handler_slots(w.bus);
  if (!w.db) {
    w.db = detail::make_pg_store({w.opts.database_url, w.bus.options().schema,
                                  w.opts.pool_size > 0 ? w.opts.pool_size : std::max<std::size_t>(slots, 1),
                                  w.opts.db_wait, w.opts.inbox_lock_timeout});
  }
  // PostgreSQL restarting just as the worker starts (a deploy, a failover) is waited out, for
  // up to start_wait; unreachable for longer (or a wrong URL), run() throws.
  const auto start_deadline = clock::now() + w.opts.start_wait;
  const auto patiently = [&](const char* step, const char* trouble, const auto& passing, const auto& f) {
    for (bool warned = false;;) {
      try {
        return f();
      } catch (const std::exception& e) {
        if (!passing(e) || clock::now() >= start_deadline || stop.stop_requested()) throw;
        if (!warned) {
          w.log->warn("worker: {}: {} ({}); trying again every 500 ms for up to {} s", step, trouble, e.what(),
                      std::chrono::duration_cast<std::chrono::seconds>(w.opts.start_wait).count());
        }
        warned = true;
        if (!detail::wait_for(stop, std::chrono::milliseconds(500))) throw;
      }
    }
  };
  const auto with_database = [&](const char* step, const auto& f) {
    return patiently(step, "PostgreSQL is unreachable", detail::is_unavailable, f);
  };
  // Right after provision() every consumer exists as configured: failing to open one now is the
  // broker's passing trouble (a cluster electing a leader for it), waited out the same way.
  const auto with_broker = [&](const char* step, const auto& f) {
    return patiently(step, "the broker did not answer", [](const std::exception&) { return true; }, f);
  };
  with_database("migrating", [&] { w.db->migrate(); });
  for (const async_listener& l : w.bus.async_listeners()) {
    if (l.per_key() && !w.db->has_partitions()) {
      throw std::invalid_argument("worker: listener " + l.name + " runs per key, which needs PostgreSQL (partition leases)");
    }
  }
  w.bus.provision();
  const bool prunes = any_inbox(w.bus);
  for (const async_listener& l : w.bus.async_listeners()) {
    auto st = std::make_unique<listener_state>();
    st->def = &l;
    st->gate = std::make_unique<detail::flow_gate>(l.name, l.options, w.log);
    if (l.per_key()) {  // its partitions' consumers open as their leases are claimed
      // Long enough that a handler started just after a renewal ends (by its deadline) while
      // the lease is known valid, with three heartbeats to spare.
      st->lease = std::max<std::chrono::milliseconds>(
          w.opts.partition_lease, l.options.deadline + std::chrono::seconds(1) + 3 * w.opts.partition_heartbeat);
      const std::vector<std::string> names = l.consumer_names();
      for (int p = 0; p < l.partitions; ++p) {
        auto part = std::make_unique<partition_state>();
        part->n = p;
        part->consumer_name = names[static_cast<std::size_t>(p)];
        st->parts.push_back(std::move(part));
      }
    } else {
      st->cons = with_broker("opening consumers",
                             [&] { return w.bus.target()->open_consumer(w.bus.options().stream, l.consumer_name); });
    }
    w.listeners.push_back(std::move(st));
  }
  // Opened before any thread starts: a failure here leaves nothing running.
  std::unique_ptr<consumer> reports;
  if (!w.listeners.empty()) {
    reports = with_broker("opening the reports of abandoned messages",
                          [&] { return w.bus.target()->open_abandoned(w.bus.options().stream, w.bus.options().group); });
  }
  w.gates_ready.store(true, std::memory_order_release);
  // A paused listener does not fetch even once at start.
  with_database("reading which listeners are paused", [&] { (void)w.refresh_controls(); });
  for (auto& l : w.listeners) {
    l->slots = std::make_unique<detail::slot_pool<std::shared_ptr<job>>>(
        static_cast<std::size_t>(std::max(l->def->options.concurrency, 1)), [&w](std::shared_ptr<job>& j) {
          if (j->part != nullptr) {
            w.run_keyed(*j);
            w.finish_keyed(j);
            return;
          }
          w.run_job(*j);
          w.finish(j);
        });
  }
  w.log->info("worker: {} listener(s), {} handler slot(s)", w.listeners.size(), slots);

  // Each stopped through its own token: should anything below throw, unwinding stops and joins
  // them (a token shared from elsewhere would leave the joins waiting forever).
  std::vector<std::jthread> fetchers;
  bool keyed = false;
  for (auto& l : w.listeners) {
    if (l->def->per_key()) {
      keyed = true;
      for (auto& p : l->parts) {
        fetchers.emplace_back([&w, &l, &p](std::stop_token token) { w.keyed_fetch_loop(*l, *p, token); });
      }
      continue;
    }
    fetchers.emplace_back([&w, &l](std::stop_token token) { w.fetch_loop(*l, token); });
  }
  std::jthread lease_keeper;
  if (keyed) lease_keeper = std::jthread([&w](std::stop_token st) { w.lease_loop(st); });

  w.stats.ready = true;
  std::jthread stream_watch([&w](std::stop_token st) { w.watch_stream(st); });
  std::jthread control_watch([&w](std::stop_token st) { w.watch_controls(st); });
  std::jthread report_reader;
  if (reports) report_reader = std::jthread([&w, &reports](std::stop_token st) { w.abandoned_loop(*reports, st); });

  std::string stuck;
  while (!stop.stop_requested() && stuck.empty()) {
    (void)detail::wait_for(stop, w.opts.tick);
    stuck = w.monitor();
    if (prunes) w.prune_inbox();
  }

  // Graceful shutdown (decision 14).
  w.stats.ready = false;
  stream_watch.request_stop();
  control_watch.request_stop();
  control_watch.join();  // its last report must not follow the deletion at the end
  if (report_reader.joinable()) {
    report_reader.request_stop();
    report_reader.join();
  }
  if (lease_keeper.joinable()) {  // no claim or hand-back from here on; the leases stay ours
    lease_keeper.request_stop();
    lease_keeper.join();
  }
  w.shutting_down = true;
  for (auto& f : fetchers) f.request_stop();
  for (auto& l : w.listeners) l->slot_freed.notify_all();
  fetchers.clear();  // joins: no fetch after this
  for (auto& l : w.listeners) {
    if (l->def->per_key()) w.return_waiting(*l);
  }
  // Fetched but not started (waiting for a slot): back at once (decision 14); the slots' threads
  // end after what they run. What the consumers received ahead goes back as they close.
  for (auto& l : w.listeners) {
    for (std::shared_ptr<job>& j : l->slots->take_queued()) {
      (void)w.settle(*j, "returning", [](delivery& x) { x.nak(std::chrono::milliseconds(0)); });
      if (j->part != nullptr) {
        w.finish_keyed(j);  // a drain's job too: settled above, nothing to nak
      } else {
        w.finish(j);
      }
    }
    l->cons.reset();
  }
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
    w.bus.target()->flush(w.opts.flush_timeout);
  } catch (const std::exception& e) {
    w.log->error("worker: flushing acks at shutdown failed: {}", e.what());
  }
  for (auto& l : w.listeners) {
    if (l->def->per_key()) w.leave_partitions(*l);
  }
  if (w.in_flight() == 0) {
    for (auto& l : w.listeners) l->slots->join();
  } else {
    w.log->error("worker: {} handler(s) still running after the shutdown grace; their messages were returned",
                 w.in_flight());
  }
  if (abandoned > 0) w.log->warn("worker: returned {} unfinished message(s) for redelivery", abandoned);
  // The calls made since the control thread's last report (the dashboard's counts), then,
  // only now, with nothing of ours running: a replay reads a worker without reports as done.
  try {
    (void)w.refresh_controls();
  } catch (const std::exception& e) {
    w.log->warn("worker: could not report its last calls: {}", e.what());
  }
  try {
    w.db->forget_states(w.worker_id);
  } catch (const std::exception& e) {  // they age out of `listeners list` anyway
    w.log->warn("worker: could not delete its listener reports: {}", e.what());
  }
  if (!stuck.empty()) {
    throw worker_stuck("every handler slot of listener " + stuck +
                       " is stuck past its deadline; exit so that the supervisor restarts this worker");
  }
  w.log->info("worker: stopped");
}

}  // namespace omnibus
