// The JetStream adapter against a real nats-server: provisioning, publishing with PubAck,
// dedup, batches, failures, and the fence against losing events published before any worker.

#include <algorithm>
#include <chrono>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>

#include "omnibus/event.hpp"
#include "omnibus/event_bus.hpp"
#include "omnibus/nats_connection.hpp"
#include "omnibus/nats_error.hpp"
#include "omnibus/jetstream.hpp"
#include "support/private_servers.hpp"
#include "support/stream_reader.hpp"
#include "support/test_env.hpp"

namespace {

using namespace std::chrono_literals;

struct item_added {
  static constexpr std::string_view name = "test.item_added";
  static constexpr int version = 1;
  std::int64_t item = 0;
  std::string note;
  OMNIBUS_FIELDS(item, note);
};

omnibus::bus_options options_for(const std::string& stem) { return test_env::test_bus_options(stem); }

struct js_fixture {
  omnibus::nats_connection conn{{.url = test_env::nats_url()}};
  omnibus::jetstream js{conn};
  omnibus::bus_options opts;
  explicit js_fixture(const std::string& stem = "js") : opts(options_for(stem)) {}
  ~js_fixture() { (void)js.delete_stream(opts.stream); }

  std::vector<omnibus::message> read_all(std::size_t expected) { return test_env::read_stream(js, opts.stream, expected); }
};

}  // namespace

TEST_CASE_METHOD(js_fixture, "a published event comes back with every header and decodes",
                 "[integration][nats][mq]") {
  omnibus::event_bus b{js, opts};
  b.add_async_listener<item_added>("cart", [](omnibus::context&, const item_added&) {});
  b.provision();

  omnibus::context ctx;
  ctx.meta().correlation_id = "corr-1";
  ctx.meta().traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
  ctx.meta().values = {{"tenant", "acme"}};
  const auto before = std::chrono::system_clock::now();
  auto id = b.publish(ctx, item_added{7, "seven"});
  // Waiting, not yet delivered: the consumer says since when (the stream's clock, this host's).
  const auto waiting = js.info(opts.stream, "g_cart");
  REQUIRE(waiting);
  REQUIRE(waiting->oldest_unacked.has_value());
  CHECK(*waiting->oldest_unacked >= before - 1s);
  CHECK(*waiting->oldest_unacked <= std::chrono::system_clock::now() + 1s);

  auto c = js.open_consumer(opts.stream, "g_cart");
  auto got = c->fetch(1, 5s);
  REQUIRE(got.size() == 1);
  CHECK(got[0]->delivery_count() == 1);
  CHECK(got[0]->stream_sequence() == 1);
  const omnibus::message& m = got[0]->msg();
  CHECK(m.subject == opts.stream.subject_prefix + ".test.item_added");
  auto env = omnibus::decode(m, opts.stream.subject_prefix);
  CHECK(env.id == id);
  CHECK(env.name == "test.item_added");
  CHECK(env.version == 1);
  CHECK(env.meta.correlation_id == "corr-1");
  CHECK(env.meta.traceparent == ctx.meta().traceparent);
  CHECK(env.meta.values == ctx.meta().values);
  auto e = omnibus::decode_event<item_added>(env);
  CHECK(e.item == 7);
  CHECK(e.note == "seven");
  got[0]->ack();
  conn.flush(5s);

  // Consumer info catches up with the ack.
  const auto deadline = std::chrono::steady_clock::now() + 5s;
  std::optional<omnibus::consumer_info> info;
  do {
    info = js.info(opts.stream, "g_cart");
  } while (info && info->ack_pending != 0 && std::chrono::steady_clock::now() < deadline);
  REQUIRE(info);
  CHECK(info->pending == 0);
  CHECK(info->ack_pending == 0);
  CHECK(info->last_delivered.has_value());
  CHECK_FALSE(info->oldest_unacked.has_value());  // nothing waits
}

TEST_CASE_METHOD(js_fixture, "the same event id published twice lands once", "[integration][nats][mq]") {
  js.provision(opts.stream, {});
  omnibus::envelope env;
  env.id = omnibus::event_id::generate();
  env.name = "test.item_added";
  env.version = 1;
  env.body = omnibus::detail::encode_body(item_added{1, ""});
  auto msg = omnibus::encode(env, opts.stream.subject_prefix);
  auto first = js.publish(msg, 5s);
  auto second = js.publish(msg, 5s);
  CHECK_FALSE(first.duplicate);
  CHECK(second.duplicate);
  CHECK(js.last_sequence(opts.stream) == 1);
}

TEST_CASE_METHOD(js_fixture, "provision() is idempotent, and safe from two processes at once", "[integration][nats][mq]") {
  auto make_bus_and_provision = [&](omnibus::jetstream& q) {
    omnibus::event_bus b{q, opts};
    b.add_async_listener<item_added>("cart", [](omnibus::context&, const item_added&) {});
    b.add_async_listener<item_added>("stats", [](omnibus::context&, const item_added&) {});
    for (int i = 0; i < 5; ++i) b.provision();
  };
  // Two connections are two clients to the server, exactly as two processes would be.
  omnibus::nats_connection other_conn{{.url = test_env::nats_url()}};
  omnibus::jetstream other{other_conn};
  std::exception_ptr failure;
  std::thread t([&] {
    try {
      make_bus_and_provision(other);
    } catch (...) {
      failure = std::current_exception();
    }
  });
  make_bus_and_provision(js);
  t.join();
  if (failure) std::rethrow_exception(failure);
  auto all = js.consumers(opts.stream);
  std::set<std::string> names;
  for (auto& c : all) names.insert(c.name);
  CHECK(names == std::set<std::string>{"g_cart", "g_stats"});
}

TEST_CASE_METHOD(js_fixture, "a consumer whose filter changed makes provision() throw, naming the listener",
                 "[integration][nats][mq]") {
  omnibus::consumer_config c;
  c.name = "g_cart";
  c.filter_subject = opts.stream.subject_prefix + ".test.something_else";
  std::vector<omnibus::consumer_config> v{c};
  js.provision(opts.stream, v);

  omnibus::event_bus b{js, opts};
  b.add_async_listener<item_added>("cart", [](omnibus::context&, const item_added&) {});
  CHECK_THROWS_WITH(b.provision(), Catch::Contains("g_cart") && Catch::Contains("filter"));
}

TEST_CASE_METHOD(js_fixture, "an existing consumer's editable fields are updated", "[integration][nats][mq]") {
  omnibus::consumer_config c;
  c.name = "g_cart";
  c.filter_subject = opts.stream.subject_prefix + ".test.item_added";
  c.max_ack_pending = 1000;
  std::vector<omnibus::consumer_config> v{c};
  js.provision(opts.stream, v);
  v[0].max_ack_pending = 1;
  v[0].ack_wait = 7s;
  js.provision(opts.stream, v);
  // Observable through behaviour: with MaxAckPending 1, a second message waits for the first's ack.
  omnibus::event_bus b{js, opts};
  b.freeze();
  omnibus::context ctx;
  b.publish(ctx, item_added{1, ""});
  b.publish(ctx, item_added{2, ""});
  auto con = js.open_consumer(opts.stream, "g_cart");
  auto got = con->fetch(10, 2s);
  CHECK(got.size() == 1);
}

TEST_CASE_METHOD(js_fixture, "an existing stream with other settings is reported, never recreated",
                 "[integration][nats][mq]") {
  js.provision(opts.stream, {});
  auto changed = opts.stream;
  changed.max_age = std::chrono::hours(2);
  CHECK_THROWS_WITH(js.provision(changed, {}), Catch::Contains("max_age") && Catch::Contains(opts.stream.name));
}

TEST_CASE("three replicas on a server that is not in a cluster fail fast, naming the setting",
          "[integration][nats][mq]") {
  test_env::private_nats lone;  // the shared URL may be a cluster's (README "Running on a cluster")
  omnibus::nats_connection conn{{.url = lone.url()}};
  omnibus::jetstream js{conn};
  auto r3 = options_for("r3").stream;
  r3.replicas = 3;
  const auto started = std::chrono::steady_clock::now();
  CHECK_THROWS_WITH(js.provision(r3, {}), Catch::Contains("stream_config::replicas is 3") && Catch::Contains(r3.name) &&
                                              Catch::Contains("not in a JetStream cluster"));
  CHECK(std::chrono::steady_clock::now() - started < 5s);
  CHECK_THROWS_WITH(js.state(r3), Catch::Contains("Not Found"));  // nothing was created
}

TEST_CASE_METHOD(js_fixture, "publish_batch lands 10,000 events, all of them in order", "[integration][nats][mq]") {
  omnibus::event_bus b{js, opts};
  b.provision();
  std::vector<item_added> events;
  for (int i = 0; i < 10000; ++i) events.push_back({i, "n" + std::to_string(i)});
  omnibus::context ctx;
  auto report = b.publish_batch(ctx, std::span<const item_added>(events));
  REQUIRE(report.ok());
  REQUIRE(report.ids.size() == events.size());

  auto stored = read_all(events.size());  // read the stream back; do not trust the acks alone
  REQUIRE(stored.size() == events.size());
  for (std::size_t i = 0; i < stored.size(); ++i) {
    auto env = omnibus::decode(stored[i], opts.stream.subject_prefix);
    REQUIRE(env.id == report.ids[i]);
    REQUIRE(omnibus::decode_event<item_added>(env).item == static_cast<std::int64_t>(i));
  }
}

TEST_CASE_METHOD(js_fixture, "publish_batch says exactly which events failed", "[integration][nats][mq]") {
  auto small = opts;
  small.stream.max_bytes = 4000;  // room for a few events only: DiscardNew refuses the rest
  js.provision(small.stream, {});
  omnibus::event_bus b{js, small};
  b.freeze();
  std::vector<item_added> events;
  for (int i = 0; i < 200; ++i) events.push_back({i, std::string(50, 'x')});
  omnibus::context ctx;
  auto report = b.publish_batch(ctx, std::span<const item_added>(events));
  CHECK_FALSE(report.ok());
  auto failed = report.failed();
  REQUIRE_FALSE(failed.empty());
  const std::size_t stored = events.size() - failed.size();
  CHECK(js.last_sequence(small.stream) == stored);
  // The stream filled up in order: the first `stored` events landed, every later one failed.
  for (std::size_t i = 0; i < failed.size(); ++i) CHECK(failed[i] == stored + i);
  CHECK(report.results[failed[0]].failure == omnibus::publish_error::outcome::not_sent);
}

TEST_CASE_METHOD(js_fixture, "publish_each sends what it is given until told to stop, and waits for it even when making one throws",
                 "[integration][nats][mq]") {
  js.provision(opts.stream, {});
  omnibus::event_bus b{js, opts};
  b.freeze();
  std::vector<omnibus::message> msgs;
  for (int i = 0; i < 300; ++i) {
    omnibus::envelope env;
    env.id = omnibus::event_id::generate();
    env.name = item_added::name;
    env.version = item_added::version;
    env.body = omnibus::detail::encode_body(item_added{i, ""});
    msgs.push_back(omnibus::encode(env, opts.stream.subject_prefix));
  }
  std::size_t asked = 0;
  SECTION("stopped by a null message") {
    auto results = js.publish_each(
        msgs.size(), [&](std::size_t i) { asked = i + 1; return i < 200 ? &msgs[i] : nullptr; }, std::chrono::seconds(5));
    CHECK(asked == 201);  // never asked past the stop
    REQUIRE(results.size() == 200);
    for (const auto& r : results) REQUIRE(r.ack);
    CHECK(js.last_sequence(opts.stream) == 200);
  }
  SECTION("stopped by a throw: the ones sent are acked before it comes through") {
    CHECK_THROWS_WITH(js.publish_each(
                          msgs.size(),
                          [&](std::size_t i) -> const omnibus::message* {
                            if (i == 150) throw std::runtime_error("cannot make message 150");
                            return &msgs[i];
                          },
                          std::chrono::seconds(5)),
                      "cannot make message 150");
    CHECK(js.last_sequence(opts.stream) == 150);
  }
  auto stored = read_all(js.last_sequence(opts.stream));
  for (std::size_t i = 0; i < stored.size(); ++i) REQUIRE(*stored[i].header("Nats-Msg-Id") == *msgs[i].header("Nats-Msg-Id"));
}

TEST_CASE_METHOD(js_fixture, "a publish no stream takes fails as not sent, carrying the event id",
                 "[integration][nats][mq]") {
  omnibus::event_bus b{js, opts};  // never provisioned: no stream takes the subject
  b.freeze();
  omnibus::context ctx;
  try {
    b.publish(ctx, item_added{1, ""});
    FAIL("published to a subject no stream takes");
  } catch (const omnibus::publish_error& e) {
    CHECK(e.result() == omnibus::publish_error::outcome::not_sent);
    CHECK_FALSE(e.id().is_nil());
    CHECK_THAT(e.what(), Catch::Contains(e.id().to_string()));
  }
}

TEST_CASE("a publish while the server is down fails within its bound, carrying the event id",
          "[integration][nats][mq]") {
  test_env::private_nats server;
  omnibus::nats_connection conn{{.url = server.url()}};
  omnibus::jetstream js{conn};
  auto opts = options_for("down");
  opts.publish_timeout = 1500ms;
  omnibus::event_bus b{js, opts};
  b.provision();
  omnibus::context ctx;
  b.publish(ctx, item_added{1, ""});  // works while it is up

  server.stop();
  const auto start = std::chrono::steady_clock::now();
  try {
    b.publish(ctx, item_added{2, ""});
    FAIL("a publish succeeded with the server down");
  } catch (const omnibus::publish_error& e) {
    const auto took = std::chrono::steady_clock::now() - start;
    // Bounded, not hung. Made just as the server went away, while NATS.c reconnects, it can
    // take some seconds past publish_timeout: a loaded sanitized CI run took 6.5 s for this
    // 1.5 s one (the README says so).
    CHECK(took < opts.publish_timeout + 10s);
    CHECK_FALSE(e.id().is_nil());
    CHECK_THAT(e.what(), Catch::Contains(e.id().to_string()));
    // NATS.c buffers publishes while it reconnects, so this one may still land later.
    CHECK(e.result() == omnibus::publish_error::outcome::unknown);
  }
}

TEST_CASE_METHOD(js_fixture, "an event published before any worker ran reaches the listener the publisher provisioned",
                 "[integration][nats][mq]") {
  // The publishing process constructs the same services, so it provisions every listener's consumer.
  {
    omnibus::event_bus publisher{js, opts};
    publisher.add_async_listener<item_added>("cart", [](omnibus::context&, const item_added&) {});
    publisher.provision();
    omnibus::context ctx;
    publisher.publish(ctx, item_added{99, "early"});
  }
  // Later the first worker starts, on a connection of its own.
  omnibus::nats_connection worker_conn{{.url = test_env::nats_url()}};
  omnibus::jetstream worker_js{worker_conn};
  omnibus::event_bus worker{worker_js, opts};
  std::vector<std::int64_t> handled;
  worker.add_async_listener<item_added>("cart", [&](omnibus::context&, const item_added& e) { handled.push_back(e.item); });
  worker.provision();
  auto c = worker_js.open_consumer(opts.stream, "g_cart");
  auto got = c->fetch(1, 5s);
  REQUIRE(got.size() == 1);
  omnibus::context hctx;
  worker.async_listeners().front().handler(hctx, omnibus::decode(got[0]->msg(), opts.stream.subject_prefix));
  got[0]->ack();
  CHECK(handled == std::vector<std::int64_t>{99});
}
