// The cron parser behind a pipe, for the differential test against croniter
// (tests/unit/cron_oracle.py). Each input line is
//   EXPR<TAB>ZONE<TAB>FROM_EPOCH_SECONDS<TAB>COUNT
// and gives one output line, in input order: the next COUNT fire times after FROM as epoch
// seconds separated by spaces, each found with next() from the one before ("none" ends the
// line early when next() finds nothing within 50 years), or "error<TAB>message" when the
// expression or zone does not parse. A line that is not in that shape ends the run with exit 2.

#include <chrono>
#include <exception>
#include <iostream>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "omnibus/cron.hpp"

namespace {

std::vector<std::string> split_tabs(const std::string& line) {
  std::vector<std::string> out;
  std::size_t begin = 0;
  for (;;) {
    const std::size_t tab = line.find('\t', begin);
    out.push_back(line.substr(begin, tab == std::string::npos ? std::string::npos : tab - begin));
    if (tab == std::string::npos) return out;
    begin = tab + 1;
  }
}

std::optional<long long> to_number(const std::string& s) {
  try {
    std::size_t used = 0;
    const long long v = std::stoll(s, &used);
    if (used != s.size()) return std::nullopt;
    return v;
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

}  // namespace

int main() {
  std::ios::sync_with_stdio(false);
  std::string line;
  std::string out;
  long long line_number = 0;
  while (std::getline(std::cin, line)) {
    ++line_number;
    const std::vector<std::string> parts = split_tabs(line);
    const auto from = parts.size() == 4 ? to_number(parts[2]) : std::nullopt;
    const auto count = parts.size() == 4 ? to_number(parts[3]) : std::nullopt;
    if (!from || !count || *count < 0) {
      std::cerr << "cron_tool: line " << line_number << ": expected EXPR<TAB>ZONE<TAB>FROM<TAB>COUNT\n";
      return 2;
    }
    try {
      const omnibus::cron c(parts[0], parts[1]);
      std::chrono::system_clock::time_point at{std::chrono::seconds{*from}};
      for (long long i = 0; i < *count; ++i) {
        if (i > 0) out += ' ';
        const std::optional<omnibus::cron::time_point> fire = c.next(at);
        if (!fire) {
          out += "none";
          break;
        }
        out += std::to_string(fire->time_since_epoch().count());
        at = *fire;
      }
    } catch (const omnibus::cron_error& e) {
      out += "error\t";
      out += e.what();
    }
    out += '\n';
    std::cout << out;
    out.clear();
  }
  return 0;
}
