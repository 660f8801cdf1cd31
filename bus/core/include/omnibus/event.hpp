#pragma once
// Declaring an event's fields, and their msgpack map encoding.
//
//   struct order_placed {
//     static constexpr std::string_view name = "order.placed";
//     static constexpr int version = 1;
//     std::int64_t order_id = 0;
//     std::string customer;
//     OMNIBUS_FIELDS(order_id, customer);
//   };
//
// The body is a msgpack map from field name to value, so a field added later still decodes
// old messages (it keeps its default) and any msgpack library can read it. Unlike
// MSGPACK_DEFINE_MAP, decoding walks the map once and converts each field in place: no
// std::map is built. Unknown keys are ignored (a newer producer may have added them).
// Enums travel as their underlying integer. Nested structs declare OMNIBUS_FIELDS too.

#include <array>
#include <cstddef>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>

#include <msgpack.hpp>

#include "omnibus/export.hpp"
#include "omnibus/error.hpp"
#include "omnibus/event_traits.hpp"
#include "omnibus/fwd.hpp"

/// Declares the fields that travel in the event's msgpack map, under their own names.
/// Use it once, inside the struct, in a public section, followed by ';'.
#define OMNIBUS_FIELDS(...)                                                                  \
  static constexpr std::string_view omnibus_field_list_ = #__VA_ARGS__;                     \
  auto omnibus_fields_() noexcept { return std::tie(__VA_ARGS__); }                         \
  auto omnibus_fields_() const noexcept { return std::tie(__VA_ARGS__); }                   \
  template <class Packer>                                                                   \
  void msgpack_pack(Packer& pk) const {                                                     \
    ::omnibus::detail::pack_fields(pk, *this);                                                  \
  }                                                                                         \
  void msgpack_unpack(const ::msgpack::object& o) { ::omnibus::detail::unpack_fields(o, *this); } \
  using omnibus_fields_declared_ = void

namespace omnibus::detail {

template <std::size_t N>
constexpr std::array<std::string_view, N> split_field_names(std::string_view list) {
  std::array<std::string_view, N> names{};
  for (std::size_t i = 0; i < N; ++i) {
    auto comma = list.find(',');
    auto part = list.substr(0, comma);
    while (!part.empty() && part.front() == ' ') part.remove_prefix(1);
    while (!part.empty() && part.back() == ' ') part.remove_suffix(1);
    names[i] = part;
    list = comma == std::string_view::npos ? std::string_view{} : list.substr(comma + 1);
  }
  return names;
}

template <class T>
using fields_tuple_t = decltype(std::declval<T&>().omnibus_fields_());

template <class T>
inline constexpr std::size_t field_count = std::tuple_size_v<fields_tuple_t<T>>;

template <class T>
inline constexpr auto field_names = split_field_names<field_count<T>>(T::omnibus_field_list_);

template <class Packer, class V>
void pack_value(Packer& pk, const V& v) {
  if constexpr (std::is_enum_v<V>) {
    pk.pack(static_cast<std::underlying_type_t<V>>(v));
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

[[noreturn]] OMNIBUS_API void throw_wrong_type(std::string_view field, const char* what);
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
        } catch (const msgpack::type_error& e) {
          throw_wrong_type(names[I], e.what());
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
