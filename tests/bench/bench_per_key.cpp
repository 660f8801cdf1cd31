// Per-key ordering (README "Ordered per key"): a no-op handler over 1,000 keys, drained by 1, 2
// and 4 workers, against an unordered listener of the same events in the same run; and the
// hand-off from a key's event to its next one, against the same hand-off in an unordered
// listener with one slot.

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <set>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "bench_support.hpp"
#include "bench_world.hpp"
#include "omnibus/listener_control.hpp"
#include "omnibus/parked_keys.hpp"
#include "omnibus/worker.hpp"

namespace bench {
namespace {

struct keyed_payload {
  static constexpr std::string_view name = "bench.keyed";
  static constexpr int version = 1;
  static constexpr int partitions = 16;
  static std::string ordering_key(const keyed_payload& e) { return e.key; }
  std::string key;
  std::int64_t seq = 0;
  std::string text = std::string(40, 'x');
  OMNIBUS_FIELDS(key, seq, text);
};

constexpr long keys = 1000;

void publish_keyed(world& w, long count) {
  omnibus::context ctx;
  std::vector<keyed_payload> chunk;
  for (long i = 0; i < count; ++i) {
    chunk.push_back({"key-" + std::to_string(i % keys), i / keys + 1});
    if (chunk.size() == 10000 || i + 1 == count) {
      if (!w.bus->publish_batch(ctx, std::span<const keyed_payload>(chunk)).ok()) throw std::runtime_error("publish_batch");
      chunk.clear();
    }
  }
}

omnibus::worker_options worker_opts() {
  omnibus::worker_options wo;
  wo.database_url = env("OMNIBUS_DATABASE_URL");
  return wo;
}

// Events per second `workers` workers (in this process) drain: `n` events waiting for one no-op
// listener with `lo`. The workers start first and settle (a per-key listener's partitions
// spread over them); the listener is paused while the events are published, and the time
// runs from its resumption.
double drain(const std::string& stem, const omnibus::listener_options& lo, int workers, long n) {
  world w{stem};
  std::atomic<long> handled{0};
  w.bus->add_async_listener<keyed_payload>("noop", [&](omnibus::context&, const keyed_payload&) { handled.fetch_add(1); },
                                           lo);
  omnibus::worker_options wo = worker_opts();
  wo.control_poll = std::chrono::milliseconds(20);
  std::vector<std::unique_ptr<omnibus::worker>> ws;
  for (int i = 0; i < workers; ++i) ws.push_back(std::make_unique<omnibus::worker>(*w.bus, wo, w.log));
  (void)omnibus::pause_listener(w.db, w.opts.schema, "noop", "benchmark: publishing");
  std::vector<std::jthread> runs;
  for (auto& x : ws) runs.emplace_back([&x](std::stop_token st) { x->run(st); });
  const auto reports = [&] { return omnibus::list_listener_reports(w.db, w.opts.schema, std::chrono::seconds(5)); };
  await([&] { return static_cast<int>(reports().size()) == workers; }, "the workers to start");
  if (lo.order == omnibus::ordering::per_key) {
    await([&] {
      std::set<std::string> owners;
      for (const auto& l : omnibus::list_partition_leases(w.db, w.opts.schema)) {
        if (l.owner.empty()) return false;
        owners.insert(l.owner);
      }
      return static_cast<int>(owners.size()) == workers;
    }, "the partitions to spread over the workers");
  }
  publish_keyed(w, n);
  (void)omnibus::resume_listener(w.db, w.opts.schema, "noop");
  const auto t = clock::now();
  await([&] { return handled.load() >= n; }, "the workers to drain", std::chrono::seconds(300));
  const double rate = static_cast<double>(n) / seconds_since(t);
  for (auto& r : runs) r.request_stop();
  return rate;
}

// For `pairs` keys, two events each published back to back; the first's handler works 2 ms,
// so the second is fetched while it runs. Returns the p99 of (second's start - first's end).
double handoff_p99(const std::string& stem, const omnibus::listener_options& lo, long pairs) {
  world w{stem};
  std::mutex m;
  std::vector<clock::time_point> ended(static_cast<std::size_t>(pairs)), started(static_cast<std::size_t>(pairs));
  std::atomic<long> done{0};
  w.bus->add_async_listener<keyed_payload>("handoff", [&](omnibus::context&, const keyed_payload& e) {
    const auto i = static_cast<std::size_t>(std::stol(e.key.substr(4)));
    if (e.seq == 1) {
      std::this_thread::sleep_for(std::chrono::milliseconds(2));  // the predecessor's work
      std::lock_guard lock(m);
      ended[i] = clock::now();
    } else {
      std::lock_guard lock(m);
      started[i] = clock::now();
    }
    done.fetch_add(1);
  }, lo);
  omnibus::worker worker{*w.bus, worker_opts(), w.log};
  std::jthread run([&](std::stop_token st) { worker.run(st); });
  await([&] { return w.js.consumers(w.opts.stream).size() >= w.bus->consumer_configs().size(); }, "the consumers");
  omnibus::context ctx;
  for (long i = 0; i < pairs; ++i) {
    const std::vector<keyed_payload> two{{"key-" + std::to_string(i), 1}, {"key-" + std::to_string(i), 2}};
    if (!w.bus->publish_batch(ctx, std::span<const keyed_payload>(two)).ok()) throw std::runtime_error("publish_batch");
    await([&] { return done.load() >= 2 * (i + 1); }, "a pair to be handled");
  }
  run.request_stop();
  std::vector<double> gaps;
  for (long i = 0; i < pairs; ++i) {
    gaps.push_back(std::max(0.0, std::chrono::duration<double, std::micro>(started[static_cast<std::size_t>(i)] -
                                                                           ended[static_cast<std::size_t>(i)]).count()));
  }
  std::sort(gaps.begin(), gaps.end());
  return gaps[gaps.size() * 99 / 100];
}

}  // namespace

void bench_per_key() {
  constexpr long n = 100000;
  omnibus::listener_options unordered;
  omnibus::listener_options per_key;
  per_key.order = omnibus::ordering::per_key;
  if (wanted("per_key_drain")) {
    const double base = drain("pkbase", unordered, 1, n);
    for (int workers : {1, 2, 4}) {
      const double ours = drain("pk" + std::to_string(workers), per_key, workers, n);
      line("per_key_drain_noop_1000_keys_" + std::to_string(workers) + "_worker" + (workers > 1 ? "s" : ""), ours,
           "msg/s", base, ours / base, ">=", workers == 1 ? 0.7 : 0.0);
    }
  }
  if (wanted("per_key_handoff")) {
    omnibus::listener_options one;  // the same hand-off in a queue with one slot
    one.concurrency = 1;
    const double base = handoff_p99("hobase", one, 500);
    const double ours = handoff_p99("hokeyed", per_key, 500);
    line("per_key_handoff_p99", ours, "us", base, ours / base, "<=", 0.0);
  }
}

}  // namespace bench
