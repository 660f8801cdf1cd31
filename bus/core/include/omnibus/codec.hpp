#pragma once
// The msgpack encoding of events declared with OMNIBUS_FIELDS (omnibus/event.hpp): a map from
// field name to value. Decoding walks the map once and converts each field in place (no
// std::map is built), after a size check that keeps a lying body from reserving memory.
// Included by omnibus/event_bus.hpp; include it yourself only to encode or decode a body
// outside the bus. Only msgpack-c's standard-library adaptors are included, not its Boost
// ones: include <msgpack.hpp> before this header for fields of Boost types.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

#include <msgpack/object.hpp>
#include <msgpack/pack.hpp>
#include <msgpack/sbuffer.hpp>
#include <msgpack/unpack.hpp>
#include <msgpack/adaptor/bool.hpp>
#include <msgpack/adaptor/deque.hpp>
#include <msgpack/adaptor/float.hpp>
#include <msgpack/adaptor/int.hpp>
#include <msgpack/adaptor/list.hpp>
#include <msgpack/adaptor/map.hpp>
#include <msgpack/adaptor/nil.hpp>
#include <msgpack/adaptor/pair.hpp>
#include <msgpack/adaptor/set.hpp>
#include <msgpack/adaptor/string.hpp>
#include <msgpack/adaptor/vector.hpp>
#include <msgpack/adaptor/vector_bool.hpp>
#include <msgpack/adaptor/vector_char.hpp>
#include <msgpack/adaptor/vector_unsigned_char.hpp>
#include <msgpack/adaptor/define.hpp>
#include <msgpack/adaptor/cpp11/array.hpp>
#include <msgpack/adaptor/cpp11/chrono.hpp>
#include <msgpack/adaptor/cpp11/tuple.hpp>
#include <msgpack/adaptor/cpp11/unordered_map.hpp>
#include <msgpack/adaptor/cpp11/unordered_set.hpp>
#include <msgpack/adaptor/cpp17/byte.hpp>
#include <msgpack/adaptor/cpp17/optional.hpp>
#include <msgpack/adaptor/cpp17/string_view.hpp>
#include <msgpack/adaptor/cpp17/vector_byte.hpp>

#include "omnibus/error.hpp"
#include "omnibus/event.hpp"
#include "omnibus/export.hpp"

namespace omnibus::detail {

// msgpack-c 4 packs a whole-number float or double as an integer after testing it against
// double(UINT64_MAX), which rounds to 2^64: 2^64 itself passes, and converting it to uint64_t is
// undefined behaviour (found by the envelope fuzzer). That one value goes out as the float64 it
// is, written by hand: a float64 marker and its 8 bytes, big-endian.
template <class Packer>
void pack_two_to_the_64(Packer& pk) {
  constexpr double d = 18446744073709551616.0;
  std::uint64_t bits = 0;
  static_assert(sizeof bits == sizeof d);
  __builtin_memcpy(&bits, &d, sizeof bits);
  char raw[9];
  raw[0] = static_cast<char>(0xcb);
  for (int i = 0; i < 8; ++i) raw[1 + i] = static_cast<char>(bits >> (56 - 8 * i));
  pk.pack_str_body(raw, sizeof raw);  // raw bytes, no header of its own
}

template <class Packer, class V>
void pack_value(Packer& pk, const V& v) {
  if constexpr (std::is_enum_v<V>) {
    pk.pack(static_cast<std::underlying_type_t<V>>(v));
  } else if constexpr (std::is_floating_point_v<V>) {
    if (static_cast<double>(v) == 18446744073709551616.0) {
      pack_two_to_the_64(pk);
    } else {
      pk.pack(v);
    }
  } else if constexpr (std::is_same_v<V, std::optional<double>> || std::is_same_v<V, std::optional<float>>) {
    if (v) {
      pack_value(pk, *v);
    } else {
      pk.pack_nil();
    }
  } else {
    pk.pack(v);
  }
}

template <class V>
void convert_value(const msgpack::object& o, V& v) {
  if constexpr (std::is_enum_v<V>) {
    v = static_cast<V>(o.as<std::underlying_type_t<V>>());
  } else {
    o.convert(v);
  }
}

template <class Packer, class T>
void pack_fields(Packer& pk, const T& self) {
  constexpr auto& names = field_names<T>;
  auto fields = self.omnibus_fields_();
  pk.pack_map(static_cast<std::uint32_t>(names.size()));
  [&]<std::size_t... I>(std::index_sequence<I...>) {
    ((pk.pack(names[I]), pack_value(pk, std::get<I>(fields))), ...);
  }(std::make_index_sequence<names.size()>{});
}

template <class V>
struct is_optional : std::false_type {};
template <class V>
struct is_optional<std::optional<V>> : std::true_type {
  using value_type = V;
};

/// What a field of type V holds, in words, for decode errors ("an integer", "a string", ...).
template <class V>
std::string expected_type() {
  if constexpr (is_optional<V>::value) {
    return "nil or " + expected_type<typename is_optional<V>::value_type>();
  } else if constexpr (std::is_same_v<V, bool>) {
    return "a boolean";
  } else if constexpr (std::is_enum_v<V>) {
    return "an integer (an enum's value)";
  } else if constexpr (std::is_integral_v<V>) {
    return std::string("an integer that fits ") + (std::is_signed_v<V> ? "a signed " : "an unsigned ") +
           std::to_string(sizeof(V) * 8) + "-bit field";
  } else if constexpr (std::is_floating_point_v<V>) {
    return "a number";
  } else if constexpr (std::is_convertible_v<V, std::string_view>) {
    return "a string";
  } else if constexpr (requires { typename V::omnibus_fields_declared_; }) {
    return "a map (a nested struct)";
  } else if constexpr (requires { typename V::mapped_type; }) {
    return "a map";
  } else if constexpr (requires { typename V::value_type; std::declval<V&>().begin(); }) {
    return "an array";
  } else {
    return "another type";
  }
}

[[noreturn]] OMNIBUS_API void throw_wrong_type(std::string_view field, const std::string& expected,
                                               msgpack::type::object_type got);
[[noreturn]] OMNIBUS_API void throw_nested(std::string_view field, const decode_error& inner);
[[noreturn]] OMNIBUS_API void throw_not_a_map(msgpack::type::object_type got);

template <class T>
void unpack_fields(const msgpack::object& o, T& self) {
  if (o.type != msgpack::type::MAP) throw_not_a_map(o.type);
  constexpr auto& names = field_names<T>;
  auto fields = self.omnibus_fields_();
  const msgpack::object_kv* kv = o.via.map.ptr;
  const msgpack::object_kv* end = kv + o.via.map.size;
  for (; kv != end; ++kv) {
    if (kv->key.type != msgpack::type::STR) continue;  // not one of ours
    std::string_view key{kv->key.via.str.ptr, kv->key.via.str.size};
    [&]<std::size_t... I>(std::index_sequence<I...>) {
      // Visit the one field whose name matches; unknown keys match none and are skipped.
      (void)((key == names[I] ? ([&] {
        try {
          convert_value(kv->val, std::get<I>(fields));
        } catch (const decode_error& inner) {
          throw_nested(names[I], inner);
        } catch (const msgpack::type_error&) {
          using field_type = std::remove_cvref_t<std::tuple_element_t<I, fields_tuple_t<T>>>;
          throw_wrong_type(names[I], expected_type<field_type>(), kv->val.type);
        }
      }(), true) : false) || ...);
    }(std::make_index_sequence<names.size()>{});
  }
}

template <class E>
std::string encode_body(const E& event) {
  msgpack::sbuffer buf(256);
  msgpack::pack(buf, event);
  return std::string(buf.data(), buf.size());
}

[[noreturn]] OMNIBUS_API void throw_malformed(std::string_view event_name, const char* what);

/// Walks the msgpack bytes once, without allocating, and throws decode_error(malformed_body)
/// when a container announces more elements, or a string more bytes, than the bytes left
/// could hold. Run before msgpack-c, which reserves every announced container up front: with
/// this check what it reserves stays proportional to the body, however the body lies.
OMNIBUS_API void check_sizes(std::string_view body, std::string_view event_name);

/// How deep maps and arrays may nest in a body (an event's own nesting is far shallower).
inline constexpr std::size_t max_body_depth = 64;

template <class E>
void decode_body(std::string_view body, E& out) {
  msgpack::object_handle oh;
  std::size_t offset = 0;
  // A container or string cannot hold more elements or bytes than the body has: without these
  // checks a 5-byte body announcing 2^32 elements makes msgpack-c allocate them up front, and
  // nested containers each announcing the body's size reserve that much again per level.
  const std::size_t most = body.size();
  const msgpack::unpack_limit limit(most, most, most, most, most, max_body_depth);
  check_sizes(body, E::name);
  try {
    msgpack::unpack(oh, body.data(), body.size(), offset, nullptr, nullptr, limit);
  } catch (const std::exception& e) {  // msgpack's unpack_error, insufficient_bytes, ...
    throw_malformed(E::name, e.what());
  }
  if (offset != body.size()) throw_malformed(E::name, "trailing bytes after the map");
  try {
    oh.get().convert(out);
  } catch (const decode_error& e) {
    throw decode_error(e.kind(), std::string(E::name) + ": " + e.what());
  } catch (const msgpack::type_error& e) {  // events declared with MSGPACK_DEFINE_MAP
    throw decode_error(decode_failure::wrong_type, std::string(E::name) + ": a field has the wrong type (" + e.what() + ")");
  }
}

}  // namespace omnibus::detail

/// msgpack-c packs and converts every type declared with OMNIBUS_FIELDS (events and the structs
/// nested in them) as a map, through these adaptors.
namespace msgpack {
MSGPACK_API_VERSION_NAMESPACE(MSGPACK_DEFAULT_API_NS) {
namespace adaptor {

/// Packs an OMNIBUS_FIELDS type as a map from field name to value.
template <class T>
struct pack<T, std::void_t<typename T::omnibus_fields_declared_>> {
  /// Writes `v`'s fields.
  template <class Stream>
  packer<Stream>& operator()(packer<Stream>& pk, const T& v) const {
    ::omnibus::detail::pack_fields(pk, v);
    return pk;
  }
};

/// Converts a map into an OMNIBUS_FIELDS type, field by field.
template <class T>
struct convert<T, std::void_t<typename T::omnibus_fields_declared_>> {
  /// Reads `o` into `v`; fields missing from the map keep their values.
  const msgpack::object& operator()(const msgpack::object& o, T& v) const {
    ::omnibus::detail::unpack_fields(o, v);
    return o;
  }
};

}  // namespace adaptor
}  // MSGPACK_API_VERSION_NAMESPACE
}  // namespace msgpack

