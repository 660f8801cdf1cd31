// The worker runtime without servers: the memory queue for the stream and an in-memory store
// for PostgreSQL's side. Each step of a delivery (admit, hold while parked, call, settle) is
// observable in the store and the worker's counters. The same paths run against the real
// servers in tests/integration/worker_test.cpp.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include "omnibus/error.hpp"
#include "omnibus/event.hpp"
#include "omnibus/event_bus.hpp"
#include "omnibus/memory_queue.hpp"
#include "omnibus/observer.hpp"
#include "omnibus/queue.hpp"
#include "omnibus/worker.hpp"
#include "support/memory_store.hpp"
#include "support/wait.hpp"

namespace {

using namespace std::chrono_literals;
using test_env::eventually;

struct parcel_sent {
  static constexpr std::string_view name = "test.parcel_sent";
  static constexpr int version = 1;
  std::int64_t parcel = 0;
  OMNIBUS_FIELDS(parcel);
};

// A cooperative long handler's work: it goes on until the worker requests stop (its deadline).
void work_until_stopped(const omnibus::context& c) {
  std::mutex m;
  std::condition_variable_any stopped;
  std::unique_lock lock(m);
  stopped.wait(lock, c.stop_token(), [] { return false; });
}

omnibus::listener_options quick(int attempts) {
  omnibus::listener_options o;
  o.concurrency = 2;
  o.retry.max_attempts = attempts;
  o.retry.initial = 1ms;
  o.retry.max = 5ms;
  o.deadline = 5s;
  return o;
}

struct runtime {
  omnibus::memory_queue q;
  omnibus::event_bus bus{q, [] {
                           omnibus::bus_options o;
                           o.group = "rt";
                           o.stream.subject_prefix = "rt";
                           return o;
                         }()};
  std::shared_ptr<test_env::store_state> store = std::make_shared<test_env::store_state>();
  std::unique_ptr<omnibus::worker> w;
  std::jthread thread;
  std::exception_ptr failure;
  omnibus::context ctx;

  static omnibus::worker_options fast() {
    omnibus::worker_options o;
    o.fetch_wait = 20ms;
    o.tick = 5ms;
    o.parked_poll = 5ms;
    o.fetch_retry = 5ms;
    o.control_poll = 10ms;
    o.shutdown_grace = 2s;
    return o;
  }

  void start(omnibus::worker_options o = fast()) {
    bus.provision();
    auto log = std::make_shared<spdlog::logger>("runtime_test", std::make_shared<spdlog::sinks::null_sink_mt>());
    w = std::make_unique<omnibus::worker>(bus, o, log, std::make_unique<test_env::memory_store>(store));
    thread = std::jthread([this](std::stop_token st) {
      try {
        w->run(st);
      } catch (...) {
        failure = std::current_exception();
      }
    });
  }
  void stop() {
    if (!thread.joinable()) return;
    thread.request_stop();
    thread.join();
  }
  ~runtime() { stop(); }

  [[nodiscard]] const omnibus::worker_stats& stats() const { return w->stats(); }

  // Until the worker is past its start-up reads of the store (the last is its first state
  // report, right before it starts fetching): a store taken down earlier catches the worker
  // starting, which then waits for the store instead of handling anything.
  void wait_started() const {
    REQUIRE(eventually([&] { return store->locked([&] { return !store->reports.empty(); }); }, 10s));
  }

  // Options whose outages are held for a millisecond or two between calls.
  static omnibus::worker_options quick_outages() {
    auto o = fast();
    o.outage_retry = 1ms;
    o.outage_retry_max = 2ms;
    return o;
  }
};

}  // namespace

TEST_CASE_METHOD(runtime, "a handled event is acked and leaves nothing in the store", "[runtime]") {
  std::atomic<std::int64_t> seen{0};
  std::atomic<std::uint64_t> attempt{0};
  bus.add_async_listener<parcel_sent>("tracker", [&](omnibus::context& c, const parcel_sent& e) {
    attempt = c.attempt();
    seen = e.parcel;
  }, quick(3));
  start();
  const auto id = bus.publish(ctx, parcel_sent{7});
  REQUIRE(eventually([&] { return stats().handled == 1; }, 5s));
  CHECK(seen == 7);
  CHECK(attempt == 1);
  CHECK(store->locked([&] { return store->failures.empty() && store->letters.empty(); }));
  stop();
  CHECK_FALSE(failure);
  CHECK(store->migrations == 1);
  CHECK(q.info(bus.options().stream, "rt_tracker")->ack_pending == 0);
  (void)id;
}

TEST_CASE_METHOD(runtime, "a failing handler is retried, its failures recorded, then dead-lettered", "[runtime]") {
  std::atomic<int> calls{0};
  bus.add_async_listener<parcel_sent>("tracker", [&](omnibus::context&, const parcel_sent&) {
    ++calls;
    throw std::runtime_error("carrier down");
  }, quick(3));
  start();
  const auto id = bus.publish(ctx, parcel_sent{1});
  REQUIRE(eventually([&] { return stats().dead_lettered == 1; }, 5s));
  CHECK(calls == 3);
  CHECK(stats().failed == 2);
  store->locked([&] {
    REQUIRE(store->letters.size() == 1);
    const omnibus::dead_letter& dl = store->letters.front();
    CHECK(dl.listener == "tracker");
    CHECK(dl.event_id == id.to_string());
    CHECK(dl.event_name == "test.parcel_sent");
    CHECK(dl.reason == "handler_failed");
    CHECK(dl.error == "carrier down");
    CHECK(dl.attempts == 3);
    CHECK(store->failures.empty());  // the letter replaces the history
    return 0;
  });
}

TEST_CASE_METHOD(runtime, "a success on a later attempt clears the failure history", "[runtime]") {
  std::atomic<int> calls{0};
  bus.add_async_listener<parcel_sent>("tracker", [&](omnibus::context&, const parcel_sent&) {
    if (++calls == 1) throw std::runtime_error("once");
  }, quick(3));
  start();
  bus.publish(ctx, parcel_sent{1});
  REQUIRE(eventually([&] { return stats().handled == 1; }, 5s));
  // Counted as the first attempt is settled, which the retry need not wait for.
  CHECK(eventually([&] { return stats().failed == 1; }, 5s));
  CHECK(eventually([&] { return store->locked([&] { return store->failures.empty(); }); }, 5s));
  CHECK(store->letter_count() == 0);
}

TEST_CASE_METHOD(runtime, "permanent_error dead-letters at once", "[runtime]") {
  bus.add_async_listener<parcel_sent>("tracker", [&](omnibus::context&, const parcel_sent&) {
    throw omnibus::permanent_error("no such parcel");
  }, quick(10));
  start();
  bus.publish(ctx, parcel_sent{1});
  REQUIRE(eventually([&] { return stats().dead_lettered == 1; }, 5s));
  CHECK(stats().failed == 0);
  store->locked([&] {
    CHECK(store->letters.front().reason == "permanent");
    CHECK(store->letters.front().attempts == 1);
    return 0;
  });
}

TEST_CASE_METHOD(runtime, "a body that does not decode becomes a dead letter without reaching the handler", "[runtime]") {
  std::atomic<int> calls{0};
  bus.add_async_listener<parcel_sent>("tracker", [&](omnibus::context&, const parcel_sent&) { ++calls; }, quick(3));
  start();
  omnibus::envelope env;
  env.id = omnibus::event_id::generate();
  env.name = "test.parcel_sent";
  env.version = 1;
  env.body = "\xc1";  // never valid msgpack
  q.publish(omnibus::encode(env, "rt"), 1s);
  REQUIRE(eventually([&] { return stats().dead_lettered == 1; }, 5s));
  CHECK(calls == 0);
  store->locked([&] {
    CHECK(store->letters.front().reason == "malformed_body");
    return 0;
  });
}

TEST_CASE_METHOD(runtime, "while the store is down a dead letter waits; it is written once the store is back", "[runtime]") {
  std::atomic<int> calls{0};
  bus.add_async_listener<parcel_sent>("tracker", [&](omnibus::context&, const parcel_sent&) {
    ++calls;
    throw omnibus::permanent_error("refused");
  }, quick(3));
  start();
  wait_started();
  store->locked([&] { return store->unavailable = true; });
  bus.publish(ctx, parcel_sent{1});
  // The dead letter cannot be written: the message is nak'd, not lost, and comes back.
  REQUIRE(eventually([&] { return calls >= 2; }, 5s));
  CHECK(stats().dead_lettered == 0);
  store->locked([&] { return store->unavailable = false; });
  REQUIRE(eventually([&] { return stats().dead_lettered == 1; }, 5s));
  CHECK(store->letter_count() == 1);
}

TEST_CASE_METHOD(runtime, "a dead letter the store refuses for good is terminated and counted, not retried", "[runtime]") {
  bus.add_async_listener<parcel_sent>("tracker", [&](omnibus::context&, const parcel_sent&) {
    throw omnibus::permanent_error("refused");
  }, quick(3));
  store->refuse_letters = true;
  start();
  bus.publish(ctx, parcel_sent{1});
  REQUIRE(eventually([&] { return stats().unrecorded == 1; }, 5s));
  CHECK(stats().dead_lettered == 0);
  CHECK(eventually([&] { return q.info(bus.options().stream, "rt_tracker")->ack_pending == 0; }, 5s));
}

TEST_CASE_METHOD(runtime, "an inbox listener records what it handles and skips what the inbox holds", "[runtime]") {
  std::atomic<int> calls{0};
  auto o = quick(3);
  o.inbox = true;
  bus.add_async_listener<parcel_sent>("ledger", [&](omnibus::context& c, const parcel_sent&) {
    ++calls;
    CHECK(c.transaction() == nullptr);  // the memory store has no SQL transaction to share
  }, o);
  start();
  const auto first = bus.publish(ctx, parcel_sent{1});
  REQUIRE(eventually([&] { return stats().handled == 1; }, 5s));
  CHECK(store->locked([&] { return store->inbox.contains({"ledger", first.to_string()}); }));

  // An event the inbox already holds (handled by a worker whose ack was lost): not run again.
  omnibus::envelope env;
  env.id = omnibus::event_id::generate();
  env.name = "test.parcel_sent";
  env.version = 1;
  env.body = omnibus::detail::encode_body(parcel_sent{2});
  store->locked([&] { return store->inbox.insert({"ledger", env.id.to_string()}).second; });
  q.publish(omnibus::encode(env, "rt"), 1s);
  REQUIRE(eventually([&] { return stats().duplicates == 1; }, 5s));
  CHECK(calls == 1);
}

TEST_CASE_METHOD(runtime, "an inbox commit of unknown outcome is never acked; the redelivery finds it done", "[runtime]") {
  std::atomic<int> calls{0};
  auto o = quick(5);
  o.inbox = true;
  bus.add_async_listener<parcel_sent>("ledger", [&](omnibus::context&, const parcel_sent&) { ++calls; }, o);
  store->commit_in_doubt = true;
  start();
  bus.publish(ctx, parcel_sent{1});
  REQUIRE(eventually([&] { return stats().in_doubt >= 1; }, 5s));
  store->locked([&] { return store->commit_in_doubt = false; });
  REQUIRE(eventually([&] { return stats().duplicates == 1; }, 5s));
  CHECK(calls == 1);
  CHECK(stats().handled == 0);
}

TEST_CASE_METHOD(runtime, "an ordered listener parks at an exhausted event and an operator's skip moves it on", "[runtime]") {
  std::atomic<int> calls{0};
  auto o = quick(2);
  o.ordered = true;
  bus.add_async_listener<parcel_sent>("sequencer", [&](omnibus::context&, const parcel_sent& e) {
    ++calls;
    if (e.parcel == 1) throw std::runtime_error("stuck");
  }, o);
  start();
  const auto stuck = bus.publish(ctx, parcel_sent{1});
  bus.publish(ctx, parcel_sent{2});
  REQUIRE(eventually([&] { return stats().parked == 1; }, 5s));
  CHECK(store->locked([&] { return store->parked.at("sequencer").event_id == stuck.to_string(); }));
  CHECK(calls == 2);
  CHECK(stats().handled == 0);  // nothing overtakes the parked event

  store->locked([&] { return store->parked.at("sequencer").action = "skip"; });
  REQUIRE(eventually([&] { return stats().skipped == 1 && stats().handled == 1; }, 5s));
  CHECK(store->locked([&] { return store->parked.empty(); }));
  CHECK(store->letter_count() == 0);
}

TEST_CASE_METHOD(runtime, "a handler past its deadline is stopped and its event retried", "[runtime]") {
  std::atomic<int> calls{0};
  auto o = quick(3);
  o.deadline = 50ms;
  bus.add_async_listener<parcel_sent>("slow", [&](omnibus::context& c, const parcel_sent&) {
    if (++calls == 1) {
      work_until_stopped(c);  // a cooperative long handler
      throw std::runtime_error("stopped");
    }
  }, o);
  start();
  bus.publish(ctx, parcel_sent{1});
  REQUIRE(eventually([&] { return stats().timed_out == 1 && stats().handled == 1; }, 5s));
  CHECK(calls == 2);
}

TEST_CASE_METHOD(runtime, "every slot stuck for less than db_wait (a database outage's block) does not stop the worker",
                 "[runtime]") {
  std::atomic<int> calls{0};
  std::atomic<bool> released{false};
  std::mutex m;
  std::condition_variable cv;
  auto o = quick(3);
  o.concurrency = 1;
  o.deadline = 50ms;
  bus.add_async_listener<parcel_sent>("blocked", [&](omnibus::context&, const parcel_sent&) {
    if (++calls == 1) {  // blocked past its deadline, deaf to its stop token, as on a dead connection
      std::unique_lock lock(m);
      cv.wait(lock, [&] { return released.load(); });
    }
  }, o);
  auto opts = fast();
  opts.db_wait = 5s;
  start(opts);
  bus.publish(ctx, parcel_sent{1});
  // Its only slot is stuck from here; it comes back well within db_wait.
  REQUIRE(eventually([&] { return stats().timed_out == 1; }, 5s));
  {
    std::lock_guard lock(m);
    released = true;
  }
  cv.notify_all();
  REQUIRE(eventually([&] { return stats().handled == 1; }, 5s));  // the retry, in the freed slot
  stop();
  CHECK_FALSE(failure);
  CHECK(calls == 2);
}

TEST_CASE_METHOD(runtime, "bad worker options are refused before the store or the queue is touched", "[runtime]") {
  auto o = quick(3);
  o.inbox = true;
  bus.add_async_listener<parcel_sent>("ledger", [](omnibus::context&, const parcel_sent&) {}, o);
  auto opts = fast();
  opts.inbox_retention = std::chrono::duration_cast<std::chrono::seconds>(bus.options().stream.max_age);
  auto log = std::make_shared<spdlog::logger>("runtime_test", std::make_shared<spdlog::sinks::null_sink_mt>());
  omnibus::worker bad{bus, opts, log, std::make_unique<test_env::memory_store>(store)};
  std::stop_source never;
  CHECK_THROWS_WITH(bad.run(never.get_token()), Catch::Contains("inbox_retention must exceed"));
  CHECK(store->migrations == 0);
  CHECK_FALSE(bus.frozen());

  opts = fast();
  opts.tick = 0ms;
  omnibus::worker zero{bus, opts, log, std::make_unique<test_env::memory_store>(store)};
  CHECK_THROWS_WITH(zero.run(never.get_token()), Catch::Contains("tick must be positive"));
}

namespace {

// A memory queue whose first `refusals` open_consumer() calls fail, as a NATS cluster's API does
// for a moment while it elects a consumer's leader.
class slow_to_open final : public omnibus::queue {
 public:
  explicit slow_to_open(int refusals) : refusals_(refusals) {}
  omnibus::memory_queue inner;
  std::atomic<int> refused{0};

  void provision(const omnibus::stream_config& s, std::span<const omnibus::consumer_config> c) override {
    inner.provision(s, c);
  }
  omnibus::publish_ack publish(const omnibus::message& m, std::chrono::milliseconds t) override {
    return inner.publish(m, t);
  }
  std::vector<omnibus::batch_result> publish_batch(std::span<const omnibus::message> m,
                                                   std::chrono::milliseconds t) override {
    return inner.publish_batch(m, t);
  }
  std::unique_ptr<omnibus::consumer> open_consumer(const omnibus::stream_config& s, const std::string& name) override {
    if (refused.load() < refusals_) {
      ++refused;
      throw omnibus::error("opening consumer " + name + ": no leader yet");
    }
    return inner.open_consumer(s, name);
  }
  std::optional<omnibus::consumer_info> info(const omnibus::stream_config& s, const std::string& name) override {
    return inner.info(s, name);
  }
  std::vector<omnibus::consumer_info> consumers(const omnibus::stream_config& s) override { return inner.consumers(s); }
  bool delete_consumer(const omnibus::stream_config& s, const std::string& name) override {
    return inner.delete_consumer(s, name);
  }
  void flush(std::chrono::milliseconds t) override { inner.flush(t); }

 private:
  int refusals_;
};

}  // namespace

TEST_CASE("a worker whose consumers cannot be opened at first waits, up to start_wait, then runs", "[runtime]") {
  auto log = std::make_shared<spdlog::logger>("runtime_test", std::make_shared<spdlog::sinks::null_sink_mt>());
  auto store = std::make_shared<test_env::store_state>();
  omnibus::bus_options bo;
  bo.group = "rt";
  bo.stream.subject_prefix = "rt";
  std::stop_source never;

  SECTION("a passing refusal: the worker starts and handles") {
    slow_to_open q{3};
    omnibus::event_bus bus{q, bo};
    std::atomic<int> handled{0};
    bus.add_async_listener<parcel_sent>("tracker", [&](omnibus::context&, const parcel_sent&) { ++handled; }, quick(3));
    bus.provision();
    omnibus::context ctx;
    (void)bus.publish(ctx, parcel_sent{1});
    omnibus::worker w{bus, runtime::fast(), log, std::make_unique<test_env::memory_store>(store)};
    std::exception_ptr failure;
    std::jthread t([&](std::stop_token st) {
      try {
        w.run(st);
      } catch (...) {
        failure = std::current_exception();
      }
    });
    REQUIRE(eventually([&] { return handled == 1; }, 10s));
    t.request_stop();
    t.join();
    CHECK_FALSE(failure);
    CHECK(q.refused == 3);
  }
  SECTION("refused past start_wait: run() throws what the broker said") {
    slow_to_open q{1'000'000};
    omnibus::event_bus bus{q, bo};
    bus.add_async_listener<parcel_sent>("tracker", [](omnibus::context&, const parcel_sent&) {}, quick(3));
    auto o = runtime::fast();
    o.start_wait = 1200ms;
    omnibus::worker w{bus, o, log, std::make_unique<test_env::memory_store>(store)};
    CHECK_THROWS_WITH(w.run(never.get_token()), Catch::Contains("opening consumer rt_tracker: no leader yet"));
    CHECK(q.refused >= 2);  // tried again (every 500 ms) before giving up
  }
}

namespace {

// Records every hook call as text, in order.
struct recording_observer final : omnibus::observer {
  std::mutex mutex;
  std::vector<std::string> calls;
  void on_publish(std::string_view event, omnibus::publish_path path) override {
    std::lock_guard lock(mutex);
    calls.push_back("publish " + std::string(event) + " " + omnibus::to_string(path));
  }
  void on_handle_start(const omnibus::handle_info& info) override {
    std::lock_guard lock(mutex);
    calls.push_back("start " + std::string(info.listener) + " " + std::to_string(info.attempt) + " " +
                    std::string(info.traceparent));
  }
  void on_handle_end(const omnibus::handle_info& info, omnibus::handle_outcome outcome, std::chrono::nanoseconds took,
                     std::string_view error) override {
    std::lock_guard lock(mutex);
    CHECK(took.count() >= 0);
    calls.push_back("end " + std::string(info.listener) + " " + std::to_string(info.attempt) + " " +
                    omnibus::to_string(outcome) + (error.empty() ? "" : " " + std::string(error)));
  }
  std::vector<std::string> seen() {
    std::lock_guard lock(mutex);
    return calls;
  }
};

struct throwing_observer final : omnibus::observer {
  void on_publish(std::string_view, omnibus::publish_path) override { throw std::runtime_error("observer bug"); }
  void on_handle_start(const omnibus::handle_info&) override { throw std::runtime_error("observer bug"); }
};

}  // namespace

TEST_CASE_METHOD(runtime, "observers see every publish and every attempt's outcome, in order", "[runtime][observer]") {
  auto seen = std::make_shared<recording_observer>();
  bus.add_observer(seen);
  bus.add_observer(std::make_shared<throwing_observer>());  // its exceptions change nothing
  std::atomic<int> calls{0};
  bus.add_async_listener<parcel_sent>("tracker", [&](omnibus::context&, const parcel_sent& e) {
    ++calls;
    if (e.parcel == 1 && calls == 1) throw std::runtime_error("once");
    if (e.parcel == 2) throw omnibus::permanent_error("never");
  }, [] {
    auto o = quick(3);
    o.concurrency = 1;  // one slot: a retry starts only after the previous attempt has ended
    return o;
  }());
  start();
  ctx.meta().traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  bus.publish(ctx, parcel_sent{1});
  REQUIRE(eventually([&] { return stats().handled == 1; }, 5s));
  bus.publish(ctx, parcel_sent{2});
  REQUIRE(eventually([&] { return stats().dead_lettered == 1; }, 5s));
  stop();
  const std::string trace = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
  std::vector<std::string> publishes, handles;
  for (const auto& c : seen->seen()) (c.rfind("publish", 0) == 0 ? publishes : handles).push_back(c);
  CHECK(publishes == std::vector<std::string>(2, "publish test.parcel_sent direct"));
  CHECK(handles == std::vector<std::string>{
                       "start tracker 1 " + trace,
                       "end tracker 1 retry once",
                       "start tracker 2 " + trace,
                       "end tracker 2 handled",
                       "start tracker 1 " + trace,
                       "end tracker 1 dead_letter never",
                   });
  CHECK_THROWS_AS(bus.add_observer(std::make_shared<recording_observer>()), std::logic_error);  // frozen
}

TEST_CASE_METHOD(runtime, "a paused listener fetches nothing, the others go on, and a resume drains it", "[runtime][pause]") {
  std::atomic<int> tracked{0}, bystanders{0};
  bus.add_async_listener<parcel_sent>("tracker", [&](omnibus::context&, const parcel_sent&) { ++tracked; }, quick(3));
  bus.add_async_listener<parcel_sent>("bystander", [&](omnibus::context&, const parcel_sent&) { ++bystanders; }, quick(3));
  store->paused.insert("tracker");  // paused before the worker starts: it never fetches
  start();
  REQUIRE(eventually([&] { return stats().paused_now == 1; }, 5s));
  for (int i = 0; i < 3; ++i) bus.publish(ctx, parcel_sent{i});
  // The bystander handled the same three events: had the tracker been fetching, it would have too.
  REQUIRE(eventually([&] { return bystanders == 3; }, 5s));
  CHECK(tracked == 0);
  CHECK(q.info(bus.options().stream, "rt_tracker")->pending == 3);  // they wait in the stream

  store->locked([&] { return store->paused.erase("tracker"); });
  CHECK(eventually([&] { return tracked == 3 && stats().paused_now == 0; }, 5s));
}

namespace {
// The listener's flow state in the running worker, as `listeners list` shows it.
std::string state_of(const omnibus::worker& w, const std::string& listener) {
  for (const auto& r : w.listener_states()) {
    if (r.listener == listener) return r.state;
  }
  return "";
}
}  // namespace

TEST_CASE_METHOD(runtime, "an outage longer than the retry budget spends no attempts and loses nothing",
                 "[runtime][flow]") {
  std::vector<std::uint64_t> attempts;
  std::mutex m;
  auto o = quick(3);  // the whole retry budget: 3 attempts, milliseconds apart
  o.inbox = true;     // the inbox transaction needs the store: it fails while the store is down
  bus.add_async_listener<parcel_sent>("tracker", [&](omnibus::context& c, const parcel_sent&) {
    std::lock_guard lock(m);
    attempts.push_back(c.attempt());
  }, o);
  auto wo = fast();
  wo.outage_retry = 2ms;
  wo.outage_retry_max = 10ms;
  start(wo);
  wait_started();
  store->locked([&] { return store->unavailable = true; });
  for (int i = 0; i < 5; ++i) bus.publish(ctx, parcel_sent{i});
  // Ten times the retry budget's calls: with attempts spent, every event would be a dead letter.
  REQUIRE(eventually([&] { return stats().outage_retries >= 30; }, 10s));
  CHECK(state_of(*w, "tracker") == "outage");
  CHECK(stats().failed == 0);
  CHECK(stats().dead_lettered == 0);
  store->locked([&] { return store->unavailable = false; });
  REQUIRE(eventually([&] { return stats().handled == 5; }, 10s));
  CHECK(eventually([&] { return state_of(*w, "tracker") == "running"; }, 5s));
  CHECK(store->letter_count() == 0);
  std::lock_guard lock(m);
  CHECK(attempts == std::vector<std::uint64_t>(5, 1));  // each ran once, on its first delivery
}

TEST_CASE_METHOD(runtime, "a handler's transient_error holds the event without spending attempts", "[runtime][flow]") {
  std::atomic<int> calls{0};
  std::atomic<std::uint64_t> last_attempt{0};
  bus.add_async_listener<parcel_sent>("tracker", [&](omnibus::context& c, const parcel_sent&) {
    last_attempt = c.attempt();
    if (++calls <= 6) throw omnibus::transient_error("partner API down");
  }, quick(2));
  start(quick_outages());
  bus.publish(ctx, parcel_sent{1});
  REQUIRE(eventually([&] { return stats().handled == 1; }, 5s));
  CHECK(calls == 7);
  CHECK(last_attempt == 1);
  CHECK(stats().outage_retries == 6);
  CHECK(stats().dead_lettered == 0);
  CHECK(store->locked([&] { return store->failures.empty(); }));
}

TEST_CASE_METHOD(runtime, "a circuit breaker opens after F failures, tries one event after its cool-down, and closes",
                 "[runtime][flow]") {
  std::atomic<bool> healthy{false};
  std::atomic<int> calls{0};
  auto o = quick(50);
  o.concurrency = 1;
  o.retry.initial = 1ms;
  o.retry.max = 1ms;
  o.breaker.enabled = true;
  o.breaker.failures = 3;
  o.breaker.window = 10s;
  o.breaker.cool_down = 300ms;
  bus.add_async_listener<parcel_sent>("partner", [&](omnibus::context&, const parcel_sent&) {
    ++calls;
    if (!healthy) throw std::runtime_error("partner says 503");
  }, o);
  start();
  for (int i = 0; i < 3; ++i) bus.publish(ctx, parcel_sent{i});
  REQUIRE(eventually([&] { return state_of(*w, "partner") == "breaker_open"; }, 5s));
  const auto opened = std::chrono::steady_clock::now();
  CHECK(calls == 3);  // the third failure opened it: no call since
  // The half-open trial comes after the cool-down, alone, fails, and opens the breaker again.
  REQUIRE(eventually([&] { return calls == 4; }, 5s));
  CHECK(std::chrono::steady_clock::now() - opened >= 290ms);
  REQUIRE(eventually([&] { return state_of(*w, "partner") == "breaker_open"; }, 5s));
  CHECK(calls == 4);
  healthy = true;
  // The next trial succeeds and closes it; the rest drains.
  REQUIRE(eventually([&] { return stats().handled == 3; }, 5s));
  CHECK(state_of(*w, "partner") == "running");
  CHECK(stats().dead_lettered == 0);
}

TEST_CASE_METHOD(runtime, "a rate-limited listener fetches one event per token it draws", "[runtime][flow]") {
  std::atomic<int> handled{0};
  auto o = quick(3);
  o.rate.per_second = 100;
  bus.add_async_listener<parcel_sent>("partner", [&](omnibus::context&, const parcel_sent&) { ++handled; }, o);
  store->tokens["partner"] = 2;  // what the shared bucket grants (the memory store's is filled by hand)
  start();
  for (int i = 0; i < 5; ++i) bus.publish(ctx, parcel_sent{i});
  REQUIRE(eventually([&] { return handled == 2 && state_of(*w, "partner") == "rate_limited"; }, 5s));
  CHECK(q.info(bus.options().stream, "rt_partner")->pending == 3);  // the rest wait in the stream
  store->locked([&] { return store->tokens["partner"] = 3; });
  REQUIRE(eventually([&] { return handled == 5; }, 5s));
  CHECK(store->locked([&] { return store->drawn["partner"]; }) == 5);
}

TEST_CASE_METHOD(runtime, "each listener's state reaches the store, and leaves it when the worker stops",
                 "[runtime][flow]") {
  bus.add_async_listener<parcel_sent>("tracker", [&](omnibus::context&, const parcel_sent&) {}, quick(3));
  store->paused.insert("tracker");
  start();
  REQUIRE(eventually([&] {
    return store->locked([&] { return store->reports.size() == 1 && store->reports[0].state == "paused"; });
  }, 5s));
  CHECK(store->locked([&] { return store->reports[0].reason; }) == "paused by a test");
  stop();
  CHECK(store->locked([&] { return store->reports.empty(); }));
}

TEST_CASE_METHOD(runtime, "each listener's handled and failed calls reach the store once each, as deltas",
                 "[runtime][flow]") {
  std::atomic<int> tries{0};
  bus.add_async_listener<parcel_sent>("tracker", [&](omnibus::context&, const parcel_sent&) {}, quick(3));
  bus.add_async_listener<parcel_sent>("flaky", [&](omnibus::context&, const parcel_sent&) {
    if (++tries <= 2) throw std::runtime_error("not yet");
  }, quick(3));
  start();
  for (int i = 0; i < 4; ++i) bus.publish(ctx, parcel_sent{i});
  // Reported every control poll, never twice: the sums are the calls made.
  using calls = std::pair<std::uint64_t, std::uint64_t>;
  REQUIRE(eventually([&] {
    return store->locked([&] { return store->calls["tracker"] == calls{4, 0} && store->calls["flaky"] == calls{4, 2}; });
  }, 5s));
  for (int i = 4; i < 6; ++i) bus.publish(ctx, parcel_sent{i});
  REQUIRE(eventually([&] {
    return store->locked([&] { return store->calls["tracker"].first == 6 && store->calls["flaky"].first == 6; });
  }, 5s));
  CHECK(store->locked([&] { return store->calls["flaky"].second; }) == 2);
}

TEST_CASE_METHOD(runtime, "an event past its deadline in an outage is not called again here; its redelivery is",
                 "[runtime][flow]") {
  std::atomic<int> calls{0};
  auto o = quick(5);
  o.deadline = 50ms;
  bus.add_async_listener<parcel_sent>("partner", [&](omnibus::context& c, const parcel_sent&) {
    if (++calls == 1) {
      work_until_stopped(c);  // the partner hangs until the deadline stops the call,
      throw omnibus::transient_error("partner timed out");  // then it looks like an outage
    }
  }, o);
  start(quick_outages());
  bus.publish(ctx, parcel_sent{1});
  REQUIRE(eventually([&] { return stats().handled == 1; }, 5s));
  CHECK(stats().timed_out == 1);
  CHECK(calls == 2);  // the timed-out call, then the redelivery: never the nak'd one again
  CHECK(eventually([&] { return state_of(*w, "partner") == "running"; }, 5s));
}
