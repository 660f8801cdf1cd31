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

/// True when E names an ordering key (README "Ordered per key"): `static constexpr int
/// partitions` (1..1024, part of the wire format: fixed per event name) and a static
/// `ordering_key(const E&)` returning the key (convertible to std::string_view, 1..256 bytes).
/// Its events carry the key in the Omnibus-Key header and travel on "<prefix>.<name>.k<n>",
/// n = partition_of(key, partitions); listeners with ordering::per_key run each key's events
/// one at a time, in order, across workers.
template <class E>
concept keyed_event = requires(const E& e) {
  { E::partitions } -> std::convertible_to<int>;
  { E::ordering_key(e) } -> std::convertible_to<std::string_view>;
};

/// E's partitions, or 0 for an event without an ordering key.
template <class E>
inline constexpr int partitions_of = [] {
  if constexpr (keyed_event<E>) {
    return static_cast<int>(E::partitions);
  } else {
    return 0;
  }
}();

/// The most partitions an event type may have.
inline constexpr int max_partitions = 1024;

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
    if constexpr (requires { E::partitions; }) {
      static_assert(keyed_event<E>, "bus: an event with `partitions` also needs `static std::string ordering_key(const E&)`");
      static_assert(partitions_of<E> >= 1 && partitions_of<E> <= max_partitions,
                    "bus: an event's partitions are 1..1024");
    }
  }
}

}  // namespace detail
}  // namespace omnibus
