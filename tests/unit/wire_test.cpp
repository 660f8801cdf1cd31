// The NATS and JetStream wire pieces mq reads itself: header blocks, ack subjects, stored
// messages and max-deliveries advisories.

#include <string>

#include <catch2/catch.hpp>

#include "wire.hpp"

using namespace omnibus::detail;

TEST_CASE("a header block parses byte for byte, in order, duplicates kept", "[mq][wire]") {
  const header_block b = parse_header_block("NATS/1.0\r\nNats-Msg-Id: abc\r\nX:  padded  \r\nX: two\r\nEmpty:\r\n\r\n");
  CHECK(b.status == 0);
  REQUIRE(b.headers.size() == 4);
  CHECK(b.headers[0] == std::pair<std::string, std::string>{"Nats-Msg-Id", "abc"});
  CHECK(b.headers[1].second == "padded");
  CHECK(b.headers[2].second == "two");
  CHECK(b.headers[3].second.empty());
  CHECK(parse_header_block("NATS/1.0 408 Request Timeout\r\n\r\n").status == 408);
  CHECK(parse_header_block("NATS/1.0\r\nV: caf\xe9\r\n\r\n").headers[0].second == "caf\xe9");  // bytes kept
}

TEST_CASE("a malformed header block is refused with what is wrong", "[mq][wire]") {
  auto refused = [](std::string block, const char* says) {
    INFO(block);
    CHECK_THROWS_WITH(parse_header_block(block), Catch::Contains(says));
  };
  refused("NATS/1.0\r\nNoColonHere\r\n\r\n", "has no ':'");
  refused("HTTP/1.1 200 OK\r\nA: b\r\n\r\n", "does not start with NATS/1.0");
  refused("NATS/1.0x\r\n\r\n", "status line");
  refused("NATS/1.0 2000\r\n\r\n", "three digits");
  refused("NATS/1.0\r\nA: b\r\n", "does not end with an empty line");
  refused("NATS/1.0\r\n: no name\r\n\r\n", "empty name");
  refused("NATS/1.0\r\nBad Name: v\r\n\r\n", "space or control");
  refused("NATS/1.0\r\n\r\ntrailing", "bytes follow");
  std::string many = "NATS/1.0\r\n";
  for (std::size_t i = 0; i <= max_header_lines; ++i) many += "X: 1\r\n";
  refused(many + "\r\n", "more than");
}

TEST_CASE("ack subjects give the delivery count and sequences, in both forms", "[mq][wire]") {
  auto v1 = parse_ack_subject("$JS.ACK.OMNIBUS.shop_mailer.3.42.17.1764400000000000000.5");
  REQUIRE(v1);
  CHECK(v1->stream == "OMNIBUS");
  CHECK(v1->consumer == "shop_mailer");
  CHECK(v1->delivered == 3);
  CHECK(v1->stream_sequence == 42);
  CHECK(v1->consumer_sequence == 17);
  auto v2 = parse_ack_subject("$JS.ACK.hub.acchash.OMNIBUS.shop_mailer.1.42.17.1764400000000000000.0.token");
  REQUIRE(v2);
  CHECK(v2->stream == "OMNIBUS");
  CHECK(v2->delivered == 1);
  CHECK_FALSE(parse_ack_subject("_INBOX.abc.1"));
  CHECK_FALSE(parse_ack_subject("$JS.ACK.S.C.x.42.17.1.0"));  // not a number
  CHECK_FALSE(parse_ack_subject("$JS.ACK.S.C.0.42.17.1.0"));  // delivered 0
  CHECK_FALSE(parse_ack_subject("$JS.ACK.S.C.1.42"));
}

TEST_CASE("base64 decodes exactly and refuses anything else", "[mq][wire]") {
  CHECK(base64_decode("TkFUUy8xLjANCg==") == std::string("NATS/1.0\r\n"));
  CHECK(base64_decode("/w==") == std::string("\xff"));
  CHECK(base64_decode("") == std::string());
  CHECK_FALSE(base64_decode("abc"));
  CHECK_FALSE(base64_decode("ab=c"));
  CHECK_FALSE(base64_decode("a*bc"));
}

TEST_CASE("a stored message read back by sequence keeps its exact bytes", "[mq][wire]") {
  auto m = parse_msg_get_response(
      R"({"type":"io.nats.jetstream.api.v1.stream_msg_get_response","message":{"subject":"shop.order\u002eplaced","seq":42,)"
      R"("hdrs":"TkFUUy8xLjANCk5vQ29sb25IZXJlDQoNCg==","data":"/wA=","time":"2026-11-29T08:00:00Z"}})");
  REQUIRE(m);
  CHECK(m->subject == "shop.order.placed");
  CHECK(m->sequence == 42);
  CHECK(m->header_block == "NATS/1.0\r\nNoColonHere\r\n\r\n");
  CHECK(m->body == std::string("\xff\0", 2));
  CHECK_FALSE(parse_msg_get_response(
      R"({"type":"io.nats.jetstream.api.v1.stream_msg_get_response","error":{"code":404,"err_code":10037,"description":"no message found"}})"));
  CHECK_THROWS(parse_msg_get_response("not json"));
  CHECK_THROWS(parse_msg_get_response(R"({"message":{"subject":"s","hdrs":"###"}})"));
}

TEST_CASE("max-deliveries advisories name the consumer and the stream sequence", "[mq][wire]") {
  auto a = parse_max_deliveries_advisory(
      R"({"type":"io.nats.jetstream.advisory.v1.max_deliver","id":"x","timestamp":"2026-11-29T08:00:00Z",)"
      R"("stream":"OMNIBUS","consumer":"shop_mailer","stream_seq":42,"deliveries":1000,"domain":"hub"})");
  REQUIRE(a);
  CHECK(a->consumer == "shop_mailer");
  CHECK(a->stream_sequence == 42);
  CHECK(a->deliveries == 1000);
  CHECK_FALSE(parse_max_deliveries_advisory(R"({"type":"io.nats.jetstream.advisory.v1.nak","stream":"S","consumer":"c","stream_seq":1})"));
  CHECK_FALSE(parse_max_deliveries_advisory("{"));
}

TEST_CASE("nats-server's RFC 3339 times parse to nanoseconds; anything else is refused", "[wire]") {
  using omnibus::detail::parse_rfc3339_ns;
  CHECK(parse_rfc3339_ns("1970-01-01T00:00:00Z") == 0);
  CHECK(parse_rfc3339_ns("2026-11-29T13:51:12.123456789Z") == 1795960272123456789LL);
  CHECK(parse_rfc3339_ns("2026-11-29T13:51:12.5Z") == 1795960272500000000LL);
  CHECK(parse_rfc3339_ns("2026-11-29T13:51:12.1234567891Z") == 1795960272123456789LL);  // beyond ns: dropped
  CHECK_FALSE(parse_rfc3339_ns(""));
  CHECK_FALSE(parse_rfc3339_ns("2026-11-29T13:51:12"));          // no zone
  CHECK_FALSE(parse_rfc3339_ns("2026-11-29T13:51:12+01:00"));    // nats-server writes UTC
  CHECK_FALSE(parse_rfc3339_ns("2026-02-30T13:51:12Z"));         // no such day
  CHECK_FALSE(parse_rfc3339_ns("2026-11-29T13:51:12.Z"));
  CHECK_FALSE(parse_rfc3339_ns("2026-11-29 13:51:12Z"));
}
