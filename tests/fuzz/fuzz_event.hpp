#pragma once
// The event the fuzz targets decode into: a field of every kind the codec handles.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "omnibus/event.hpp"

namespace {

enum class colour : std::uint8_t { red, green, blue };

struct fuzz_nested {
  std::string label;
  std::vector<std::int32_t> xs;
  OMNIBUS_FIELDS(label, xs);
};

struct fuzz_event {  // a field of every kind the codec handles
  static constexpr std::string_view name = "fz.event";
  static constexpr int version = 2;
  std::int64_t n = 0;
  std::uint8_t small = 0;
  double ratio = 0;
  bool flag = false;
  std::string text;
  std::vector<std::string> tags;
  std::map<std::string, std::int64_t> counts;
  std::optional<std::int32_t> maybe;
  fuzz_nested nested;
  std::vector<fuzz_nested> items;
  colour c = colour::red;
  OMNIBUS_FIELDS(n, small, ratio, flag, text, tags, counts, maybe, nested, items, c);
};

}  // namespace
