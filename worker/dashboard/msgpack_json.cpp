#include "dashboard/msgpack_json.hpp"

#include <charconv>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <string_view>
#include <utility>

#include <msgpack.hpp>

#include "json_log.hpp"

namespace omnibus::detail {
namespace {

constexpr std::string_view ellipsis = "\xe2\x80\xa6";  // …
constexpr std::size_t hex_dump_bytes = 4096;

// msgpack::unpack reserves every container it is told of before reading its elements (16 bytes
// an element): 64 GiB for a 5-byte body announcing 2^32 elements, and even with unpack_limit
// capping each container at the body's size, containers nested 32 deep would each reserve 16
// times the body again. This walk goes first, with msgpack-c's own parser, which allocates
// nothing: every element takes at least one byte, so when the elements announced in all pass the
// body's size the body lies, and otherwise what unpack reserves stays within 16 bytes a body
// byte. It also bounds the nesting, and with it the writer's recursion.
class size_check : public msgpack::v2::null_visitor {
 public:
  size_check(std::string_view body, std::size_t max_depth) : body_(body), max_depth_(max_depth) {}

  bool start_array(std::uint32_t n) { return open("an array", n, n, "elements"); }
  bool start_map(std::uint32_t n) { return open("a map", n, 2 * std::uint64_t{n}, "entries"); }
  bool end_array() { return close(); }
  bool end_map() { return close(); }

  void parse_error(std::size_t /*parsed_offset*/, std::size_t error_offset) {
    failure_ = "not msgpack: at offset " + std::to_string(error_offset);
    if (error_offset < body_.size()) {  // 0xc1, the one byte msgpack never uses
      char byte[8];
      std::snprintf(byte, sizeof byte, "0x%02x", static_cast<unsigned char>(body_[error_offset]));
      failure_ += std::string(", byte ") + byte + " is no msgpack type";
    }
  }
  void insufficient_bytes(std::size_t /*parsed_offset*/, std::size_t /*error_offset*/) {
    failure_ = "truncated: the body ends inside a value (" + std::to_string(body_.size()) + " bytes)";
  }

  // Why the walk stopped, when it did.
  [[nodiscard]] std::string failure() const { return failure_.empty() ? "not msgpack" : failure_; }

 private:
  bool open(const char* what, std::uint32_t n, std::uint64_t elements, const char* unit) {
    if (++depth_ > max_depth_) {
      failure_ = "nested deeper than " + std::to_string(max_depth_) + " levels";
      return false;
    }
    announced_ += elements;
    if (announced_ > body_.size()) {
      failure_ = std::string(what) + " announces " + std::to_string(n) + " " + unit + ", " +
                 (elements > body_.size() ? "" : "with those announced before it ") + "more than a " +
                 std::to_string(body_.size()) + "-byte body can hold";
      return false;
    }
    return true;
  }
  bool close() {
    --depth_;
    return true;
  }

  std::string_view body_;  // the caller's, walked within msgpack_to_json
  std::size_t max_depth_;
  std::size_t depth_ = 0;
  std::uint64_t announced_ = 0;
  std::string failure_;
};

// Strings, bin and ext point into the caller's bytes instead of being copied: the object is
// written out before msgpack_to_json returns, while those bytes are still there.
bool reference_all(msgpack::type::object_type, std::size_t, void*) { return true; }

void base64(std::string& out, std::string_view bytes) {
  static constexpr char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  const auto at = [&](std::size_t i) -> std::uint32_t { return static_cast<unsigned char>(bytes[i]); };
  std::size_t i = 0;
  for (; i + 3 <= bytes.size(); i += 3) {
    const std::uint32_t v = at(i) << 16 | at(i + 1) << 8 | at(i + 2);
    for (int shift : {18, 12, 6, 0}) out += digits[(v >> shift) & 0x3f];
  }
  if (const std::size_t rest = bytes.size() - i; rest > 0) {
    const std::uint32_t v = at(i) << 16 | (rest == 2 ? at(i + 1) << 8 : 0);
    out += digits[(v >> 18) & 0x3f];
    out += digits[(v >> 12) & 0x3f];
    out += rest == 2 ? digits[(v >> 6) & 0x3f] : '=';
    out += '=';
  }
}

void hex(std::string& out, std::string_view bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  for (unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 0x0f];
  }
}

// The longest prefix of `s` of at most `n` bytes that does not end inside a UTF-8 sequence
// (backing off at most 3 bytes, so that bytes which are not UTF-8 still make progress).
std::string_view utf8_prefix(std::string_view s, std::size_t n) {
  if (n >= s.size()) return s;
  std::size_t cut = n;
  while (cut > 0 && n - cut < 3 && (static_cast<unsigned char>(s[cut]) & 0xc0) == 0x80) --cut;
  if ((static_cast<unsigned char>(s[cut]) & 0xc0) == 0x80) cut = n;  // not UTF-8 there anyway
  return s.substr(0, cut);
}

// Writes one msgpack object as JSON, pretty (2-space indent) or compact (map keys that are
// not strings), and stops with "…" once past the output size or the number of values.
class writer {
 public:
  writer(std::string& out, std::size_t max_output, std::size_t& elements_left, const json_limits& limits, bool pretty)
      : out_(out), max_output_(max_output), elements_left_(elements_left), limits_(limits), pretty_(pretty) {}

  void value(const msgpack::object& o, std::size_t indent) {
    if (!take_element()) return;
    switch (o.type) {
      case msgpack::type::NIL: out_ += "null"; break;
      case msgpack::type::BOOLEAN: out_ += o.via.boolean ? "true" : "false"; break;
      case msgpack::type::POSITIVE_INTEGER: number(o.via.u64); break;
      case msgpack::type::NEGATIVE_INTEGER: number(o.via.i64); break;
      case msgpack::type::FLOAT32: floating(static_cast<float>(o.via.f64)); break;
      case msgpack::type::FLOAT64: floating(o.via.f64); break;
      case msgpack::type::STR: string({o.via.str.ptr, o.via.str.size}); break;
      case msgpack::type::BIN: {
        const std::string_view data(o.via.bin.ptr, o.via.bin.size);
        out_ += pretty_ ? "{\"$bin\": \"" : "{\"$bin\":\"";
        base64(out_, data.substr(0, room() + 3));  // base64 is longer than its bytes: enough to pass the limit
        out_ += "\"}";
        break;
      }
      case msgpack::type::EXT: {
        const std::string_view data(o.via.ext.data(), o.via.ext.size);  // ptr is the type byte
        out_ += pretty_ ? "{\"$ext\": " : "{\"$ext\":";
        number(std::int64_t{o.via.ext.type()});
        out_ += pretty_ ? ", \"hex\": \"" : ",\"hex\":\"";
        hex(out_, data.substr(0, room() / 2 + 2));
        out_ += "\"}";
        break;
      }
      case msgpack::type::ARRAY: array(o.via.array, indent); return;  // fitted as it goes
      case msgpack::type::MAP: map(o.via.map, indent); return;
    }
    fit();
  }

  [[nodiscard]] bool stopped() const { return stopped_; }
  [[nodiscard]] const std::string& why() const { return why_; }

 private:
  [[nodiscard]] std::size_t room() const { return out_.size() < max_output_ ? max_output_ - out_.size() : 0; }

  bool take_element() {
    if (stopped_) return false;
    if (elements_left_ == 0) {
      stop("more than " + std::to_string(limits_.max_elements) + " values (map keys count)");
      return false;
    }
    --elements_left_;
    return true;
  }

  void fit() {
    if (!stopped_ && out_.size() > max_output_) stop("cut at " + std::to_string(max_output_) + " bytes of JSON");
  }

  // Separators and indentation are written before the value that follows is checked: the text
  // can be past the size here whatever the reason for stopping. It is cut where no UTF-8
  // sequence is split (everything written is UTF-8), so that it stays text.
  void stop(std::string why) {
    if (out_.size() > max_output_) out_.resize(utf8_prefix(out_, max_output_).size());
    out_ += ellipsis;
    stopped_ = true;
    why_ = std::move(why);
  }

  template <class Int>
  void number(Int n) {
    char buf[24];
    const auto end = std::to_chars(buf, buf + sizeof buf, n).ptr;
    out_.append(buf, end);
  }

  template <class Float>
  void floating(Float f) {
    if (std::isnan(f)) {
      out_ += "\"NaN\"";
    } else if (std::isinf(f)) {
      out_ += f > 0 ? "\"Infinity\"" : "\"-Infinity\"";
    } else {
      char buf[64];
      const auto end = std::to_chars(buf, buf + sizeof buf, f).ptr;  // shortest that reads back the same
      const std::string_view text(buf, static_cast<std::size_t>(end - buf));
      out_ += text;
      // 3.0 stays a float on the page: the producer's type is what one is often looking for.
      if (text.find_first_of(".e") == std::string_view::npos) out_ += ".0";
    }
  }

  void string(std::string_view s) {
    // Every byte quotes to at least one: a prefix one sequence longer than the room left is
    // enough to pass the limit, so a huge string is never quoted whole only to be cut.
    out_ += json_quote(utf8_prefix(s, room() + 4));
  }

  void newline(std::size_t indent) {
    if (!pretty_) return;
    out_ += '\n';
    out_.append(2 * indent, ' ');
  }

  void array(const msgpack::object_array& a, std::size_t indent) {
    if (a.size == 0) {
      out_ += "[]";
      fit();
      return;
    }
    out_ += '[';
    for (std::uint32_t i = 0; i < a.size; ++i) {
      if (i > 0) out_ += ',';
      newline(indent + 1);
      value(a.ptr[i], indent + 1);
      if (stopped_) return;
    }
    newline(indent);
    out_ += ']';
    fit();
  }

  void map(const msgpack::object_map& m, std::size_t indent) {
    if (m.size == 0) {
      out_ += "{}";
      fit();
      return;
    }
    out_ += '{';
    for (std::uint32_t i = 0; i < m.size; ++i) {
      if (i > 0) out_ += ',';
      newline(indent + 1);
      key(m.ptr[i].key);
      if (stopped_) return;
      out_ += pretty_ ? ": " : ":";
      value(m.ptr[i].val, indent + 1);
      if (stopped_) return;
    }
    newline(indent);
    out_ += '}';
    fit();
  }

  // JSON keys are strings: any other key is written compactly and that text quoted, so that
  // [1, 2] shows as "[1,2]" (1 and "1" then look alike, which JSON leaves no way around).
  void key(const msgpack::object& k) {
    if (k.type == msgpack::type::STR) {
      value(k, 0);
      return;
    }
    std::string text;
    writer inner(text, room(), elements_left_, limits_, false);
    inner.value(k, 0);
    out_ += json_quote(text);  // quoting can double it: fitted again below
    fit();
    if (inner.stopped() && !stopped_) {  // its "…" is inside the quoted key
      stopped_ = true;
      why_ = inner.why();
    }
  }

  std::string& out_;
  std::size_t max_output_;
  std::size_t& elements_left_;  // shared with the writers of map keys
  const json_limits& limits_;
  bool pretty_;
  bool stopped_ = false;
  std::string why_;
};

// 16 bytes a line as offset, hex and printable ASCII (hexdump -C), for a body that is not msgpack:
// the producer's bytes are then the most useful thing to show.
std::string hex_dump(std::string_view bytes) {
  const std::string_view shown = bytes.substr(0, hex_dump_bytes);
  std::string out;
  out.reserve(shown.size() / 16 * 80 + 80);
  for (std::size_t line = 0; line < shown.size(); line += 16) {
    char offset[24];  // room for any size_t the compiler imagines
    std::snprintf(offset, sizeof offset, "%08zx ", line);
    out += offset;
    for (std::size_t i = line; i < line + 16; ++i) {
      if (i % 8 == 0) out += ' ';
      if (i < shown.size()) {
        hex(out, shown.substr(i, 1));
        out += ' ';
      } else {
        out += "   ";
      }
    }
    out += " |";
    for (unsigned char c : shown.substr(line, 16)) out += c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '.';
    out += "|\n";
  }
  if (bytes.size() > shown.size()) {
    out += ellipsis;
    out += ' ' + std::to_string(bytes.size() - shown.size()) + " more bytes\n";
  }
  return out;
}

json_result not_msgpack(std::string_view bytes, std::string why, const json_limits& limits) {
  json_result r;
  r.text = hex_dump(bytes);
  if (r.text.size() > limits.max_output) {
    r.text.resize(utf8_prefix(r.text, limits.max_output).size());
    r.text += ellipsis;
  }
  r.complete = false;
  r.note = std::move(why);
  return r;
}

void add_note(json_result& r, const std::string& note) {
  if (!r.note.empty()) r.note += "; ";
  r.note += note;
}

}  // namespace

json_result msgpack_to_json(std::string_view bytes, const json_limits& limits) {
  json_result r;
  if (bytes.empty()) {
    r.note = "empty body";
    return r;
  }
  size_check check(bytes, limits.max_depth);
  std::size_t checked = 0;
  if (!msgpack::v2::parse(bytes.data(), bytes.size(), checked, check)) return not_msgpack(bytes, check.failure(), limits);

  msgpack::object_handle oh;
  std::size_t offset = 0;
  try {
    // After size_check these cannot trip; they are what a body of this size could hold, so
    // that unpack stays bounded on its own should the two ever disagree.
    const std::size_t most = bytes.size();
    const msgpack::unpack_limit limit(most, most / 2, most, most, most, limits.max_depth);
    oh = msgpack::unpack(bytes.data(), bytes.size(), offset, reference_all, nullptr, limit);
  } catch (const msgpack::unpack_error& e) {  // the root of every error unpack throws
    return not_msgpack(bytes, std::string("not msgpack: ") + e.what(), limits);
  }

  r.decoded = true;
  std::size_t elements_left = limits.max_elements;
  writer w(r.text, limits.max_output, elements_left, limits, true);
  w.value(oh.get(), 0);
  if (w.stopped()) {
    r.complete = false;
    add_note(r, w.why());
  }
  if (const std::size_t trailing = bytes.size() - offset; trailing > 0) {
    add_note(r, std::to_string(trailing) + (trailing == 1 ? " trailing byte" : " trailing bytes"));
  }
  return r;
}

}  // namespace omnibus::detail
