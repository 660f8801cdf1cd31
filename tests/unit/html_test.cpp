// The dashboard's escaping and query strings: producer text never becomes markup, and requests
// that did not come from our pages are refused.

#include <cstdint>
#include <limits>
#include <string>
#include <utility>

#include <catch2/catch.hpp>

#include "dashboard/html.hpp"

using omnibus::detail::format_count;
using omnibus::detail::html_escape;
using omnibus::detail::parse_query;
using omnibus::detail::url_decode;
using omnibus::detail::url_encode;

TEST_CASE("html_escape leaves no markup", "[worker][dashboard]") {
  CHECK(html_escape("<script>alert('x')</script>") == "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;");
  CHECK(html_escape("a & b \"c\"") == "a &amp; b &quot;c&quot;");
  CHECK(html_escape("&amp;") == "&amp;amp;");  // escaped text is escaped again, not trusted
  CHECK(html_escape("caf\xc3\xa9") == "caf\xc3\xa9");
}

TEST_CASE("html_escape shows bytes that are not UTF-8 as \\xHH", "[worker][dashboard]") {
  CHECK(html_escape("\xff<") == "\\xff&lt;");
  CHECK(html_escape(std::string("a\0b", 3)) == "a\\x00b");
}

TEST_CASE("url_encode keeps only the unreserved characters", "[worker][dashboard]") {
  CHECK(url_encode("AZaz09-._~") == "AZaz09-._~");
  CHECK(url_encode("order.placed v2/x?y=1&z") == "order.placed%20v2%2Fx%3Fy%3D1%26z");
  CHECK(url_encode("\xc3\xa9\xff+") == "%C3%A9%FF%2B");
  CHECK(url_decode(url_encode("any \x01 bytes \xfe"), false) == "any \x01 bytes \xfe");
}

TEST_CASE("url_decode refuses broken escapes and NUL", "[worker][dashboard]") {
  CHECK(url_decode("a%2Fb%2fc", false) == "a/b/c");
  CHECK(url_decode("a+b", false) == "a+b");
  CHECK(url_decode("a+b", true) == "a b");
  CHECK(url_decode("%2B", true) == "+");
  CHECK(url_decode("", false) == "");
  SECTION("bad") {
    for (const char* bad : {"%", "%2", "a%", "%zz", "%g0", "%0g", "%%41", "%00", "a%00b"}) {
      INFO(bad);
      CHECK_FALSE(url_decode(bad, false).has_value());
    }
    CHECK_FALSE(url_decode(std::string("a\0b", 3), false).has_value());
  }
}

TEST_CASE("parse_query decodes form pairs in order", "[worker][dashboard]") {
  const auto q = parse_query("listener=loyalty&event=order.placed&q=a+b%2Bc&raw&=v&&empty=");
  REQUIRE(q.has_value());
  REQUIRE(q->size() == 6);
  CHECK(((*q)[0].name == "listener" && (*q)[0].value == "loyalty"));
  CHECK(((*q)[1].name == "event" && (*q)[1].value == "order.placed"));
  CHECK(((*q)[2].name == "q" && (*q)[2].value == "a b+c"));
  CHECK(((*q)[3].name == "raw" && (*q)[3].value.empty()));
  CHECK(((*q)[4].name.empty() && (*q)[4].value == "v"));
  CHECK(((*q)[5].name == "empty" && (*q)[5].value.empty()));
  CHECK(parse_query("a=1=2")->at(0).value == "1=2");
  CHECK(parse_query("")->empty());
  CHECK(parse_query("&&&")->empty());
}

TEST_CASE("parse_query refuses what our pages never send", "[worker][dashboard]") {
  SECTION("a bad escape") { CHECK_FALSE(parse_query("a=1&b=%zz").has_value()); }
  SECTION("a NUL") { CHECK_FALSE(parse_query("a=%00").has_value()); }
  SECTION("a value that is not UTF-8") {
    CHECK_FALSE(parse_query("a=%FF").has_value());
    CHECK_FALSE(parse_query("a=%C0%AF").has_value());  // overlong '/'
    CHECK_FALSE(parse_query("a=%ED%A0%80").has_value());  // a surrogate
    CHECK(parse_query("a=%C3%A9")->at(0).value == "\xc3\xa9");
  }
  SECTION("a name that is not UTF-8") { CHECK_FALSE(parse_query("%FF=1").has_value()); }
  SECTION("too many pairs") {
    std::string q;
    for (int i = 0; i < 32; ++i) q += "p" + std::to_string(i) + "=x&";
    CHECK(parse_query(q).has_value());
    CHECK_FALSE(parse_query(q + "one=more").has_value());
    CHECK(parse_query("a=1&b=2", 2).has_value());
    CHECK_FALSE(parse_query("a=1&b=2&c=3", 2).has_value());
    CHECK(parse_query("a=1&&&b=2&", 2).has_value());  // empty pieces are not pairs
  }
}

TEST_CASE("format_count groups digits by three", "[worker][dashboard]") {
  CHECK(format_count(0) == "0");
  CHECK(format_count(999) == "999");
  CHECK(format_count(1000) == "1,000");
  CHECK(format_count(3412) == "3,412");
  CHECK(format_count(100000) == "100,000");
  CHECK(format_count(1234567) == "1,234,567");
  CHECK(format_count(std::numeric_limits<std::uint64_t>::max()) == "18,446,744,073,709,551,615");
}

TEST_CASE("the html builder escapes everything but literals", "[worker][dashboard]") {
  omnibus::detail::html h;
  h.raw("<td title=\"").attr("it's \"<b>\"").raw("\">").text("<script>x</script> & \xff").raw("</td><td>");
  h.number(-42).raw("</td>");
  CHECK(h.view() ==
        "<td title=\"it&#39;s &quot;&lt;b&gt;&quot;\">&lt;script&gt;x&lt;/script&gt; &amp; \\xff</td><td>-42</td>");
  h.number(std::numeric_limits<std::int64_t>::min());
  const std::string page = std::move(h).str();
  CHECK(page.substr(page.size() - 20) == "-9223372036854775808");
  // h.raw(page) does not compile: raw() takes only string literals (html_literal is consteval).
}
