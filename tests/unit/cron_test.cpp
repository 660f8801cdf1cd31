// Cron expressions: the syntax, Vixie's day rule, the errors, and fire times across years and
// daylight saving changes. The expected instants are checked by hand against
// `zdump -v -c 2026,2027 <zone>` (and 2011,2012 for Pacific/Apia); each comment gives the wall
// clock reading behind one.

#include <chrono>
#include <cstdio>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include <catch2/catch.hpp>

#include "omnibus/cron.hpp"
#include "omnibus/error.hpp"

namespace {

using omnibus::cron;
using omnibus::cron_error;
using Catch::Contains;

// "2026-03-29T01:00:00Z" as an instant.
cron::time_point at(const std::string& iso) {
  int y = 0;
  unsigned mo = 0;
  unsigned d = 0;
  int h = 0;
  int mi = 0;
  int s = 0;
  char z = 0;
  const int n = std::sscanf(iso.c_str(), "%d-%u-%uT%d:%d:%d%c", &y, &mo, &d, &h, &mi, &s, &z);
  if (n != 7 || z != 'Z') throw std::invalid_argument("not YYYY-MM-DDTHH:MM:SSZ: " + iso);
  const std::chrono::year_month_day day{std::chrono::year{y}, std::chrono::month{mo}, std::chrono::day{d}};
  if (!day.ok()) throw std::invalid_argument("no such day: " + iso);
  return std::chrono::sys_days{day} + std::chrono::hours{h} + std::chrono::minutes{mi} + std::chrono::seconds{s};
}

std::string iso(cron::time_point t) {
  const auto day = std::chrono::floor<std::chrono::days>(t);
  const std::chrono::year_month_day ymd{day};
  const std::chrono::hh_mm_ss time{t - day};
  char buf[32];
  std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02dZ", static_cast<int>(ymd.year()),
                static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()), static_cast<int>(time.hours().count()),
                static_cast<int>(time.minutes().count()), static_cast<int>(time.seconds().count()));
  return buf;
}

// The next `count` fire times after `from`, each found from the one before.
std::vector<std::string> fires(const cron& c, const std::string& from, int count) {
  std::vector<std::string> out;
  std::chrono::system_clock::time_point t = at(from);
  for (int i = 0; i < count; ++i) {
    const std::optional<cron::time_point> next = c.next(t);
    if (!next) {
      out.emplace_back("none");
      break;
    }
    out.push_back(iso(*next));
    t = *next;
  }
  return out;
}

std::vector<std::string> fires(const std::string& expression, const std::string& from, int count,
                               const std::string& zone = "UTC") {
  return fires(cron(expression, zone), from, count);
}

using list = std::vector<std::string>;

}  // namespace

TEST_CASE("The test helpers read and write instants alike", "[bus][cron]") {
  CHECK(iso(at("2026-03-29T01:00:00Z")) == "2026-03-29T01:00:00Z");
  CHECK(at("1970-01-01T00:00:10Z").time_since_epoch() == std::chrono::seconds{10});
}

TEST_CASE("A value, a range and a list select those values", "[bus][cron]") {
  SECTION("value") {
    CHECK(fires("5 * * * *", "2026-01-01T00:00:00Z", 3) ==
          list{"2026-01-01T00:05:00Z", "2026-01-01T01:05:00Z", "2026-01-01T02:05:00Z"});
  }
  SECTION("range") {
    CHECK(fires("0 9-11 * * *", "2026-01-01T00:00:00Z", 4) ==
          list{"2026-01-01T09:00:00Z", "2026-01-01T10:00:00Z", "2026-01-01T11:00:00Z", "2026-01-02T09:00:00Z"});
  }
  SECTION("list of values and ranges") {
    CHECK(fires("0,30 12,14-15 * * *", "2026-01-01T00:00:00Z", 7) ==
          list{"2026-01-01T12:00:00Z", "2026-01-01T12:30:00Z", "2026-01-01T14:00:00Z", "2026-01-01T14:30:00Z",
               "2026-01-01T15:00:00Z", "2026-01-01T15:30:00Z", "2026-01-02T12:00:00Z"});
  }
  SECTION("leading zeros and repeated values") {
    CHECK(fires("05,5,05-05 * * * *", "2026-01-01T00:00:00Z", 2) == list{"2026-01-01T00:05:00Z", "2026-01-01T01:05:00Z"});
  }
  SECTION("day of month and month") {
    CHECK(fires("0 0 15 3,6 *", "2026-01-01T00:00:00Z", 3) ==
          list{"2026-03-15T00:00:00Z", "2026-06-15T00:00:00Z", "2027-03-15T00:00:00Z"});
  }
  SECTION("spaces and tabs between fields") {
    CHECK(fires("  5\t*  * * *  ", "2026-01-01T00:00:00Z", 1) == list{"2026-01-01T00:05:00Z"});
  }
}

TEST_CASE("Steps count from the start of a range, or of the field for * and a/n", "[bus][cron]") {
  SECTION("*/n") {
    CHECK(fires("*/20 * * * *", "2026-01-01T00:00:00Z", 4) ==
          list{"2026-01-01T00:20:00Z", "2026-01-01T00:40:00Z", "2026-01-01T01:00:00Z", "2026-01-01T01:20:00Z"});
  }
  SECTION("a-b/n") {
    CHECK(fires("10-30/10 * * * *", "2026-01-01T00:00:00Z", 4) ==
          list{"2026-01-01T00:10:00Z", "2026-01-01T00:20:00Z", "2026-01-01T00:30:00Z", "2026-01-01T01:10:00Z"});
  }
  SECTION("a/n runs to the field's end") {
    CHECK(fires("50/5 * * * *", "2026-01-01T00:00:00Z", 3) ==
          list{"2026-01-01T00:50:00Z", "2026-01-01T00:55:00Z", "2026-01-01T01:50:00Z"});
    CHECK(fires("0 20/2 * * *", "2026-01-01T00:00:00Z", 3) ==
          list{"2026-01-01T20:00:00Z", "2026-01-01T22:00:00Z", "2026-01-02T20:00:00Z"});
  }
  SECTION("*/n in day of month starts at 1") {
    CHECK(fires("0 0 */10 * *", "2026-01-01T00:00:00Z", 4) ==
          list{"2026-01-11T00:00:00Z", "2026-01-21T00:00:00Z", "2026-01-31T00:00:00Z", "2026-02-01T00:00:00Z"});
  }
  SECTION("*/n in months starts at January") {
    CHECK(fires("0 0 1 */4 *", "2026-01-01T00:00:00Z", 3) ==
          list{"2026-05-01T00:00:00Z", "2026-09-01T00:00:00Z", "2027-01-01T00:00:00Z"});
  }
  SECTION("a step larger than the range keeps its start") {
    CHECK(fires("7-9/5 0 1 1 *", "2026-01-01T00:00:00Z", 2) == list{"2026-01-01T00:07:00Z", "2027-01-01T00:07:00Z"});
  }
}

TEST_CASE("Months and days of week take names in any case", "[bus][cron]") {
  CHECK(fires("0 0 1 JAN,jul *", "2026-01-01T00:00:00Z", 3) ==
        list{"2026-07-01T00:00:00Z", "2027-01-01T00:00:00Z", "2027-07-01T00:00:00Z"});
  CHECK(fires("0 0 1 feb-APR/2 *", "2026-01-01T00:00:00Z", 3) ==
        list{"2026-02-01T00:00:00Z", "2026-04-01T00:00:00Z", "2027-02-01T00:00:00Z"});
  CHECK(fires("0 0 1 Nov/1 *", "2026-01-01T00:00:00Z", 3) ==
        list{"2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z", "2027-11-01T00:00:00Z"});
  // 2026-01-02 is a Friday.
  CHECK(fires("0 0 * * MON-fri", "2026-01-01T00:00:00Z", 3) ==
        list{"2026-01-02T00:00:00Z", "2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z"});
  CHECK(fires("0 0 * * sat,Sun", "2026-01-01T00:00:00Z", 3) ==
        list{"2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z", "2026-01-10T00:00:00Z"});
}

TEST_CASE("Day of week 0 and 7 are both Sunday", "[bus][cron]") {
  // 2026-01-04 is a Sunday.
  const list sundays{"2026-01-04T00:00:00Z", "2026-01-11T00:00:00Z"};
  CHECK(fires("0 0 * * 0", "2026-01-01T00:00:00Z", 2) == sundays);
  CHECK(fires("0 0 * * 7", "2026-01-01T00:00:00Z", 2) == sundays);
  CHECK(fires("0 0 * * SUN", "2026-01-01T00:00:00Z", 2) == sundays);
  CHECK(fires("0 0 * * 0,7", "2026-01-01T00:00:00Z", 2) == sundays);
  CHECK(fires("0 0 * * 6-7", "2026-01-01T00:00:00Z", 3) ==
        list{"2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z", "2026-01-10T00:00:00Z"});
  CHECK(fires("0 0 * * FRI/1", "2026-01-01T00:00:00Z", 4) ==  // FRI to 7: Friday, Saturday, Sunday
        list{"2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z", "2026-01-09T00:00:00Z"});
  CHECK(fires("0 0 * * */2", "2026-01-01T00:00:00Z", 4) ==  // 0,2,4,6: Sunday, Tuesday, Thursday, Saturday
        list{"2026-01-03T00:00:00Z", "2026-01-04T00:00:00Z", "2026-01-06T00:00:00Z", "2026-01-08T00:00:00Z"});
}

TEST_CASE("Macros stand for their five fields", "[bus][cron]") {
  const std::vector<std::pair<std::string, std::string>> macros{
      {"@yearly", "0 0 1 1 *"}, {"@annually", "0 0 1 1 *"}, {"@monthly", "0 0 1 * *"}, {"@weekly", "0 0 * * 0"},
      {"@daily", "0 0 * * *"},  {"@midnight", "0 0 * * *"}, {"@hourly", "0 * * * *"},   {"@DAILY", "0 0 * * *"},
  };
  for (const auto& [macro, fields] : macros) {
    INFO(macro);
    CHECK(fires(macro, "2026-05-17T13:14:15Z", 3) == fires(fields, "2026-05-17T13:14:15Z", 3));
  }
  CHECK(fires("@weekly", "2026-01-01T00:00:00Z", 1) == list{"2026-01-04T00:00:00Z"});
  CHECK(fires("@hourly", "2026-01-01T00:00:00Z", 1) == list{"2026-01-01T01:00:00Z"});
}

TEST_CASE("Six fields put the seconds first; five fire at second 0", "[bus][cron]") {
  CHECK(fires("*/20 * * * * *", "2026-01-01T00:00:00Z", 4) ==
        list{"2026-01-01T00:00:20Z", "2026-01-01T00:00:40Z", "2026-01-01T00:01:00Z", "2026-01-01T00:01:20Z"});
  CHECK(fires("30 0 0 1 1 *", "2026-01-01T00:00:00Z", 2) == list{"2026-01-01T00:00:30Z", "2027-01-01T00:00:30Z"});
  CHECK(fires("* * * * * *", "2026-01-01T00:00:00Z", 2) == list{"2026-01-01T00:00:01Z", "2026-01-01T00:00:02Z"});
  CHECK(fires("* * * * *", "2026-01-01T00:00:30Z", 2) == list{"2026-01-01T00:01:00Z", "2026-01-01T00:02:00Z"});
}

TEST_CASE("next() is strictly after its argument, to the whole second", "[bus][cron]") {
  const cron c("5 * * * *");
  using std::chrono::milliseconds;
  CHECK(iso(*c.next(at("2026-01-01T00:05:00Z"))) == "2026-01-01T01:05:00Z");
  CHECK(iso(*c.next(at("2026-01-01T00:04:59Z"))) == "2026-01-01T00:05:00Z");
  CHECK(iso(*c.next(at("2026-01-01T00:04:59Z") + milliseconds{999})) == "2026-01-01T00:05:00Z");
  CHECK(iso(*c.next(at("2026-01-01T00:05:00Z") + milliseconds{1})) == "2026-01-01T01:05:00Z");
  // Before 1970 the clock counts down to negative numbers: truncation still means "floor".
  CHECK(iso(*c.next(at("1969-12-31T23:04:59Z") + milliseconds{500})) == "1969-12-31T23:05:00Z");
  const cron every_second("* * * * * *");
  CHECK(iso(*every_second.next(at("1969-12-31T23:59:58Z") + milliseconds{500})) == "1969-12-31T23:59:59Z");
}

TEST_CASE("When both day fields are restricted a day matches either (Vixie)", "[bus][cron]") {
  SECTION("the 1st or a Monday") {
    // January 2026's Mondays: 5, 12, 19, 26; 2026-02-01 is a Sunday.
    CHECK(fires("0 0 1 * 1", "2026-01-01T00:00:00Z", 6) ==
          list{"2026-01-05T00:00:00Z", "2026-01-12T00:00:00Z", "2026-01-19T00:00:00Z", "2026-01-26T00:00:00Z",
               "2026-02-01T00:00:00Z", "2026-02-02T00:00:00Z"});
  }
  SECTION("a day that cannot exist still leaves the weekdays") {
    // February's Mondays in 2026: 2, 9, 16, 23.
    CHECK(fires("0 0 30 FEB MON", "2026-01-01T00:00:00Z", 3) ==
          list{"2026-02-02T00:00:00Z", "2026-02-09T00:00:00Z", "2026-02-16T00:00:00Z"});
  }
  SECTION("a field that starts with * is not a restriction, so both must match") {
    // Odd days that are Mondays.
    CHECK(fires("0 0 */2 * 1", "2026-01-01T00:00:00Z", 4) ==
          list{"2026-01-05T00:00:00Z", "2026-01-19T00:00:00Z", "2026-02-09T00:00:00Z", "2026-02-23T00:00:00Z"});
    // The 1st when it is a Sunday, Tuesday, Thursday or Saturday.
    CHECK(fires("0 0 1 * */2", "2025-12-31T00:00:00Z", 5) ==
          list{"2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z", "2026-08-01T00:00:00Z",
               "2026-09-01T00:00:00Z"});
  }
  SECTION("a restricted day with * in the other field") {
    CHECK(fires("0 0 1 * *", "2026-01-01T00:00:00Z", 2) == list{"2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z"});
    CHECK(fires("0 0 * * 1", "2026-01-01T00:00:00Z", 2) == list{"2026-01-05T00:00:00Z", "2026-01-12T00:00:00Z"});
  }
  SECTION("a restriction that covers every day is still a restriction") {
    CHECK(fires("0 0 1-31 * 1", "2026-01-01T00:00:00Z", 2) == list{"2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"});
  }
}

TEST_CASE("A bad expression names the field and quotes the whole expression", "[bus][cron]") {
  CHECK_THROWS_WITH(cron("0 25 * * *"), "cron \"0 25 * * *\": hour: 25 is out of range 0-23");
  CHECK_THROWS_AS(cron("0 25 * * *"), cron_error);
  CHECK_THROWS_AS(cron("0 25 * * *"), omnibus::error);

  struct bad {
    std::string expression;
    std::string field;
    std::string problem;
  };
  const std::vector<bad> cases{
      {"60 * * * *", "minute", "60 is out of range 0-59"},
      {"60 * * * * *", "second", "60 is out of range 0-59"},
      {"0 60 * * * *", "minute", "60 is out of range 0-59"},
      {"0 0 0 * *", "day-of-month", "0 is out of range 1-31"},
      {"0 0 32 * *", "day-of-month", "32 is out of range 1-31"},
      {"0 0 * 0 *", "month", "0 is out of range 1-12"},
      {"0 0 * 13 *", "month", "13 is out of range 1-12"},
      {"0 0 * * 8", "day-of-week", "8 is out of range 0-7"},
      {"0 0 * * 1-8", "day-of-week", "8 is out of range 0-7"},
      {"99999999999999999999 * * * *", "minute", "99999999999999999999 is out of range 0-59"},
      {"0 5-3 * * *", "hour", "5-3 is a range whose start is after its end"},
      {"0 0 * * SAT-SUN", "day-of-week", "write 7 for a Sunday that ends a range"},
      {"0 0 * DEC-JAN *", "month", "start is after its end"},
      {"*/0 * * * *", "minute", "step 0 is not allowed"},
      {"1-5/0 * * * *", "minute", "step 0 is not allowed"},
      {"*/60 * * * *", "minute", "step 60 is out of range 1-59"},
      {"*/99999999999999999999 * * * *", "minute", "out of range"},
      {"*/ * * * *", "minute", "a step is missing"},
      {"0 0 L * *", "day-of-month", "'L' is not supported"},
      {"0 0 15W * *", "day-of-month", "'W' is not supported"},
      {"0 0 LW * *", "day-of-month", "not supported"},
      {"0 0 * * 5L", "day-of-week", "'L' is not supported"},
      {"0 0 * * 5#3", "day-of-week", "'#' is not supported"},
      {"0 0 ? * *", "day-of-month", "'?' is not supported"},
      {"0 0 * * ?", "day-of-week", "'?' is not supported"},
      {"1,,2 * * * *", "minute", "empty list item"},
      {"1, * * * *", "minute", "empty list item"},
      {",1 * * * *", "minute", "empty list item"},
      {"1- * * * *", "minute", "a value is missing"},
      {"-1 * * * *", "minute", "negative numbers are not allowed"},
      {"a * * * *", "minute", "\"a\" is not a number"},
      {"0 MON * * *", "hour", "\"MON\" is not a number"},
      {"0 0 * FOO *", "month", "unknown name \"FOO\" (JAN-DEC)"},
      {"0 0 * JAN-FOO *", "month", "unknown name \"FOO\""},
      {"0 0 * * FRIDAY", "day-of-week", "unknown name \"FRIDAY\" (SUN-SAT)"},
      {"0 0 * * MON%", "day-of-week", "unexpected character '%'"},
      {"*5 * * * *", "minute", "unexpected character '5'"},
      {"1.5 * * * *", "minute", "unexpected character '.'"},
      {"0 0 1-2-3 * *", "day-of-month", "unexpected character '-'"},
  };
  for (const bad& b : cases) {
    INFO(b.expression);
    CHECK_THROWS_AS(cron(b.expression), cron_error);
    CHECK_THROWS_WITH(cron(b.expression), Contains("cron \"" + b.expression + "\": " + b.field + ": "));
    CHECK_THROWS_WITH(cron(b.expression), Contains(b.problem));
  }
  // Control bytes are escaped in the message, which may end up on a terminal.
  CHECK_THROWS_WITH(cron("0 0 * * \x01"), "cron \"0 0 * * \\x01\": day-of-week: unexpected character 0x01");
  CHECK_THROWS_WITH(cron("0 0 \"x\" * *"), Contains("cron \"0 0 \\\"x\\\" * *\": day-of-month: "));
}

TEST_CASE("A wrong number of fields or an unknown macro is refused", "[bus][cron]") {
  CHECK_THROWS_WITH(cron(""), Contains("cron \"\": expected 5 fields") && Contains("got 0"));
  CHECK_THROWS_WITH(cron("   "), Contains("got 0"));
  CHECK_THROWS_WITH(cron("* * * *"), Contains("cron \"* * * *\": expected 5 fields") && Contains("got 4"));
  CHECK_THROWS_WITH(cron("* * * * * * *"), Contains("got 7"));
  CHECK_THROWS_WITH(cron("@reboot"), Contains("cron \"@reboot\": unknown macro \"@reboot\""));
  CHECK_THROWS_WITH(cron("@daily 5"), Contains("cron \"@daily 5\": a macro such as @daily stands alone"));
  CHECK_THROWS_WITH(cron("0 0 * * *\n"), Contains("cron \"0 0 * * *\\x0a\": day-of-week: unexpected character 0x0a"));
}

TEST_CASE("An unknown time zone is refused by name", "[bus][cron]") {
  CHECK_THROWS_AS(cron("0 0 * * *", "Mars/Base"), cron_error);
  CHECK_THROWS_WITH(cron("0 0 * * *", "Mars/Base"), "cron \"0 0 * * *\": unknown time zone \"Mars/Base\"");
  CHECK_THROWS_WITH(cron("0 0 * * *", ""), Contains("unknown time zone \"\""));
  CHECK_NOTHROW(cron("0 0 * * *", "Europe/Berlin"));
}

TEST_CASE("An expression that can never fire is refused", "[bus][cron]") {
  CHECK_THROWS_WITH(cron("0 0 30 2 *"), Contains("cron \"0 0 30 2 *\": ") && Contains("never fires"));
  CHECK_THROWS_WITH(cron("0 0 31 4 *"), Contains("never fires"));
  CHECK_THROWS_WITH(cron("0 0 31 FEB,APR,JUN,SEP,NOV *"), Contains("never fires"));
  CHECK_THROWS_WITH(cron("0 0 30,31 2 */2"), Contains("never fires"));  // */2 is no restriction: AND
  CHECK_THROWS_AS(cron("0 0 30 2 *"), cron_error);
  CHECK_NOTHROW(cron("0 0 31 2,3 *"));
  CHECK_NOTHROW(cron("0 0 29 2 *"));
  CHECK_NOTHROW(cron("0 0 30 2 1"));  // OR: the Mondays of February
}

TEST_CASE("Fire times cross year ends", "[bus][cron]") {
  CHECK(fires("59 23 31 12 *", "2026-12-31T23:59:00Z", 2) == list{"2027-12-31T23:59:00Z", "2028-12-31T23:59:00Z"});
  CHECK(fires("0 0 1 1 *", "2026-12-31T23:59:59Z", 2) == list{"2027-01-01T00:00:00Z", "2028-01-01T00:00:00Z"});
  CHECK(fires("* * * * * *", "2026-12-31T23:59:59Z", 1) == list{"2027-01-01T00:00:00Z"});
  // Kiritimati is UTC+14 all year: its new year comes at 10:00 UTC the day before.
  CHECK(fires("0 0 1 1 *", "2026-06-01T00:00:00Z", 2, "Pacific/Kiritimati") ==
        list{"2026-12-31T10:00:00Z", "2027-12-31T10:00:00Z"});
  // Honolulu is UTC-10: its 31 December 20:00 is already 1 January in UTC.
  CHECK(fires("0 20 31 12 *", "2026-06-01T00:00:00Z", 1, "Pacific/Honolulu") == list{"2027-01-01T06:00:00Z"});
}

TEST_CASE("29 February fires in leap years only", "[bus][cron]") {
  CHECK(fires("0 0 29 2 *", "2026-03-01T00:00:00Z", 3) ==
        list{"2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z", "2036-02-29T00:00:00Z"});
  // 2100 is not a leap year.
  CHECK(fires("0 0 29 2 *", "2096-03-01T00:00:00Z", 1) == list{"2104-02-29T00:00:00Z"});
  // 29 February on a Sunday (*/7 is 0 and 7, and starts with *: AND): 40 years after 2088.
  CHECK(fires("0 0 29 2 */7", "2088-03-01T00:00:00Z", 1) == list{"2128-02-29T00:00:00Z"});
}

TEST_CASE("next() copes with the ends of the clock", "[bus][cron]") {
  const cron c("0 0 1 1 *");
  CHECK_NOTHROW(c.next(std::chrono::system_clock::time_point::max()));
  CHECK_NOTHROW(c.next(std::chrono::system_clock::time_point::min()));
  const auto last = c.next(std::chrono::system_clock::time_point::max());
  REQUIRE(last);
  CHECK(*last > std::chrono::floor<std::chrono::seconds>(std::chrono::system_clock::time_point::max()));
}

TEST_CASE("A cron keeps its expression and zone, and copies and moves", "[bus][cron]") {
  cron a("*/5 * * * *", "Europe/Berlin");
  CHECK(a.expression() == "*/5 * * * *");
  CHECK(a.zone() == "Europe/Berlin");
  CHECK(cron("@daily").zone() == "UTC");
  CHECK(cron("@daily").expression() == "@daily");
  cron b = a;
  CHECK(b.expression() == a.expression());
  cron c("@hourly");
  c = b;
  CHECK(c.zone() == "Europe/Berlin");
  cron d = std::move(c);
  CHECK(d.expression() == "*/5 * * * *");
  cron e("@daily");
  e = std::move(d);
  CHECK(fires(e, "2026-01-01T00:00:00Z", 1) == list{"2026-01-01T00:05:00Z"});
}

// Europe/Berlin 2026 (zdump): 2026-03-29 01:00:00 UTC CET 01:59:59 -> CEST 03:00:00;
// 2026-10-25 01:00:00 UTC CEST 02:59:59 -> CET 02:00:00.
TEST_CASE("Europe/Berlin: a skipped time fires when the gap ends, a repeated one once", "[bus][cron]") {
  const std::string berlin = "Europe/Berlin";
  SECTION("spring: 02:30 does not exist on 29 March") {
    // 28 March 02:30 CET; 29 March at the gap's end, 03:00 CEST; 30 March 02:30 CEST.
    CHECK(fires("30 2 * * *", "2026-03-28T00:00:00Z", 3, berlin) ==
          list{"2026-03-28T01:30:00Z", "2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"});
  }
  SECTION("spring: several skipped times fire once") {
    CHECK(fires("*/15 2 * * *", "2026-03-29T00:00:00Z", 2, berlin) ==
          list{"2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z"});
    // 02:00 (skipped) and 03:00 (real) are the same instant.
    CHECK(fires("0 2-3 * * *", "2026-03-29T00:00:00Z", 3, berlin) ==
          list{"2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z", "2026-03-30T01:00:00Z"});
    // 01:30 CET, then 02:00/02:30 (skipped) with 03:00 CEST, then 03:30 CEST.
    CHECK(fires("*/30 * * * *", "2026-03-29T00:00:00Z", 3, berlin) ==
          list{"2026-03-29T00:30:00Z", "2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z"});
    CHECK(fires("*/20 30 2 * * *", "2026-03-29T00:00:00Z", 3, berlin) ==
          list{"2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z", "2026-03-30T00:30:20Z"});
  }
  SECTION("spring: from just before and exactly at the gap's end") {
    const cron c("30 2 * * *", berlin);
    CHECK(iso(*c.next(at("2026-03-29T00:59:59Z"))) == "2026-03-29T01:00:00Z");
    CHECK(iso(*c.next(at("2026-03-29T01:00:00Z"))) == "2026-03-30T00:30:00Z");
  }
  SECTION("fall: 02:30 happens twice on 25 October and fires at the first") {
    // 25 October 02:30 CEST; 26 October 02:30 CET.
    CHECK(fires("30 2 * * *", "2026-10-24T12:00:00Z", 2, berlin) ==
          list{"2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"});
  }
  SECTION("fall: the repeated hour is not run again") {
    // 02:30 and 02:45 CEST, then 03:00 CET: 02:00-02:45 CET were their second occurrences.
    CHECK(fires("*/15 * * * *", "2026-10-25T00:20:00Z", 4, berlin) ==
          list{"2026-10-25T00:30:00Z", "2026-10-25T00:45:00Z", "2026-10-25T02:00:00Z", "2026-10-25T02:15:00Z"});
    // 02:00 CEST, then 03:00 CET.
    CHECK(fires("0 * * * *", "2026-10-24T23:30:00Z", 2, berlin) == list{"2026-10-25T00:00:00Z", "2026-10-25T02:00:00Z"});
  }
  SECTION("fall: from within the second pass") {
    // 02:10 CET (01:10 UTC) is in the second pass: the next is 03:00 CET.
    CHECK(fires("*/15 * * * *", "2026-10-25T01:10:00Z", 1, berlin) == list{"2026-10-25T02:00:00Z"});
    CHECK(fires("*/15 * * * *", "2026-10-25T00:59:59Z", 1, berlin) == list{"2026-10-25T02:00:00Z"});
    CHECK(fires("*/15 * * * *", "2026-10-25T01:00:00Z", 1, berlin) == list{"2026-10-25T02:00:00Z"});
    CHECK(fires("* * * * * *", "2026-10-25T00:59:58Z", 2, berlin) == list{"2026-10-25T00:59:59Z", "2026-10-25T02:00:00Z"});
  }
}

// America/New_York 2026 (zdump): 2026-03-08 07:00:00 UTC EST 01:59:59 -> EDT 03:00:00;
// 2026-11-01 06:00:00 UTC EDT 01:59:59 -> EST 01:00:00.
TEST_CASE("America/New_York: the spring gap and the fall repeat", "[bus][cron]") {
  const std::string ny = "America/New_York";
  // 7 March 02:30 EST; 8 March at the gap's end, 03:00 EDT; 9 March 02:30 EDT.
  CHECK(fires("30 2 * * *", "2026-03-07T00:00:00Z", 3, ny) ==
        list{"2026-03-07T07:30:00Z", "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"});
  // 1 November 01:30 EDT (the first); 2 November 01:30 EST.
  CHECK(fires("30 1 * * *", "2026-10-31T12:00:00Z", 2, ny) == list{"2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"});
  // 01:00 EDT, then 02:00 EST: 01:00 EST was a second occurrence.
  CHECK(fires("0 * * * *", "2026-11-01T04:30:00Z", 3, ny) ==
        list{"2026-11-01T05:00:00Z", "2026-11-01T07:00:00Z", "2026-11-01T08:00:00Z"});
}

// Australia/Lord_Howe 2026 (zdump): 2026-04-04 15:00:00 UTC +11 01:59:59 -> +1030 01:30:00;
// 2026-10-03 15:30:00 UTC +1030 01:59:59 -> +11 02:30:00. Half-hour shifts.
TEST_CASE("Australia/Lord_Howe: half-hour shifts", "[bus][cron]") {
  const std::string lh = "Australia/Lord_Howe";
  SECTION("April: 01:30-01:59 happen twice") {
    // 01:45 +11, then 02:00 +1030: 01:30 and 01:45 +1030 were second occurrences.
    CHECK(fires("*/15 * * * *", "2026-04-04T14:40:00Z", 3, lh) ==
          list{"2026-04-04T14:45:00Z", "2026-04-04T15:30:00Z", "2026-04-04T15:45:00Z"});
    // 5 April 01:45 +11 (the first); 6 April 01:45 +1030.
    CHECK(fires("45 1 * * *", "2026-04-04T00:00:00Z", 2, lh) == list{"2026-04-04T14:45:00Z", "2026-04-05T15:15:00Z"});
  }
  SECTION("October: 02:00-02:29 do not exist") {
    // 01:45 +1030; 02:00 and 02:15 (skipped) with 02:30 +11; 02:45 +11.
    CHECK(fires("*/15 * * * *", "2026-10-03T15:00:00Z", 3, lh) ==
          list{"2026-10-03T15:15:00Z", "2026-10-03T15:30:00Z", "2026-10-03T15:45:00Z"});
    // 3 October 02:15 +1030; 4 October at the gap's end; 5 October 02:15 +11.
    CHECK(fires("15 2 * * *", "2026-10-02T00:00:00Z", 3, lh) ==
          list{"2026-10-02T15:45:00Z", "2026-10-03T15:30:00Z", "2026-10-04T15:15:00Z"});
  }
}

// Pacific/Apia (zdump -c 2011,2012): 2011-12-30 10:00:00 UTC -10 Thu 29 Dec 23:59:59 -> +14 Sat
// 31 Dec 00:00:00. Friday 30 December 2011 never happened there: a 24-hour gap.
TEST_CASE("Pacific/Apia: a skipped day fires once, when the gap ends", "[bus][cron]") {
  const std::string apia = "Pacific/Apia";
  // 29 December 12:00 -10; the missing 30 December 12:00 at the gap's end (31 December 00:00
  // +14); 31 December 12:00 +14; 1 January 12:00 +14.
  CHECK(fires("0 12 * * *", "2011-12-29T00:00:00Z", 4, apia) ==
        list{"2011-12-29T22:00:00Z", "2011-12-30T10:00:00Z", "2011-12-30T22:00:00Z", "2011-12-31T22:00:00Z"});
  // Every hour of the missing day, and 31 December 00:00, are one instant.
  CHECK(fires("0 * * * *", "2011-12-30T08:30:00Z", 3, apia) ==
        list{"2011-12-30T09:00:00Z", "2011-12-30T10:00:00Z", "2011-12-30T11:00:00Z"});
  // Fridays at noon: the missing Friday fires at the gap's end; the next is 6 January +14.
  CHECK(fires("0 12 * * FRI", "2011-12-24T00:00:00Z", 2, apia) == list{"2011-12-30T10:00:00Z", "2012-01-05T22:00:00Z"});
  // A job on the 30th of every month: December's fires at the gap's end.
  CHECK(fires("0 6 30 * *", "2011-12-01T00:00:00Z", 2, apia) == list{"2011-12-30T10:00:00Z", "2012-01-29T16:00:00Z"});
}
