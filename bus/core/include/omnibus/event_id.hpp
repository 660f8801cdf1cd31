#pragma once
// Event ids: UUIDv7 (RFC 9562), so ids sort by creation time and make good dedup keys.

#include <array>
#include <chrono>
#include <compare>
#include <cstdint>
#include <string>
#include <string_view>

#include "omnibus/export.hpp"

namespace omnibus {

/// A 128-bit UUIDv7: 48 bits of Unix milliseconds, then a 12-bit counter that keeps ids made by
/// one thread within one millisecond in order, then 62 random bits. A value type; thread-safe.
class OMNIBUS_API event_id {
 public:
  /// The nil id (all zero bits); never produced by generate().
  constexpr event_id() = default;

  /// A new id for now. Ids from one thread are strictly increasing. Never throws.
  [[nodiscard]] static event_id generate() noexcept;

  /// Parses the canonical 36-character form (lower or upper case hex).
  /// Throws omnibus::error naming the bad text.
  [[nodiscard]] static event_id parse(std::string_view text);

  /// The canonical form: 8-4-4-4-12 lower-case hex digits.
  [[nodiscard]] std::string to_string() const;

  /// Milliseconds since the Unix epoch, read back from the id.
  [[nodiscard]] std::chrono::sys_time<std::chrono::milliseconds> time() const noexcept;

  /// The 16 bytes in the canonical form's order (big-endian: the timestamp first).
  [[nodiscard]] const std::array<std::uint8_t, 16>& bytes() const noexcept { return bytes_; }
  /// True for the nil id (default-constructed, or parsed from all zeros).
  [[nodiscard]] bool is_nil() const noexcept { return *this == event_id{}; }

  /// Byte-wise order (and ==): ids of earlier milliseconds sort first, and one thread's ids
  /// sort in creation order. The nil id sorts before every generated id.
  friend auto operator<=>(const event_id&, const event_id&) = default;

 private:
  std::array<std::uint8_t, 16> bytes_{};
};

}  // namespace omnibus
