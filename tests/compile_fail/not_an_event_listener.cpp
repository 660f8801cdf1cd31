// Must NOT compile: listening to a type that is not an event.
#include "omnibus/event_bus.hpp"

int main() {
  omnibus::event_bus b;
  b.add_sync_listener<int>([](omnibus::context&, const int&) {});
}
