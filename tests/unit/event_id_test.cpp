#include <algorithm>
#include <chrono>
#include <set>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "omnibus/error.hpp"
#include "omnibus/event_id.hpp"

TEST_CASE("event ids are UUIDv7 and increase within a thread", "[bus]") {
  std::vector<omnibus::event_id> ids;
  for (int i = 0; i < 20000; ++i) ids.push_back(omnibus::event_id::generate());

  CHECK(std::is_sorted(ids.begin(), ids.end(), [](auto& a, auto& b) { return a < b; }));
  CHECK(std::set<omnibus::event_id>(ids.begin(), ids.end()).size() == ids.size());
  for (const auto& id : ids) {
    REQUIRE((id.bytes()[6] >> 4) == 7);      // version
    REQUIRE((id.bytes()[8] >> 6) == 0b10);   // variant
  }
}

TEST_CASE("an event id carries the time it was made", "[bus]") {
  using namespace std::chrono;
  // On a thread of its own: ids are increasing per thread, so a thread that just made more than
  // 4096 ids in a millisecond (the test above) may stamp the next ones a few milliseconds ahead.
  system_clock::time_point before, after;
  omnibus::event_id id;
  std::thread([&] {
    before = time_point_cast<milliseconds>(system_clock::now());
    id = omnibus::event_id::generate();
    after = time_point_cast<milliseconds>(system_clock::now());
  }).join();
  CHECK(id.time() >= before);
  CHECK(id.time() <= after + milliseconds(1));
}

TEST_CASE("an event id round-trips through its text form", "[bus]") {
  auto id = omnibus::event_id::generate();
  auto text = id.to_string();
  REQUIRE(text.size() == 36);
  CHECK(text[14] == '7');
  CHECK(omnibus::event_id::parse(text) == id);

  SECTION("upper case parses too") {
    std::string upper = text;
    std::transform(upper.begin(), upper.end(), upper.begin(), ::toupper);
    CHECK(omnibus::event_id::parse(upper) == id);
  }
  SECTION("malformed text is refused with the text in the message") {
    CHECK_THROWS_WITH(omnibus::event_id::parse("not-an-id"), Catch::Contains("not-an-id"));
    CHECK_THROWS_AS(omnibus::event_id::parse("0189e5a0-0000-7000-8000-00000000000g"), omnibus::error);
    CHECK_THROWS_AS(omnibus::event_id::parse("0189e5a0x0000-7000-8000-000000000000"), omnibus::error);
  }
}
