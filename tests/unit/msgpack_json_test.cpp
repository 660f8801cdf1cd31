// The dashboard's view of a message body: every msgpack type as JSON, and bodies that lie
// about their sizes, nest too deep or run too long shown within bounds, with the reason.

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>

#include <catch2/catch.hpp>
#include <msgpack.hpp>

#include "dashboard/html.hpp"
#include "dashboard/msgpack_json.hpp"
#include "omnibus/text.hpp"

namespace {

using omnibus::detail::json_limits;
using omnibus::detail::msgpack_to_json;

// Bytes built with msgpack-c's packer, so that each test reads as the value it sends.
struct body {
  msgpack::sbuffer buf;
  msgpack::packer<msgpack::sbuffer> pk{buf};
  [[nodiscard]] std::string bytes() const { return std::string(buf.data(), buf.size()); }
};

std::string bytes_of(std::initializer_list<unsigned char> b) { return std::string(b.begin(), b.end()); }

const std::string ellipsis = "\xe2\x80\xa6";

bool ends_with(const std::string& s, const std::string& tail) {
  return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
}

}  // namespace

TEST_CASE("every msgpack type has its JSON", "[worker][dashboard]") {
  body b;
  b.pk.pack_map(12);
  b.pk.pack("nil");
  b.pk.pack_nil();
  b.pk.pack("yes");
  b.pk.pack(true);
  b.pk.pack("no");
  b.pk.pack(false);
  b.pk.pack("u64");
  b.pk.pack(std::numeric_limits<std::uint64_t>::max());
  b.pk.pack("i64");
  b.pk.pack(std::numeric_limits<std::int64_t>::min());
  b.pk.pack("f32");
  b.pk.pack(0.1f);  // shortest as a float, not 0.10000000149011612
  b.pk.pack("f64");
  b.pk.pack(0.1);
  b.pk.pack("whole");  // msgpack-c packs 3.0 as an integer; other producers do not
  b.buf.write("\xcb\x40\x08\0\0\0\0\0\0", 9);
  b.pk.pack("str");
  b.pk.pack("caf\xc3\xa9 \"quoted\"\n");
  b.pk.pack("bin");
  b.pk.pack_bin(3);
  b.pk.pack_bin_body("\x00\x01\x02", 3);
  b.pk.pack("ext");
  b.pk.pack_ext(2, 5);
  b.pk.pack_ext_body("\x0a\xff", 2);
  b.pk.pack("list");
  b.pk.pack_array(3);
  b.pk.pack(1);
  b.pk.pack(-1);
  b.pk.pack_array(0);
  const auto r = msgpack_to_json(b.bytes());
  CHECK(r.complete);
  CHECK(r.note.empty());
  CHECK(r.text ==
        "{\n"
        "  \"nil\": null,\n"
        "  \"yes\": true,\n"
        "  \"no\": false,\n"
        "  \"u64\": 18446744073709551615,\n"
        "  \"i64\": -9223372036854775808,\n"
        "  \"f32\": 0.1,\n"
        "  \"f64\": 0.1,\n"
        "  \"whole\": 3.0,\n"
        "  \"str\": \"caf\xc3\xa9 \\\"quoted\\\"\\n\",\n"
        "  \"bin\": {\"$bin\": \"AAEC\"},\n"
        "  \"ext\": {\"$ext\": 5, \"hex\": \"0aff\"},\n"
        "  \"list\": [\n"
        "    1,\n"
        "    -1,\n"
        "    []\n"
        "  ]\n"
        "}");
}

TEST_CASE("a scalar body is its JSON value alone", "[worker][dashboard]") {
  body b;
  b.pk.pack(42);
  CHECK(msgpack_to_json(b.bytes()).text == "42");
  CHECK(msgpack_to_json(bytes_of({0xc0})).text == "null");
  CHECK(msgpack_to_json(bytes_of({0x80})).text == "{}");
  CHECK(msgpack_to_json(bytes_of({0xcb, 0x44, 0xa2, 0xe1, 0x6c, 0xe1, 0x17, 0x4b, 0x5c})).text.find('e') !=
        std::string::npos);  // 4.4e22: exponent form is JSON too
}

TEST_CASE("nested maps indent two spaces a level", "[worker][dashboard]") {
  body b;
  b.pk.pack_map(2);
  b.pk.pack("order");
  b.pk.pack_map(2);
  b.pk.pack("id");
  b.pk.pack(7);
  b.pk.pack("lines");
  b.pk.pack_array(1);
  b.pk.pack_map(1);
  b.pk.pack("sku");
  b.pk.pack("A-1");
  b.pk.pack("empty");
  b.pk.pack_map(0);
  CHECK(msgpack_to_json(b.bytes()).text ==
        "{\n"
        "  \"order\": {\n"
        "    \"id\": 7,\n"
        "    \"lines\": [\n"
        "      {\n"
        "        \"sku\": \"A-1\"\n"
        "      }\n"
        "    ]\n"
        "  },\n"
        "  \"empty\": {}\n"
        "}");
}

TEST_CASE("NaN and the infinities are strings, as JSON has no such numbers", "[worker][dashboard]") {
  body b;
  b.pk.pack_array(4);
  b.pk.pack(std::numeric_limits<double>::quiet_NaN());
  b.pk.pack(std::numeric_limits<double>::infinity());
  b.pk.pack(-std::numeric_limits<double>::infinity());
  b.pk.pack(std::numeric_limits<float>::quiet_NaN());
  CHECK(msgpack_to_json(b.bytes()).text == "[\n  \"NaN\",\n  \"Infinity\",\n  \"-Infinity\",\n  \"NaN\"\n]");
}

TEST_CASE("map keys that are not strings are their JSON text, quoted", "[worker][dashboard]") {
  body b;
  b.pk.pack_map(4);
  b.pk.pack(1);
  b.pk.pack("one");
  b.pk.pack_array(2);
  b.pk.pack("a");
  b.pk.pack(2.5);
  b.pk.pack(true);
  b.pk.pack_nil();
  b.pk.pack(0);
  b.pk.pack_bin(1);
  b.pk.pack_bin_body("\xff", 1);
  b.pk.pack(0);
  const auto r = msgpack_to_json(b.bytes());
  CHECK(r.complete);
  CHECK(r.text ==
        "{\n"
        "  \"1\": \"one\",\n"
        "  \"[\\\"a\\\",2.5]\": true,\n"
        "  \"null\": 0,\n"
        "  \"{\\\"$bin\\\":\\\"/w==\\\"}\": 0\n"
        "}");
}

TEST_CASE("bin is base64 with its padding", "[worker][dashboard]") {
  const auto bin = [](const std::string& data) {
    body b;
    b.pk.pack_bin(static_cast<std::uint32_t>(data.size()));
    b.pk.pack_bin_body(data.data(), static_cast<std::uint32_t>(data.size()));
    return msgpack_to_json(b.bytes()).text;
  };
  CHECK(bin("") == "{\"$bin\": \"\"}");
  CHECK(bin(std::string(1, '\0')) == "{\"$bin\": \"AA==\"}");
  CHECK(bin(std::string("\0\x01", 2)) == "{\"$bin\": \"AAE=\"}");
  CHECK(bin("Man") == "{\"$bin\": \"TWFu\"}");
  CHECK(bin("\xfb\xff") == "{\"$bin\": \"+/8=\"}");
}

TEST_CASE("ext shows its type, negative ones too, and its data in hex", "[worker][dashboard]") {
  body b;
  b.pk.pack_ext(4, -1);  // the timestamp type
  b.pk.pack_ext_body("\x00\x00\x00\x01", 4);
  CHECK(msgpack_to_json(b.bytes()).text == "{\"$ext\": -1, \"hex\": \"00000001\"}");
}

TEST_CASE("strings that are not UTF-8 show their bytes as \\xHH", "[worker][dashboard]") {
  body b;
  b.pk.pack(std::string("ok\xff\0", 4));
  const auto r = msgpack_to_json(b.bytes());
  CHECK(r.text == "\"ok\\\\xff\\\\x00\"");
  CHECK(omnibus::is_utf8(r.text));
}

TEST_CASE("<script> in a body stays text once the page escapes it", "[worker][dashboard]") {
  body b;
  b.pk.pack_map(1);
  b.pk.pack("<script>alert('x')</script>");
  b.pk.pack("</pre><img src=x onerror=alert(1)>");
  const std::string page = omnibus::detail::html_escape(msgpack_to_json(b.bytes()).text);
  CHECK(page.find('<') == std::string::npos);
  CHECK(page.find('>') == std::string::npos);
  CHECK(page.find("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;") != std::string::npos);
}

TEST_CASE("bytes after the first object are counted, and the object still shown", "[worker][dashboard]") {
  body b;
  b.pk.pack(1);
  SECTION("several") {
    const auto r = msgpack_to_json(b.bytes() + bytes_of({0x01, 0x02, 0xc1}));
    CHECK(r.complete);
    CHECK(r.text == "1");
    CHECK(r.note == "3 trailing bytes");
  }
  SECTION("one") { CHECK(msgpack_to_json(b.bytes() + "x").note == "1 trailing byte"); }
}

TEST_CASE("an empty body says so", "[worker][dashboard]") {
  const auto r = msgpack_to_json("");
  CHECK(r.text.empty());
  CHECK(r.note == "empty body");
}

TEST_CASE("bytes that are not msgpack are shown as a hex dump, with the reason", "[worker][dashboard]") {
  SECTION("truncated") {
    body b;
    b.pk.pack_map(1);
    b.pk.pack("name");
    b.pk.pack("a string cut short");
    const std::string cut = b.bytes().substr(0, b.bytes().size() - 5);
    const auto r = msgpack_to_json(cut);
    CHECK_FALSE(r.complete);
    CHECK(r.note == "truncated: the body ends inside a value (" + std::to_string(cut.size()) + " bytes)");
    CHECK(r.text.rfind("00000000  81 a4 6e 61 6d 65 b2 61  20 73 74 72 69 6e 67 20  |..name.a string |\n", 0) == 0);
  }
  SECTION("a byte msgpack never uses") {
    const auto r = msgpack_to_json(bytes_of({0x92, 0x01, 0xc1}));
    CHECK_FALSE(r.complete);
    CHECK(r.note == "not msgpack: at offset 2, byte 0xc1 is no msgpack type");
    CHECK(r.text == "00000000  92 01 c1                                          |...|\n");
  }
  SECTION("only the first 4 KiB are dumped") {
    const auto r = msgpack_to_json(bytes_of({0xc1}) + std::string(10000, 'x'));
    CHECK_FALSE(r.complete);
    CHECK(ends_with(r.text, ellipsis + " 5905 more bytes\n"));
    CHECK(r.text.size() < 4096 * 5);
  }
}

TEST_CASE("a length the body cannot hold is refused before anything is reserved for it", "[worker][dashboard]") {
  // Taken at its word, msgpack-c would reserve 2^32 objects (64 GiB) before reading one.
  SECTION("an array of 2^32 - 1 elements in 5 bytes") {
    const auto r = msgpack_to_json(bytes_of({0xdd, 0xff, 0xff, 0xff, 0xff}));
    CHECK_FALSE(r.complete);
    CHECK(r.note == "an array announces 4294967295 elements, more than a 5-byte body can hold");
    CHECK(r.text.rfind("00000000  dd ff ff ff ff", 0) == 0);
  }
  SECTION("a map") {
    const auto r = msgpack_to_json(bytes_of({0xdf, 0x7f, 0xff, 0xff, 0xff}));
    CHECK(r.note == "a map announces 2147483647 entries, more than a 5-byte body can hold");
  }
  SECTION("nested arrays, each alone small enough, that together are not") {
    // Each level announces 60000 elements, and 60000 bytes of padding follow: only the sum of
    // what they announce tells the lie (without it, 32 levels would reserve 60000 objects each).
    std::string lie;
    for (int i = 0; i < 32; ++i) lie += bytes_of({0xdc, 0xea, 0x60});
    lie += std::string(60000, '\x01');
    const auto r = msgpack_to_json(lie);
    CHECK_FALSE(r.complete);
    CHECK(r.note == "an array announces 60000 elements, with those announced before it more than a " +
                        std::to_string(lie.size()) + "-byte body can hold");
  }
  SECTION("a string longer than the body") {
    const auto r = msgpack_to_json(bytes_of({0xdb, 0xff, 0xff, 0xff, 0xff, 'a'}));
    CHECK_FALSE(r.complete);
    CHECK(r.note == "truncated: the body ends inside a value (6 bytes)");
  }
}

TEST_CASE("nesting past the depth limit is refused", "[worker][dashboard]") {
  const auto nested = [](int levels) {
    std::string s(static_cast<std::size_t>(levels), '\x91');  // fixarray of one element
    return s + '\x01';
  };
  CHECK(msgpack_to_json(nested(32)).complete);
  const auto r = msgpack_to_json(nested(33));
  CHECK_FALSE(r.complete);
  CHECK(r.note == "nested deeper than 32 levels");
  json_limits shallow;
  shallow.max_depth = 2;
  CHECK(msgpack_to_json(nested(2), shallow).complete);
  CHECK(msgpack_to_json(nested(3), shallow).note == "nested deeper than 2 levels");
  CHECK(msgpack_to_json(bytes_of({0x91, 0x91, 0x90}), shallow).note == "nested deeper than 2 levels");
}

TEST_CASE("output stops with … at the size limit, and stays UTF-8", "[worker][dashboard]") {
  json_limits small;
  small.max_output = 100;
  SECTION("many values") {
    body b;
    b.pk.pack_array(1000);
    for (int i = 0; i < 1000; ++i) b.pk.pack(i);
    const auto r = msgpack_to_json(b.bytes(), small);
    CHECK_FALSE(r.complete);
    CHECK(r.note == "cut at 100 bytes of JSON");
    CHECK(r.text.size() == 100 + ellipsis.size());
    CHECK(ends_with(r.text, ellipsis));
  }
  SECTION("one long string of two-byte characters, cut between them") {
    std::string s;
    for (int i = 0; i < 10000; ++i) s += "\xc3\xa9";
    body b;
    b.pk.pack(s);
    const auto r = msgpack_to_json(b.bytes(), small);
    CHECK_FALSE(r.complete);
    CHECK(r.text.size() <= 100 + ellipsis.size());
    CHECK(r.text.substr(0, 3) == "\"\xc3\xa9");
    CHECK(omnibus::is_utf8(r.text));
  }
  SECTION("a long non-string key") {
    body b;
    b.pk.pack_map(1);
    b.pk.pack_array(100);
    for (int i = 0; i < 100; ++i) b.pk.pack("\"quoted\"");  // quoting the key's text doubles it
    b.pk.pack(1);
    const auto r = msgpack_to_json(b.bytes(), small);
    CHECK_FALSE(r.complete);
    CHECK(r.text.size() <= 100 + ellipsis.size());
    CHECK(omnibus::is_utf8(r.text));
  }
  SECTION("trailing bytes are still counted") {
    body b;
    b.pk.pack(std::string(500, 'a'));
    const auto r = msgpack_to_json(b.bytes() + "zz", small);
    CHECK(r.note == "cut at 100 bytes of JSON; 2 trailing bytes");
  }
}

TEST_CASE("output stops with … past the number of values", "[worker][dashboard]") {
  json_limits few;
  few.max_elements = 5;
  body b;
  b.pk.pack_array(10);
  for (int i = 0; i < 10; ++i) b.pk.pack(i);
  const auto r = msgpack_to_json(b.bytes(), few);
  CHECK_FALSE(r.complete);
  CHECK(r.note == "more than 5 values (map keys count)");
  CHECK(r.text == "[\n  0,\n  1,\n  2,\n  3,\n  " + ellipsis);  // the array itself is one
  SECTION("map keys count") {
    body m;
    m.pk.pack_map(3);
    for (int i = 0; i < 3; ++i) {
      m.pk.pack("k");
      m.pk.pack(i);
    }
    CHECK(msgpack_to_json(m.bytes(), few).text == "{\n  \"k\": 0,\n  \"k\": 1,\n  " + ellipsis);
  }
}
