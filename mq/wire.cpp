#include "wire.hpp"

#include <array>
#include <charconv>
#include <chrono>
#include <functional>

namespace omnibus::detail {
namespace {

bool blank(char c) noexcept { return c == ' ' || c == '\t'; }

std::string_view trim(std::string_view v) noexcept {
  while (!v.empty() && blank(v.front())) v.remove_prefix(1);
  while (!v.empty() && blank(v.back())) v.remove_suffix(1);
  return v;
}

template <class Int>
bool parse_uint(std::string_view s, Int& out) noexcept {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc{} && p == s.data() + s.size();
}

std::string shown(std::string_view line) {  // for error texts: at most 40 bytes of a line
  return std::string(line.substr(0, 40)) + (line.size() > 40 ? "..." : "");
}

// Just enough JSON for the server's API replies: objects, strings with every escape, unsigned
// integers; anything else is skipped over. Not a general parser: bounded depth, no floats kept.
class json_reader {
 public:
  explicit json_reader(std::string_view text) : s_(text) {}

  // Calls member(key) for each member of the object at the cursor; member reads or skips the value.
  void object(const std::function<void(const std::string&)>& member) {
    expect('{');
    space();
    if (peek() == '}') {
      ++i_;
      return;
    }
    for (;;) {
      space();
      const std::string key = string();
      space();
      expect(':');
      space();
      member(key);
      space();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      expect('}');
      return;
    }
  }

  std::string string() {
    expect('"');
    std::string out;
    while (i_ < s_.size() && s_[i_] != '"') {
      char c = s_[i_++];
      if (c != '\\') {
        out += c;
        continue;
      }
      if (i_ >= s_.size()) fail("an escape cut short");
      c = s_[i_++];
      switch (c) {
        case '"': case '\\': case '/': out += c; break;
        case 'b': out += '\b'; break;
        case 'f': out += '\f'; break;
        case 'n': out += '\n'; break;
        case 'r': out += '\r'; break;
        case 't': out += '\t'; break;
        case 'u': append_utf8(out, code_point()); break;
        default: fail("an unknown escape");
      }
    }
    expect('"');
    return out;
  }

  std::uint64_t unsigned_number() {
    const std::size_t start = i_;
    while (i_ < s_.size() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
    std::uint64_t v = 0;
    if (!parse_uint(s_.substr(start, i_ - start), v)) fail("a number out of range");
    return v;
  }

  void skip(int depth = 0) {
    if (depth > 32) fail("nesting too deep");
    space();
    const char c = peek();
    if (c == '"') {
      (void)string();
    } else if (c == '{') {
      object([&](const std::string&) { skip(depth + 1); });
    } else if (c == '[') {
      ++i_;
      space();
      if (peek() == ']') {
        ++i_;
        return;
      }
      for (;;) {
        skip(depth + 1);
        space();
        if (peek() == ',') {
          ++i_;
          continue;
        }
        expect(']');
        return;
      }
    } else {  // number, true, false, null
      const std::size_t start = i_;
      while (i_ < s_.size() && std::string_view("+-.eE0123456789truefalsn").find(s_[i_]) != std::string_view::npos) ++i_;
      if (i_ == start) fail("an unexpected character");
    }
  }

  void finish() {
    space();
    if (i_ != s_.size()) fail("trailing bytes");
  }

 private:
  [[noreturn]] void fail(const char* what) const {
    throw std::runtime_error(std::string("not a JetStream API reply: ") + what + " at byte " + std::to_string(i_));
  }
  char peek() const noexcept { return i_ < s_.size() ? s_[i_] : '\0'; }
  void space() noexcept {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  void expect(char c) {
    if (peek() != c) fail(c == '"' ? "expected a string" : "unexpected structure");
    ++i_;
  }
  unsigned hex4() {
    if (s_.size() - i_ < 4) fail("a \\u escape cut short");
    unsigned v = 0;
    auto [p, ec] = std::from_chars(s_.data() + i_, s_.data() + i_ + 4, v, 16);
    if (ec != std::errc{} || p != s_.data() + i_ + 4) fail("a bad \\u escape");
    i_ += 4;
    return v;
  }
  char32_t code_point() {
    unsigned cp = hex4();
    if (cp >= 0xD800 && cp <= 0xDBFF && s_.substr(i_, 2) == "\\u") {
      const std::size_t at = i_;
      i_ += 2;
      const unsigned low = hex4();
      if (low >= 0xDC00 && low <= 0xDFFF) return static_cast<char32_t>(0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00));
      i_ = at;  // a lone high surrogate: keep the low escape for the next round
    }
    if (cp >= 0xD800 && cp <= 0xDFFF) return 0xFFFD;
    return static_cast<char32_t>(cp);
  }
  static void append_utf8(std::string& out, char32_t cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }

  std::string_view s_;
  std::size_t i_ = 0;
};

}  // namespace

header_block parse_header_block(std::string_view block) {
  header_block out;
  constexpr std::string_view version = "NATS/1.0";
  if (block.substr(0, version.size()) != version) {
    throw header_block_error("the header block does not start with NATS/1.0: '" + shown(block) + "'");
  }
  std::size_t eol = block.find("\r\n");
  if (eol == std::string_view::npos) throw header_block_error("the header block's status line has no CR LF");
  std::string_view status = block.substr(version.size(), eol - version.size());
  if (!status.empty()) {
    if (!blank(status.front())) throw header_block_error("the status line '" + shown(status) + "' is not NATS/1.0 [code]");
    status = trim(status);
    const std::string_view code = status.substr(0, status.find(' '));
    if (code.size() != 3 || !parse_uint(code, out.status)) {
      throw header_block_error("the status line's code '" + shown(code) + "' is not three digits");
    }
  }
  std::string_view rest = block.substr(eol + 2);
  for (;;) {
    eol = rest.find("\r\n");
    if (eol == std::string_view::npos) throw header_block_error("the header block does not end with an empty line");
    const std::string_view line = rest.substr(0, eol);
    rest.remove_prefix(eol + 2);
    if (line.empty()) break;
    if (out.headers.size() == max_header_lines) {
      throw header_block_error("the header block has more than " + std::to_string(max_header_lines) + " lines");
    }
    const std::size_t colon = line.find(':');
    if (colon == std::string_view::npos) throw header_block_error("header line '" + shown(line) + "' has no ':'");
    const std::string_view name = line.substr(0, colon);
    if (name.empty()) throw header_block_error("a header line has an empty name");
    for (char c : name) {
      const auto u = static_cast<unsigned char>(c);
      if (u <= 0x20 || u == 0x7F) throw header_block_error("header name '" + shown(name) + "' has a space or control character");
    }
    out.headers.emplace_back(std::string(name), std::string(trim(line.substr(colon + 1))));
  }
  if (!rest.empty()) throw header_block_error("bytes follow the header block's final empty line");
  return out;
}

std::optional<ack_metadata> parse_ack_subject(std::string_view reply) {
  constexpr std::string_view prefix = "$JS.ACK.";
  if (reply.substr(0, prefix.size()) != prefix) return std::nullopt;
  reply.remove_prefix(prefix.size());
  std::array<std::string_view, 12> t{};
  std::size_t n = 0;
  while (n < t.size()) {
    const std::size_t dot = reply.find('.');
    t[n++] = reply.substr(0, dot);
    if (dot == std::string_view::npos) break;
    reply.remove_prefix(dot + 1);
    if (n == t.size()) return std::nullopt;  // more tokens than either form has
  }
  std::size_t at = 0;
  if (n == 7) {
    at = 0;  // stream, consumer, delivered, sseq, cseq, ns, pending
  } else if (n == 9 || n == 10) {
    at = 2;  // domain, account hash, then the same, then a random token in the 10-token form
  } else {
    return std::nullopt;
  }
  for (std::size_t k = 0; k < n; ++k) {
    if (t[k].empty()) return std::nullopt;
  }
  ack_metadata m;
  m.stream = t[at];
  m.consumer = t[at + 1];
  if (!parse_uint(t[at + 2], m.delivered) || !parse_uint(t[at + 3], m.stream_sequence) ||
      !parse_uint(t[at + 4], m.consumer_sequence) || m.delivered == 0) {
    return std::nullopt;
  }
  return m;
}

std::optional<std::string> base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) return std::nullopt;
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  out.reserve(text.size() / 4 * 3);
  for (std::size_t i = 0; i < text.size(); i += 4) {
    const bool last = i + 4 == text.size();
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; ++k) {
      const char c = text[i + static_cast<std::size_t>(k)];
      if (c == '=' && last && k >= 2) {
        v[k] = 0;
        ++pad;
        continue;
      }
      if (pad > 0 || (v[k] = value(c)) < 0) return std::nullopt;
    }
    const unsigned triple = (static_cast<unsigned>(v[0]) << 18) | (static_cast<unsigned>(v[1]) << 12) |
                            (static_cast<unsigned>(v[2]) << 6) | static_cast<unsigned>(v[3]);
    out += static_cast<char>((triple >> 16) & 0xFF);
    if (pad < 2) out += static_cast<char>((triple >> 8) & 0xFF);
    if (pad < 1) out += static_cast<char>(triple & 0xFF);
  }
  return out;
}

std::optional<std::int64_t> parse_rfc3339_ns(std::string_view t) {
  // YYYY-MM-DDTHH:MM:SS[.fraction]Z
  auto digits = [&](std::size_t at, std::size_t n) -> std::optional<int> {
    if (at + n > t.size()) return std::nullopt;
    int v = 0;
    for (std::size_t i = at; i < at + n; ++i) {
      if (t[i] < '0' || t[i] > '9') return std::nullopt;
      v = v * 10 + (t[i] - '0');
    }
    return v;
  };
  const auto year = digits(0, 4), month = digits(5, 2), day = digits(8, 2);
  const auto hour = digits(11, 2), minute = digits(14, 2), second = digits(17, 2);
  if (!year || !month || !day || !hour || !minute || !second || t.size() < 20 || t[4] != '-' || t[7] != '-' ||
      t[10] != 'T' || t[13] != ':' || t[16] != ':') {
    return std::nullopt;
  }
  std::size_t at = 19;
  std::int64_t fraction = 0;
  if (t[at] == '.') {
    int n = 0;
    for (++at; at < t.size() && t[at] >= '0' && t[at] <= '9'; ++at, ++n) {
      if (n < 9) fraction = fraction * 10 + (t[at] - '0');
    }
    if (n == 0) return std::nullopt;
    for (; n < 9; ++n) fraction *= 10;
  }
  if (at + 1 != t.size() || t[at] != 'Z') return std::nullopt;
  const std::chrono::year_month_day ymd{std::chrono::year{*year}, std::chrono::month{static_cast<unsigned>(*month)},
                                        std::chrono::day{static_cast<unsigned>(*day)}};
  if (!ymd.ok() || *hour > 23 || *minute > 59 || *second > 60) return std::nullopt;
  const auto days = std::chrono::sys_days{ymd}.time_since_epoch();
  const std::int64_t secs = std::chrono::duration_cast<std::chrono::seconds>(days).count() + *hour * 3600 +
                            *minute * 60 + *second;
  return secs * 1000000000 + fraction;
}

std::optional<stored_message> parse_msg_get_response(std::string_view json) {
  json_reader r{json};
  stored_message m;
  bool found = false;
  bool failed = false;
  auto decoded = [](const std::string& b64, const char* what) {
    auto bytes = base64_decode(b64);
    if (!bytes) throw std::runtime_error(std::string("not a JetStream API reply: the message's ") + what + " is not base64");
    return *bytes;
  };
  r.object([&](const std::string& key) {
    if (key == "error") {
      failed = true;
      r.skip();
    } else if (key == "message") {
      found = true;
      r.object([&](const std::string& field) {
        if (field == "subject") {
          m.subject = r.string();
        } else if (field == "hdrs") {
          m.header_block = decoded(r.string(), "headers");
        } else if (field == "data") {
          m.body = decoded(r.string(), "data");
        } else if (field == "seq") {
          m.sequence = r.unsigned_number();
        } else if (field == "time") {
          m.time = r.string();
        } else {
          r.skip();
        }
      });
    } else {
      r.skip();
    }
  });
  r.finish();
  if (failed) return std::nullopt;
  if (!found || m.subject.empty()) throw std::runtime_error("not a JetStream API reply: no message and no error");
  return m;
}

std::optional<max_deliveries_advisory> parse_max_deliveries_advisory(std::string_view json) {
  max_deliveries_advisory a;
  std::string type;
  try {
    json_reader r{json};
    r.object([&](const std::string& key) {
      if (key == "type") {
        type = r.string();
      } else if (key == "stream") {
        a.stream = r.string();
      } else if (key == "consumer") {
        a.consumer = r.string();
      } else if (key == "stream_seq") {
        a.stream_sequence = r.unsigned_number();
      } else if (key == "deliveries") {
        a.deliveries = r.unsigned_number();
      } else {
        r.skip();
      }
    });
    r.finish();
  } catch (const std::runtime_error&) {
    return std::nullopt;
  }
  if (type != "io.nats.jetstream.advisory.v1.max_deliver" || a.stream.empty() || a.consumer.empty() ||
      a.stream_sequence == 0) {
    return std::nullopt;
  }
  return a;
}

}  // namespace omnibus::detail
