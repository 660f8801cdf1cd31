#pragma once
// How the library's SQL names its tables: every table lives in the application's schema, whose
// name is checked once (check_schema_name) and quoted here, the one place that quotes it.
// Internal to bus/.

#include <string>
#include <string_view>

#include "omnibus/event_bus.hpp"  // check_schema_name, public

namespace omnibus::detail {

/// "<schema>".<table>, for a schema that passed omnibus::check_schema_name.
[[nodiscard]] std::string table_name(std::string_view schema, std::string_view table);

/// `sql` with every "{s}" replaced by the quoted schema.
[[nodiscard]] std::string with_schema(std::string_view sql, std::string_view schema);

}  // namespace omnibus::detail
