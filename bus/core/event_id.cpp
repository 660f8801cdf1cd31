#include "omnibus/event_id.hpp"

#include <random>

#include "omnibus/error.hpp"

namespace omnibus {
namespace {

struct thread_state {
  std::mt19937_64 random{std::random_device{}()};
  std::uint64_t last_ms = 0;
  std::uint16_t counter = 0;  // 12 bits used
};

int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

event_id event_id::generate() noexcept {
  thread_local thread_state st;
  using namespace std::chrono;
  auto ms = static_cast<std::uint64_t>(
      duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count());
  if (ms > st.last_ms) {
    st.last_ms = ms;
    st.counter = static_cast<std::uint16_t>(st.random() & 0x1ff);  // leave room to count up
  } else if (++st.counter > 0xfff) {
    // 4096 ids in one millisecond (or the clock stepped back): borrow the next millisecond
    // so that this thread's ids stay increasing.
    ++st.last_ms;
    st.counter = 0;
  }
  ms = st.last_ms;

  event_id id;
  auto& b = id.bytes_;
  for (int i = 0; i < 6; ++i) b[i] = static_cast<std::uint8_t>(ms >> (40 - 8 * i));
  b[6] = static_cast<std::uint8_t>(0x70 | ((st.counter >> 8) & 0x0f));  // version 7
  b[7] = static_cast<std::uint8_t>(st.counter & 0xff);
  std::uint64_t r = st.random();
  for (int i = 8; i < 16; ++i) b[i] = static_cast<std::uint8_t>(r >> (8 * (i - 8)));
  b[8] = static_cast<std::uint8_t>(0x80 | (b[8] & 0x3f));  // RFC 9562 variant
  return id;
}

event_id event_id::parse(std::string_view text) {
  event_id id;
  if (text.size() != 36) throw error("event id '" + std::string(text) + "' is not 36 characters");
  std::size_t byte = 0;
  for (std::size_t i = 0; i < text.size();) {
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (text[i] != '-') throw error("event id '" + std::string(text) + "' lacks a '-' at " + std::to_string(i));
      ++i;
      continue;
    }
    int hi = hex_value(text[i]);
    int lo = hex_value(text[i + 1]);
    if (hi < 0 || lo < 0) throw error("event id '" + std::string(text) + "' has a non-hex digit");
    id.bytes_[byte++] = static_cast<std::uint8_t>(hi << 4 | lo);
    i += 2;
  }
  return id;
}

std::string event_id::to_string() const {
  static constexpr char digits[] = "0123456789abcdef";
  std::string s;
  s.reserve(36);
  for (std::size_t i = 0; i < bytes_.size(); ++i) {
    if (i == 4 || i == 6 || i == 8 || i == 10) s.push_back('-');
    s.push_back(digits[bytes_[i] >> 4]);
    s.push_back(digits[bytes_[i] & 0x0f]);
  }
  return s;
}

std::chrono::sys_time<std::chrono::milliseconds> event_id::time() const noexcept {
  std::uint64_t ms = 0;
  for (int i = 0; i < 6; ++i) ms = ms << 8 | bytes_[i];
  return std::chrono::sys_time<std::chrono::milliseconds>{std::chrono::milliseconds{ms}};
}

}  // namespace omnibus
