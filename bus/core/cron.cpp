#include "omnibus/cron.hpp"

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstdio>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <date/date.h>
#include <date/tz.h>

namespace omnibus {
namespace {

// ---------------------------------------------------------------------------------------------
// Parsing

constexpr std::array<std::string_view, 12> month_names{"JAN", "FEB", "MAR", "APR", "MAY", "JUN",
                                                       "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"};
constexpr std::array<std::string_view, 7> day_names{"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"};

// One field's place in the expression: its name in messages, its values, and the names that
// stand for values (names[i] is name_base + i).
struct field_kind {
  const char* name;
  int min;
  int max;
  std::span<const std::string_view> names = {};
  int name_base = 0;
};

constexpr field_kind second_field{"second", 0, 59};
constexpr field_kind minute_field{"minute", 0, 59};
constexpr field_kind hour_field{"hour", 0, 23};
constexpr field_kind dom_field{"day-of-month", 1, 31};
constexpr field_kind month_field{"month", 1, 12, month_names, 1};
constexpr field_kind dow_field{"day-of-week", 0, 7, day_names, 0};  // 7 is Sunday again; folded onto 0

// Larger numbers are reported as out of range without being converted, so none overflows.
constexpr int number_cap = 1'000'000;

// The expression as it appears in messages: printable ASCII as it is, the rest escaped, so a
// message never carries control bytes or broken UTF-8 to a log or a terminal.
std::string quoted(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (u >= 0x20 && u < 0x7F) {
      out += c;
    } else {
      char buf[5];
      std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned>(u));
      out += buf;
    }
  }
  out += '"';
  return out;
}

std::string upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) {
    if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  }
  return out;
}

bool is_digit(char c) noexcept { return c >= '0' && c <= '9'; }
bool is_alpha(char c) noexcept { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

// Why a field does not parse; the caller adds the expression and the field's name.
struct field_problem {
  std::string what;
};

[[noreturn]] void fail(std::string what) { throw field_problem{std::move(what)}; }

std::string describe_char(char c) {
  const auto u = static_cast<unsigned char>(c);
  if (u >= 0x20 && u < 0x7F) return std::string("'") + c + "'";
  char buf[8];
  std::snprintf(buf, sizeof buf, "0x%02x", static_cast<unsigned>(u));
  return buf;
}

[[noreturn]] void unsupported(char c) {
  fail(describe_char(c) + " is not supported (no L, W, # or ?)");
}

// Reads one field ("1-5/2,JAN,*/10") into a bit set of its values; bit v is value v.
class field_parser {
 public:
  field_parser(std::string_view text, const field_kind& kind) : text_(text), kind_(kind) {}

  std::uint64_t parse() {
    std::uint64_t bits = 0;
    for (;;) {
      bits |= item();
      if (at_end()) break;
      if (text_[pos_] != ',') unexpected();
      ++pos_;
    }
    return bits;
  }

 private:
  bool at_end() const noexcept { return pos_ >= text_.size(); }

  [[noreturn]] void unexpected() const {
    const char c = text_[pos_];
    if (c == '#' || c == '?') unsupported(c);
    fail("unexpected character " + describe_char(c));
  }

  // One list item: `*`, `v`, `a-b`, each optionally followed by `/step`.
  std::uint64_t item() {
    if (at_end() || text_[pos_] == ',') fail("empty list item");
    int low = kind_.min;
    int high = kind_.max;
    const std::size_t begin = pos_;
    bool single = false;
    if (text_[pos_] == '*') {
      ++pos_;
    } else {
      low = value();
      if (!at_end() && text_[pos_] == '-') {
        ++pos_;
        high = value();
        if (low > high) {
          std::string what = std::string(text_.substr(begin, pos_ - begin)) + " is a range whose start is after its end";
          if (kind_.max == 7 && high == 0) {  // only day-of-week reaches 7
            what += " (write 7 for a Sunday that ends a range)";
          }
          fail(what);
        }
      } else {
        single = true;  // `a` alone, or `a/n` meaning a to the field's end
      }
    }
    int step = 1;
    if (!at_end() && text_[pos_] == '/') {
      ++pos_;
      step = step_value();
      single = false;
    }
    if (!at_end() && text_[pos_] != ',') unexpected();
    if (single) high = low;
    std::uint64_t bits = 0;
    for (int v = low; v <= high; v += step) bits |= std::uint64_t{1} << v;
    return bits;
  }

  // A number or, in the month and day-of-week fields, a three-letter name.
  int value() {
    if (at_end()) fail("a value is missing after '-'");
    const std::size_t begin = pos_;
    const char c = text_[pos_];
    if (is_digit(c)) {
      const int v = digits();
      if (!at_end() && is_alpha(text_[pos_])) {
        const char next = static_cast<char>(text_[pos_] | 0x20);
        if (next == 'l' || next == 'w') unsupported(text_[pos_]);
        unexpected();
      }
      if (v < kind_.min || v > kind_.max) {
        fail(std::string(text_.substr(begin, pos_ - begin)) + " is out of range " + std::to_string(kind_.min) + "-" +
             std::to_string(kind_.max));
      }
      return v;
    }
    if (is_alpha(c)) {
      while (!at_end() && (is_alpha(text_[pos_]) || is_digit(text_[pos_]))) ++pos_;
      const std::string_view word = text_.substr(begin, pos_ - begin);
      const std::string name = upper(word);
      if (name == "L" || name == "W" || name == "LW") unsupported(word[0]);
      if (kind_.names.empty()) fail(quoted(word) + " is not a number");
      for (std::size_t i = 0; i < kind_.names.size(); ++i) {
        if (name == kind_.names[i]) return kind_.name_base + static_cast<int>(i);
      }
      fail("unknown name " + quoted(word) + " (" + std::string(kind_.names.front()) + "-" +
           std::string(kind_.names.back()) + ")");
    }
    if (c == '-') fail("negative numbers are not allowed");
    unexpected();
  }

  int step_value() {
    if (at_end() || !is_digit(text_[pos_])) {
      if (!at_end() && text_[pos_] != ',') unexpected();
      fail("a step is missing after '/'");
    }
    const std::size_t begin = pos_;
    const int v = digits();
    if (v == 0) fail("step 0 is not allowed");
    if (v > kind_.max) {
      fail("step " + std::string(text_.substr(begin, pos_ - begin)) + " is out of range 1-" +
           std::to_string(kind_.max));
    }
    return v;
  }

  // Digits as a number, capped (leading zeros are fine: "05").
  int digits() {
    int v = 0;
    while (!at_end() && is_digit(text_[pos_])) {
      if (v < number_cap) v = v * 10 + (text_[pos_] - '0');
      ++pos_;
    }
    return v;
  }

  std::string_view text_;
  const field_kind& kind_;
  std::size_t pos_ = 0;
};

// The expression split at spaces and tabs.
std::vector<std::string_view> split(std::string_view s) {
  std::vector<std::string_view> out;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t')) ++i;
    const std::size_t begin = i;
    while (i < s.size() && s[i] != ' ' && s[i] != '\t') ++i;
    if (i > begin) out.push_back(s.substr(begin, i - begin));
  }
  return out;
}

struct macro {
  std::string_view name;
  std::string_view expansion;
};

constexpr std::array<macro, 7> macros{{
    {"@YEARLY", "0 0 1 1 *"},
    {"@ANNUALLY", "0 0 1 1 *"},
    {"@MONTHLY", "0 0 1 * *"},
    {"@WEEKLY", "0 0 * * 0"},
    {"@DAILY", "0 0 * * *"},
    {"@MIDNIGHT", "0 0 * * *"},
    {"@HOURLY", "0 * * * *"},
}};

constexpr int days_in_month_max(int month) noexcept {
  constexpr std::array<int, 12> days{31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return days[static_cast<std::size_t>(month - 1)];
}

int next_bit(std::uint64_t bits, int from) noexcept {
  if (from >= 64) return -1;
  const std::uint64_t rest = bits & (~std::uint64_t{0} << from);
  return rest == 0 ? -1 : std::countr_zero(rest);
}

// Wall-clock times within one day, as seconds since local midnight.
using day_seconds = std::chrono::seconds;

}  // namespace

// ---------------------------------------------------------------------------------------------

struct cron::fields {
  std::string expression;
  std::string zone_name;
  const date::time_zone* zone = nullptr;  // owned by date's tz database, which lives until exit
  std::uint64_t seconds = 0;              // bit v: value v
  std::uint64_t minutes = 0;
  std::uint64_t hours = 0;
  std::uint64_t days_of_month = 0;  // bits 1-31
  std::uint64_t months = 0;         // bits 1-12
  std::uint64_t days_of_week = 0;   // bits 0-6, Sunday 0
  // Vixie: a day-of-month or day-of-week field whose text starts with `*` (`*`, `*/2`) does
  // not count as a restriction, so the day must match both fields; when neither starts with
  // `*`, it must match either.
  bool dom_star = true;
  bool dow_star = true;

  [[nodiscard]] bool day_matches(date::local_days day) const {
    const date::year_month_day ymd{day};
    const bool dom = (days_of_month >> static_cast<unsigned>(ymd.day())) & 1U;
    const bool dow = (days_of_week >> date::weekday{day}.c_encoding()) & 1U;
    return dom_star || dow_star ? dom && dow : dom || dow;
  }

  // Can some day match at all? A restricted day-of-week matches in every month; otherwise a
  // day of month must exist in a selected month (30 February never does). Over the years each
  // date falls on every weekday, so a weekday condition alone never makes it impossible.
  [[nodiscard]] bool can_fire() const {
    if (!dom_star && !dow_star) return true;
    for (int m = 1; m <= 12; ++m) {
      if (((months >> m) & 1U) == 0) continue;
      const std::uint64_t possible = ((std::uint64_t{1} << (days_in_month_max(m) + 1)) - 1) & ~std::uint64_t{1};
      if ((days_of_month & possible) != 0) return true;
    }
    return false;
  }

  // The first time of day at or after `from` whose second, minute and hour match.
  [[nodiscard]] std::optional<day_seconds> first_time_in_day(day_seconds from) const {
    const auto total = from.count();
    const int h0 = static_cast<int>(total / 3600);
    const int m0 = static_cast<int>(total / 60 % 60);
    const int s0 = static_cast<int>(total % 60);
    for (int h = next_bit(hours, h0); h >= 0; h = next_bit(hours, h + 1)) {
      for (int m = next_bit(minutes, h == h0 ? m0 : 0); m >= 0; m = next_bit(minutes, m + 1)) {
        const int s = next_bit(seconds, h == h0 && m == m0 ? s0 : 0);
        if (s >= 0) return day_seconds{h * 3600 + m * 60 + s};
      }
    }
    return std::nullopt;
  }

  // The first matching wall-clock time at or after `from`, on or before the day `last`.
  [[nodiscard]] std::optional<date::local_seconds> first_match(date::local_seconds from, date::local_days last) const {
    date::local_days day = date::floor<date::days>(from);
    day_seconds time = from - day;
    while (day <= last) {
      const date::year_month_day ymd{day};
      const auto month = static_cast<int>(static_cast<unsigned>(ymd.month()));
      if (((months >> month) & 1U) == 0) {
        const int later = next_bit(months, month + 1);  // this year, or the first of next year
        const date::year year = later > 0 ? ymd.year() : ymd.year() + date::years{1};
        const int first = later > 0 ? later : next_bit(months, 1);
        day = date::local_days{year / date::month(static_cast<unsigned>(first)) / 1};
        time = day_seconds{0};
        continue;
      }
      if (day_matches(day)) {
        if (auto t = first_time_in_day(time)) return day + *t;
      }
      day += date::days{1};
      time = day_seconds{0};
    }
    return std::nullopt;
  }

  // When the wall clock first shows `local` or a later time: the time itself when it exists,
  // its first occurrence when it happens twice (fall back), and the instant the gap ends when
  // the clocks skip it (spring forward). Several skipped times thus share one instant; the
  // caller fires once there.
  //
  // Pacific/Apia skipped 2011-12-30 whole (UTC-10 to UTC+14 at 2011-12-30 10:00 UTC, from
  // 12-29 24:00 straight to 12-31 00:00 local). Every time on that day is in the 24-hour gap,
  // so it fires at the gap's end: `0 12 * * *` fires at 2011-12-30 10:00 UTC (12-31 00:00
  // local) for the missing 12-30 12:00, then at 12-31 12:00 local as usual. A job for Fridays
  // only (12-30 was a Friday) fires at that instant too, which is a Saturday locally: the rule
  // is the same for a one-hour gap and a one-day gap, and no scheduled day is lost silently.
  [[nodiscard]] cron::time_point first_instant(date::local_seconds local) const {
    const date::local_info info = zone->get_info(local);
    switch (info.result) {
      case date::local_info::nonexistent: return info.second.begin;
      case date::local_info::ambiguous:  // first is the earlier period: the first occurrence
      case date::local_info::unique: break;
    }
    return cron::time_point{local.time_since_epoch() - info.first.offset};
  }

  // The earliest wall-clock time whose first_instant() is at or after `start`: one second past
  // the latest time the wall clock has shown before `start`. That is usually start's own local
  // time; it is later while the clock repeats an hour after falling back (those times fired on
  // their first pass), and earlier when `start` is the end of a gap (the skipped times map to
  // `start` itself).
  [[nodiscard]] date::local_seconds search_from(cron::time_point start) const {
    const cron::time_point before = start - std::chrono::seconds{1};
    date::sys_info period = zone->get_info(before);
    date::local_seconds shown{before.time_since_epoch() + period.offset};
    // Only a change of offset within the last two days can have left the clock further ahead.
    const cron::time_point horizon = before - std::chrono::hours{48};
    while (period.begin > horizon) {
      const cron::time_point last_of_previous = period.begin - std::chrono::seconds{1};
      const date::sys_info previous = zone->get_info(last_of_previous);
      shown = std::max(shown, date::local_seconds{last_of_previous.time_since_epoch() + previous.offset});
      if (previous.begin >= period.begin) break;
      period = previous;
    }
    return shown + std::chrono::seconds{1};
  }
};

cron_error::~cron_error() = default;

cron::cron(std::string_view expression, std::string_view zone) : f_(std::make_unique<fields>()) {
  f_->expression = std::string(expression);
  f_->zone_name = std::string(zone);
  const std::string prefix = "cron " + quoted(expression) + ": ";

  std::vector<std::string_view> parts = split(expression);
  if (!parts.empty() && parts[0].starts_with('@')) {
    if (parts.size() != 1) throw cron_error(prefix + "a macro such as @daily stands alone, without other fields");
    const std::string name = upper(parts[0]);
    const auto it = std::find_if(macros.begin(), macros.end(), [&](const macro& m) { return m.name == name; });
    if (it == macros.end()) {
      throw cron_error(prefix + "unknown macro " + quoted(parts[0]) +
                       " (@yearly, @annually, @monthly, @weekly, @daily, @midnight, @hourly)");
    }
    parts = split(it->expansion);
  }
  if (parts.size() != 5 && parts.size() != 6) {
    throw cron_error(prefix + "expected 5 fields (minute hour day-of-month month day-of-week) or 6 (second first), got " +
                     std::to_string(parts.size()));
  }
  const bool has_seconds = parts.size() == 6;
  const std::array<const field_kind*, 6> kinds{&second_field, &minute_field, &hour_field,
                                               &dom_field,    &month_field,  &dow_field};
  const std::array<std::uint64_t*, 6> targets{&f_->seconds,       &f_->minutes, &f_->hours,
                                              &f_->days_of_month, &f_->months,  &f_->days_of_week};
  f_->seconds = 1;  // five fields: at second 0
  for (std::size_t i = has_seconds ? 0 : 1, part = 0; i < kinds.size(); ++i, ++part) {
    try {
      *targets[i] = field_parser(parts[part], *kinds[i]).parse();
    } catch (const field_problem& p) {
      throw cron_error(prefix + kinds[i]->name + ": " + p.what);
    }
  }
  if (f_->days_of_week & (std::uint64_t{1} << 7)) f_->days_of_week = (f_->days_of_week | 1U) & 0x7FU;
  f_->dom_star = parts[parts.size() - 3].starts_with('*');
  f_->dow_star = parts[parts.size() - 1].starts_with('*');
  if (!f_->can_fire()) {
    throw cron_error(prefix + "it never fires: no selected month has any of the selected days of month");
  }

  try {
    f_->zone = date::locate_zone(f_->zone_name);
  } catch (const std::runtime_error&) {
    throw cron_error(prefix + "unknown time zone " + quoted(zone));
  }
}

cron::~cron() = default;

cron::cron(const cron& other) : f_(other.f_ ? std::make_unique<fields>(*other.f_) : nullptr) {}

cron& cron::operator=(const cron& other) {
  if (this != &other) f_ = other.f_ ? std::make_unique<fields>(*other.f_) : nullptr;
  return *this;
}

cron::cron(cron&&) noexcept = default;
cron& cron::operator=(cron&&) noexcept = default;

// Fire times are the first instants of matching wall-clock times (fields::first_instant), a
// function that never decreases as the wall-clock time grows. So the answer is the first
// instant of the first matching wall-clock time at or after search_from(start): the search
// runs over the calendar, a month, a day or an hour at a time, and converts once at the end.
std::optional<cron::time_point> cron::next(std::chrono::system_clock::time_point after) const {
  const auto from = std::chrono::floor<std::chrono::seconds>(after);
  const time_point start = from + std::chrono::seconds{1};
  const time_point limit = from + std::chrono::duration_cast<std::chrono::seconds>(std::chrono::years{50});
  // The search runs over wall-clock time: stop a little past the limit's local day, which is
  // at most a day from its UTC day, then check the limit in UTC.
  const date::local_days last_day =
      date::floor<date::days>(date::local_seconds{limit.time_since_epoch()}) + date::days{2};
  date::local_seconds local = f_->search_from(start);
  for (;;) {
    const std::optional<date::local_seconds> match = f_->first_match(local, last_day);
    if (!match) return std::nullopt;
    const time_point at = f_->first_instant(*match);
    if (at > limit) return std::nullopt;
    if (at >= start) return at;
    local = *match + std::chrono::seconds{1};  // cannot happen with a monotone zone; kept so that results still increase
  }
}

const std::string& cron::expression() const noexcept { return f_->expression; }

const std::string& cron::zone() const noexcept { return f_->zone_name; }

}  // namespace omnibus
