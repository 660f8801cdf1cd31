// The worker: drain rate, publish-to-handler latency, and memory over a million messages.

#include <algorithm>
#include <cstdlib>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include <nats/nats.h>
#include <pqxx/pqxx>

#include "bench_support.hpp"
#include "bench_world.hpp"
#include "metrics.hpp"
#include "omnibus/bus_state.hpp"
#include "omnibus/codec.hpp"
#include "omnibus/envelope.hpp"
#include "omnibus/relay.hpp"
#include "omnibus/worker.hpp"

namespace bench {
namespace {

std::int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now().time_since_epoch()).count();
}

void publish_events(world& w, long count) {
  omnibus::context ctx;
  std::vector<payload> chunk(10000, payload{});
  for (long done = 0; done < count; done += static_cast<long>(chunk.size())) {
    if (!w.bus->publish_batch(ctx, std::span<const payload>(chunk)).ok()) throw std::runtime_error("publish_batch failed");
  }
}

long vm_hwm_kb() {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("VmHWM:", 0) == 0) return std::stol(line.substr(6));
  }
  return -1;
}

omnibus::worker_options worker_opts() {
  omnibus::worker_options wo;
  wo.database_url = env("OMNIBUS_DATABASE_URL");
  return wo;
}

// Events per second a worker drains: `n` events waiting for one no-op listener with options
// `lo`; `prepare(world, worker)` runs before provisioning (to add an observer, say).
template <class F>
double drain_rate(const std::string& stem, const omnibus::listener_options& lo, long n, F&& prepare) {
  world w{stem};
  std::atomic<long> handled{0};
  w.bus->add_async_listener<payload>("noop", [&](omnibus::context&, const payload&) { handled.fetch_add(1); }, lo);
  omnibus::worker worker{*w.bus, worker_opts(), w.log};
  prepare(w, worker);
  w.bus->provision();
  publish_events(w, n);
  const auto t = clock::now();
  std::jthread run([&](std::stop_token st) { worker.run(st); });
  await([&] { return handled.load() >= n; }, "the worker to drain");
  const double rate = static_cast<double>(n) / seconds_since(t);
  run.request_stop();
  return rate;
}


// A NATS.c connection and JetStream context of the baselines' own.
struct raw_client {
  natsConnection* nc = nullptr;
  jsCtx* js = nullptr;
  raw_client() {
    if (natsConnection_ConnectTo(&nc, env("OMNIBUS_NATS_URL").c_str()) != NATS_OK) throw std::runtime_error("connect");
    natsConnection_JetStream(&js, nc, nullptr);
  }
  ~raw_client() {
    jsCtx_Destroy(js);
    natsConnection_Destroy(nc);
  }
  raw_client(const raw_client&) = delete;
  raw_client& operator=(const raw_client&) = delete;
};

// The raw baseline: a durable pull consumer from the start of `w`'s stream, Fetch(256) +
// natsMsg_Ack, until `n` messages came; messages per second.
double raw_drain_rate(world& w, long n) {
  raw_client raw;
  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Stream = w.opts.stream.name.c_str();
  so.Config.DeliverPolicy = js_DeliverAll;
  so.Config.AckPolicy = js_AckExplicit;
  natsSubscription* sub = nullptr;
  const std::string subject = w.opts.stream.subject_prefix + ".>";
  if (js_PullSubscribe(&sub, raw.js, subject.c_str(), "raw_baseline", nullptr, &so, nullptr) != NATS_OK) {
    throw std::runtime_error("js_PullSubscribe");
  }
  long got = 0;
  const auto t = clock::now();
  while (got < n) {
    natsMsgList list{};
    static const int batch = std::getenv("OMNIBUS_BENCH_BASELINE_BATCH") ? std::atoi(std::getenv("OMNIBUS_BENCH_BASELINE_BATCH")) : 256;
    if (natsSubscription_Fetch(&list, sub, batch, 5000, nullptr) != NATS_OK) throw std::runtime_error("Fetch");
    for (int i = 0; i < list.Count; ++i) natsMsg_Ack(list.Msgs[i], nullptr);
    got += list.Count;
    natsMsgList_Destroy(&list);
  }
  const double rate = static_cast<double>(n) / seconds_since(t);
  natsSubscription_Destroy(sub);
  return rate;
}

// The raw publish baseline: `n` copies of one encoded event, js_PublishMsgAsync pipelined
// (NATS.c's default window), then every PubAck awaited; messages per second.
double raw_publish_rate(world& w, long n) {
  raw_client raw;
  omnibus::envelope env;
  env.name = payload::name;
  env.version = 1;
  env.body = omnibus::detail::encode_body(payload{});
  env.id = omnibus::event_id::generate();
  const omnibus::message m = omnibus::encode(env, w.opts.stream.subject_prefix);
  const auto t = clock::now();
  for (long i = 0; i < n; ++i) {
    natsMsg* msg = nullptr;
    natsMsg_Create(&msg, m.subject.c_str(), nullptr, m.body.data(), static_cast<int>(m.body.size()));
    for (const auto& [k, v] : m.headers) {
      if (k != "Nats-Msg-Id") natsMsgHeader_Add(msg, k.c_str(), v.c_str());  // no dedup window lookups
    }
    if (js_PublishMsgAsync(raw.js, &msg, nullptr) != NATS_OK) throw std::runtime_error("js_PublishMsgAsync");
  }
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MaxWait = 60000;
  if (js_PublishAsyncComplete(raw.js, &po) != NATS_OK) throw std::runtime_error("js_PublishAsyncComplete");
  return static_cast<double>(n) / seconds_since(t);
}

}  // namespace

void bench_drain() {
  constexpr long n = 100000;
  world w{"drain"};
  std::atomic<long> handled{0};
  omnibus::listener_options lo;
  // The listener's defaults (4 slots; the worker reads ahead for fast handlers), unless
  // OMNIBUS_BENCH_CONCURRENCY says otherwise.
  if (const char* conc = std::getenv("OMNIBUS_BENCH_CONCURRENCY")) lo.concurrency = std::atoi(conc);
  w.bus->add_async_listener<payload>("noop", [&](omnibus::context&, const payload&) { handled.fetch_add(1); }, lo);
  w.bus->provision();
  publish_events(w, n);
  omnibus::worker worker{*w.bus, worker_opts(), w.log};
  auto t = clock::now();
  std::jthread run([&](std::stop_token st) { worker.run(st); });
  await([&] { return handled.load() >= n; }, "the worker to drain");
  const double ours = n / seconds_since(t);
  run.request_stop();
  run.join();

  const double base = raw_drain_rate(w, n);
  line("worker_drain_noop_handler", ours, "msg/s", base, ours / base, ">=", 0.7);
}

// The worker's Prometheus metrics on the hot path: the same drain with and without them,
// interleaved; and what one scrape of 50 listeners costs against the server round trips it
// cannot avoid (50 consumer infos, the stream's state, one read of the tables).
void bench_metrics() {
  constexpr long n = 50000;
  auto drain = [&](bool with_metrics) {
    omnibus::listener_options lo;
    lo.concurrency = 256;
    return drain_rate(with_metrics ? "mon" : "moff", lo, n, [&](world& w, omnibus::worker& worker) {
      if (!with_metrics) return;
      w.bus->add_observer(std::make_shared<omnibus::detail::worker_metrics>(
          omnibus::detail::metrics_sources{w.bus.get(), &w.conn, env("OMNIBUS_DATABASE_URL"), &worker.stats(), &worker, nullptr},
          w.log));
    });
  };
  std::vector<double> off, on;
  for (int round = 0; round < 3; ++round) {
    off.push_back(drain(false));
    on.push_back(drain(true));
  }
  line("worker_drain_with_metrics", median(on), "msg/s", median(off), median(on) / median(off), ">=", 0.95);

  world w{"scrape"};
  for (int i = 0; i < 50; ++i) {
    w.bus->add_async_listener<payload>("listener" + std::to_string(i), [](omnibus::context&, const payload&) {});
  }
  w.bus->provision();
  omnibus::detail::worker_metrics metrics{
      {w.bus.get(), &w.conn, env("OMNIBUS_DATABASE_URL"), nullptr, nullptr}, w.log, std::chrono::milliseconds(0)};
  std::vector<double> scrape_ms, base_ms;
  for (int round = 0; round < 7; ++round) {
    auto t = clock::now();
    if (metrics.scrape().find("omnibus_consumer_pending{listener=\"listener49\"}") == std::string::npos) {
      throw std::runtime_error("a scrape without listener49");
    }
    scrape_ms.push_back(seconds_since(t) * 1000);
    t = clock::now();
    (void)w.js.state(w.opts.stream);
    for (const auto& l : w.bus->async_listeners()) (void)w.js.info(w.opts.stream, l.consumer_name);
    (void)omnibus::read_bus_state(w.db, w.opts.schema);
    base_ms.push_back(seconds_since(t) * 1000);
  }
  line("scrape_50_listeners", median(scrape_ms), "ms", median(base_ms), median(scrape_ms) / median(base_ms), "<=", 50);
}

// Flow control configured but not limiting (a breaker that never trips, a rate limit far above
// the drain rate): the same drain with and without it, interleaved.
void bench_flow() {
  constexpr long n = 50000;
  auto drain = [&](bool with_flow) {
    omnibus::listener_options lo;
    lo.concurrency = 256;
    if (with_flow) {
      lo.breaker.enabled = true;
      lo.rate.per_second = 1e7;
    }
    return drain_rate(with_flow ? "flowon" : "flowoff", lo, n, [](world&, omnibus::worker&) {});
  };
  std::vector<double> off, on;
  for (int round = 0; round < 3; ++round) {
    off.push_back(drain(false));
    on.push_back(drain(true));
  }
  line("worker_drain_with_flow_control", median(on), "msg/s", median(off), median(on) / median(off), ">=", 0.95);
}

namespace {

// Publish-to-handler latency at `per_second` events/s for `seconds` s, one event per publish
// (through the outbox: one event per transaction, the relay running): the 99th percentile, ms.
double latency_p99(bool through_outbox, int per_second, int seconds) {
  world w{through_outbox ? "latout" : "latdir"};
  std::mutex m;
  std::vector<double> ms;
  w.bus->add_async_listener<payload>("timer", [&](omnibus::context&, const payload& e) {
    const double d = static_cast<double>(now_ns() - e.sent_ns) / 1e6;
    std::lock_guard lock(m);
    ms.push_back(d);
  });
  w.bus->provision();
  auto wo = worker_opts();
  wo.fetch_wait = std::chrono::milliseconds(1000);
  omnibus::worker worker{*w.bus, wo, w.log};
  std::jthread run([&](std::stop_token st) { worker.run(st); });
  std::optional<omnibus::relay> relay;
  if (through_outbox) {
    relay.emplace(w.js, w.relay_options(), w.log);
    relay->start();
  }
  const auto publish = [&](const payload& e) {
    if (through_outbox) {
      pqxx::work tx{w.db};
      omnibus::context ctx{tx};
      w.bus->publish(ctx, e);
      tx.commit();
    } else {
      omnibus::context ctx;
      w.bus->publish(ctx, e);
    }
  };
  // Warm up: one event end to end, so that start-up is not measured as latency.
  {
    payload warm;
    warm.sent_ns = now_ns();
    publish(warm);
    await([&] {
      std::lock_guard lock(m);
      return !ms.empty();
    }, "the warm-up event");
    std::lock_guard lock(m);
    ms.clear();
  }
  const int n = per_second * seconds;
  const auto gap = std::chrono::nanoseconds(1'000'000'000 / per_second);
  auto next = clock::now();
  for (int i = 0; i < n; ++i) {
    next += gap;
    std::this_thread::sleep_until(next);  // pace the publisher
    payload e;
    e.n = i;
    e.sent_ns = now_ns();
    publish(e);
  }
  await([&] {
    std::lock_guard lock(m);
    return ms.size() >= static_cast<std::size_t>(n);
  }, "every latency event", std::chrono::seconds(30));
  if (relay) relay->stop();
  run.request_stop();
  run.join();
  std::sort(ms.begin(), ms.end());
  return ms[ms.size() * 99 / 100];
}

}  // namespace

void bench_latency(bool through_outbox) {
  const double p99 = latency_p99(through_outbox, 1000, 5);
  const double budget = through_outbox ? 25.0 : 10.0;
  line(through_outbox ? "latency_p99_through_outbox_1000_per_s" : "latency_p99_direct_1000_per_s", p99, "ms", budget,
       p99 / budget, "<=", 1);
}

// Omnibus's row of the peers table (tests/bench/peers, `scripts/bench peers`): the same job the
// peer programs run, printed in their line format. "direct": events published straight to the
// stream; "outbox": committed through the outbox (batches of 1,000 per transaction) and sent on
// by the relay, drained from commit to handled. Also raw NATS.c, the floor under both.
void bench_peers() {
  const long n = std::getenv("PEERS_EVENTS") != nullptr ? std::atol(std::getenv("PEERS_EVENTS")) : 100000;
  const int per_second = std::getenv("PEERS_RATE") != nullptr ? std::atoi(std::getenv("PEERS_RATE")) : 1000;
  const int seconds = std::getenv("PEERS_SECONDS") != nullptr ? std::atoi(std::getenv("PEERS_SECONDS")) : 5;
  constexpr int tx_clients = 4;
  constexpr long tx_count = 10000;

  // BEGIN; INSERT a business row; publish one event; COMMIT: 4 clients, the relay running.
  const auto tx_rate = [&](world& w) {
    const std::string business = "\"" + w.opts.schema + "\".business";
    {
      pqxx::work tx{w.db};
      tx.exec0("CREATE TABLE IF NOT EXISTS " + business + " (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n bigint NOT NULL)");
      tx.commit();
    }
    omnibus::relay relay{w.js, w.relay_options(), w.log};
    relay.start();
    const auto t = clock::now();
    {
      std::vector<std::jthread> clients;
      for (int c = 0; c < tx_clients; ++c) {
        clients.emplace_back([&] {
          pqxx::connection db{env("OMNIBUS_DATABASE_URL")};
          const payload e{};
          for (long i = 0; i < tx_count / tx_clients; ++i) {
            pqxx::work tx{db};
            tx.exec_params0("INSERT INTO " + business + " (n) VALUES ($1)", i);
            omnibus::context ctx{tx};
            w.bus->publish(ctx, e);
            tx.commit();
          }
        });
      }
    }
    const double rate = static_cast<double>(tx_count) / seconds_since(t);
    await([&] { return w.outbox_rows() == 0; }, "the relay to empty the outbox");
    relay.stop();
    return rate;
  };

  double direct_enqueue = 0, direct_drain = 0, tx = 0;
  {
    world w{"peerdir"};
    std::atomic<long> handled{0};
    w.bus->add_async_listener<payload>("noop", [&](omnibus::context&, const payload&) { handled.fetch_add(1); });
    w.bus->provision();
    auto t = clock::now();
    publish_events(w, n);
    direct_enqueue = static_cast<double>(n) / seconds_since(t);
    omnibus::worker worker{*w.bus, worker_opts(), w.log};
    t = clock::now();
    {
      std::jthread run([&](std::stop_token st) { worker.run(st); });
      await([&] { return handled.load() >= n; }, "the worker to drain");
      direct_drain = static_cast<double>(n) / seconds_since(t);
    }
  }
  double outbox_enqueue = 0, outbox_drain = 0;
  {
    world w{"peerout"};
    std::atomic<long> handled{0};
    w.bus->add_async_listener<payload>("noop", [&](omnibus::context&, const payload&) { handled.fetch_add(1); });
    w.bus->provision();
    const std::vector<payload> chunk(1000, payload{});
    auto t = clock::now();
    for (long done = 0; done < n; done += static_cast<long>(chunk.size())) {
      pqxx::work tx{w.db};
      omnibus::context ctx{tx};
      (void)w.bus->publish_batch(ctx, std::span<const payload>(chunk));
      tx.commit();
    }
    outbox_enqueue = static_cast<double>(n) / seconds_since(t);
    omnibus::relay relay{w.js, w.relay_options(), w.log};
    omnibus::worker worker{*w.bus, worker_opts(), w.log};
    t = clock::now();
    relay.start();
    {
      std::jthread run([&](std::stop_token st) { worker.run(st); });
      await([&] { return handled.load() >= n; }, "the relay and the worker to drain");
      outbox_drain = static_cast<double>(n) / seconds_since(t);
    }
    relay.stop();
    tx = tx_rate(w);
  }
  double raw_publish = 0, raw_drain = 0;
  {
    world w{"peerraw"};
    w.bus->provision();
    raw_publish = raw_publish_rate(w, n);
    raw_drain = raw_drain_rate(w, n);
  }
  const double direct_p99 = latency_p99(false, per_second, seconds);
  const double outbox_p99 = latency_p99(true, per_second, seconds);
  std::printf("peer: system=omnibus setting=direct version=%s enqueue_per_s=%.1f drain_per_s=%.1f p99_ms=%.2f "
              "tx_enqueue_per_s=%.1f\n",
              OMNIBUS_BENCH_VERSION, direct_enqueue, direct_drain, direct_p99, tx);
  std::printf("peer: system=omnibus setting=outbox version=%s enqueue_per_s=%.1f drain_per_s=%.1f p99_ms=%.2f "
              "tx_enqueue_per_s=%.1f\n",
              OMNIBUS_BENCH_VERSION, outbox_enqueue, outbox_drain, outbox_p99, tx);
  std::printf("peer: system=raw-nats setting=NATS.c version=%s enqueue_per_s=%.1f drain_per_s=%.1f p99_ms=- "
              "tx_enqueue_per_s=-\n",
              nats_GetVersion(), raw_publish, raw_drain);
  std::fflush(stdout);
}

// In a child process of its own (so that its high-water mark is the worker's alone): drain
// 1,000,000 messages with a no-op listener, reading VmHWM after 100,000 and at the end.
int memory_child() {
  constexpr long total = 1000000;
  world w{"mem"};
  std::atomic<long> handled{0};
  omnibus::listener_options lo;
  lo.concurrency = 64;
  w.bus->add_async_listener<payload>("noop", [&](omnibus::context&, const payload&) { handled.fetch_add(1); }, lo);
  w.bus->provision();
  publish_events(w, 100000);
  omnibus::worker worker{*w.bus, worker_opts(), w.log};
  std::jthread run([&](std::stop_token st) { worker.run(st); });
  await([&] { return handled.load() >= 100000; }, "100,000 handled");
  const long at_100k = vm_hwm_kb();
  publish_events(w, total - 100000);
  await([&] { return handled.load() >= total; }, "1,000,000 handled", std::chrono::seconds(300));
  const long at_1m = vm_hwm_kb();
  run.request_stop();
  run.join();
  const double budget = 1.1 * static_cast<double>(at_100k);
  line("worker_peak_rss_1m_vs_100k", static_cast<double>(at_1m), "KiB", budget, static_cast<double>(at_1m) / budget, "<=", 1);
  return 0;
}

}  // namespace bench
