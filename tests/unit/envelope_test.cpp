#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <catch2/catch.hpp>

#include "omnibus/codec.hpp"
#include "omnibus/envelope.hpp"
#include "omnibus/event.hpp"

namespace {

enum class tier : std::uint8_t { basic = 1, gold = 2 };

struct address {
  std::string city;
  std::int32_t zip = 0;
  OMNIBUS_FIELDS(city, zip);
  bool operator==(const address&) const = default;
};

struct everything {
  static constexpr std::string_view name = "test.everything";
  static constexpr int version = 1;
  std::int8_t i8 = 0;
  std::int16_t i16 = 0;
  std::int32_t i32 = 0;
  std::int64_t i64 = 0;
  std::uint8_t u8 = 0;
  std::uint16_t u16 = 0;
  std::uint32_t u32 = 0;
  std::uint64_t u64 = 0;
  bool flag = false;
  double ratio = 0;
  float small = 0;
  std::string text;
  std::vector<std::byte> blob;
  std::optional<std::string> maybe;
  std::optional<std::int64_t> none;
  std::vector<std::int32_t> list;
  std::map<std::string, std::int64_t> counts;
  std::chrono::system_clock::time_point at;
  address home;
  std::vector<address> others;
  tier level = tier::basic;
  OMNIBUS_FIELDS(i8, i16, i32, i64, u8, u16, u32, u64, flag, ratio, small, text, blob, maybe, none, list, counts,
                 at, home, others, level);
  bool operator==(const everything&) const = default;
};

// Version 1 of an event, and version 2 with a field added.
struct order_v1 {
  static constexpr std::string_view name = "test.order";
  static constexpr int version = 1;
  std::int64_t id = 0;
  OMNIBUS_FIELDS(id);
};
struct order_v2 {
  static constexpr std::string_view name = "test.order";
  static constexpr int version = 2;
  std::int64_t id = 0;
  std::string currency = "EUR";
  OMNIBUS_FIELDS(id, currency);
};
struct order_wrong_type {  // same name, a field of another type
  static constexpr std::string_view name = "test.order";
  static constexpr int version = 1;
  std::string id;
  OMNIBUS_FIELDS(id);
};

template <class E>
omnibus::envelope envelope_of(const E& e, omnibus::metadata meta = {}) {
  omnibus::envelope env;
  env.id = omnibus::event_id::generate();
  env.name = E::name;
  env.version = E::version;
  env.published_at = std::chrono::time_point_cast<std::chrono::microseconds>(std::chrono::system_clock::now());
  env.meta = std::move(meta);
  env.body = omnibus::detail::encode_body(e);
  return env;
}

omnibus::decode_failure failure_of(auto&& fn) {
  try {
    fn();
  } catch (const omnibus::decode_error& e) {
    return e.kind();
  }
  FAIL("no decode_error was thrown");
  return omnibus::decode_failure::missing_header;
}

}  // namespace

TEST_CASE("an event round-trips through the wire format with every field type", "[bus][envelope]") {
  everything e;
  e.i8 = -8;
  e.i16 = -1600;
  e.i32 = -320000;
  e.i64 = -6400000000LL;
  e.u8 = 200;
  e.u16 = 60000;
  e.u32 = 4000000000U;
  e.u64 = 18000000000000000000ULL;
  e.flag = true;
  e.ratio = 0.125;
  e.small = 1.5F;
  e.text = "héllo";
  e.blob = {std::byte{0}, std::byte{0xff}, std::byte{0x10}};
  e.maybe = "present";
  e.list = {3, 1, 2};
  e.counts = {{"a", 1}, {"b", -2}};
  e.at = std::chrono::system_clock::time_point{std::chrono::microseconds{1700000000123456}};
  e.home = {"Lyon", 69001};
  e.others = {{"Oslo", 150}, {"Kyiv", 1001}};
  e.level = tier::gold;

  omnibus::metadata meta;
  meta.correlation_id = "corr-42";
  meta.traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  meta.tracestate = "rojo=00f067aa0ba902b7";
  meta.values = {{"tenant", "acme"}, {"user-id", "17"}};
  auto sent = envelope_of(e, meta);

  omnibus::message msg = omnibus::encode(sent, "shop");
  CHECK(msg.subject == "shop.test.everything");
  CHECK(*msg.header("Nats-Msg-Id") == sent.id.to_string());
  CHECK(*msg.header("Omnibus-Event") == "test.everything");
  CHECK(*msg.header("Omnibus-Version") == "1");
  CHECK(*msg.header("Omnibus-Meta-tenant") == "acme");

  omnibus::envelope got = omnibus::decode(msg, "shop");
  CHECK(got.id == sent.id);
  CHECK(got.name == sent.name);
  CHECK(got.version == 1);
  CHECK(got.published_at == sent.published_at);
  CHECK(got.meta.correlation_id == meta.correlation_id);
  CHECK(got.meta.traceparent == meta.traceparent);
  CHECK(got.meta.tracestate == meta.tracestate);
  CHECK(got.meta.values == meta.values);
  CHECK(omnibus::decode_event<everything>(got) == e);
}

TEST_CASE("the body is a msgpack map keyed by field name", "[bus][envelope]") {
  // {"id": 5} as any msgpack library writes it: fixmap(1), fixstr(2) "id", positive fixint 5.
  CHECK(omnibus::detail::encode_body(order_v1{5}) == std::string("\x81\xa2id\x05"));
}

TEST_CASE("an older message decodes into a newer struct with defaults for new fields", "[bus][envelope]") {
  auto env = envelope_of(order_v1{77});
  auto v2 = omnibus::decode_event<order_v2>(env);
  CHECK(v2.id == 77);
  CHECK(v2.currency == "EUR");

  SECTION("and a newer message's unknown fields are ignored by an older struct of the same version") {
    auto env2 = envelope_of(order_v2{5, "NOK"});
    env2.version = 1;
    CHECK(omnibus::decode_event<order_v1>(env2).id == 5);
  }
}

TEST_CASE("each malformed input gives its typed error", "[bus][envelope]") {
  auto good = envelope_of(order_v1{1});
  omnibus::message msg = omnibus::encode(good, "shop");

  SECTION("a newer version than this build knows") {
    auto env = envelope_of(order_v2{1, "USD"});
    CHECK(failure_of([&] { (void)omnibus::decode_event<order_v1>(env); }) == omnibus::decode_failure::newer_version);
  }
  SECTION("truncated msgpack") {
    auto env = good;
    env.body = env.body.substr(0, env.body.size() - 1);
    CHECK(failure_of([&] { (void)omnibus::decode_event<order_v1>(env); }) == omnibus::decode_failure::malformed_body);
  }
  SECTION("random bytes") {
    auto env = good;
    env.body = "\xc1\xc1\xc1";  // 0xc1 is never used in msgpack
    CHECK(failure_of([&] { (void)omnibus::decode_event<order_v1>(env); }) == omnibus::decode_failure::malformed_body);
  }
  SECTION("a body that is not a map") {
    auto env = good;
    env.body = "\x93\x01\x02\x03";  // [1, 2, 3]
    CHECK(failure_of([&] { (void)omnibus::decode_event<order_v1>(env); }) == omnibus::decode_failure::malformed_body);
  }
  SECTION("a container that announces more elements than the body has bytes (found by the fuzzer)") {
    auto env = good;
    env.body = std::string("\xdd\xff\xff\xff\xff", 5);  // array32 of 2^32-1: no allocation up front
    CHECK(failure_of([&] { (void)omnibus::decode_event<order_v1>(env); }) == omnibus::decode_failure::malformed_body);
    env.body = std::string("\x81\xa1n\xdf\x7f\xff\xff\xff", 8);  // {"n": map32 of 2^31-1}
    CHECK(failure_of([&] { (void)omnibus::decode_event<order_v1>(env); }) == omnibus::decode_failure::malformed_body);
  }
  SECTION("maps nested deeper than the limit") {
    auto env = good;
    env.body = "\x81\xa1n" + std::string(omnibus::detail::max_body_depth + 1, '\x91') + '\x01';
    CHECK(failure_of([&] { (void)omnibus::decode_event<order_v1>(env); }) == omnibus::decode_failure::malformed_body);
  }
  SECTION("trailing bytes after the map") {
    auto env = good;
    env.body += '\x01';
    CHECK(failure_of([&] { (void)omnibus::decode_event<order_v1>(env); }) == omnibus::decode_failure::malformed_body);
  }
  SECTION("a field of the wrong type names the field") {
    auto env = envelope_of(order_wrong_type{"not a number"});
    try {
      (void)omnibus::decode_event<order_v1>(env);
      FAIL("decoded a string into an integer");
    } catch (const omnibus::decode_error& e) {
      CHECK(e.kind() == omnibus::decode_failure::wrong_type);
      CHECK_THAT(e.what(), Catch::Contains("field 'id'") && Catch::Contains("test.order"));
      // The expected type and what the body holds, not msgpack-c's std::bad_cast.
      CHECK_THAT(e.what(), Catch::Contains("expects an integer") && Catch::Contains("holds a string"));
    }
  }
  SECTION("a nested field of the wrong type names the path") {
    everything e;
    auto env = envelope_of(e);
    // Replace the nested "home" map's "zip" with a string by hand-building a body.
    msgpack::sbuffer buf;
    msgpack::packer<msgpack::sbuffer> pk(buf);
    pk.pack_map(1);
    pk.pack(std::string("home"));
    pk.pack_map(1);
    pk.pack(std::string("zip"));
    pk.pack(std::string("oops"));
    env.body.assign(buf.data(), buf.size());
    try {
      (void)omnibus::decode_event<everything>(env);
      FAIL("decoded a string into a nested integer");
    } catch (const omnibus::decode_error& e) {
      CHECK(e.kind() == omnibus::decode_failure::wrong_type);
      CHECK_THAT(e.what(), Catch::Contains("field 'home.zip'") && Catch::Contains("holds a string"));
    }
  }
  SECTION("a name header that does not match the subject") {
    msg.subject = "shop.test.other";
    CHECK(failure_of([&] { (void)omnibus::decode(msg, "shop"); }) == omnibus::decode_failure::name_mismatch);
  }
  SECTION("a subject under another prefix") {
    CHECK(failure_of([&] { (void)omnibus::decode(msg, "elsewhere"); }) == omnibus::decode_failure::name_mismatch);
  }
  SECTION("a missing header") {
    std::erase_if(msg.headers, [](auto& h) { return h.first == "Nats-Msg-Id"; });
    CHECK(failure_of([&] { (void)omnibus::decode(msg, "shop"); }) == omnibus::decode_failure::missing_header);
  }
  SECTION("a header that does not parse") {
    for (auto& h : msg.headers) {
      if (h.first == "Omnibus-Version") h.second = "two";
    }
    CHECK(failure_of([&] { (void)omnibus::decode(msg, "shop"); }) == omnibus::decode_failure::bad_header);
  }
  SECTION("an oversized body is refused when decoded") {
    CHECK(failure_of([&] { (void)omnibus::decode(msg, "shop", 2); }) == omnibus::decode_failure::oversized);
  }
  SECTION("nested containers, each announcing more elements than the bytes left") {
    auto env = good;
    env.body.clear();
    for (int i = 0; i < 64; ++i) env.body += std::string("\xdd\x00\x00\x01\x00", 5);  // 256 each: more than is left
    CHECK(failure_of([&] { (void)omnibus::decode_event<order_v1>(env); }) == omnibus::decode_failure::malformed_body);
    env.body = std::string("\x81\xa1n\xdb\xff\xff\xff\xff", 8);  // {"n": a string of 4 GiB}
    CHECK(failure_of([&] { (void)omnibus::decode_event<order_v1>(env); }) == omnibus::decode_failure::malformed_body);
  }
  SECTION("an Omnibus header given twice") {
    msg.headers.emplace_back("Omnibus-Version", "1");
    CHECK(failure_of([&] { (void)omnibus::decode(msg, "shop"); }) == omnibus::decode_failure::bad_header);
  }
  SECTION("an Omnibus header that is not UTF-8") {
    for (auto& h : msg.headers) {
      if (h.first == "Nats-Msg-Id") h.second = "\xff\xfe-not-a-uuid";
    }
    CHECK(failure_of([&] { (void)omnibus::decode(msg, "shop"); }) == omnibus::decode_failure::bad_header);
  }
  SECTION("metadata that is not UTF-8") {
    msg.headers.emplace_back("Omnibus-Meta-origin", "caf\xe9");
    CHECK(failure_of([&] { (void)omnibus::decode(msg, "shop"); }) == omnibus::decode_failure::bad_header);
  }
  SECTION("a header with an empty name") {
    msg.headers.emplace_back("", "x");
    CHECK(failure_of([&] { (void)omnibus::decode(msg, "shop"); }) == omnibus::decode_failure::bad_header);
  }
  SECTION("more headers than an event carries") {
    for (std::size_t i = 0; i < omnibus::max_headers; ++i) msg.headers.emplace_back("X", "1");
    CHECK(failure_of([&] { (void)omnibus::decode(msg, "shop"); }) == omnibus::decode_failure::too_many_headers);
  }
}

TEST_CASE("foreign headers that are not UTF-8 are ignored, not refused", "[bus][envelope]") {
  omnibus::message msg = omnibus::encode(envelope_of(order_v1{1}), "shop");
  msg.headers.emplace_back("X-Other-System", "\xff");
  CHECK(omnibus::decode(msg, "shop").name == "test.order");
}

TEST_CASE("a body over the limit is refused when encoded", "[bus][envelope]") {
  auto env = envelope_of(order_v2{1, std::string(100, 'x')});
  CHECK_THROWS_AS(omnibus::encode(env, "shop", 50), omnibus::event_too_large);
  CHECK_NOTHROW(omnibus::encode(env, "shop", env.body.size()));
}

TEST_CASE("metadata that cannot be a header is refused", "[bus][envelope]") {
  omnibus::metadata meta;
  SECTION("a key outside [A-Za-z0-9_-]") { meta.values = {{"bad key", "v"}}; }
  SECTION("a value with a newline") { meta.values = {{"key", "a\r\nInjected: yes"}}; }
  SECTION("a value that is not UTF-8") { meta.values = {{"key", "caf\xe9"}}; }
  auto env = envelope_of(order_v1{1}, meta);
  CHECK_THROWS_AS(omnibus::encode(env, "shop"), std::invalid_argument);
}

namespace {
struct measured {
  static constexpr std::string_view name = "m.measured";
  static constexpr int version = 1;
  double value = 0;
  float small = 0;
  std::optional<double> maybe;
  OMNIBUS_FIELDS(value, small, maybe);
};
}  // namespace

TEST_CASE("2^64 in a double or float field packs as the float it is (msgpack-c would convert it, undefined)",
          "[bus][envelope]") {
  const double big = 18446744073709551616.0;
  for (const measured& m : {measured{big, 1.5f, big}, measured{big, static_cast<float>(big), std::nullopt},
                            measured{-big, 0, 3.0}, measured{1e300, 2.0f, 4.0}}) {
    const std::string body = omnibus::detail::encode_body(m);
    omnibus::envelope env;
    env.name = measured::name;
    env.version = 1;
    env.body = body;
    const measured back = omnibus::decode_event<measured>(env);
    CHECK(back.value == m.value);
    CHECK(back.small == m.small);
    CHECK(back.maybe == m.maybe);
    CHECK(omnibus::detail::encode_body(back) == body);
  }
}

TEST_CASE("publish times are RFC 3339 UTC with microseconds", "[bus][envelope]") {
  using namespace std::chrono;
  sys_time<microseconds> t{microseconds{1763837492123456}};
  CHECK(omnibus::format_time(t) == "2025-11-22T18:51:32.123456Z");
  CHECK(omnibus::parse_time("2025-11-22T18:51:32.123456Z") == t);
  CHECK(omnibus::parse_time("2025-11-22T18:51:32Z") == floor<seconds>(t));
  CHECK(omnibus::parse_time("2025-11-22T18:51:32.1Z") == floor<seconds>(t) + milliseconds(100));
  CHECK_THROWS_AS(omnibus::parse_time("2025-11-22 18:51:32Z"), omnibus::decode_error);
  CHECK_THROWS_AS(omnibus::parse_time("2025-02-30T00:00:00Z"), omnibus::decode_error);
  CHECK(omnibus::format_time(sys_time<microseconds>{}) == "1970-01-01T00:00:00.000000Z");
  CHECK(omnibus::format_time(sys_days{2038y / 1 / 19} + 3h + 14min + 7s + 999999us) == "2038-01-19T03:14:07.999999Z");
  CHECK(omnibus::format_time(sys_days{9999y / 12 / 31} + 23h + 59min + 59s + 999999us) == "9999-12-31T23:59:59.999999Z");
  CHECK(omnibus::format_time(sys_days{2024y / 2 / 29} + 5us) == "2024-02-29T00:00:00.000005Z");
  // Any time from 1970 to 2200 comes back exactly.
  std::uint64_t x = 88172645463325252ull;  // xorshift: the same times every run
  for (int i = 0; i < 10000; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    const sys_time<microseconds> r{microseconds{static_cast<std::int64_t>(x % 7258118400000000ull)}};
    REQUIRE(omnibus::parse_time(omnibus::format_time(r)) == r);
  }
}
