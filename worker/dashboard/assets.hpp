#pragma once
// The dashboard's static files (script, style sheet, icon), compiled into the library from
// worker/dashboard/assets/ so that the dashboard works offline, with no file system access and
// no CDN. Internal to the worker library.

#include <optional>
#include <string_view>

namespace omnibus::detail {

/// One compiled-in file.
struct asset {
  std::string_view bytes;         ///< its contents (static storage)
  std::string_view content_type;  ///< as served
};

/// The file called `name` ("app.js", "style.css", "favicon.svg"), or nullopt. Exact match:
/// no path is ever looked up.
[[nodiscard]] std::optional<asset> find_asset(std::string_view name);

}  // namespace omnibus::detail
