#pragma once
// Forward declarations: include this where a type is only passed along.

#include <string>
#include <string_view>

#include <pqxx/types>  // libpqxx's own forward declarations (connection_base, transaction_base, ...)

namespace omnibus {

class context;
struct envelope;
class error;
class event_bus;
class event_id;
struct message;
struct metadata;

namespace detail {
class fill_guard;
/// The msgpack map body of an event. Defined in omnibus/codec.hpp, which omnibus/event_bus.hpp
/// includes.
template <class E>
std::string encode_body(const E& event);
/// Decodes a msgpack map body into `out` (missing fields keep their defaults). Throws
/// omnibus::decode_error. Defined in omnibus/codec.hpp.
template <class E>
void decode_body(std::string_view body, E& out);
}  // namespace detail

}  // namespace omnibus
