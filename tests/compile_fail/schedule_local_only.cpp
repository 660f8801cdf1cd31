// Must NOT compile: scheduling an event that never leaves the process.
#include <chrono>

#include "omnibus/event.hpp"
#include "omnibus/event_bus.hpp"

struct tick {
  static constexpr std::string_view name = "test.tick";
  static constexpr int version = 1;
  static constexpr bool local_only = true;
  int n = 0;
  OMNIBUS_FIELDS(n);
};

int main() {
  omnibus::event_bus b;
  omnibus::context ctx;
  (void)b.publish_after(ctx, std::chrono::seconds(1), tick{});
}
