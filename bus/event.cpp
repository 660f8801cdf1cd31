#include "bus/event.hpp"

#include <string>

namespace bus {

const char* to_string(decode_failure kind) noexcept {
  switch (kind) {
    case decode_failure::missing_header: return "missing_header";
    case decode_failure::bad_header: return "bad_header";
    case decode_failure::name_mismatch: return "name_mismatch";
    case decode_failure::newer_version: return "newer_version";
    case decode_failure::oversized: return "oversized";
    case decode_failure::malformed_body: return "malformed_body";
    case decode_failure::wrong_type: return "wrong_type";
  }
  return "unknown";
}

namespace detail {

void throw_wrong_type(std::string_view field, const char* what) {
  throw decode_error(decode_failure::wrong_type,
                     "field '" + std::string(field) + "' has a value of the wrong type (" + what + ")");
}

void throw_nested(std::string_view field, const decode_error& inner) {
  std::string inner_what = inner.what();
  // "field 'x' ..." inside "field 'outer'" reads as "field 'outer.x' ...".
  const std::string prefix = "field '";
  // Inside a field, "not a map" means the field holds the wrong type.
  auto kind = inner.kind() == decode_failure::malformed_body ? decode_failure::wrong_type : inner.kind();
  if (inner_what.rfind(prefix, 0) == 0) {
    throw decode_error(kind, prefix + std::string(field) + "." + inner_what.substr(prefix.size()));
  }
  throw decode_error(kind, "field '" + std::string(field) + "': " + inner_what);
}

void throw_not_a_map(msgpack::type::object_type got) {
  throw decode_error(decode_failure::malformed_body,
                     "expected a msgpack map, found msgpack type " + std::to_string(static_cast<int>(got)));
}

void throw_malformed(std::string_view event_name, const char* what) {
  throw decode_error(decode_failure::malformed_body,
                     std::string(event_name) + ": body is not valid msgpack (" + what + ")");
}

}  // namespace detail
}  // namespace bus
