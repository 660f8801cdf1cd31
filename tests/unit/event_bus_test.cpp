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
