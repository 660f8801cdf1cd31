#include "bus/event_bus.hpp"

#include <stdexcept>

namespace bus {

namespace detail {
std::size_t next_type_slot() noexcept {
  static std::atomic<std::size_t> next{0};
  return next.fetch_add(1, std::memory_order_relaxed);
}
}  // namespace detail

event_bus::event_bus(bus_options options) : options_(std::move(options)) {}

event_bus::event_bus(queue& q, bus_options options) : options_(std::move(options)), queue_(&q) {}

event_bus::~event_bus() = default;

void event_bus::freeze() {
  std::lock_guard lock(mutex_);
  frozen_.store(true, std::memory_order_release);
}

event_bus::type_entry& event_bus::entry_for(std::size_t slot, std::string_view name) {
  if (frozen_.load(std::memory_order_relaxed)) {
    throw std::logic_error("bus: cannot add a listener for " + std::string(name) +
                           ": the bus is frozen (it has published, provisioned or run); add every "
                           "listener first, in the services' constructors");
  }
  if (auto it = names_.find(name); it != names_.end() && it->second != slot) {
    throw std::logic_error("bus: two event types are named " + std::string(name) +
                           "; an event name belongs to one type");
  }
  if (types_.size() <= slot) types_.resize(slot + 1);
  type_entry& e = types_[slot];
  e.name = name;
  names_.emplace(name, slot);
  return e;
}

void event_bus::check_name_free(std::size_t slot, std::string_view name) const {
  if (auto it = names_.find(name); it != names_.end() && it->second != slot) {
    throw std::logic_error("bus: two event types are named " + std::string(name) +
                           "; an event name belongs to one type");
  }
}

event_id event_bus::emit(context& ctx, std::string_view name, int version, std::string body) {
  envelope env;
  env.id = event_id::generate();
  env.name = name;
  env.version = version;
  env.published_at = std::chrono::time_point_cast<std::chrono::microseconds>(std::chrono::system_clock::now());
  env.meta = ctx.meta();
  env.body = std::move(body);
  message msg = encode(env, options_.stream.subject_prefix, options_.max_body_bytes);
  if (ctx.transaction() != nullptr) {
    throw std::logic_error("bus: publishing " + env.name +
                           " inside a transaction needs the outbox, which this build does not have yet");
  }
  if (queue_ == nullptr) {
    throw std::logic_error("bus: " + env.name +
                           " is not local-only, and this bus has no queue: construct it with one");
  }
  queue_->publish(msg, options_.publish_timeout);
  return env.id;
}

}  // namespace bus
