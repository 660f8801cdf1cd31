#include "json_log.hpp"

#include <chrono>
#include <cstdio>
#include <ctime>
#include <string>
#include <string_view>

#include <spdlog/details/log_msg.h>

#include "omnibus/text.hpp"

namespace omnibus::detail {

std::string json_quote(std::string_view raw) {
  const std::string s = to_text(raw);  // valid UTF-8 from here on
  std::string out;
  out.reserve(s.size() + 2);
  out += '"';
  for (unsigned char c : s) {
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  out += '"';
  return out;
}

namespace {

class json_formatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override {
    using namespace std::chrono;
    const auto t = msg.time;
    const std::time_t secs = system_clock::to_time_t(t);
    const auto ms = duration_cast<milliseconds>(t.time_since_epoch()).count() % 1000;
    std::tm tm{};
    gmtime_r(&secs, &tm);
    char ts[96];  // room for any int the compiler imagines in the fields
    std::snprintf(ts, sizeof ts, "%04d-%02d-%02dT%02d:%02d:%02d.%03lldZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                  tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<long long>(ms));
    const std::string_view payload(msg.payload.data(), msg.payload.size());
    const auto level = spdlog::level::to_string_view(msg.level);
    std::string line = "{\"ts\":\"" + std::string(ts) + "\",\"level\":\"" + std::string(level.data(), level.size()) +
                       "\",\"logger\":" + json_quote(std::string_view(msg.logger_name.data(), msg.logger_name.size()));
    // The worker's messages about one listener start "listener <name>: ".
    constexpr std::string_view about = "listener ";
    if (payload.substr(0, about.size()) == about) {
      const auto colon = payload.find(": ", about.size());
      if (colon != std::string_view::npos) {
        line += ",\"listener\":" + json_quote(payload.substr(about.size(), colon - about.size()));
      }
    }
    line += ",\"msg\":" + json_quote(payload) + "}\n";
    dest.append(line.data(), line.data() + line.size());
  }

  [[nodiscard]] std::unique_ptr<spdlog::formatter> clone() const override { return std::make_unique<json_formatter>(); }
};

}  // namespace

std::unique_ptr<spdlog::formatter> make_json_formatter() { return std::make_unique<json_formatter>(); }

}  // namespace omnibus::detail
