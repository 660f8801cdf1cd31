// libFuzzer target for the cron parser and next(). Input: the first byte picks a time zone
// from a fixed list (those with gaps, repeats, half-hour shifts and a skipped day), the rest is
// the expression. A bad expression must end in cron_error; anything else thrown, a crash or a
// sanitizer report is a finding. An expression that parses must fire at strictly increasing
// instants, each after the one before and within 50 years of it.
//
// Build: clang++ -std=c++20 -fsanitize=fuzzer,address,undefined -DUSE_OS_TZDB=1
// -DHAS_STRING_VIEW=1 -DONLY_C_LOCALE=1 -Ibus/core/include cron_fuzz.cpp bus/core/cron.cpp
// -ldate-tz. Run: tests/fuzz/run.sh <exe> tests/fuzz/corpus_cron <work dir> cron.

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string_view>

#include "omnibus/cron.hpp"

namespace {

constexpr std::array<std::string_view, 8> zones{"UTC",          "Europe/Berlin",  "America/New_York", "Australia/Lord_Howe",
                                                "Pacific/Apia", "Asia/Kathmandu", "Etc/GMT-14",       "America/St_Johns"};

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::string_view zone = zones[data[0] % zones.size()];
  const std::string_view expression{reinterpret_cast<const char*>(data + 1), size - 1};
  std::optional<omnibus::cron> c;
  try {
    c.emplace(expression, zone);
  } catch (const omnibus::cron_error& e) {
    if (std::string_view(e.what()).find("cron \"") != 0) __builtin_trap();  // every message quotes the expression
    return 0;
  }
  if (c->expression() != expression || c->zone() != zone) __builtin_trap();
  // Fire times are followed in whole seconds; system_clock (nanoseconds) ends in 2262, so the
  // chain stops before it could not be passed back to next().
  using std::chrono::seconds;
  const omnibus::cron::time_point clock_end{seconds{std::int64_t{1} << 33}};  // 2242
  const auto fifty_years = std::chrono::duration_cast<seconds>(std::chrono::years{50});
  // 2011-12-29 00:00 UTC: Apia's skipped day comes within the first fire times of a daily job.
  omnibus::cron::time_point after{seconds{1325116800}};
  for (int i = 0; i < 8 && after < clock_end; ++i) {
    const std::optional<omnibus::cron::time_point> next = c->next(after);
    if (!next) break;
    if (*next <= after || *next > after + fifty_years) __builtin_trap();
    after = *next;
  }
  // Half a second into a second pass through a repeated hour (Berlin, 2026-10-25 02:30 CET).
  using namespace std::chrono_literals;
  std::chrono::system_clock::time_point during{seconds{1792891800} + 500ms};
  for (int i = 0; i < 4 && during < clock_end; ++i) {
    const std::optional<omnibus::cron::time_point> next = c->next(during);
    if (!next) break;
    if (*next <= during) __builtin_trap();
    during = *next;
  }
  return 0;
}
