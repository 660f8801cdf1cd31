#pragma once
// The transactional outbox: async events published inside a transaction are rows in
// <schema>.bus_outbox, written in that transaction; the relay sends them after commit.

#include <span>
#include <string>
#include <string_view>

#include "omnibus/fwd.hpp"
#include "omnibus/message.hpp"

namespace omnibus {

/// How outbox_insert sends its statement.
enum class statement_mode {
  text,      ///< parsed and planned by the server at every call
  prepared,  ///< a named statement on the connection, prepared at its first use there
};

/// INSERTs `msg` into <schema>.bus_outbox in `tx` and queues a NOTIFY that wakes the relay at
/// commit. One round trip. Throws what pqxx throws (the caller's transaction is then aborted).
void outbox_insert(pqxx::transaction_base& tx, std::string_view schema, const message& msg,
                   statement_mode mode = statement_mode::text);

/// Writes all of `msgs` in one COPY (pqxx::stream_to), in order, then one NOTIFY.
void outbox_insert_batch(pqxx::transaction_base& tx, std::string_view schema, std::span<const message> msgs);

/// The NOTIFY channel of `schema`'s outbox.
[[nodiscard]] std::string outbox_channel(std::string_view schema);

namespace detail {
/// `schema` + `suffix` as a NOTIFY channel: cut to PostgreSQL's 63-byte identifiers.
[[nodiscard]] std::string notify_channel(std::string_view schema, std::string_view suffix);
/// Headers as stored in the outbox: "Name: value" lines joined by CR LF.
[[nodiscard]] std::string join_headers(const message& msg);
/// The inverse of join_headers. Throws omnibus::error for a line without ": ".
void split_headers(std::string_view text, message& out);

/// A relay object exists in this process (constructed / destroyed). The first outbox write of a
/// process with none logs, once, that another process must run one.
void relay_created() noexcept;
void relay_destroyed() noexcept;
}  // namespace detail

}  // namespace omnibus
