// --log-format json: every line one valid JSON object, whatever the message holds (checked with
// python3's json module, a real parser), with the listener as a field of its own.

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <string>

#include <catch2/catch.hpp>
#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/spdlog.h>

#include "json_log.hpp"

TEST_CASE("JSON log lines parse, however hostile the message", "[json_log]") {
  const std::string path = "/tmp/omnibus-json-log-" + std::to_string(::getpid()) + ".jsonl";
  {
    auto sink = std::make_shared<spdlog::sinks::basic_file_sink_mt>(path, true);
    sink->set_formatter(omnibus::detail::make_json_formatter());
    spdlog::logger log("omnibus-worker", sink);
    log.info("listener loyalty: order.placed 01a2 attempt 2/3 failed: the \"backend\" said:\nno\r\tthanks");
    log.error("non-ASCII: é ü 漢字, and bytes that are not UTF-8: \xff\xfe, and a NUL-free control \x01\x1b[31m");
    log.warn("a backslash \\ and a quote \" at the end\"");
    log.flush();
  }
  std::ifstream in(path);
  std::string first;
  REQUIRE(std::getline(in, first));
  CHECK_THAT(first, Catch::Contains("\"listener\":\"loyalty\"") && Catch::Contains("\"level\":\"info\"") &&
                        Catch::Contains("\\\"backend\\\"") && Catch::Contains("\\n"));
  const std::string check = "/usr/bin/python3 -c 'import json,sys\n"
                            "lines = [json.loads(l) for l in open(sys.argv[1])]\n"
                            "assert len(lines) == 3, lines\n"
                            "assert lines[0][\"listener\"] == \"loyalty\"\n"
                            "assert \"\\n\" in lines[0][\"msg\"]\n"
                            "assert \"漢字\" in lines[1][\"msg\"]\n"
                            "assert all(k in l for l in lines for k in (\"ts\", \"level\", \"logger\", \"msg\"))' " +
                            path;
  CHECK(std::system(check.c_str()) == 0);
  std::remove(path.c_str());
}

TEST_CASE("json_quote escapes what JSON needs and keeps UTF-8", "[json_log]") {
  CHECK(omnibus::detail::json_quote("a\"b\\c\n") == "\"a\\\"b\\\\c\\n\"");
  CHECK(omnibus::detail::json_quote("é") == "\"é\"");
  CHECK(omnibus::detail::json_quote(std::string("\x01", 1)) == "\"\\u0001\"");
}
