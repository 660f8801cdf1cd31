#pragma once
// Cron expressions in a time zone (README "Scheduling"): the parser and the next fire time.
//
// Syntax: five fields "minute hour day-of-month month day-of-week", or six with seconds
// first "second minute hour day-of-month month day-of-week". Each field is `*`, a value, a
// range `a-b`, a step `*/n`, `a-b/n` or `a/n` (a to the field's end), or a comma list of
// those. Months take JAN-DEC, days of week SUN-SAT (0 and 7 are Sunday), case-insensitive.
// Vixie semantics: when both day-of-month and day-of-week are restricted (neither starts
// with `*`), a day matches if either matches. Macros: @yearly (@annually), @monthly,
// @weekly, @daily (@midnight), @hourly. No `L`, `W`, `#` or `?`.
//
// Time zones are IANA names ("Europe/Berlin", "UTC") read from the system's tzdata. DST: a
// local time that does not exist (in a spring-forward gap) fires at the first instant after
// the gap; a local time that happens twice (fall back) fires once, at its first occurrence.
// Debian's date/tz reads the zone files' transitions, which end in 2037: later times use each
// zone's standard time (a summer job in Berlin in 2040 fires an hour late).

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "omnibus/error.hpp"
#include "omnibus/export.hpp"

namespace omnibus {

/// A cron expression or time zone that cannot be used. what() quotes the expression and
/// names the bad field ("cron \"0 25 * * *\": hour: 25 is out of range 0-23").
class OMNIBUS_API cron_error : public error {
 public:
  using error::error;
  ~cron_error() override;
};

/// A parsed cron expression bound to a time zone. Immutable; copyable; next() is thread-safe.
/// A moved-from cron may only be assigned to or destroyed.
class OMNIBUS_API cron {
 public:
  /// The clock of fire times (whole seconds).
  using time_point = std::chrono::sys_seconds;

  /// Parses `expression` for zone `zone` (an IANA name). Throws cron_error for a bad
  /// expression or an unknown zone, and for an expression that can never fire (0 0 30 2 *).
  explicit cron(std::string_view expression, std::string_view zone = "UTC");
  ~cron();
  cron(const cron& other);             ///< copies the parsed fields and the zone
  cron& operator=(const cron& other);  ///< copies the parsed fields and the zone
  cron(cron&&) noexcept;               ///< leaves `other` only assignable or destructible
  cron& operator=(cron&&) noexcept;    ///< leaves `other` only assignable or destructible

  /// The first fire time strictly after `after`; nullopt when none comes within 50 years.
  [[nodiscard]] std::optional<time_point> next(std::chrono::system_clock::time_point after) const;

  /// The expression as given.
  [[nodiscard]] const std::string& expression() const noexcept;
  /// The time zone's name as given.
  [[nodiscard]] const std::string& zone() const noexcept;

 private:
  struct fields;
  std::unique_ptr<fields> f_;
};

}  // namespace omnibus
