// Publishes one greeting: its sync listener runs here, inline; its async listener runs in
// hello-worker. Reads OMNIBUS_NATS_URL (default nats://127.0.0.1:4222).
//   hello-publisher [name]

#include <cstdio>
#include <cstdlib>
#include <string>

#include <omnibus/bus.hpp>
#include <omnibus/jetstream.hpp>
#include <omnibus/nats_connection.hpp>

#include "greeting.hpp"

int main(int argc, char** argv) {
  const char* url = std::getenv("OMNIBUS_NATS_URL");
  omnibus::nats_connection nats{{.url = url != nullptr ? url : "nats://127.0.0.1:4222"}};
  omnibus::jetstream js{nats};
  omnibus::event_bus bus{js, hello_options()};

  bus.add_sync_listener<greeting>([](omnibus::context&, const greeting& g) {
    std::printf("sync listener: about to greet %s\n", g.to.c_str());
  });
  // Runs once the greeting is stored: after the commit of bus.transact(db, ...), or, as here
  // without a transaction, once the stream acked it.
  bus.add_listener<greeting>(omnibus::phase::after_commit, [](omnibus::context&, const greeting& g) {
    std::printf("after-commit listener: %s's greeting is on its way\n", g.to.c_str());
  });
  bus.provision();  // the stream and the worker's consumer exist before the first publish

  omnibus::context ctx;  // no transaction: published at once, waiting for the stream's ack
  try {
    const omnibus::event_id id = bus.publish(ctx, greeting{argc > 1 ? argv[1] : "world", 1});
    std::printf("published hello.greeting %s\n", id.to_string().c_str());
    for (std::int64_t n = 1; n <= 3; ++n) (void)bus.publish(ctx, visit{argc > 1 ? argv[1] : "world", n});
    std::printf("published 3 visits, handled in order by hello-worker\n");
  } catch (const omnibus::publish_error& e) {
    // not_sent: nothing was stored (NATS down, or the stream nearly full: publishers stop at
    // stream_config::hold_above), safe to retry later. unknown: it may have landed; retry with
    // the same event id, or look first.
    std::fprintf(stderr, "not published (%s): %s\n",
                 e.result() == omnibus::publish_error::outcome::not_sent ? "not sent" : "outcome unknown", e.what());
    return 1;
  }
  return 0;
}
