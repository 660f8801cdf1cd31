#pragma once
// The root of every failure the bus core reports. Contract violations (registering after
// freeze, a duplicate event name, a bad listener name) are std::logic_error instead: they are
// bugs to fix, not outcomes to handle.

#include <stdexcept>
#include <string>

#include "omnibus/export.hpp"

namespace omnibus {

/// Root of all runtime failures thrown by the bus core; catch this to catch them all.
class OMNIBUS_API error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// Why a message could not be turned back into an event.
enum class decode_failure {
  missing_header,   ///< a required header is absent or empty
  bad_header,       ///< a header's value does not parse (id, version, time), is not UTF-8, or repeats
  too_many_headers, ///< more headers than an event carries (max_headers)
  name_mismatch,    ///< the event-name header does not match the subject
  newer_version,    ///< written by a newer schema than this build knows: retry later, elsewhere
  oversized,        ///< the body is over the configured limit
  malformed_body,   ///< not msgpack, truncated, trailing bytes, or not a map
  wrong_type,       ///< a field holds a value of another type
};

/// A message that does not decode. what() names the event, the field or header, and the
/// problem. Thrown by the envelope codec; the worker dead-letters it (or, for newer_version,
/// naks it with a delay), never crashes.
class OMNIBUS_API decode_error : public error {
 public:
  /// `what` becomes what(); `kind` is the rule the message broke.
  decode_error(decode_failure kind, const std::string& what) : error(what), kind_(kind) {}
  /// The rule the message broke; to_string() gives its stored name.
  [[nodiscard]] decode_failure kind() const noexcept { return kind_; }

 private:
  decode_failure kind_;
};

/// The short stable name of a decode failure ("malformed_body", ...), as stored in dead letters.
[[nodiscard]] OMNIBUS_API const char* to_string(decode_failure kind) noexcept;

/// An event whose encoded body is over the configured limit; refused at publish() so that it
/// never blocks the outbox relay or the stream.
class OMNIBUS_API event_too_large : public error {
 public:
  using error::error;
};

}  // namespace omnibus
