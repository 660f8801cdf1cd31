// The in-memory queue users get for their own unit tests, driven through the bus.

#include <chrono>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "omnibus/event.hpp"
#include "omnibus/event_bus.hpp"
#include "omnibus/memory_queue.hpp"

namespace {

using namespace std::chrono_literals;

struct parcel_sent {
  static constexpr std::string_view name = "test.parcel_sent";
  static constexpr int version = 1;
  std::int64_t parcel = 0;
  OMNIBUS_FIELDS(parcel);
};

struct fixture {
  omnibus::memory_queue q;
  omnibus::event_bus b{q, [] {
                     omnibus::bus_options o;
                     o.group = "shop";
                     o.stream.subject_prefix = "shop";
                     return o;
                   }()};
  std::vector<std::int64_t> handled;
  omnibus::context ctx;

  void run_one(omnibus::consumer& c, bool ack = true) {
    auto got = c.fetch(1, 0ms);
    REQUIRE(got.size() == 1);
    omnibus::context handler_ctx;
    b.async_listeners().front().handler(handler_ctx, omnibus::decode(got[0]->msg(), "shop"));
    if (ack) got[0]->ack();
  }
};

}  // namespace

TEST_CASE_METHOD(fixture, "events published through the bus reach a provisioned listener", "[bus][memory_queue]") {
  b.add_async_listener<parcel_sent>("tracker", [&](omnibus::context&, const parcel_sent& e) { handled.push_back(e.parcel); });
  b.provision();
  REQUIRE(b.consumer_configs().front().name == "shop_tracker");
  REQUIRE(b.consumer_configs().front().filter_subject == "shop.test.parcel_sent");

  auto id = b.publish(ctx, parcel_sent{41});
  CHECK_FALSE(id.is_nil());
  b.publish(ctx, parcel_sent{42});
  auto c = q.open_consumer(b.options().stream, "shop_tracker");
  run_one(*c);
  run_one(*c);
  CHECK(handled == std::vector<std::int64_t>{41, 42});
  auto info = q.info(b.options().stream, "shop_tracker");
  REQUIRE(info);
  CHECK(info->pending == 0);
  CHECK(info->ack_pending == 0);
  CHECK(c->fetch(1, 0ms).empty());
}

TEST_CASE_METHOD(fixture, "a nak redelivers with the delivery count raised", "[bus][memory_queue]") {
  b.add_async_listener<parcel_sent>("tracker", [](omnibus::context&, const parcel_sent&) {});
  b.provision();
  b.publish(ctx, parcel_sent{1});
  auto c = q.open_consumer(b.options().stream, "shop_tracker");
  auto first = c->fetch(1, 0ms);
  REQUIRE(first.size() == 1);
  CHECK(first[0]->delivery_count() == 1);
  first[0]->nak(0ms);
  auto second = c->fetch(1, 1s);
  REQUIRE(second.size() == 1);
  CHECK(second[0]->delivery_count() == 2);
  CHECK(q.info(b.options().stream, "shop_tracker")->redelivered == 1);
  second[0]->term();
  CHECK(q.info(b.options().stream, "shop_tracker")->ack_pending == 0);
}

TEST_CASE_METHOD(fixture, "the same event id lands once within the duplicate window", "[bus][memory_queue]") {
  b.provision();
  omnibus::envelope env;
  env.id = omnibus::event_id::generate();
  env.name = "test.parcel_sent";
  env.version = 1;
  env.body = omnibus::detail::encode_body(parcel_sent{5});
  auto msg = omnibus::encode(env, "shop");
  auto a = q.publish(msg, 1s);
  auto d = q.publish(msg, 1s);
  CHECK_FALSE(a.duplicate);
  CHECK(d.duplicate);
  CHECK(d.sequence == a.sequence);
  CHECK(q.messages().size() == 1);
}

TEST_CASE_METHOD(fixture, "an ordered listener gets one event at a time", "[bus][memory_queue]") {
  omnibus::listener_options o;
  o.ordered = true;
  b.add_async_listener<parcel_sent>("ledger", [](omnibus::context&, const parcel_sent&) {}, o);
  b.provision();
  b.publish(ctx, parcel_sent{1});
  b.publish(ctx, parcel_sent{2});
  auto c = q.open_consumer(b.options().stream, "shop_ledger");
  auto first = c->fetch(10, 0ms);
  REQUIRE(first.size() == 1);
  CHECK(c->fetch(10, 0ms).empty());
  first[0]->ack();
  auto second = c->fetch(10, 0ms);
  REQUIRE(second.size() == 1);
  CHECK(omnibus::decode_event<parcel_sent>(omnibus::decode(second[0]->msg(), "shop")).parcel == 2);
}

TEST_CASE("a consumer whose filter changed makes provision() throw, naming it", "[bus][memory_queue]") {
  omnibus::memory_queue q;
  omnibus::stream_config s;
  std::vector<omnibus::consumer_config> v(1);
  v[0].name = "shop_x";
  v[0].filter_subject = "omnibus.a";
  q.provision(s, v);
  v[0].filter_subject = "omnibus.b";
  CHECK_THROWS_WITH(q.provision(s, v), Catch::Contains("shop_x"));
}

TEST_CASE("a full stream refuses a publish as not sent", "[bus][memory_queue]") {
  omnibus::memory_queue q;
  omnibus::bus_options o;
  o.stream.max_bytes = 200;
  omnibus::event_bus b{q, o};
  b.provision();
  omnibus::context ctx;
  try {
    for (int i = 0; i < 100; ++i) b.publish(ctx, parcel_sent{i});
    FAIL("a 200-byte stream took 100 events");
  } catch (const omnibus::publish_error& e) {
    CHECK(e.result() == omnibus::publish_error::outcome::not_sent);
    CHECK_FALSE(e.id().is_nil());
    CHECK_THAT(e.what(), Catch::Contains("full"));
  }
}

TEST_CASE("async listener names are checked at registration", "[bus]") {
  omnibus::event_bus b;
  auto noop = [](omnibus::context&, const parcel_sent&) {};
  CHECK_THROWS_AS(b.add_async_listener<parcel_sent>("has.dot", noop), std::logic_error);
  CHECK_THROWS_AS(b.add_async_listener<parcel_sent>("", noop), std::logic_error);
  b.add_async_listener<parcel_sent>("ok-name_1", noop);
  CHECK_THROWS_WITH(b.add_async_listener<parcel_sent>("ok-name_1", noop), Catch::Contains("two async listeners"));
  CHECK_THROWS_WITH(b.provision(), Catch::Contains("needs a queue"));
}
