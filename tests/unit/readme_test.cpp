// The README's wire-format example is what the codec writes, byte for byte.

#include <cstdint>
#include <string>

#include <catch2/catch.hpp>

#include "omnibus/codec.hpp"
#include "omnibus/envelope.hpp"
#include "omnibus/event.hpp"

namespace {
struct order_placed {
  static constexpr std::string_view name = "order.placed";
  static constexpr int version = 1;
  std::int64_t order_id = 0;
  std::string customer;
  OMNIBUS_FIELDS(order_id, customer);
};
}  // namespace

TEST_CASE("the README's example message is what the codec writes", "[bus][envelope][readme]") {
  omnibus::envelope env;
  env.id = omnibus::event_id::parse("01936a6e-5a3b-7c4d-8e9f-0a1b2c3d4e5f");
  env.name = "order.placed";
  env.version = 1;
  env.published_at = omnibus::parse_time("2026-11-22T18:51:32.123456Z");
  env.meta.correlation_id = "req-7";
  env.meta.values = {{"tenant", "acme"}};
  env.body = omnibus::detail::encode_body(order_placed{1042, "ada"});
  omnibus::message m = omnibus::encode(env, "omnibus");

  CHECK(m.subject == "omnibus.order.placed");
  // The NATS header block as the README shows it; its length goes into HPUB.
  std::string block = "NATS/1.0\r\n";
  for (const auto& [k, v] : m.headers) block += k + ": " + v + "\r\n";
  block += "\r\n";
  CHECK(block ==
        "NATS/1.0\r\n"
        "Nats-Msg-Id: 01936a6e-5a3b-7c4d-8e9f-0a1b2c3d4e5f\r\n"
        "Omnibus-Event: order.placed\r\n"
        "Omnibus-Version: 1\r\n"
        "Omnibus-Published: 2026-11-22T18:51:32.123456Z\r\n"
        "Omnibus-Correlation-Id: req-7\r\n"
        "Omnibus-Meta-tenant: acme\r\n"
        "\r\n");
  CHECK(block.size() == 218);
  CHECK(block.size() + m.body.size() == 244);
  const std::string body_hex = "82a86f726465725f6964cd0412a8637573746f6d6572a3616461";
  std::string hex;
  for (unsigned char c : m.body) {
    static constexpr char digits[] = "0123456789abcdef";
    hex += digits[c >> 4];
    hex += digits[c & 15];
  }
  CHECK(hex == body_hex);
  CHECK(omnibus::decode_event<order_placed>(omnibus::decode(m, "omnibus")).customer == "ada");
}
