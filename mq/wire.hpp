#pragma once
// The NATS and JetStream wire pieces Omnibus reads itself, as pure functions over bytes: the
// header block, a delivery's $JS.ACK reply subject, and the JSON of a stream message read
// back by sequence or of a max-deliveries advisory. No NATS.c here, so the fuzz tree and the
// unit tests use them without a server. Private to mq/.

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace omnibus::detail {

/// A header block that does not follow "NATS/1.0[ status]\r\n(Name: value\r\n)*\r\n".
class header_block_error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// The most header lines one block may carry; more is treated as a malformed block.
inline constexpr std::size_t max_header_lines = 1024;

/// A parsed header block: the status line's code (0 when none) and the headers in order.
struct header_block {
  int status = 0;
  std::vector<std::pair<std::string, std::string>> headers;
};

/// Parses a header block byte for byte as nats-server stores it. Names are the bytes before
/// the first ':' and may not be empty or hold a space or control character; values have
/// their leading and trailing blanks trimmed, as NATS clients do. Throws header_block_error
/// naming the first problem (no "NATS/1.0" line, a line without ':', no final empty line,
/// more than max_header_lines lines).
[[nodiscard]] header_block parse_header_block(std::string_view block);

/// What JetStream puts in a delivery's reply subject.
struct ack_metadata {
  std::string stream;
  std::string consumer;
  std::uint64_t delivered = 0;  ///< how many times this message was delivered, this one included
  std::uint64_t stream_sequence = 0;
  std::uint64_t consumer_sequence = 0;
};

/// Parses "$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending>" and the newer
/// form with a domain and an account hash before the stream (and a token after). nullopt when
/// `reply` is not such a subject: a status message from the server, or garbage.
[[nodiscard]] std::optional<ack_metadata> parse_ack_subject(std::string_view reply);

/// Standard base64 with padding; nullopt on any other character or a bad length.
[[nodiscard]] std::optional<std::string> base64_decode(std::string_view text);

/// One stored message, read back by sequence ($JS.API.STREAM.MSG.GET): the exact bytes.
struct stored_message {
  std::string subject;  ///< as the server's JSON gives it (invalid UTF-8 there becomes U+FFFD)
  std::string header_block;  ///< byte-exact; empty when the message had no headers
  std::string body;          ///< byte-exact
  std::uint64_t sequence = 0;
  /// When the stream stored it, as RFC 3339 UTC ("2026-11-29T13:51:12.123456789Z"); "" if absent.
  std::string time;
};

/// Nanoseconds since the epoch of an RFC 3339 UTC time as nats-server writes it (fraction of
/// up to 9 digits, "Z"); nullopt for anything else.
[[nodiscard]] std::optional<std::int64_t> parse_rfc3339_ns(std::string_view text);

/// Parses a $JS.API.STREAM.MSG.GET response. nullopt when the server answered with an error
/// (no such message: deleted, or aged out); throws std::runtime_error for a reply that is not
/// such a response at all.
[[nodiscard]] std::optional<stored_message> parse_msg_get_response(std::string_view json);

/// io.nats.jetstream.advisory.v1.max_deliver: the server gave up on a message.
struct max_deliveries_advisory {
  std::string stream;
  std::string consumer;
  std::uint64_t stream_sequence = 0;
  std::uint64_t deliveries = 0;
};

/// Parses a max-deliveries advisory; nullopt for any other JSON.
[[nodiscard]] std::optional<max_deliveries_advisory> parse_max_deliveries_advisory(std::string_view json);

}  // namespace omnibus::detail
