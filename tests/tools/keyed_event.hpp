#pragma once
// The keyed event of the per-key ordering tests and tools: 8 partitions, keyed by `key`,
// `seq` counting each key's events from 1.

#include <cstdint>
#include <string>
#include <string_view>

#include "omnibus/event.hpp"

struct keyed_event {
  static constexpr std::string_view name = "test.keyed";
  static constexpr int version = 1;
  static constexpr int partitions = 8;
  static std::string ordering_key(const keyed_event& e) { return e.key; }
  std::string key;
  std::int64_t seq = 0;
  OMNIBUS_FIELDS(key, seq);
};
