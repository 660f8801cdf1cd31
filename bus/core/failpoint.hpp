#pragma once
// Deterministic crashes for tests: OMNIBUS_FAILPOINT=<name>[@<n>] makes the process _exit(86)
// the n-th time (default: the first) it passes failpoint(<name>). Private to bus/.

#include <string_view>

namespace omnibus::detail {

/// Exit code of a process stopped by a failpoint.
inline constexpr int failpoint_exit_code = 86;

/// Does nothing unless OMNIBUS_FAILPOINT names this point. Thread-safe.
void failpoint(std::string_view name) noexcept;

}  // namespace omnibus::detail
