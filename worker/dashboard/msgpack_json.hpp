#pragma once
// A message body (msgpack from any producer) shown as pretty JSON on the worker's dashboard.
// Hostile bodies cost bounded memory and time, and the text is always valid UTF-8 that the
// page escapes like any other producer text. Internal to the worker library.

#include <cstddef>
#include <string>
#include <string_view>

namespace omnibus::detail {

/// How much of a body is shown. The defaults suit one message on one page.
struct json_limits {
  std::size_t max_depth = 32;           ///< nested arrays and maps; deeper bodies are not decoded
  std::size_t max_elements = 100000;    ///< values written (map keys count), then "…"
  std::size_t max_output = 256 * 1024;  ///< bytes of JSON text, then "…" (which adds 3 more)
};

/// The JSON text of one body.
struct json_result {
  std::string text;       ///< pretty JSON, a hex dump when the body is not msgpack; valid UTF-8
  bool complete = true;   ///< false when `text` stops early ("…") or is the hex dump
  bool decoded = false;   ///< true when `text` is JSON (the body was msgpack), false for the hex dump or an empty body
  std::string note;       ///< why it is incomplete, or "N trailing bytes"; empty when nothing to say
};

/// `bytes` (the first msgpack object in them) as pretty JSON with a 2-space indent: nil null,
/// integers exact, floats shortest round-trip (NaN and infinities as the strings "NaN",
/// "Infinity", "-Infinity"), bin {"$bin": base64}, ext {"$ext": type, "hex": data}, map keys
/// that are not strings as their JSON text, quoted. Bytes that are not msgpack give a hex dump
/// of the first 4 KiB and the reason in `note`. Never throws for any input, except bad_alloc.
/// Memory stays proportional to `bytes.size()` whatever lengths the body announces.
[[nodiscard]] json_result msgpack_to_json(std::string_view bytes, const json_limits& limits = {});

}  // namespace omnibus::detail
