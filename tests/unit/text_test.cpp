// Producers' bytes made safe for text columns and terminals.

#include <string>

#include <catch2/catch.hpp>

#include "bus/text.hpp"

TEST_CASE("UTF-8 is told from what is not", "[bus][text]") {
  CHECK(bus::is_utf8("plain ascii"));
  CHECK(bus::is_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x9a\x8c"));
  CHECK_FALSE(bus::is_utf8("\xff\xfe-not-a-uuid"));
  CHECK_FALSE(bus::is_utf8("\xc0\xaf"));          // overlong '/'
  CHECK_FALSE(bus::is_utf8("\xed\xa0\x80"));      // a surrogate
  CHECK_FALSE(bus::is_utf8("\xf4\x90\x80\x80"));  // past U+10FFFF
  CHECK_FALSE(bus::is_utf8("\xe2\x82"));          // cut short
}

TEST_CASE("to_text keeps UTF-8 as it is and escapes the rest so that it can be told back", "[bus][text]") {
  CHECK(bus::to_text("order.placed") == "order.placed");
  CHECK(bus::to_text("a\\b") == "a\\b");  // valid text is left alone, backslash included
  CHECK(bus::to_text("\xff\xfe-not-a-uuid") == "\\xff\\xfe-not-a-uuid");
  CHECK(bus::to_text(std::string("a\0b", 3)) == "a\\x00b");
  // Once escaping, a backslash is escaped too: "\xff" typed by hand and the byte 0xff differ.
  CHECK(bus::to_text("\\xff\xff") == "\\\\xff\\xff");
  CHECK(bus::is_utf8(bus::to_text("\x80\x81\xc3(")));
}

TEST_CASE("for_terminal leaves nothing a terminal would act on", "[bus][text]") {
  CHECK(bus::for_terminal("caf\xc3\xa9") == "caf\xc3\xa9");
  CHECK(bus::for_terminal("\x1b[31mred\x1b[0m") == "\\e[31mred\\e[0m");
  CHECK(bus::for_terminal("\x1b]0;owned\x07") == "\\e]0;owned\\x07");  // set the window title, bell
  CHECK(bus::for_terminal("line\r\nnext\tcol") == "line\\r\\nnext\\tcol");
  CHECK(bus::for_terminal("\xc2\x9b" "31m") == "\\u{9b}31m");  // C1 CSI
  CHECK(bus::for_terminal("\xff\x7f") == "\\xff\\x7f");
  CHECK(bus::for_terminal("back\\slash") == "back\\\\slash");
}
