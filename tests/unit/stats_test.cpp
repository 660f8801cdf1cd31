// `stats`' text and JSON, from a view built by hand (the integration tests read real servers).

#include <chrono>
#include <string>

#include <catch2/catch.hpp>

#include "stats.hpp"

using namespace std::chrono_literals;
using omnibus::detail::listener_stats;

namespace {

listener_stats listener(std::string name) {
  listener_stats l;
  l.name = std::move(name);
  l.consumer = "g_" + l.name;
  l.consumer_found = true;
  return l;
}

// The line of `text` that starts with `name`.
std::string line_of(const std::string& text, const std::string& name) {
  const auto at = text.find("\n" + name + " ");
  if (at == std::string::npos) return {};
  return text.substr(at + 1, text.find('\n', at + 1) - at - 1);
}

}  // namespace

TEST_CASE("stats: a per-key listener's parked keys are counted; an ordered listener's parking is YES or no",
          "[stats]") {
  omnibus::detail::stats_view v;
  v.db.schema_version = 13;
  auto visits = listener("visits");
  visits.parked_keys = 3;
  auto one = listener("one_key");
  one.parked_keys = 1;
  auto audit = listener("audit");
  audit.parked = true;
  v.listeners = {visits, one, audit, listener("calm")};

  const std::string text = omnibus::detail::stats_text(v, 60s, false);
  INFO(text);
  CHECK_THAT(line_of(text, "visits"), Catch::Contains(" 3 keys "));
  CHECK_THAT(line_of(text, "one_key"), Catch::Contains(" 1 key "));
  CHECK_THAT(line_of(text, "audit"), Catch::Contains(" YES "));
  CHECK_THAT(line_of(text, "calm"), Catch::Contains(" no "));
  CHECK_THAT(line_of(text, "calm"), !Catch::Contains("key"));
  // The columns line up: each row's parked cell ends where the header's does.
  const std::string header = text.substr(0, text.find('\n'));
  const auto column_end = header.find("parked") + 6;
  CHECK(line_of(text, "visits").substr(column_end - 6, 6) == "3 keys");
  CHECK(line_of(text, "audit").substr(column_end - 3, 3) == "YES");

  const std::string json = omnibus::detail::stats_json(v, 60s);
  INFO(json);
  CHECK_THAT(json, Catch::Contains("\"name\":\"visits\""));
  CHECK_THAT(json, Catch::Contains("\"parked\":false,\"parked_keys\":3,"));
  CHECK_THAT(json, Catch::Contains("\"parked\":true,\"parked_keys\":0,"));
}
