#pragma once
// --log-format json: one JSON object per line (ts, level, logger, msg, and listener when the
// message is about one), escaped so that any message (quotes, newlines, bytes that are not
// UTF-8) stays one valid line. Internal to the worker library.

#include <memory>

#include <spdlog/formatter.h>

namespace omnibus::detail {

/// A formatter for spdlog sinks.
[[nodiscard]] std::unique_ptr<spdlog::formatter> make_json_formatter();

/// `s` as a JSON string literal (with its quotes): valid UTF-8 kept, other bytes as \xHH text.
[[nodiscard]] std::string json_quote(std::string_view s);

}  // namespace omnibus::detail
