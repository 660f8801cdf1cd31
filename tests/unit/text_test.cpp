// Producers' bytes made safe for text columns and terminals.

#include <string>

#include <catch2/catch.hpp>

#include "omnibus/text.hpp"

TEST_CASE("UTF-8 is told from what is not", "[bus][text]") {
  CHECK(omnibus::is_utf8("plain ascii"));
  CHECK(omnibus::is_utf8("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x9a\x8c"));
  CHECK_FALSE(omnibus::is_utf8("\xff\xfe-not-a-uuid"));
  CHECK_FALSE(omnibus::is_utf8("\xc0\xaf"));          // overlong '/'
  CHECK_FALSE(omnibus::is_utf8("\xed\xa0\x80"));      // a surrogate
  CHECK_FALSE(omnibus::is_utf8("\xf4\x90\x80\x80"));  // past U+10FFFF
  CHECK_FALSE(omnibus::is_utf8("\xe2\x82"));          // cut short
}

TEST_CASE("to_text keeps UTF-8 as it is and escapes the rest so that it can be told back", "[bus][text]") {
  CHECK(omnibus::to_text("order.placed") == "order.placed");
  CHECK(omnibus::to_text("a\\b") == "a\\b");  // valid text is left alone, backslash included
  CHECK(omnibus::to_text("\xff\xfe-not-a-uuid") == "\\xff\\xfe-not-a-uuid");
  CHECK(omnibus::to_text(std::string("a\0b", 3)) == "a\\x00b");
  // Once escaping, a backslash is escaped too: "\xff" typed by hand and the byte 0xff differ.
  CHECK(omnibus::to_text("\\xff\xff") == "\\\\xff\\xff");
  CHECK(omnibus::is_utf8(omnibus::to_text("\x80\x81\xc3(")));
}

TEST_CASE("for_terminal leaves nothing a terminal would act on", "[bus][text]") {
  CHECK(omnibus::for_terminal("caf\xc3\xa9") == "caf\xc3\xa9");
  CHECK(omnibus::for_terminal("\x1b[31mred\x1b[0m") == "\\e[31mred\\e[0m");
  CHECK(omnibus::for_terminal("\x1b]0;owned\x07") == "\\e]0;owned\\x07");  // set the window title, bell
  CHECK(omnibus::for_terminal("line\r\nnext\tcol") == "line\\r\\nnext\\tcol");
  CHECK(omnibus::for_terminal("\xc2\x9b" "31m") == "\\u{9b}31m");  // C1 CSI
  CHECK(omnibus::for_terminal("\xff\x7f") == "\\xff\\x7f");
  CHECK(omnibus::for_terminal("back\\slash") == "back\\\\slash");
}
