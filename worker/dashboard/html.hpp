#pragma once
// What the dashboard's pages are made of: escaping for HTML and URLs, query strings, and a
// builder through which producer text can only enter escaped. Internal to the worker library.

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace omnibus::detail {

/// `s` for HTML text and quoted attribute values: first to_text (bytes that are not UTF-8 read
/// \xHH), then & < > " ' as &amp; &lt; &gt; &quot; &#39;.
[[nodiscard]] std::string html_escape(std::string_view s);

/// `s` for a URL path segment or query value: RFC 3986 unreserved characters (A-Z a-z 0-9 - . _ ~)
/// kept, every other byte %XX (uppercase hex).
[[nodiscard]] std::string url_encode(std::string_view s);

/// `s` with its %XX decoded (either case), and '+' as a space when `plus_as_space` (form data).
/// nullopt when a '%' is not followed by two hex digits, or when the result would hold a NUL
/// (%00 or a raw NUL): nothing downstream expects one.
[[nodiscard]] std::optional<std::string> url_decode(std::string_view s, bool plus_as_space);

/// One name=value pair of a query string, decoded.
struct query_param {
  std::string name;   ///< UTF-8, no NUL
  std::string value;  ///< UTF-8, no NUL; empty for a bare name ("?raw")
};

/// The pairs of a query string (without its '?'), form-urlencoded ('+' is a space), in order;
/// empty pieces ("a=1&&b=2", a trailing '&') are skipped. nullopt when an escape is bad, a name
/// or value decodes to something other than UTF-8 or holds a NUL, or there are more than
/// `max_params` pairs: a request like that did not come from our pages.
[[nodiscard]] std::optional<std::vector<query_param>> parse_query(std::string_view query,
                                                                  std::size_t max_params = 32);

/// `n` with a comma every three digits: 3412 reads "3,412".
[[nodiscard]] std::string format_count(std::uint64_t n);

/// A piece of markup known when the program was compiled. Its constructor is consteval, so only
/// a constant (a string literal) converts to it: text that arrives at run time cannot.
class html_literal {
 public:
  /// From a string literal (its terminating NUL left out).
  template <std::size_t N>
  consteval html_literal(const char (&s)[N]) noexcept : text_(s, N - 1) {}  // implicit: raw("<p>")

  /// The markup.
  [[nodiscard]] constexpr std::string_view text() const noexcept { return text_; }

 private:
  std::string_view text_;  ///< a literal's, so it lives as long as the program
};

/// Builds one page. Markup goes in only through raw(), which takes literals; everything else
/// (producer text, names, numbers) through text(), attr() and number(), which escape or cannot
/// need to. So producer text can never reach the page unescaped.
class html {
 public:
  /// Appends markup written in the source: `h.raw("<td class=\"n\">")`.
  html& raw(html_literal markup);
  /// Appends `s` escaped with html_escape, for element content.
  html& text(std::string_view s);
  /// Appends `s` escaped with html_escape, for a value inside a quoted attribute (raw() writes
  /// the quotes); the same escaping as text(), named for the reader of the page's code.
  html& attr(std::string_view s);
  /// Appends `n` in decimal.
  html& number(std::int64_t n);

  /// The page, moved out of the builder.
  [[nodiscard]] std::string str() &&;
  /// The page so far.
  [[nodiscard]] const std::string& view() const noexcept;

 private:
  std::string out_;  ///< the page so far
};

}  // namespace omnibus::detail
