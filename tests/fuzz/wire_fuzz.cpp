// libFuzzer target for the NATS and JetStream readers Omnibus runs on bytes from the network:
// the header block parser, the $JS.ACK reply subject, base64, and the JSON of a stored message
// and of a max-deliveries advisory. Any input must parse or be refused the documented way; what
// parses must read back the same after writing it out again.
//
// Input: the bytes, given to every reader. Build and run: scripts/fuzz (a clang tree, build-fuzz).

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <string_view>

#include "wire.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view in{reinterpret_cast<const char*>(data), size};
  using namespace omnibus::detail;
  try {
    const header_block b = parse_header_block(in);
    if (b.headers.size() > max_header_lines) __builtin_trap();
    // Written out again (values are trimmed, so the written form is canonical), it reads the same.
    std::string again = b.status != 0 ? "NATS/1.0 " + std::to_string(b.status) + "\r\n" : std::string("NATS/1.0\r\n");
    for (const auto& [k, v] : b.headers) again += k + ": " + v + "\r\n";
    again += "\r\n";
    const header_block b2 = parse_header_block(again);
    if (b2.status != b.status || b2.headers != b.headers) __builtin_trap();
  } catch (const header_block_error&) {
    // the expected way to refuse
  }
  if (auto m = parse_ack_subject(in); m && m->delivered == 0) __builtin_trap();
  (void)base64_decode(in);
  try {
    (void)parse_msg_get_response(in);
  } catch (const std::runtime_error&) {
    // the expected way to refuse
  }
  if (auto a = parse_max_deliveries_advisory(in); a && (a->stream.empty() || a->stream_sequence == 0)) __builtin_trap();
  return 0;
}
