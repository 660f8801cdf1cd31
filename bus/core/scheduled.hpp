#pragma once
// Scheduled events' rows (<schema>.bus_scheduled): written by publishers in their
// transaction, moved to the outbox by the scheduler when due. Internal to bus/.

#include <chrono>
#include <optional>
#include <string>
#include <string_view>

#include "omnibus/fwd.hpp"
#include "omnibus/message.hpp"

namespace omnibus::detail {

/// The NOTIFY channel a schema's schedulers LISTEN on; the payload is the due time in epoch ms.
[[nodiscard]] std::string scheduler_channel(std::string_view schema);

/// When a scheduled event is due: at a time point, or `after` from now by the database's clock.
struct due_time {
  std::optional<std::chrono::system_clock::time_point> at;
  std::chrono::milliseconds after{0};
};

/// INSERTs `msg` (with its Nats-Msg-Id) into bus_scheduled in `tx` and queues a NOTIFY for
/// the schedulers. With a unique key already pending, inserts nothing and returns the pending
/// row's id. Returns the id as text. Throws omnibus::error, or what pqxx throws.
[[nodiscard]] std::string scheduled_insert(pqxx::transaction_base& tx, std::string_view schema, const message& msg,
                                           std::string_view event_name, const due_time& due, std::string_view unique_key);

/// Deletes the pending row `id`; false when there is none (fired, cancelled, unknown).
[[nodiscard]] bool scheduled_cancel(pqxx::transaction_base& tx, std::string_view schema, std::string_view id);

/// Moves the pending row `id` to `when`; false when there is none.
[[nodiscard]] bool scheduled_move(pqxx::transaction_base& tx, std::string_view schema, std::string_view id,
                                  std::chrono::system_clock::time_point when);

/// Microseconds since the epoch, rounded up, as the SQL here passes time points.
[[nodiscard]] long long epoch_micros(std::chrono::system_clock::time_point t) noexcept;

}  // namespace omnibus::detail
