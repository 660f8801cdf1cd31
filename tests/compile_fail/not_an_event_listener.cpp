// Must NOT compile: listening to a type that is not an event.
#include "bus/event_bus.hpp"

int main() {
  bus::event_bus b;
  b.add_sync_listener<int>([](bus::context&, const int&) {});
}
