#pragma once
// The Bus: a registry of listeners per event type, and publish().
//
// Dispatch rules:
// - Sync listeners run on the publisher's thread, in registration order, before publish()
//   returns. The first one that throws stops the rest; its exception reaches the publisher
//   unchanged, and no async event is emitted.
// - Then, unless the type is local-only, the event leaves the process: into the outbox in the
//   context's transaction when it has one, else straight to the stream (waiting for the ack).
// - The registry freezes at the first provision() or publish(): adding a listener after that
//   throws std::logic_error. Once frozen, publish() is safe from any number of threads.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#include "bus/context.hpp"
#include "bus/envelope.hpp"
#include "bus/event_id.hpp"
#include "bus/event_traits.hpp"
#include "bus/fwd.hpp"
#include "bus/queue.hpp"

namespace bus {

/// How a bus names, sizes and sends its events.
struct bus_options {
  /// The application's fixed name: consumers are "<group>_<listener>". Never a host or pid.
  std::string group = "omnibus";
  stream_config stream;
  std::size_t max_body_bytes = default_max_body_bytes;
  /// How long publish() without a transaction waits for the stream's ack.
  std::chrono::milliseconds publish_timeout = std::chrono::seconds(5);
};

namespace detail {
std::size_t next_type_slot() noexcept;
/// A dense per-type index, assigned on first use; the same in every bus.
template <class E>
std::size_t type_slot() noexcept {
  static const std::size_t slot = next_type_slot();
  return slot;
}
}  // namespace detail

/// The typed event bus. Construct it, let every service add its listeners, then publish.
/// Not copyable or movable (listeners may capture services that hold a reference to it).
class event_bus {
 public:
  /// A bus for local-only events only (no queue): any other publish throws std::logic_error.
  explicit event_bus(bus_options options = {});
  /// A bus whose events leave the process through `q`, which must outlive the bus.
  explicit event_bus(queue& q, bus_options options = {});
  ~event_bus();
  event_bus(const event_bus&) = delete;
  event_bus& operator=(const event_bus&) = delete;

  /// Adds a sync listener for E: `handler(bus::context&, const E&)`, run inline by publish().
  /// Throws std::logic_error when the bus is frozen or another type already has E's name.
  /// Thread-safe.
  template <class E, class F>
  void add_sync_listener(F&& handler);

  /// Runs E's sync listeners, then sends the event on (see the dispatch rules above).
  /// Returns the event's id (nil for a local-only event). Throws what a listener threw,
  /// event_too_large, publish_error (no transaction), or std::logic_error for a name clash.
  template <class E>
  event_id publish(context& ctx, const E& event);

  /// Freezes the registry. Idempotent; publish() and provision() call it.
  void freeze();
  [[nodiscard]] bool frozen() const noexcept { return frozen_.load(std::memory_order_acquire); }
  [[nodiscard]] const bus_options& options() const noexcept { return options_; }

 private:
  struct sync_listener {
    void (*call)(void* fn, context& ctx, const void* event);
    std::unique_ptr<void, void (*)(void*)> fn;  // the type-erased callable, owned
  };
  struct type_entry {
    std::string_view name;  // E::name (static storage); empty: slot unused by this bus
    std::vector<sync_listener> sync;
  };

  type_entry& entry_for(std::size_t slot, std::string_view name);  // under mutex_, not frozen
  void check_name_free(std::size_t slot, std::string_view name) const;
  event_id emit(context& ctx, std::string_view name, int version, std::string body);

  bus_options options_;
  queue* queue_ = nullptr;  // borrowed; outlives the bus
  std::mutex mutex_;        // guards registration until frozen
  std::atomic<bool> frozen_{false};
  std::vector<type_entry> types_;                            // by detail::type_slot
  std::unordered_map<std::string_view, std::size_t> names_;  // event name -> slot
};

template <class E, class F>
void event_bus::add_sync_listener(F&& handler) {
  detail::check_event<E>();
  using fn_t = std::decay_t<F>;
  static_assert(std::is_invocable_v<fn_t&, context&, const E&>,
                "bus: a sync listener is callable as handler(bus::context&, const E&)");
  sync_listener l{
      [](void* fn, context& ctx, const void* ev) { (*static_cast<fn_t*>(fn))(ctx, *static_cast<const E*>(ev)); },
      {new fn_t(std::forward<F>(handler)), [](void* fn) { delete static_cast<fn_t*>(fn); }}};
  std::lock_guard lock(mutex_);
  entry_for(detail::type_slot<E>(), E::name).sync.push_back(std::move(l));
}

template <class E>
event_id event_bus::publish(context& ctx, const E& event) {
  detail::check_event<E>();
  if (!frozen_.load(std::memory_order_acquire)) freeze();
  const std::size_t slot = detail::type_slot<E>();
  if (slot < types_.size() && !types_[slot].name.empty()) {
    for (const sync_listener& l : types_[slot].sync) l.call(l.fn.get(), ctx, &event);
  } else {
    check_name_free(slot, E::name);
  }
  if constexpr (is_local_only<E>) {
    return event_id{};
  } else {
    return emit(ctx, E::name, E::version, detail::encode_body(event));
  }
}

}  // namespace bus
