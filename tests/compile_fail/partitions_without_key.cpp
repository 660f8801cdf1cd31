// Must NOT compile: an event with partitions but no ordering_key().
#include "omnibus/event.hpp"
#include "omnibus/event_bus.hpp"

struct placed {
  static constexpr std::string_view name = "order.placed";
  static constexpr int version = 1;
  static constexpr int partitions = 16;
  int n = 0;
  OMNIBUS_FIELDS(n);
};

int main() {
  omnibus::event_bus b;
  omnibus::context ctx;
  (void)b.publish(ctx, placed{});
}
