#pragma once
// Fixtures for worker tests: a test's own stream and schema, a worker run in-process, and
// worker_tool child processes.

#include <chrono>
#include <memory>
#include <mutex>
#include <span>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <pqxx/pqxx>
#include <spdlog/sinks/ostream_sink.h>
#include <spdlog/spdlog.h>

#include "bus/dead_letters.hpp"
#include "bus/event_bus.hpp"
#include "bus/migrations.hpp"
#include "bus/worker.hpp"
#include "mq/connection.hpp"
#include "mq/jetstream.hpp"
#include "support/child_process.hpp"
#include "support/stream_reader.hpp"
#include "support/schema.hpp"
#include "support/test_env.hpp"
#include "support/wait.hpp"
#include "tools/tool_event.hpp"

namespace test_env {

using namespace std::chrono_literals;

struct worker_fixture {
  mq::connection conn{{.url = test_env::nats_url()}};
  mq::jetstream js{conn};
  bus::bus_options opts = test_env::test_bus_options("worker");
  pqxx::connection db{test_env::database_url()};
  std::ostringstream log_text;
  std::mutex log_mutex;
  std::shared_ptr<spdlog::logger> log =
      std::make_shared<spdlog::logger>("test", std::make_shared<spdlog::sinks::ostream_sink_mt>(log_text));
  bus::event_bus b{js, opts};
  std::unique_ptr<bus::worker> w;
  std::jthread runner;
  std::exception_ptr run_error;

  worker_fixture() {
    bus::migrate(db, opts.schema);
    pqxx::work tx{db};
    tx.exec0("CREATE TABLE \"" + opts.schema +
             "\".handled (seq bigint GENERATED ALWAYS AS IDENTITY, n bigint NOT NULL, worker text NOT NULL)");
    tx.commit();
  }
  ~worker_fixture() {
    stop_worker();
    (void)js.delete_stream(opts.stream);
    test_env::drop_schemas(db, {opts.schema});
  }

  void start_worker(std::chrono::milliseconds parked_poll = 1000ms) {
    bus::worker_options wo;
    wo.database_url = test_env::database_url();
    wo.parked_poll = parked_poll;
    start_worker(wo);
  }
  void start_worker(bus::worker_options wo) {
    wo.fetch_wait = 200ms;
    w = std::make_unique<bus::worker>(b, wo, log);
    runner = std::jthread([this](std::stop_token st) {
      try {
        w->run(st);
      } catch (...) {
        run_error = std::current_exception();
      }
    });
    // The worker provisions before it drains: wait for its consumers.
    REQUIRE(test_env::eventually([&] { return js.consumers(opts.stream).size() >= b.async_listeners().size(); }, 10s));
  }
  void stop_worker() {
    if (runner.joinable()) {
      runner.request_stop();
      runner.join();
    }
  }

  bus::event_id publish(long n) {
    bus::context ctx;
    return b.publish(ctx, tool_event{n});
  }
  std::vector<bus::dead_letter> dead_letters(const std::string& listener = {}) {
    return bus::list_dead_letters(db, opts.schema, listener);
  }
  bool settled(const std::string& listener) {  // nothing pending or unacked on its consumer
    auto i = js.info(opts.stream, "g_" + listener);
    return i && i->pending == 0 && i->ack_pending == 0;
  }
  std::string logs() {
    log->flush();
    return log_text.str();
  }
  static bus::listener_options quick_retries(int attempts) {
    bus::listener_options o;
    o.retry.max_attempts = attempts;
    o.retry.initial = 20ms;
    o.retry.max = 100ms;
    return o;
  }
};


struct process_fixture : worker_fixture {
  std::vector<std::string> worker_argv(const std::string& tag) const {
    return {test_env::tool_path("OMNIBUS_WORKER_TOOL"), opts.schema, opts.stream.name, tag};
  }
  test_env::child_process worker_process(const std::string& tag, std::vector<std::string> env = {}) {
    return test_env::child_process(worker_argv(tag), std::move(env));
  }
  std::unique_ptr<test_env::child_process> worker_process_ptr(const std::string& tag, std::vector<std::string> env = {}) {
    return std::make_unique<test_env::child_process>(worker_argv(tag), std::move(env));
  }
  void publish_many(long count) {
    std::vector<tool_event> events;
    for (long i = 0; i < count; ++i) events.push_back({i});
    bus::context ctx;
    REQUIRE(b.publish_batch(ctx, std::span<const tool_event>(events)).ok());
  }
  long count(const std::string& where = "true") {
    pqxx::nontransaction q{db};
    return q.exec1("SELECT count(*) FROM \"" + opts.schema + "\".handled WHERE " + where)[0].as<long>();
  }
  long distinct_handled() {
    pqxx::nontransaction q{db};
    return q.exec1("SELECT count(DISTINCT n) FROM \"" + opts.schema + "\".handled")[0].as<long>();
  }
  // The recorder listener, as worker_tool registers it, so that the stream and consumer exist
  // before the first worker process starts.
  void provision_recorder(std::chrono::milliseconds ack_wait = 30s, bool ordered = false) {
    bus::listener_options lo;
    lo.ack_wait = ack_wait;
    lo.ordered = ordered;
    b.add_async_listener<tool_event>("recorder", [](bus::context&, const tool_event&) {}, lo);
    b.provision();
  }
};


}  // namespace test_env
