#include "omnibus/observer.hpp"

namespace omnibus {

const char* to_string(publish_path path) noexcept {
  switch (path) {
    case publish_path::direct: return "direct";
    case publish_path::outbox: return "outbox";
  }
  return "unknown";
}

const char* to_string(handle_outcome outcome) noexcept {
  switch (outcome) {
    case handle_outcome::handled: return "handled";
    case handle_outcome::retry: return "retry";
    case handle_outcome::dead_letter: return "dead_letter";
    case handle_outcome::parked: return "parked";
    case handle_outcome::skipped: return "skipped";
    case handle_outcome::deferred: return "deferred";
    case handle_outcome::timed_out: return "timed_out";
    case handle_outcome::returned: return "returned";
  }
  return "unknown";
}

observer::~observer() = default;
void observer::on_publish(std::string_view, publish_path) {}
void observer::on_publish_error(std::string_view, std::string_view) {}
void observer::on_handle_start(const handle_info&) {}
void observer::on_handle_end(const handle_info&, handle_outcome, std::chrono::nanoseconds, std::string_view) {}
void observer::on_phase_error(std::string_view, phase, std::string_view) {}

const char* to_string(phase when) noexcept {
  return when == phase::after_commit ? "after_commit" : "after_rollback";
}

}  // namespace omnibus
