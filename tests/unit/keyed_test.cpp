// Keyed events (README "Ordered per key"): the documented partition hash, the wire form, and
// what the bus refuses.

#include <string>
#include <string_view>

#include <catch2/catch.hpp>

#include "omnibus/envelope.hpp"
#include "omnibus/event.hpp"
#include "omnibus/event_bus.hpp"
#include "omnibus/memory_queue.hpp"

namespace {

struct placed {
  static constexpr std::string_view name = "order.placed";
  static constexpr int version = 1;
  static constexpr int partitions = 16;
  static std::string ordering_key(const placed& e) { return e.customer; }
  std::string customer;
  std::int64_t total = 0;
  OMNIBUS_FIELDS(customer, total);
};

struct unkeyed {
  static constexpr std::string_view name = "order.cancelled";
  static constexpr int version = 1;
  std::string customer;
  OMNIBUS_FIELDS(customer);
};

struct extends_placed {
  static constexpr std::string_view name = "order.placed.shipped";
  static constexpr int version = 1;
  std::string customer;
  OMNIBUS_FIELDS(customer);
};

static_assert(omnibus::keyed_event<placed>);
static_assert(!omnibus::keyed_event<unkeyed>);
static_assert(omnibus::partitions_of<placed> == 16 && omnibus::partitions_of<unkeyed> == 0);

}  // namespace

TEST_CASE("partition_of is FNV-1a 64 of the key's bytes modulo the partitions, as documented", "[keyed]") {
  // FNV-1a 64 of "" is the offset basis; of "a" and "foobar" the published test vectors.
  CHECK(omnibus::partition_of("", 1000) == static_cast<int>(0xcbf29ce484222325ULL % 1000));
  CHECK(omnibus::partition_of("a", 1000) == static_cast<int>(0xaf63dc4c8601ec8cULL % 1000));
  CHECK(omnibus::partition_of("foobar", 1000) == static_cast<int>(0x85944171f73967e8ULL % 1000));
  CHECK(omnibus::partition_of("customer-42", 16) == 14);  // the README's worked example
  CHECK(omnibus::partition_of("anything", 1) == 0);
  CHECK(omnibus::partition_subject("omnibus", "order.placed", 14) == "omnibus.order.placed.k14");
}

TEST_CASE("a keyed event travels on its partition's subject with its key in Omnibus-Key, and decodes back",
          "[keyed]") {
  omnibus::memory_queue q;
  omnibus::event_bus b{q};
  b.provision();
  omnibus::context ctx;
  (void)b.publish(ctx, placed{"customer-42", 100});
  const std::vector<placed> batch{{"customer-42", 1}, {"c-7", 2}};
  REQUIRE(b.publish_batch(ctx, std::span<const placed>(batch)).ok());
  const auto sent = q.messages();
  REQUIRE(sent.size() == 3);
  CHECK(sent[0].subject == "omnibus.order.placed.k14");
  REQUIRE(sent[0].header(omnibus::header::key) != nullptr);
  CHECK(*sent[0].header(omnibus::header::key) == "customer-42");
  CHECK(sent[2].subject == "omnibus.order.placed.k" + std::to_string(omnibus::partition_of("c-7", 16)));
  CHECK(*sent[2].header(omnibus::header::key) == "c-7");
  const omnibus::envelope env = omnibus::decode(sent[0], "omnibus");
  CHECK(env.key == "customer-42");
  CHECK(omnibus::decode_event<placed>(env).total == 100);

  // A key header on a subject without its partition, or a bad key, does not decode.
  omnibus::message m = sent[0];
  m.subject = "omnibus.order.placed";
  CHECK_THROWS_AS(omnibus::decode(m, "omnibus"), omnibus::decode_error);
  m = sent[0];
  for (auto& [k, v] : m.headers) {
    if (k == omnibus::header::key) v = "bad\x01key";
  }
  CHECK_THROWS_AS(omnibus::decode(m, "omnibus"), omnibus::decode_error);
}

TEST_CASE("keys must be 1-256 bytes of UTF-8 without control characters", "[keyed]") {
  omnibus::memory_queue q;
  omnibus::event_bus b{q};
  b.provision();
  omnibus::context ctx;
  CHECK_THROWS_AS(b.publish(ctx, placed{"", 1}), std::invalid_argument);
  CHECK_THROWS_AS(b.publish(ctx, placed{std::string(257, 'k'), 1}), std::invalid_argument);
  CHECK_THROWS_AS(b.publish(ctx, placed{"line\nbreak", 1}), std::invalid_argument);
  CHECK_THROWS_AS(b.publish(ctx, placed{"\xff\xfe", 1}), std::invalid_argument);
  CHECK_NOTHROW(b.publish(ctx, placed{std::string(256, 'k'), 1}));
  CHECK_NOTHROW(b.publish(ctx, placed{"kunde-\xc3\xa4", 1}));
  CHECK(q.messages().size() == 2);
}

TEST_CASE("per_key listeners: one consumer per partition; other listeners of a keyed event read every partition",
          "[keyed]") {
  omnibus::memory_queue q;
  omnibus::event_bus b{q};
  omnibus::listener_options o;
  o.order = omnibus::ordering::per_key;
  b.add_async_listener<placed>("stats", [](omnibus::context&, const placed&) {}, o);
  b.add_async_listener<placed>("mailer", [](omnibus::context&, const placed&) {});
  const auto configs = b.consumer_configs();
  REQUIRE(configs.size() == 17);
  CHECK(configs[0].name == "omnibus_stats_k0");
  CHECK(configs[0].filter_subject == "omnibus.order.placed.k0");
  CHECK(configs[15].name == "omnibus_stats_k15");
  CHECK(configs[16].name == "omnibus_mailer");
  CHECK(configs[16].filter_subject == "omnibus.order.placed.*");
  CHECK(b.async_listeners()[0].consumer_names().size() == 16);
  CHECK(b.async_listeners()[1].consumer_names() == std::vector<std::string>{"omnibus_mailer"});

  // The unordered listener's consumer gets every partition's events (memory_queue filters as
  // nats-server does).
  b.provision();
  omnibus::context ctx;
  (void)b.publish(ctx, placed{"a", 1});
  (void)b.publish(ctx, placed{"b", 2});
  CHECK(q.info(b.options().stream, "omnibus_mailer")->pending == 2);
  const auto a = q.info(b.options().stream, "omnibus_stats_k" + std::to_string(omnibus::partition_of("a", 16)));
  REQUIRE(a.has_value());
  CHECK(a->pending >= 1);
  const auto sum = omnibus::listener_info(q, b.options().stream, b.async_listeners()[0]);
  REQUIRE(sum.has_value());
  CHECK(sum->pending == 2);
}

TEST_CASE("the bus refuses per_key on an event without a key, with ordered, with a breaker or rate limit, and an "
          "event name extending a keyed one", "[keyed]") {
  omnibus::memory_queue q;
  omnibus::event_bus b{q};
  omnibus::listener_options o;
  o.order = omnibus::ordering::per_key;
  CHECK_THROWS_WITH(b.add_async_listener<unkeyed>("x", [](omnibus::context&, const unkeyed&) {}, o),
                    Catch::Contains("names no ordering key"));
  o.ordered = true;
  CHECK_THROWS_WITH(b.add_async_listener<placed>("x", [](omnibus::context&, const placed&) {}, o),
                    Catch::Contains("choose one"));
  o.ordered = false;
  o.breaker.enabled = true;
  CHECK_THROWS_WITH(b.add_async_listener<placed>("x", [](omnibus::context&, const placed&) {}, o),
                    Catch::Contains("not available with ordering::per_key"));
  omnibus::listener_options total;
  total.order = omnibus::ordering::total;
  b.add_async_listener<unkeyed>("t", [](omnibus::context&, const unkeyed&) {}, total);
  CHECK(b.async_listeners().back().options.ordered);
  CHECK(b.async_listeners().back().options.concurrency == 1);

  omnibus::event_bus clash{q};
  clash.add_async_listener<placed>("p", [](omnibus::context&, const placed&) {});
  clash.add_sync_listener<extends_placed>([](omnibus::context&, const extends_placed&) {});
  CHECK_THROWS_WITH(clash.freeze(), Catch::Contains("extends the name of keyed event order.placed"));
}
