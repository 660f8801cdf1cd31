#pragma once
// The one include most code needs: declaring events (OMNIBUS_FIELDS), the bus (listeners and
// publish), the context and the error types. Add <omnibus/jetstream.hpp> and
// <omnibus/nats_connection.hpp> where the bus is wired to NATS, <omnibus/worker_main.hpp> in a
// worker binary, and <omnibus/memory_queue.hpp> in unit tests. An event type's own header
// needs only <omnibus/event.hpp>, and a service header only <omnibus/fwd.hpp>.

#include "omnibus/context.hpp"
#include "omnibus/error.hpp"
#include "omnibus/event.hpp"
#include "omnibus/event_bus.hpp"
#include "omnibus/event_id.hpp"
