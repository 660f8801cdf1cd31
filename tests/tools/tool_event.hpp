#pragma once
// The event the test tools publish.

#include <cstdint>
#include <string_view>

#include "omnibus/event.hpp"

struct tool_event {
  static constexpr std::string_view name = "test.tool_event";
  static constexpr int version = 1;
  std::int64_t n = 0;
  OMNIBUS_FIELDS(n);
};
