// Must NOT compile: publishing a type that is not an event.
#include "omnibus/event_bus.hpp"

struct plain_struct {
  int x = 0;
};

int main() {
  omnibus::event_bus b;
  omnibus::context ctx;
  b.publish(ctx, plain_struct{});
}
