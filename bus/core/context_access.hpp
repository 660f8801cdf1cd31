#pragma once
// The handler side of a context, set by whoever runs a handler: the worker (bus/runtime) and
// a dead letter's retry (bus/ops). Internal to bus/: a user's context has no setters.

#include <cstdint>
#include <stop_token>
#include <utility>

#include "omnibus/context.hpp"

namespace omnibus::detail {

struct context_access {
  static void set_transaction(context& c, pqxx::transaction_base* tx) noexcept { c.tx_ = tx; }
  static void set_connection_source(context& c, connection_source* source) noexcept { c.db_ = source; }
  static void set_event_id(context& c, const omnibus::event_id& id) noexcept { c.event_id_ = id; }
  static void set_attempt(context& c, std::uint64_t n) noexcept { c.attempt_ = n; }
  static void set_deadline(context& c, context::clock::time_point d) noexcept { c.deadline_ = d; }
  static void set_stop_token(context& c, std::stop_token t) noexcept { c.stop_ = std::move(t); }
  static void set_phases(context& c, phase_log* log) noexcept { c.phases_ = log; }
  [[nodiscard]] static phase_log* phases(const context& c) noexcept { return c.phases_; }
  [[nodiscard]] static connection_source* connection_source_of(const context& c) noexcept { return c.db_; }
};

}  // namespace omnibus::detail
