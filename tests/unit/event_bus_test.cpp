#include <atomic>
#include <limits>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "omnibus/event.hpp"
#include "omnibus/event_bus.hpp"
#include "omnibus/memory_queue.hpp"
#include "support/wait.hpp"

namespace {

struct note_taken {
  static constexpr std::string_view name = "test.note_taken";
  static constexpr int version = 1;
  static constexpr bool local_only = true;
  int n = 0;
  OMNIBUS_FIELDS(n);
};

struct other_note {  // a second type claiming note_taken's name
  static constexpr std::string_view name = "test.note_taken";
  static constexpr int version = 1;
  static constexpr bool local_only = true;
  int n = 0;
  OMNIBUS_FIELDS(n);
};

struct shipped {  // leaves the process: needs a queue
  static constexpr std::string_view name = "test.shipped";
  static constexpr int version = 1;
  int n = 0;
  OMNIBUS_FIELDS(n);
};

struct listener_failed : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace

TEST_CASE("sync listeners run in registration order, and the first that throws stops the rest", "[bus]") {
  omnibus::event_bus b;
  std::vector<std::string> ran;
  b.add_sync_listener<note_taken>([&](omnibus::context&, const note_taken& e) { ran.push_back("first " + std::to_string(e.n)); });
  b.add_sync_listener<note_taken>([&](omnibus::context&, const note_taken&) {
    ran.push_back("second");
    throw listener_failed("out of stock");
  });
  b.add_sync_listener<note_taken>([&](omnibus::context&, const note_taken&) { ran.push_back("third"); });

  omnibus::context ctx;
  try {
    b.publish(ctx, note_taken{7});
    FAIL("publish returned although a listener threw");
  } catch (const listener_failed& e) {  // the listener's own type, unchanged
    CHECK(std::string(e.what()) == "out of stock");
  }
  CHECK(ran == std::vector<std::string>{"first 7", "second"});
}

TEST_CASE("a listener added after the bus froze is refused", "[bus]") {
  omnibus::event_bus b;
  b.add_sync_listener<note_taken>([](omnibus::context&, const note_taken&) {});
  SECTION("frozen by publish") {
    omnibus::context ctx;
    b.publish(ctx, note_taken{1});
  }
  SECTION("frozen explicitly") { b.freeze(); }
  CHECK(b.frozen());
  CHECK_THROWS_WITH(b.add_sync_listener<note_taken>([](omnibus::context&, const note_taken&) {}),
                    Catch::Contains("frozen"));
}

TEST_CASE("two event types with one name are refused", "[bus]") {
  omnibus::event_bus b;
  b.add_sync_listener<note_taken>([](omnibus::context&, const note_taken&) {});
  CHECK_THROWS_AS(b.add_sync_listener<other_note>([](omnibus::context&, const other_note&) {}), std::logic_error);
  omnibus::context ctx;
  CHECK_THROWS_WITH(b.publish(ctx, other_note{}), Catch::Contains("two event types are named test.note_taken"));
}

TEST_CASE("a local-only event never needs a queue; any other event does", "[bus]") {
  omnibus::event_bus b;
  int seen = 0;
  b.add_sync_listener<note_taken>([&](omnibus::context&, const note_taken&) { ++seen; });
  b.add_sync_listener<shipped>([&](omnibus::context&, const shipped&) { ++seen; });
  omnibus::context ctx;
  CHECK(b.publish(ctx, note_taken{}).is_nil());
  CHECK_THROWS_WITH(b.publish(ctx, shipped{}), Catch::Contains("has no queue"));
  CHECK(seen == 2);  // sync listeners ran before the event could not leave
}

TEST_CASE("a frozen bus publishes from many threads at once", "[bus]") {
  omnibus::event_bus b;
  std::atomic<long> sum{0};
  b.add_sync_listener<note_taken>([&](omnibus::context&, const note_taken& e) { sum += e.n; });
  b.freeze();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      omnibus::context ctx;
      for (int i = 1; i <= 10000; ++i) b.publish(ctx, note_taken{i});
    });
  }
  for (auto& t : threads) t.join();
  CHECK(sum == 4L * (10000L * 10001L / 2));
}

TEST_CASE("a publisher's context carries metadata, and no deadline or stop", "[bus]") {
  omnibus::context ctx;
  CHECK(ctx.transaction() == nullptr);
  CHECK_THROWS_AS(ctx.tx(), std::logic_error);
  ctx.meta().correlation_id = "req-1";
  ctx.meta().values.emplace_back("tenant", "acme");
  CHECK(*ctx.meta().value("tenant") == "acme");
  CHECK(ctx.meta().value("missing") == nullptr);
  CHECK(ctx.deadline() == omnibus::context::clock::time_point::max());
  CHECK_FALSE(ctx.stop_token().stop_possible());  // only the worker's handler calls can be stopped
  CHECK(ctx.attempt() == 0);
  CHECK(ctx.event_id().is_nil());
}

TEST_CASE("max_in_flight caps a listener's consumer across workers; bad flow options are refused", "[bus][flow]") {
  omnibus::memory_queue q;
  omnibus::event_bus b{q};
  omnibus::listener_options capped;
  capped.max_in_flight = 7;
  b.add_async_listener<shipped>("capped", [](omnibus::context&, const shipped&) {}, capped);
  b.add_async_listener<shipped>("free", [](omnibus::context&, const shipped&) {});
  const auto configs = b.consumer_configs();
  REQUIRE(configs.size() == 2);
  CHECK(configs[0].max_ack_pending == 7);
  CHECK(configs[1].max_ack_pending == 1000);

  const auto refused = [&](omnibus::listener_options o, const char* what) {
    CHECK_THROWS_WITH(b.add_async_listener<shipped>("bad", [](omnibus::context&, const shipped&) {}, o),
                      Catch::Contains(what));
  };
  omnibus::listener_options o;
  o.max_in_flight = -1;
  refused(o, "max_in_flight must not be negative");
  o = {};
  o.breaker.enabled = true;
  o.breaker.failures = 0;
  refused(o, "breaker.failures must be at least 1");
  o = {};
  o.rate.per_second = -5;
  refused(o, "rate.per_second must be a finite number");
  o = {};
  o.rate.per_second = std::numeric_limits<double>::infinity();
  refused(o, "rate.per_second must be a finite number");
  o = {};
  o.rate.burst = -1;
  refused(o, "rate.burst must not be negative");
}

namespace {

// A memory queue whose stream reports the fill a test sets: what the bus reads to stop
// publishing near the stream's limits.
class filling_queue final : public omnibus::queue {
 public:
  omnibus::memory_queue inner;
  omnibus::stream_state fill;
  bool unreadable = false;
  int reads = 0;

  void provision(const omnibus::stream_config& s, std::span<const omnibus::consumer_config> c) override { inner.provision(s, c); }
  omnibus::publish_ack publish(const omnibus::message& m, std::chrono::milliseconds t) override {
    fill.messages += 1;
    fill.bytes += m.subject.size() + m.body.size() + 100;
    return inner.publish(m, t);
  }
  std::vector<omnibus::batch_result> publish_batch(std::span<const omnibus::message> m, std::chrono::milliseconds t) override {
    for (const auto& x : m) {
      fill.messages += 1;
      fill.bytes += x.subject.size() + x.body.size() + 100;
    }
    return inner.publish_batch(m, t);
  }
  std::unique_ptr<omnibus::consumer> open_consumer(const omnibus::stream_config& s, const std::string& n) override {
    return inner.open_consumer(s, n);
  }
  std::optional<omnibus::consumer_info> info(const omnibus::stream_config& s, const std::string& n) override { return inner.info(s, n); }
  std::vector<omnibus::consumer_info> consumers(const omnibus::stream_config& s) override { return inner.consumers(s); }
  bool delete_consumer(const omnibus::stream_config& s, const std::string& n) override { return inner.delete_consumer(s, n); }
  void flush(std::chrono::milliseconds t) override { inner.flush(t); }
  std::optional<omnibus::stream_state> state(const omnibus::stream_config&) override {
    ++reads;
    if (unreadable) throw omnibus::error("stream state: no answer");
    return fill;
  }
};

omnibus::bus_options filling_options(filling_queue& q, double hold_above) {
  omnibus::bus_options o;
  o.stream.hold_above = hold_above;
  q.inner.provision(o.stream, {});
  return o;
}

}  // namespace

TEST_CASE("near the stream's byte limit, a direct publish fails with 'nearly full' before the server is reached", "[bus][fill]") {
  filling_queue q;
  q.fill.max_bytes = 10'000;
  omnibus::event_bus b{q, filling_options(q, 0.9)};
  omnibus::context ctx;
  int sent = 0;
  std::string refusal;
  for (; sent < 1000; ++sent) {
    try {
      (void)b.publish(ctx, shipped{1});
    } catch (const omnibus::publish_error& e) {
      CHECK(e.result() == omnibus::publish_error::outcome::not_sent);
      CHECK_FALSE(e.id().is_nil());
      refusal = e.what();
      break;
    }
  }
  INFO(refusal);
  CHECK(sent > 0);
  CHECK(q.fill.bytes <= 9'000);  // the server never got past the line
  CHECK_THAT(refusal, Catch::Contains("stream OMNIBUS is nearly full: ") && Catch::Contains("of 10000 bytes") &&
                          Catch::Contains("publishers stop at 90%"));
  CHECK(q.reads < sent);  // the state is read now and then, not per publish

  // Room again (old events left): publishes go through once a read sees it (at most 100 ms
  // after the last one, while refused).
  q.fill.bytes = 0;
  q.fill.messages = 0;
  CHECK(test_env::eventually([&] {
    try {
      (void)b.publish(ctx, shipped{2});
      return true;
    } catch (const omnibus::publish_error&) {
      return false;
    }
  }, std::chrono::seconds(5)));
}

TEST_CASE("near the stream's message limit, publish_batch sends what fits and reports the rest not_sent", "[bus][fill]") {
  filling_queue q;
  q.fill.max_bytes = -1;
  q.fill.max_msgs = 10;
  q.fill.messages = 5;
  omnibus::event_bus b{q, filling_options(q, 0.9)};
  omnibus::context ctx;
  const std::vector<shipped> batch(6, shipped{3});
  const omnibus::batch_report r = b.publish_batch(ctx, std::span<const shipped>(batch));
  REQUIRE(r.results.size() == 6);
  CHECK(r.failed() == std::vector<std::size_t>{4, 5});  // 5 + 4 = 9 of 10: 90%
  CHECK(r.results[4].failure == omnibus::publish_error::outcome::not_sent);
  CHECK_THAT(r.results[5].error, Catch::Contains("9 of 10 events (90.0%)"));
  CHECK(q.fill.messages == 9);
}

TEST_CASE("hold_above 1 never holds; outside (0, 1] is refused; an unreadable state lets the publish decide",
          "[bus][fill]") {
  {
    filling_queue q;
    q.fill.max_bytes = 1000;
    q.fill.bytes = 999;
    omnibus::event_bus b{q, filling_options(q, 1.0)};
    omnibus::context ctx;
    CHECK_NOTHROW(b.publish(ctx, shipped{4}));
    CHECK(q.reads == 0);
  }
  {
    filling_queue q;
    CHECK_THROWS_AS(omnibus::event_bus(q, filling_options(q, 0.0)), std::invalid_argument);
    CHECK_THROWS_AS(omnibus::event_bus(q, filling_options(q, 1.5)), std::invalid_argument);
  }
  {
    filling_queue q;
    q.fill.max_bytes = 1000;
    q.fill.bytes = 999;
    q.unreadable = true;
    omnibus::event_bus b{q, filling_options(q, 0.9)};
    omnibus::context ctx;
    CHECK_NOTHROW(b.publish(ctx, shipped{5}));
  }
}

TEST_CASE("an empty stream takes one event whatever its size: the line never holds for good", "[bus][fill]") {
  filling_queue q;
  q.fill.max_bytes = 100;  // less than one event
  omnibus::event_bus b{q, filling_options(q, 0.9)};
  omnibus::context ctx;
  CHECK_NOTHROW(b.publish(ctx, shipped{1}));
  CHECK_THROWS_WITH(b.publish(ctx, shipped{2}), Catch::Contains("nearly full") && Catch::Contains("an event of "));
}

TEST_CASE("recurring schedules: a bad expression or zone fails registration, quoting it; names are checked",
          "[bus][schedule]") {
  omnibus::memory_queue q;
  omnibus::event_bus bus{q};
  const auto make = [] { return shipped{}; };
  CHECK_THROWS_AS(bus.add_schedule("report", "0 25 * * *", "UTC", make), omnibus::cron_error);
  CHECK_THROWS_WITH(bus.add_schedule("report", "0 25 * * *", "UTC", make),
                    Catch::Contains("\"0 25 * * *\"") && Catch::Contains("hour"));
  CHECK_THROWS_WITH(bus.add_schedule("report", "0 9 * * MON-FRI", "Mars/Olympus", make), Catch::Contains("Mars/Olympus"));
  CHECK_THROWS_AS(bus.add_schedule("bad name", "@daily", "UTC", make), std::logic_error);
  bus.add_schedule("report", "0 9 * * MON-FRI", "Europe/Berlin", make);
  CHECK_THROWS_AS(bus.add_schedule("report", "@hourly", "UTC", make), std::logic_error);  // one name, one schedule
  omnibus::recurring_options zero;
  zero.missed = omnibus::missed_policy::all;
  zero.missed_window = std::chrono::seconds(0);
  CHECK_THROWS_AS(bus.add_schedule("every", "@hourly", "UTC", make, zero), std::logic_error);
  // An occurrence-taking make() gets the occurrence it fires for.
  bus.add_schedule("with_time", "@hourly", "UTC", [](omnibus::cron::time_point t) {
    return shipped{static_cast<int>(t.time_since_epoch().count() % 1000)};
  });
  REQUIRE(bus.schedules().size() == 2);
  CHECK(bus.schedules()[0].when.zone() == "Europe/Berlin");
  CHECK(bus.schedules()[1].make(omnibus::cron::time_point(std::chrono::seconds(4321))).name == "test.shipped");
  bus.freeze();
  CHECK_THROWS_AS(bus.add_schedule("late", "@daily", "UTC", make), std::logic_error);
}

TEST_CASE("ISO 8601 instants: written in UTC, read with Z or an offset, refused with a reason", "[bus][schedule]") {
  using namespace std::chrono;
  const auto t = sys_days(year(2026) / 3 / 29) + hours(1) + minutes(30);
  CHECK(omnibus::to_iso8601(t) == "2026-03-29T01:30:00Z");
  CHECK(omnibus::to_iso8601(t + microseconds(250)) == "2026-03-29T01:30:00.000250Z");
  CHECK(omnibus::parse_iso8601("2026-03-29T01:30:00Z") == t);
  CHECK(omnibus::parse_iso8601("2026-03-29T03:30+02:00") == t);
  CHECK(omnibus::parse_iso8601("2026-03-29 01:30:00.5Z") == t + milliseconds(500));
  CHECK_THROWS_WITH(omnibus::parse_iso8601("2026-03-29T01:30:00"), Catch::Contains("no time zone"));
  CHECK_THROWS_WITH(omnibus::parse_iso8601("2026-02-30T00:00Z"), Catch::Contains("no such date"));
  CHECK_THROWS_AS(omnibus::parse_iso8601("yesterday"), std::invalid_argument);
}

namespace {
struct also_shipped {  // a second type claiming shipped's (short) name
  static constexpr std::string_view name = "test.shipped";
  static constexpr int version = 1;
  int n = 0;
  OMNIBUS_FIELDS(n);
};
}  // namespace

TEST_CASE("an event type first registered by an async listener keeps its name for later clash checks", "[bus]") {
  omnibus::memory_queue q;
  omnibus::event_bus bus{q};
  bus.add_async_listener<shipped>("first", [](omnibus::context&, const shipped&) {});
  bus.add_schedule("daily", "@daily", "UTC", [] { return shipped{}; });  // the same type: found by its name
  CHECK_THROWS_WITH(bus.add_sync_listener<also_shipped>([](omnibus::context&, const also_shipped&) {}),
                    Catch::Contains("two event types are named test.shipped"));
}
