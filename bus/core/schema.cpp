#include "core/schema.hpp"

#include <stdexcept>

#include "omnibus/event_bus.hpp"

namespace omnibus {

void check_schema_name(std::string_view s) {
  bool ok = !s.empty() && s.size() <= 63 && ((s[0] >= 'a' && s[0] <= 'z') || s[0] == '_');
  for (char c : s) ok = ok && ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_');
  if (!ok) throw std::invalid_argument("schema name '" + std::string(s) + "' must be [a-z_][a-z0-9_]*, at most 63 characters");
}

namespace detail {

std::string table_name(std::string_view schema, std::string_view table) {
  std::string out;
  out.reserve(schema.size() + table.size() + 3);
  out.append("\"").append(schema).append("\".").append(table);
  return out;
}

std::string with_schema(std::string_view sql, std::string_view schema) {
  std::string out(sql);
  const std::string quoted = "\"" + std::string(schema) + "\"";
  for (std::size_t at = out.find("{s}"); at != std::string::npos; at = out.find("{s}", at + quoted.size())) {
    out.replace(at, 3, quoted);
  }
  return out;
}

}  // namespace detail
}  // namespace omnibus
