#pragma once
// What makes a type an event, checked without pulling msgpack into every header.

#include <concepts>
#include <string_view>
#include <type_traits>

namespace omnibus {

/// An event: a default-constructible struct with `static constexpr std::string_view name`
/// (stable, dotted), `static constexpr int version`, and fields declared with
/// OMNIBUS_FIELDS(...) (or msgpack's MSGPACK_DEFINE_MAP). See omnibus/event.hpp.
template <class E>
concept event = std::is_class_v<E> && std::default_initializable<E> && std::copy_constructible<E> &&
    requires {
      { E::name } -> std::convertible_to<std::string_view>;
      { E::version } -> std::convertible_to<int>;
    } && (requires { typename E::omnibus_fields_declared_; } || requires { &E::msgpack_unpack; });

/// True when E declares `static constexpr bool local_only = true`: its sync listeners run,
/// and it never leaves the process (no stream, no outbox, no async listeners).
template <class E>
inline constexpr bool is_local_only = [] {
  if constexpr (requires { E::local_only; }) {
    return static_cast<bool>(E::local_only);
  } else {
    return false;
  }
}();

namespace detail {

/// Event names: lower-case dotted words, as they become NATS subject tokens.
constexpr bool valid_event_name(std::string_view n) {
  if (n.empty() || n.size() > 200 || n.front() == '.' || n.back() == '.') return false;
  char prev = 0;
  for (char c : n) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
    if (!ok || (c == '.' && prev == '.')) return false;
    prev = c;
  }
  return true;
}

template <class E>
constexpr void check_event() {
  static_assert(event<E>,
                "bus: this type is not an event. An event is a struct with "
                "`static constexpr std::string_view name`, `static constexpr int version` and "
                "OMNIBUS_FIELDS(...) (see omnibus/event.hpp).");
  if constexpr (event<E>) {
    static_assert(valid_event_name(E::name),
                  "bus: an event name is lower-case words of [a-z0-9_-] joined by dots, e.g. "
                  "\"order.placed\"");
    static_assert(E::version >= 1, "bus: an event's version starts at 1");
  }
}

}  // namespace detail
}  // namespace omnibus
