#include "omnibus/envelope.hpp"

#include <charconv>
#include <cstdio>
#include <stdexcept>

#include "omnibus/text.hpp"

namespace omnibus {
namespace {

bool valid_meta_key(std::string_view k) noexcept {
  if (k.empty()) return false;
  for (char c : k) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

bool valid_header_value(std::string_view v) noexcept {
  return v.find_first_of("\r\n") == std::string_view::npos && is_utf8(v);
}

bool is_omnibus_header(std::string_view k) noexcept {
  return k == header::msg_id || k == header::event || k == header::version || k == header::published ||
         k == header::correlation_id || k == header::traceparent || k == header::tracestate || k == header::key ||
         (k.size() > header::meta_prefix.size() && k.substr(0, header::meta_prefix.size()) == header::meta_prefix);
}

// Refuses what no Omnibus producer writes and what could be read two ways: before any value is
// used, so a hostile header never reaches a handler's context or a text column.
void check_headers(const message& msg) {
  if (msg.headers.size() > max_headers) {
    throw decode_error(decode_failure::too_many_headers, "message on '" + to_text(msg.subject) + "' has " +
                                                             std::to_string(msg.headers.size()) + " headers; at most " +
                                                             std::to_string(max_headers) + " are read");
  }
  for (std::size_t i = 0; i < msg.headers.size(); ++i) {
    const auto& [k, v] = msg.headers[i];
    if (k.empty()) throw decode_error(decode_failure::bad_header, "a header has an empty name");
    if (!is_omnibus_header(k)) continue;
    if (!is_utf8(v)) throw decode_error(decode_failure::bad_header, "header " + k + " is not UTF-8: '" + to_text(v) + "'");
    for (std::size_t other = i + 1; other < msg.headers.size(); ++other) {
      if (msg.headers[other].first == k) throw decode_error(decode_failure::bad_header, "header " + k + " appears more than once");
    }
  }
}

// format_time's 27 characters, by hand rather than snprintf: every publish writes one. A year
// outside 0000-9999 is kept in four digits modulo 10000 (the form has no room for more).
constexpr std::size_t time_text_size = 27;
void write_time(char* out, std::chrono::sys_time<std::chrono::microseconds> t) {
  using namespace std::chrono;
  const auto day = floor<days>(t);
  const year_month_day ymd{day};
  const hh_mm_ss<microseconds> hms{t - day};
  auto put = [out](std::size_t at, long value, std::size_t width) {
    for (std::size_t i = at + width; i-- > at; value /= 10) out[i] = static_cast<char>('0' + value % 10);
  };
  const long year = static_cast<long>(static_cast<int>(ymd.year())) % 10000;
  put(0, year < 0 ? year + 10000 : year, 4);
  out[4] = '-';
  put(5, static_cast<long>(static_cast<unsigned>(ymd.month())), 2);
  out[7] = '-';
  put(8, static_cast<long>(static_cast<unsigned>(ymd.day())), 2);
  out[10] = 'T';
  put(11, static_cast<long>(hms.hours().count()), 2);
  out[13] = ':';
  put(14, static_cast<long>(hms.minutes().count()), 2);
  out[16] = ':';
  put(17, static_cast<long>(hms.seconds().count()), 2);
  out[19] = '.';
  put(20, static_cast<long>(hms.subseconds().count()), 6);
  out[26] = 'Z';
}

// event_id::to_string's 36 characters, without a string of its own.
constexpr std::size_t id_text_size = 36;
void write_id(char* out, const event_id& id) {
  static constexpr char digits[] = "0123456789abcdef";
  std::size_t at = 0;
  const auto& b = id.bytes();
  for (std::size_t i = 0; i < b.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) out[at++] = '-';
    out[at++] = digits[b[i] >> 4];
    out[at++] = digits[b[i] & 0x0f];
  }
}

// Header `at` of `m`, written over what a message encoded before left there (its memory is
// reused). `checked`: a value from the caller, refused with CR, LF or bytes that are not UTF-8.
void put_header(message& m, std::size_t& at, std::string_view name, std::string_view value, bool checked) {
  if (checked && !valid_header_value(value)) {
    throw std::invalid_argument("header " + std::string(name) + " has a CR or LF, or bytes that are not UTF-8, in its value");
  }
  if (at == m.headers.size()) m.headers.emplace_back();
  m.headers[at].first.assign(name);
  m.headers[at].second.assign(value);
  ++at;
}

const std::string& required(const message& msg, std::string_view name) {
  const std::string* v = msg.header(name);
  if (v == nullptr || v->empty()) {
    throw decode_error(decode_failure::missing_header,
                       "message on '" + to_text(msg.subject) + "' lacks the " + std::string(name) + " header");
  }
  return *v;
}

template <class Int>
bool parse_int(std::string_view s, Int& out) noexcept {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc{} && p == s.data() + s.size();
}

// A key a keyed event may carry: 1..max_key_bytes of UTF-8 without control characters.
bool valid_key(std::string_view k) noexcept {
  if (k.empty() || k.size() > max_key_bytes || !is_utf8(k)) return false;
  for (char c : k) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) return false;
  }
  return true;
}

// The partition in a keyed subject's last token "k<n>", or -1.
int subject_partition(std::string_view token) noexcept {
  if (token.size() < 2 || token.size() > 5 || token[0] != 'k' || (token[1] == '0' && token.size() > 2)) return -1;
  int n = 0;
  for (char c : token.substr(1)) {
    if (c < '0' || c > '9') return -1;
    n = n * 10 + (c - '0');
  }
  return n < max_partitions ? n : -1;
}

}  // namespace

int partition_of(std::string_view key, int partitions) noexcept {
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (char c : key) {
    h ^= static_cast<unsigned char>(c);
    h *= 0x100000001b3ULL;
  }
  return partitions > 0 ? static_cast<int>(h % static_cast<std::uint64_t>(partitions)) : 0;
}

std::string partition_subject(std::string_view prefix, std::string_view event_name, int partition) {
  std::string s = subject_for(prefix, event_name);
  s += ".k";
  s += std::to_string(partition);
  return s;
}

std::string subject_for(std::string_view prefix, std::string_view event_name) {
  std::string s;
  s.reserve(prefix.size() + 1 + event_name.size());
  s += prefix;
  s += '.';
  s += event_name;
  return s;
}

message encode(const envelope& env, std::string_view prefix, std::size_t max_body_bytes) {
  message m;
  encode_into(m, env, prefix, max_body_bytes);
  return m;
}

void encode_into(message& m, const envelope& env, std::string_view prefix, std::size_t max_body_bytes) {
  if (env.body.size() > max_body_bytes) {
    throw event_too_large("event " + env.name + " " + env.id.to_string() + " has a " +
                          std::to_string(env.body.size()) + "-byte body; the limit is " +
                          std::to_string(max_body_bytes) + " bytes");
  }
  for (const auto& [k, v] : env.meta.values) {
    if (!valid_meta_key(k)) throw std::invalid_argument("metadata key '" + k + "' is not [A-Za-z0-9_-]+");
  }
  m.subject.assign(prefix);
  m.subject += '.';
  m.subject += env.name;
  if (env.partitions > 0) {
    if (!valid_key(env.key)) {
      throw std::invalid_argument("event " + env.name + " " + env.id.to_string() + ": its ordering key '" +
                                  to_text(env.key) + "' must be 1-" + std::to_string(max_key_bytes) +
                                  " bytes of UTF-8 without control characters");
    }
    char part[8];
    const auto [end, ec] = std::to_chars(part, part + sizeof part, partition_of(env.key, env.partitions));
    m.subject += ".k";
    m.subject.append(part, end);
  }
  std::size_t at = 0;
  char id[id_text_size];
  write_id(id, env.id);
  put_header(m, at, header::msg_id, std::string_view(id, sizeof id), false);
  put_header(m, at, header::event, env.name, true);
  char version[16];
  const auto [end, ec] = std::to_chars(version, version + sizeof version, env.version);
  put_header(m, at, header::version, std::string_view(version, static_cast<std::size_t>(end - version)), false);
  char published[time_text_size];
  write_time(published, env.published_at);
  put_header(m, at, header::published, std::string_view(published, sizeof published), false);
  if (!env.meta.correlation_id.empty()) put_header(m, at, header::correlation_id, env.meta.correlation_id, true);
  if (!env.meta.traceparent.empty()) put_header(m, at, header::traceparent, env.meta.traceparent, true);
  if (!env.meta.tracestate.empty()) put_header(m, at, header::tracestate, env.meta.tracestate, true);
  for (const auto& [k, v] : env.meta.values) {
    put_header(m, at, std::string(header::meta_prefix) + k, v, true);
  }
  if (env.partitions > 0) put_header(m, at, header::key, env.key, false);  // checked above
  m.headers.resize(at);
  m.body.assign(env.body);
}

envelope decode(const message& msg, std::string_view prefix, std::size_t max_body_bytes) {
  envelope env;
  check_headers(msg);
  const std::string& name = required(msg, header::event);
  std::string_view subject = msg.subject;
  if (const std::string* key = msg.header(header::key); key != nullptr) {
    // A keyed event: "<prefix>.<name>.k<n>"; the partition is the worker's to check.
    if (!valid_key(*key)) {
      throw decode_error(decode_failure::bad_header, "Omnibus-Key '" + to_text(*key) + "' is not 1-" +
                                                         std::to_string(max_key_bytes) +
                                                         " bytes of UTF-8 without control characters");
    }
    const std::size_t dot = subject.rfind('.');
    if (dot == std::string_view::npos || subject_partition(subject.substr(dot + 1)) < 0) {
      throw decode_error(decode_failure::name_mismatch, "a keyed event's subject '" + to_text(msg.subject) +
                                                            "' does not end in .k<partition>");
    }
    subject = subject.substr(0, dot);
    env.key = *key;
  }
  if (subject.size() <= prefix.size() + 1 || subject.substr(0, prefix.size()) != prefix ||
      subject[prefix.size()] != '.' || subject.substr(prefix.size() + 1) != name) {
    throw decode_error(decode_failure::name_mismatch,
                       "the Omnibus-Event header '" + name + "' does not match the subject '" + to_text(msg.subject) + "'");
  }
  env.name = name;
  const std::string& id = required(msg, header::msg_id);
  try {
    env.id = event_id::parse(id);
  } catch (const error& e) {
    throw decode_error(decode_failure::bad_header, "Nats-Msg-Id: " + std::string(e.what()));
  }
  const std::string& version = required(msg, header::version);
  if (!parse_int(version, env.version) || env.version < 1) {
    throw decode_error(decode_failure::bad_header, "Omnibus-Version '" + version + "' is not a positive integer");
  }
  env.published_at = parse_time(required(msg, header::published));
  for (const auto& [k, v] : msg.headers) {
    if (k == header::correlation_id) {
      env.meta.correlation_id = v;
    } else if (k == header::traceparent) {
      env.meta.traceparent = v;
    } else if (k == header::tracestate) {
      env.meta.tracestate = v;
    } else if (k.size() > header::meta_prefix.size() && k.compare(0, header::meta_prefix.size(), header::meta_prefix) == 0) {
      env.meta.values.emplace_back(k.substr(header::meta_prefix.size()), v);
    }
  }
  if (msg.body.size() > max_body_bytes) {
    throw decode_error(decode_failure::oversized,
                       "event " + env.name + " " + id + " has a " + std::to_string(msg.body.size()) +
                           "-byte body; the limit is " + std::to_string(max_body_bytes) + " bytes");
  }
  env.body = msg.body;
  return env;
}

namespace detail {

void check_decodable(const envelope& env, std::string_view name, int version) {
  if (env.name != name) {
    throw decode_error(decode_failure::name_mismatch,
                       "an envelope of " + env.name + " cannot decode as " + std::string(name));
  }
  if (env.version > version) {
    throw decode_error(decode_failure::newer_version,
                       env.name + " " + env.id.to_string() + " is version " + std::to_string(env.version) +
                           "; this build knows up to version " + std::to_string(version));
  }
}

}  // namespace detail

std::string format_time(std::chrono::sys_time<std::chrono::microseconds> t) {
  char out[time_text_size];
  write_time(out, t);
  return std::string(out, sizeof out);
}

std::chrono::sys_time<std::chrono::microseconds> parse_time(std::string_view s) {
  using namespace std::chrono;
  auto bad = [&]() -> decode_error {
    return decode_error(decode_failure::bad_header,
                        "Omnibus-Published '" + std::string(s) + "' is not RFC 3339 UTC (2026-01-31T12:00:00.000000Z)");
  };
  // YYYY-MM-DDTHH:MM:SS[.f+]Z
  if (s.size() < 20 || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' || s.back() != 'Z') {
    throw bad();
  }
  int y = 0;
  unsigned mo = 0, d = 0;
  int h = 0, mi = 0, se = 0;
  if (!parse_int(s.substr(0, 4), y) || !parse_int(s.substr(5, 2), mo) || !parse_int(s.substr(8, 2), d) ||
      !parse_int(s.substr(11, 2), h) || !parse_int(s.substr(14, 2), mi) || !parse_int(s.substr(17, 2), se)) {
    throw bad();
  }
  long micros = 0;
  std::string_view rest = s.substr(19, s.size() - 20);
  if (!rest.empty()) {
    if (rest.front() != '.' || rest.size() < 2) throw bad();
    rest.remove_prefix(1);
    int digits = 0;
    for (char c : rest) {
      if (c < '0' || c > '9') throw bad();
      if (digits < 6) micros = micros * 10 + (c - '0');
      ++digits;
    }
    for (; digits < 6; ++digits) micros *= 10;
  }
  year_month_day ymd{year{y}, month{mo}, day{d}};
  if (!ymd.ok() || h > 23 || mi > 59 || se > 60) throw bad();
  return sys_days{ymd} + hours{h} + minutes{mi} + seconds{se} + microseconds{micros};
}

}  // namespace omnibus
