// libFuzzer target for the decoding a worker does on every message it fetches: the envelope
// (headers) and then the typed body. Any input must either decode or throw omnibus::decode_error:
// no crash, no other exception, no sanitizer report, no huge allocation.
//
// Input: <subject> '\n' <header lines "Name: value" separated by '\n'> "\n\n" <body>.
// Build and run: scripts/fuzz [seconds] (a clang tree, build-fuzz).

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "omnibus/codec.hpp"
#include "omnibus/envelope.hpp"
#include "omnibus/error.hpp"
#include "omnibus/event.hpp"
#include "fuzz_event.hpp"

namespace {

omnibus::message parse_input(std::string_view in) {
  omnibus::message m;
  auto nl = in.find('\n');
  m.subject = std::string(in.substr(0, nl));
  if (nl == std::string_view::npos) return m;
  in.remove_prefix(nl + 1);
  auto end = in.find("\n\n");
  std::string_view headers = in.substr(0, end);
  m.body = end == std::string_view::npos ? std::string() : std::string(in.substr(end + 2));
  while (!headers.empty()) {
    auto line_end = headers.find('\n');
    std::string_view line = headers.substr(0, line_end);
    auto colon = line.find(": ");
    if (colon != std::string_view::npos) m.headers.emplace_back(line.substr(0, colon), line.substr(colon + 2));
    if (line_end == std::string_view::npos) break;
    headers.remove_prefix(line_end + 1);
  }
  return m;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const omnibus::message msg = parse_input({reinterpret_cast<const char*>(data), size});
  try {
    const omnibus::envelope env = omnibus::decode(msg, "fz", 64 * 1024);
    const fuzz_event e = omnibus::decode_event<fuzz_event>(env);
    // What decodes re-encodes, and decodes to the same bytes again.
    omnibus::envelope again = env;
    again.body = omnibus::detail::encode_body(e);
    const fuzz_event e2 = omnibus::decode_event<fuzz_event>(again);
    if (omnibus::detail::encode_body(e2) != again.body) __builtin_trap();
  } catch (const omnibus::decode_error&) {
    // the expected way to refuse
  }
  return 0;
}
