// Must NOT compile: publishing a type that is not an event.
#include "bus/event_bus.hpp"

struct plain_struct {
  int x = 0;
};

int main() {
  bus::event_bus b;
  bus::context ctx;
  b.publish(ctx, plain_struct{});
}
