#pragma once
// The example's one event: a plain struct, sent as a msgpack map.

#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include <omnibus/bus.hpp>  // events, the bus, the context: what most code needs

struct greeting {
  static constexpr std::string_view name = "hello.greeting";  // the subject is <prefix>.hello.greeting
  static constexpr int version = 1;
  std::string to;
  std::int64_t times = 1;
  OMNIBUS_FIELDS(to, times);
};

// A keyed event: one visitor's visits are handled one at a time, in the order they were
// published, across every worker; different visitors' in parallel (README "Ordered per key").
struct visit {
  static constexpr std::string_view name = "hello.visit";  // subjects <prefix>.hello.visit.k0 .. k3
  static constexpr int version = 1;
  static constexpr int partitions = 4;
  static std::string ordering_key(const visit& v) { return v.visitor; }
  std::string visitor;
  std::int64_t number = 0;
  OMNIBUS_FIELDS(visitor, number);
};

// Where the example's events go: group "hello", and the same environment variables the worker
// reads (OMNIBUS_STREAM, OMNIBUS_SUBJECT_PREFIX, OMNIBUS_SCHEMA), when set.
inline omnibus::bus_options hello_options() {
  omnibus::bus_options o;
  o.group = "hello";
  if (const char* v = std::getenv("OMNIBUS_STREAM")) o.stream.name = v;
  if (const char* v = std::getenv("OMNIBUS_SUBJECT_PREFIX")) o.stream.subject_prefix = v;
  if (const char* v = std::getenv("OMNIBUS_SCHEMA")) o.schema = v;
  return o;
}
