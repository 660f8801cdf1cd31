#pragma once
// Bytes from producers, made safe to store as PostgreSQL text and to print on a terminal.

#include <string>
#include <string_view>

#include "omnibus/export.hpp"

namespace omnibus {

/// Whether `s` is well-formed UTF-8 (no overlong forms, no surrogates, nothing past U+10FFFF).
[[nodiscard]] OMNIBUS_API bool is_utf8(std::string_view s) noexcept;

/// `s` itself when it is UTF-8 without NUL; otherwise a copy in which every NUL and every byte
/// that is not part of well-formed UTF-8 reads \xHH, and every backslash \\, so the original
/// can be told back from it. For text columns fed by producers (PostgreSQL refuses the rest).
[[nodiscard]] OMNIBUS_API std::string to_text(std::string_view s);

/// `s` for a terminal: control characters (C0, DEL, C1), bytes that are not UTF-8 and
/// backslashes escaped (\e, \n, \r, \t, \xHH, \u{HH}, \\), so that bytes a producer chose can
/// never move the cursor, change colours or set the window title. Printable UTF-8 is kept.
[[nodiscard]] OMNIBUS_API std::string for_terminal(std::string_view s);

}  // namespace omnibus
