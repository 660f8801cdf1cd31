#include "omnibus/codec.hpp"

#include <cstdint>
#include <string>

namespace omnibus {

const char* to_string(decode_failure kind) noexcept {
  switch (kind) {
    case decode_failure::missing_header: return "missing_header";
    case decode_failure::bad_header: return "bad_header";
    case decode_failure::too_many_headers: return "too_many_headers";
    case decode_failure::name_mismatch: return "name_mismatch";
    case decode_failure::newer_version: return "newer_version";
    case decode_failure::oversized: return "oversized";
    case decode_failure::malformed_body: return "malformed_body";
    case decode_failure::wrong_type: return "wrong_type";
  }
  return "unknown";
}

namespace detail {

namespace {

// How msgpack calls what it holds, in the words of expected_type().
const char* received(msgpack::type::object_type t) {
  switch (t) {
    case msgpack::type::NIL: return "nil";
    case msgpack::type::BOOLEAN: return "a boolean";
    case msgpack::type::POSITIVE_INTEGER: return "a positive integer";
    case msgpack::type::NEGATIVE_INTEGER: return "a negative integer";
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64: return "a floating-point number";
    case msgpack::type::STR: return "a string";
    case msgpack::type::BIN: return "binary data";
    case msgpack::type::ARRAY: return "an array";
    case msgpack::type::MAP: return "a map";
    case msgpack::type::EXT: return "a msgpack extension";
  }
  return "an unknown msgpack type";
}

}  // namespace

void throw_wrong_type(std::string_view field, const std::string& expected, msgpack::type::object_type got) {
  std::string what = "field '" + std::string(field) + "' expects " + expected + ", but the body holds " + received(got);
  if (got == msgpack::type::POSITIVE_INTEGER || got == msgpack::type::NEGATIVE_INTEGER) {
    if (expected.rfind("an integer", 0) == 0) what += " out of its range";
  }
  throw decode_error(decode_failure::wrong_type, what);
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
  throw decode_error(decode_failure::malformed_body, std::string("expected a map, found ") + received(got));
}

void check_sizes(std::string_view body, std::string_view event_name) {
  const auto* p = reinterpret_cast<const unsigned char*>(body.data());
  const std::size_t size = body.size();
  std::size_t at = 0;
  std::uint64_t owed = 1;  // objects still to read; each needs at least one byte
  auto big_endian = [&](std::size_t n) -> std::uint64_t {
    if (size - at < n) throw_malformed(event_name, "a length cut short");
    std::uint64_t v = 0;
    for (std::size_t k = 0; k < n; ++k) v = (v << 8) | p[at + k];
    at += n;
    return v;
  };
  auto skip = [&](std::uint64_t n) {
    if (size - at < n) throw_malformed(event_name, "a value announces more bytes than the body has left");
    at += static_cast<std::size_t>(n);
  };
  auto expect = [&](std::uint64_t more) {
    owed += more;
    if (owed > size - at) throw_malformed(event_name, "a container announces more elements than the body has bytes left");
  };
  while (owed > 0) {
    if (at >= size) throw_malformed(event_name, "the body ends inside a value");
    const unsigned char t = p[at++];
    --owed;
    if (t <= 0x7f || t >= 0xe0 || t == 0xc0 || t == 0xc2 || t == 0xc3) continue;  // one-byte values
    if (t >= 0x80 && t <= 0x8f) { expect(2 * std::uint64_t{t & 0x0fu}); continue; }
    if (t >= 0x90 && t <= 0x9f) { expect(t & 0x0fu); continue; }
    if (t >= 0xa0 && t <= 0xbf) { skip(t & 0x1fu); continue; }
    switch (t) {
      case 0xc4: case 0xd9: skip(big_endian(1)); break;  // bin8, str8
      case 0xc5: case 0xda: skip(big_endian(2)); break;  // bin16, str16
      case 0xc6: case 0xdb: skip(big_endian(4)); break;  // bin32, str32
      case 0xc7: skip(big_endian(1) + 1); break;         // ext8: length, type, data
      case 0xc8: skip(big_endian(2) + 1); break;
      case 0xc9: skip(big_endian(4) + 1); break;
      case 0xcc: case 0xd0: skip(1); break;
      case 0xcd: case 0xd1: skip(2); break;
      case 0xca: case 0xce: case 0xd2: skip(4); break;
      case 0xcb: case 0xcf: case 0xd3: skip(8); break;
      case 0xd4: skip(2); break;  // fixext 1, 2, 4, 8, 16: type byte and data
      case 0xd5: skip(3); break;
      case 0xd6: skip(5); break;
      case 0xd7: skip(9); break;
      case 0xd8: skip(17); break;
      case 0xdc: expect(big_endian(2)); break;      // array16
      case 0xdd: expect(big_endian(4)); break;      // array32
      case 0xde: expect(2 * big_endian(2)); break;  // map16
      case 0xdf: expect(2 * big_endian(4)); break;  // map32
      default: throw_malformed(event_name, "a byte that is no msgpack type (0xc1)");
    }
  }
}

void throw_malformed(std::string_view event_name, const char* what) {
  throw decode_error(decode_failure::malformed_body,
                     std::string(event_name) + ": body is not valid msgpack (" + what + ")");
}

}  // namespace detail
}  // namespace omnibus
