// libFuzzer target for the dashboard's view of a message body: whatever bytes a producer sent,
// msgpack_to_json must return (no crash, no exception, no sanitizer report, no huge allocation:
// run.sh sets -malloc_limit_mb) a text that is UTF-8, so that the page can escape it, and that
// stays within max_output plus the "…" that marks a cut.
//
// Input: the body. Each input is shown twice: with the default limits, and with small ones
// so that the cuts (depth, values, size) are reached often, and inside map keys too.
// Build and run: scripts/fuzz [seconds] (a clang tree, build-fuzz).

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "dashboard/msgpack_json.hpp"
#include "omnibus/text.hpp"

namespace {

constexpr std::size_t ellipsis_size = 3;  // "…" in UTF-8

void show(std::string_view body, const omnibus::detail::json_limits& limits) {
  const omnibus::detail::json_result r = omnibus::detail::msgpack_to_json(body, limits);
  if (!omnibus::is_utf8(r.text) || !omnibus::is_utf8(r.note)) __builtin_trap();
  if (r.text.size() > limits.max_output + ellipsis_size) __builtin_trap();
  if (!r.complete && r.note.empty()) __builtin_trap();  // a cut always says why
  if (r.text.empty() != body.empty()) __builtin_trap();  // only an empty body shows nothing
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  show(body, {});
  omnibus::detail::json_limits small;
  small.max_depth = 4;
  small.max_elements = 16;
  small.max_output = 64;
  show(body, small);
  return 0;
}
