// Per-key ordering (README "Ordered per key"): workers in this process, a real nats-server
// and PostgreSQL. Each test has its own stream and schema.

#include <algorithm>
#include <atomic>
#include <map>
#include <mutex>
#include <random>
#include <set>

#include <catch2/catch.hpp>

#include "metrics.hpp"
#include "omnibus/bus_state.hpp"
#include "omnibus/listener_control.hpp"
#include "omnibus/parked_keys.hpp"
#include "support/worker_fixture.hpp"
#include "tools/keyed_event.hpp"

using namespace std::chrono_literals;

namespace {

// Watches every handler call: which keys are in flight (a second call of one is an overlap),
// and each key's handled sequence, in the order the calls succeeded.
struct order_watch {
  std::mutex mutex;
  std::set<std::string> running;
  std::map<std::string, std::vector<std::int64_t>> handled;
  std::atomic<long> overlaps{0};
  std::atomic<long> calls{0};

  void enter(const std::string& key) {
    std::lock_guard lock(mutex);
    if (!running.insert(key).second) ++overlaps;
    ++calls;
  }
  void leave(const std::string& key, std::int64_t seq, bool ok) {
    std::lock_guard lock(mutex);
    running.erase(key);
    if (ok) handled[key].push_back(seq);
  }
  long total() {
    std::lock_guard lock(mutex);
    long n = 0;
    for (const auto& [k, v] : handled) n += static_cast<long>(v.size());
    return n;
  }
  // Keys whose handled sequence is not exactly 1..n (n: what was published of it).
  std::vector<std::string> out_of_order(const std::map<std::string, std::int64_t>& published) {
    std::lock_guard lock(mutex);
    std::vector<std::string> bad;
    for (const auto& [key, n] : published) {
      const auto& got = handled[key];
      bool ok = static_cast<std::int64_t>(got.size()) == n;
      for (std::size_t i = 0; ok && i < got.size(); ++i) ok = got[i] == static_cast<std::int64_t>(i) + 1;
      if (!ok) bad.push_back(key);
    }
    return bad;
  }
};

struct keyed_fixture : test_env::worker_fixture {
  using worker_fixture::worker_fixture;
  order_watch watch;
  std::map<std::string, std::int64_t> published;  // key -> its last seq
  std::vector<std::unique_ptr<omnibus::worker>> extra;
  std::vector<std::jthread> extra_runs;

  // Every worker stops before `watch` goes (the base class would stop the first one after).
  ~keyed_fixture() {
    for (auto& r : extra_runs) {
      r.request_stop();
      if (r.joinable()) r.join();
    }
    stop_worker();
  }

  static omnibus::worker_options quick(const std::string& url) {
    omnibus::worker_options wo;
    wo.database_url = url;
    wo.fetch_wait = 200ms;
    wo.partition_lease = 4s;
    wo.partition_heartbeat = 200ms;
    return wo;
  }
  static omnibus::listener_options per_key(int concurrency = 8) {
    omnibus::listener_options o;
    o.order = omnibus::ordering::per_key;
    o.concurrency = concurrency;
    o.deadline = 1s;
    o.retry.max_attempts = 3;
    o.retry.initial = 10ms;
    o.retry.max = 50ms;
    return o;
  }
  // Another worker on this bus, in this process.
  std::size_t add_worker() {
    extra.push_back(std::make_unique<omnibus::worker>(b, quick(where.database_url), log));
    omnibus::worker* wp = extra.back().get();
    extra_runs.emplace_back([wp](std::stop_token st) { wp->run(st); });
    return extra.size() - 1;
  }
  void stop_extra(std::size_t i) {
    extra_runs[i].request_stop();
    extra_runs[i].join();
  }
  void publish_keys(const std::vector<std::string>& keys, int per_key) {
    std::vector<keyed_event> events;
    for (int round = 0; round < per_key; ++round) {
      for (const auto& k : keys) events.push_back({k, ++published[k]});
    }
    omnibus::context ctx;
    REQUIRE(b.publish_batch(ctx, std::span<const keyed_event>(events)).ok());
  }
  std::vector<omnibus::parked_key> parked() { return omnibus::list_parked_keys(db, opts.schema); }
  // omnibus-worker's operator commands on this test's schema and stream.
  std::string cli(std::vector<std::string> args, int want_exit = 0) {
    std::vector<std::string> argv{test_env::tool_path("OMNIBUS_WORKER_BIN"), "--group", opts.group, "--schema", opts.schema,
                                  "--shop-schema", opts.schema + "_shop", "--stream", opts.stream.name,
                                  "--subject-prefix", opts.stream.subject_prefix};
    argv.insert(argv.end(), args.begin(), args.end());
    test_env::child_process p(argv, {"OMNIBUS_NATS_URL=" + where.nats_url, "OMNIBUS_DATABASE_URL=" + where.database_url});
    const int code = p.wait(60s);
    INFO(p.output());
    CHECK(code == want_exit);
    return p.output();
  }
  // What a worker's /metrics says of this bus now (PostgreSQL and the stream read afresh).
  std::string scrape() {
    omnibus::detail::metrics_sources src;
    src.bus = &b;
    src.database_url = where.database_url;
    omnibus::detail::worker_metrics m(src, log, 0ms);
    return m.scrape();
  }
  // The workers' log, for a failing test's report.
  std::string tail_of_logs() {
    const std::string all = logs();
    if (const char* f = std::getenv("OMNIBUS_TEST_LOG_FILE"); f != nullptr) { std::FILE* o = std::fopen(f, "w"); std::fputs(all.c_str(), o); std::fclose(o); }
    return all.size() > 6000 ? all.substr(all.size() - 6000) : all;
  }
};

std::vector<std::string> keys_named(const std::string& stem, int n) {
  std::vector<std::string> out;
  for (int i = 0; i < n; ++i) out.push_back(stem + std::to_string(i));
  return out;
}

}  // namespace

TEST_CASE("per key: each key's events run one at a time in stream order, across three workers, with flaky "
          "handlers and retries", "[per_key]") {
  std::mt19937 random{42};  // before f: the handlers use them until f's workers stop
  std::mutex random_mutex;
  keyed_fixture f;
  f.b.add_async_listener<keyed_event>("ordered", [&](omnibus::context&, const keyed_event& e) {
    f.watch.enter(e.key);
    bool fail = false;
    {
      std::lock_guard lock(random_mutex);
      fail = random() % 20 == 0;  // 5% of attempts fail
    }
    f.watch.leave(e.key, e.seq, !fail);
    if (fail) throw std::runtime_error("flaky");
  }, [] {
    auto o = keyed_fixture::per_key();
    o.retry.max_attempts = 10;  // a key whose event fails 3 times in a row at 5% is not what this tests
    return o;
  }());
  f.start_worker(keyed_fixture::quick(f.where.database_url));
  f.add_worker();
  f.add_worker();
  const auto keys = keys_named("customer-", 50);
  f.publish_keys(keys, 40);  // 2,000 events
  const bool done = test_env::eventually([&] { return f.watch.total() >= 2000; }, 60s);
  INFO(f.tail_of_logs());
  UNSCOPED_INFO("total " << f.watch.total() << " calls " << f.watch.calls);
  for (const auto& key : f.watch.out_of_order(f.published)) {
    std::lock_guard lock(f.watch.mutex);
    std::string seqs;
    for (auto n : f.watch.handled[key]) seqs += std::to_string(n) + " ";
    UNSCOPED_INFO(key << ": " << seqs);
  }
  for (auto* w : {f.w.get(), f.extra[0].get(), f.extra[1].get()}) {
    const auto& st = w->stats();
    UNSCOPED_INFO("handled " << st.handled << " failed " << st.failed << " dead " << st.dead_lettered << " parked "
                             << st.parked << " set_aside " << st.set_aside << " dup " << st.duplicates);
  }
  for (const auto& c : f.js.consumers(f.opts.stream)) {
    UNSCOPED_INFO(c.name << " filter " << c.filter_subject << " pending " << c.pending << " ack_pending " << c.ack_pending
                         << " delivered " << c.delivered_sequence << " floor " << c.ack_floor);
  }
  REQUIRE(done);
  CHECK(f.watch.out_of_order(f.published).empty());
  CHECK(f.watch.overlaps == 0);
  CHECK(f.dead_letters().empty());
  CHECK(f.parked().empty());
  // Once the first worker hands back what it fetched before the others came, every partition
  // is held, by each of the three a share.
  REQUIRE(test_env::eventually([&] {
    std::map<std::string, int> owners;
    const auto leases = omnibus::list_partition_leases(f.db, f.opts.schema);
    for (const auto& l : leases) {
      if (!l.owner.empty() && l.live) ++owners[l.owner];
    }
    return leases.size() == 8 && owners.size() == 3 && owners.begin()->second >= 2;
  }, 30s));
}

TEST_CASE("per key: an exhausted event parks its key, other keys go on; retry runs it and the key's later events in "
          "order while new ones arrive", "[per_key]") {
  std::atomic<bool> poisoned{true};  // before f: the handler reads it until f's workers stop
  keyed_fixture f;
  f.b.add_async_listener<keyed_event>("ordered", [&](omnibus::context&, const keyed_event& e) {
    f.watch.enter(e.key);
    const bool fail = poisoned && e.key == "K" && e.seq == 5;
    f.watch.leave(e.key, e.seq, !fail);
    if (fail) throw std::runtime_error("poison: the fix is not deployed");
  }, keyed_fixture::per_key());
  f.start_worker(keyed_fixture::quick(f.where.database_url));
  auto others = keys_named("other-", 20);
  f.publish_keys({"K"}, 20);
  f.publish_keys(others, 10);
  // The other keys finish; K stops at 4, and 5..20 wait behind it, in order.
  REQUIRE(test_env::eventually([&] { return f.watch.total() >= 4 + 200; }, 30s));
  REQUIRE(test_env::eventually([&] { return f.parked().size() == 1 && f.parked()[0].waiting == 16; }, 30s));
  const omnibus::parked_key k = f.parked()[0];
  CHECK(k.listener == "ordered");
  CHECK(k.key == "K");
  CHECK(k.error.find("poison") != std::string::npos);
  CHECK(k.attempts == 3);
  {
    std::lock_guard lock(f.watch.mutex);
    CHECK(f.watch.handled["K"] == std::vector<std::int64_t>{1, 2, 3, 4});
  }
  // What an operator sees.
  const std::string listed = f.cli({"parked", "list"});
  CHECK(listed.find("ordered key K (partition " + std::to_string(omnibus::partition_of("K", 8)) + "): parked at test.keyed " +
                    k.first_event_id + " after 3 attempt(s): poison: the fix is not deployed; 16 event(s) wait") !=
        std::string::npos);
  CHECK(listed.find("0 parked listener(s), 1 parked key(s)") != std::string::npos);
  // What stats, the metrics and the dashboard count.
  CHECK(omnibus::read_bus_state(f.db, f.opts.schema).parked_keys ==
        std::vector<std::pair<std::string, std::uint64_t>>{{"ordered", 1}});
  CHECK_THAT(f.scrape(), Catch::Contains("omnibus_parked_keys{listener=\"ordered\"} 1\n"));
  CHECK(f.cli({"parked", "retry", "ordered", "nope"}, 1).find("has no parked key nope") != std::string::npos);
  CHECK(f.cli({"partitions"}).find("8 partition(s)") != std::string::npos);
  // New events of K are set aside too; another key's events still run.
  f.publish_keys({"K", "other-0"}, 2);
  REQUIRE(test_env::eventually([&] { return f.parked()[0].waiting == 18; }, 30s));
  // The fix is out: retry, while K's events keep coming.
  poisoned = false;
  CHECK(f.cli({"parked", "retry", "ordered", "K"}).find("retry requested for key K of ordered (18 event(s))") !=
        std::string::npos);
  for (int i = 0; i < 10; ++i) f.publish_keys({"K"}, 3);
  REQUIRE(test_env::eventually([&] { return f.parked().empty(); }, 30s));
  f.publish_keys({"K"}, 5);
  REQUIRE(test_env::eventually([&] { return f.watch.out_of_order(f.published).empty(); }, 30s));
  CHECK(f.published["K"] == 57);
  CHECK(f.watch.overlaps == 0);
  CHECK(f.dead_letters().empty());
  CHECK(f.logs().find("key K parked at") != std::string::npos);
}

TEST_CASE("per key: skip drops the failed event and releases the rest in order; discard drops them all",
          "[per_key]") {
  std::atomic<bool> poisoned{true};  // before f: the handler reads it until f's workers stop
  keyed_fixture f;
  f.b.add_async_listener<keyed_event>("ordered", [&](omnibus::context&, const keyed_event& e) {
    f.watch.enter(e.key);
    const bool fail = poisoned && e.seq == 2;
    f.watch.leave(e.key, e.seq, !fail);
    if (fail) throw omnibus::permanent_error("never valid");
  }, keyed_fixture::per_key());
  f.start_worker(keyed_fixture::quick(f.where.database_url));
  f.publish_keys({"A", "B"}, 5);
  REQUIRE(test_env::eventually([&] { return f.parked().size() == 2; }, 30s));
  REQUIRE(test_env::eventually([&] {
    const auto p = f.parked();
    return p.size() == 2 && p[0].waiting == 4 && p[1].waiting == 4;
  }, 30s));
  CHECK(f.parked()[0].attempts == 1);  // permanent: no retries
  poisoned = false;
  CHECK_FALSE(omnibus::request_parked_key_action(f.db, f.opts.schema, "ordered", "nope", "skip"));
  CHECK_THROWS_AS(omnibus::request_parked_key_action(f.db, f.opts.schema, "ordered", "A", "explode"),
                  std::invalid_argument);
  REQUIRE(omnibus::request_parked_key_action(f.db, f.opts.schema, "ordered", "A", "skip"));
  CHECK(f.cli({"parked", "discard", "ordered", "B"}, 2).find("would drop the 4 parked event(s) of key B") !=
        std::string::npos);
  // Without --yes nothing was asked: B is still parked with all it held (A's skip may be done
  // by now: the worker carries it out while the command runs).
  const auto after_dry = f.parked();
  CHECK(std::any_of(after_dry.begin(), after_dry.end(),
                    [](const omnibus::parked_key& p) { return p.key == "B" && p.waiting == 4 && p.action.empty(); }));
  CHECK(f.cli({"parked", "discard", "ordered", "B", "--yes"}).find("discard requested for key B") != std::string::npos);
  REQUIRE(test_env::eventually([&] { return f.parked().empty(); }, 30s));
  f.publish_keys({"A", "B"}, 1);
  REQUIRE(test_env::eventually([&] {
    std::lock_guard lock(f.watch.mutex);
    return f.watch.handled["A"].size() == 5 && f.watch.handled["B"].size() == 2;
  }, 30s));
  std::lock_guard lock(f.watch.mutex);
  CHECK(f.watch.handled["A"] == std::vector<std::int64_t>{1, 3, 4, 5, 6});
  CHECK(f.watch.handled["B"] == std::vector<std::int64_t>{1, 6});
}

TEST_CASE("per key: rebalancing from one worker to four and back to two under load; leases never overlap, order "
          "holds, throughput rises", "[per_key]") {
  keyed_fixture f;
  f.b.add_async_listener<keyed_event>("ordered", [&](omnibus::context&, const keyed_event& e) {
    f.watch.enter(e.key);
    // The handler's work: I/O-bound and long beside the bus's own cost per event, so that more
    // workers drain faster even when the sanitizers slow everything else (4 ms was too short
    // for that: four sanitized workers on two cores ran out of CPU first).
    std::this_thread::sleep_for(40ms);  // simulated work, not a wait
    f.watch.leave(e.key, e.seq, true);
  }, keyed_fixture::per_key(2));
  f.start_worker(keyed_fixture::quick(f.where.database_url));
  const auto keys = keys_named("k", 200);
  const auto rate_over = [&](std::chrono::milliseconds window) {
    const long before = f.watch.total();
    const auto t0 = std::chrono::steady_clock::now();
    (void)test_env::eventually([&] { return std::chrono::steady_clock::now() - t0 >= window; }, window + 1s);
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    return static_cast<double>(f.watch.total() - before) / seconds;
  };
  f.publish_keys(keys, 15);  // 3,000 events: a backlog for every phase (about 50 a second per worker)
  REQUIRE(test_env::eventually([&] { return f.watch.total() > 50; }, 30s));
  const double one = rate_over(2s);
  for (int i = 0; i < 3; ++i) f.add_worker();
  // The newcomers get their share within a few heartbeats.
  REQUIRE(test_env::eventually([&] {
    std::set<std::string> owners;
    for (const auto& l : omnibus::list_partition_leases(f.db, f.opts.schema)) owners.insert(l.owner);
    return owners.size() == 4 && !owners.contains("");
  }, 20s));
  const double four = rate_over(2s);
  INFO("handled when measured: " << f.watch.total() << " of 3,000");
  CHECK(f.watch.total() < 3000);  // the rate measured the workers, not the end of the backlog
  f.stop_extra(0);
  f.stop_extra(1);
  f.publish_keys(keys, 2);
  REQUIRE(test_env::eventually([&] { return f.watch.out_of_order(f.published).empty(); }, 120s));
  std::printf("per_key rebalance: %.0f events/s with one worker, %.0f with four\n", one, four);
  CHECK(four > one * 1.5);
  CHECK(f.watch.overlaps == 0);
  // The audit: each partition's epochs follow one another, each claimed only after the one
  // before was handed back or its owner's membership ran out.
  pqxx::nontransaction q{f.db};
  const auto overlaps = q.exec(
      "SELECT a.partition, a.epoch FROM \"" + f.opts.schema + "\".bus_partition_lease_log a JOIN \"" + f.opts.schema +
      "\".bus_partition_lease_log b ON b.listener = a.listener AND b.partition = a.partition AND b.epoch = a.epoch + 1 "
      "WHERE b.claimed_at < coalesce(a.released_at, b.previous_expired_at, 'infinity')");
  for (const auto& r : q.exec("SELECT partition, epoch, owner, claimed_at, released_at, previous_expired_at FROM \"" +
                              f.opts.schema + "\".bus_partition_lease_log ORDER BY partition, epoch")) {
    UNSCOPED_INFO(r[0].c_str() << " " << r[1].c_str() << " " << r[2].c_str() << " " << r[3].c_str() << " "
                               << r[4].c_str() << " " << r[5].c_str());
  }
  CHECK(overlaps.empty());
  const long claims = q.exec1("SELECT count(*) FROM \"" + f.opts.schema + "\".bus_partition_lease_log")[0].as<long>();
  CHECK(claims >= 8 + 6);  // the first claims, then moves to the newcomers and back
}

TEST_CASE("per key: events that age out before a paused per-key listener handled them are counted lost, each "
          "partition's, and summed per listener", "[per_key][lost]") {
  test_env::servers short_lived = test_env::servers::shared();
  short_lived.stream_max_age = 2s;
  keyed_fixture f{short_lived};
  f.b.add_async_listener<keyed_event>("ordered", [&](omnibus::context&, const keyed_event& e) {
    f.watch.enter(e.key);
    f.watch.leave(e.key, e.seq, true);
  }, keyed_fixture::per_key());
  f.b.provision();
  REQUIRE(omnibus::pause_listener(f.db, f.opts.schema, "ordered", "lost events test"));
  auto wo = keyed_fixture::quick(f.where.database_url);
  wo.control_poll = 100ms;
  wo.stream_check_every = 200ms;
  f.start_worker(wo);
  // Paused, and holding every partition (the loss check reads the partitions a worker holds).
  REQUIRE(test_env::eventually([&] { return f.reported("ordered", "paused"); }, 10s));
  REQUIRE(test_env::eventually([&] {
    int held = 0;
    for (const auto& l : omnibus::list_partition_leases(f.db, f.opts.schema)) held += l.live ? 1 : 0;
    return held == 8;
  }, 20s));

  const auto keys = keys_named("c-", 20);
  f.publish_keys(keys, 2);  // 40 events over the partitions
  std::set<int> partitions;
  for (const auto& k : keys) partitions.insert(omnibus::partition_of(k, 8));
  REQUIRE(test_env::eventually([&] { return f.js.state(f.opts.stream)->messages == 0; }, 30s));  // max_age took them
  const auto lost = [&] {
    std::uint64_t n = 0;
    for (const auto& r : omnibus::list_lost_events(f.db, f.opts.schema, false)) n += r.listener == "ordered" ? r.events : 0;
    return n;
  };
  const bool found = test_env::eventually([&] { return lost() >= 40; }, 10s);
  INFO(f.tail_of_logs());
  REQUIRE(found);
  CHECK(lost() == 40);
  std::set<std::string> consumers;
  for (const auto& r : omnibus::list_lost_events(f.db, f.opts.schema, true)) consumers.insert(r.consumer);
  CHECK(consumers.size() == partitions.size());  // one record (or more) per partition that had events
  for (const auto& c : consumers) CHECK(c.rfind("g_ordered_k", 0) == 0);
  CHECK(f.watch.total() == 0);
  CHECK(test_env::eventually([&] { return f.w->stats().lost_events.load() == 40; }, 10s));
  CHECK_THAT(f.logs(), Catch::Contains("listener ordered (partition consumer g_ordered_k"));
  // The metrics sum the partitions.
  const std::string metrics = f.scrape();
  CHECK_THAT(metrics, Catch::Contains("omnibus_events_lost{listener=\"ordered\"} 40\n"));
  CHECK_THAT(metrics, Catch::Contains("omnibus_events_lost_unacknowledged{listener=\"ordered\"} 40\n"));
}
