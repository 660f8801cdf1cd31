#pragma once
// The wire format of one event (README, "Wire format"): subject <prefix>.<event name>,
// headers for id, name, version, publish time and metadata, and the msgpack map as body.

#include <chrono>
#include <cstddef>
#include <string>
#include <string_view>

#include "omnibus/codec.hpp"  // decode_event
#include "omnibus/context.hpp"
#include "omnibus/error.hpp"
#include "omnibus/event_id.hpp"
#include "omnibus/event_traits.hpp"
#include "omnibus/export.hpp"
#include "omnibus/message.hpp"

namespace omnibus {

/// The header names, exactly as they appear on the wire.
namespace header {
inline constexpr std::string_view msg_id = "Nats-Msg-Id";  ///< the event id; JetStream deduplicates on it
inline constexpr std::string_view event = "Omnibus-Event";  ///< the event name; must match the subject's last part
inline constexpr std::string_view version = "Omnibus-Version";  ///< the event's schema version, a positive integer
inline constexpr std::string_view published = "Omnibus-Published";  ///< publish time in format_time()'s form
inline constexpr std::string_view correlation_id = "Omnibus-Correlation-Id";  ///< metadata::correlation_id, when set
inline constexpr std::string_view traceparent = "traceparent";  ///< metadata::traceparent (W3C), when set
inline constexpr std::string_view tracestate = "tracestate";  ///< metadata::tracestate (W3C), when set
inline constexpr std::string_view meta_prefix = "Omnibus-Meta-";  ///< + key: one header per metadata::values entry
inline constexpr std::string_view key = "Omnibus-Key";  ///< a keyed event's ordering key (1..256 bytes of UTF-8)
}  // namespace header

/// The most headers a message may carry to decode: Omnibus' own and metadata, with room to spare.
inline constexpr std::size_t max_headers = 256;

/// The default limit on an event's body; JetStream's own default max message size is 1 MiB.
inline constexpr std::size_t default_max_body_bytes = 1024 * 1024;

/// One event as it travels: everything the headers carry, plus the still-encoded body.
struct OMNIBUS_API envelope {
  event_id id;       ///< unique per event, generated at publish; the dedup key
  std::string name;  ///< the event's name (E::name)
  int version = 0;   ///< the schema version it was written with (E::version); at least 1 once decoded
  /// When it was published (UTC, microseconds); set by the bus at publish.
  std::chrono::sys_time<std::chrono::microseconds> published_at{};
  omnibus::metadata meta;  ///< the publisher's context metadata
  std::string body;  ///< the msgpack map
  /// A keyed event's ordering key (E::ordering_key), or empty: the Omnibus-Key header.
  std::string key;
  /// A keyed event's partitions (E::partitions), or 0: with a key, the subject is
  /// "<prefix>.<name>.k<partition_of(key, partitions)>". Not on the wire (decode leaves 0).
  int partitions = 0;
};

/// The longest ordering key, in bytes.
inline constexpr std::size_t max_key_bytes = 256;

/// The partition of `key` among `partitions` (1..1024): FNV-1a 64 of the key's bytes (offset
/// basis 0xcbf29ce484222325, prime 0x100000001b3) modulo `partitions`. Part of the wire
/// format: a producer in another language computes the same to publish a keyed event.
[[nodiscard]] OMNIBUS_API int partition_of(std::string_view key, int partitions) noexcept;

/// A keyed event's subject: "<prefix>.<event name>.k<partition>".
[[nodiscard]] OMNIBUS_API std::string partition_subject(std::string_view prefix, std::string_view event_name,
                                                        int partition);

/// "<prefix>.<name>".
[[nodiscard]] OMNIBUS_API std::string subject_for(std::string_view prefix, std::string_view event_name);

/// The message for `env`. Throws event_too_large when the body is over `max_body_bytes`, and
/// std::invalid_argument for a metadata key or value that cannot be a header (a CR or LF, or
/// bytes that are not UTF-8), or for a keyed event's key that is empty, longer than
/// max_key_bytes, not UTF-8 or holds a control character.
[[nodiscard]] OMNIBUS_API message encode(const envelope& env, std::string_view prefix,
                             std::size_t max_body_bytes = default_max_body_bytes);
/// encode() into `out`, reusing the memory of the message it held: encoding many events one
/// after another into one message allocates nothing once it has grown. Throws as encode() does
/// (`out` is then unspecified).
OMNIBUS_API void encode_into(message& out, const envelope& env, std::string_view prefix,
                             std::size_t max_body_bytes = default_max_body_bytes);

/// Reads and checks the headers against the subject ("<prefix>.<name>", or "<prefix>.<name>.k<n>"
/// with an Omnibus-Key header); the body stays encoded. Throws
/// decode_error: too_many_headers past max_headers; bad_header for an empty header name, an
/// Omnibus header given twice, a value that is not UTF-8 (Omnibus headers, trace context and
/// metadata), or one that does not parse; missing_header; name_mismatch; oversized.
[[nodiscard]] OMNIBUS_API envelope decode(const message& msg, std::string_view prefix,
                              std::size_t max_body_bytes = default_max_body_bytes);

/// The typed event in `env`. Throws decode_error: newer_version when env.version is above
/// E::version, name_mismatch for another event's envelope, malformed_body or wrong_type.
/// An older version decodes, with defaults for the fields it lacks.
template <event E>
[[nodiscard]] E decode_event(const envelope& env);

/// RFC 3339 in UTC with microseconds: 2026-11-22T18:51:32.123456Z.
[[nodiscard]] OMNIBUS_API std::string format_time(std::chrono::sys_time<std::chrono::microseconds> t);
/// Parses format_time's form (any number of fraction digits, or none). Throws decode_error.
[[nodiscard]] OMNIBUS_API std::chrono::sys_time<std::chrono::microseconds> parse_time(std::string_view text);

namespace detail {
OMNIBUS_API void check_decodable(const envelope& env, std::string_view name, int version);
}

template <event E>
E decode_event(const envelope& env) {
  detail::check_decodable(env, E::name, E::version);
  E out{};
  detail::decode_body(env.body, out);
  return out;
}

}  // namespace omnibus
