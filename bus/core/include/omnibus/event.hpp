#pragma once
// Declaring an event's fields. Light on purpose: an event type's header (included by every
// service that publishes or handles it) pulls in no msgpack and no Boost; the encoding lives
// in omnibus/codec.hpp, which omnibus/event_bus.hpp includes where events are published and
// handled.
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
// old messages (it keeps its default) and any msgpack library can read it. Unknown keys are
// ignored (a newer producer may have added them). Enums travel as their underlying integer.
// Nested structs declare OMNIBUS_FIELDS too.

#include <array>
#include <cstddef>
#include <string_view>
#include <tuple>
#include <utility>

#include "omnibus/event_traits.hpp"

/// Declares the fields that travel in the event's msgpack map, under their own names.
/// Use it once, inside the struct, in a public section, followed by ';'.
#define OMNIBUS_FIELDS(...)                                                    \
  static constexpr std::string_view omnibus_field_list_ = #__VA_ARGS__;       \
  auto omnibus_fields_() noexcept { return std::tie(__VA_ARGS__); }           \
  auto omnibus_fields_() const noexcept { return std::tie(__VA_ARGS__); }     \
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

}  // namespace omnibus::detail
