#pragma once
// Fixtures for worker tests: a test's own stream and schema, a worker run in-process, and
// worker_tool child processes.

#include <chrono>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <pqxx/pqxx>
#include <spdlog/sinks/base_sink.h>
#include <spdlog/spdlog.h>

#include "omnibus/dead_letters.hpp"
#include "omnibus/event_bus.hpp"
#include "omnibus/listener_control.hpp"
#include "omnibus/migrations.hpp"
#include "omnibus/worker.hpp"
#include "omnibus/jetstream.hpp"
#include "omnibus/nats_connection.hpp"
#include "support/child_process.hpp"
#include "support/stream_reader.hpp"
#include "support/schema.hpp"
#include "support/test_env.hpp"
#include "support/wait.hpp"
#include "tools/tool_event.hpp"

namespace test_env {

using namespace std::chrono_literals;

/// Where a fixture's servers are: the suite's shared ones, or a test's private ones.
struct servers {
  std::string nats_url;
  std::string database_url;
  bool file_storage = false;  ///< the stream on file (survives a nats-server restart)
  std::int64_t stream_max_bytes = 0;  ///< 0: the test default (256 MiB)
  std::chrono::seconds stream_max_age{0};  ///< 0: the test default (1 h)
  int stream_replicas = 1;                 ///< copies in a cluster
  static servers shared() { return {test_env::nats_url(), test_env::database_url()}; }
};

/// A log sink that keeps the text, readable while the workers still log.
class text_sink final : public spdlog::sinks::base_sink<std::mutex> {
 public:
  std::string text() {
    std::lock_guard lock(mutex_);
    return out_.str();
  }

 protected:
  void sink_it_(const spdlog::details::log_msg& msg) override {
    spdlog::memory_buf_t line;
    formatter_->format(msg, line);
    out_.write(line.data(), static_cast<std::streamsize>(line.size()));
  }
  void flush_() override {}

 private:
  std::ostringstream out_;
};

struct worker_fixture {
  servers where;
  omnibus::nats_connection conn{{.url = where.nats_url}};
  omnibus::jetstream js{conn};
  omnibus::bus_options opts = stream_options(where);
  pqxx::connection db{where.database_url};
  std::shared_ptr<text_sink> log_sink = std::make_shared<text_sink>();
  std::shared_ptr<spdlog::logger> log = std::make_shared<spdlog::logger>("test", log_sink);
  omnibus::event_bus b{js, opts};
  std::unique_ptr<omnibus::worker> w;
  std::jthread runner;
  std::exception_ptr run_error;

  worker_fixture() : worker_fixture(servers::shared()) {}
  explicit worker_fixture(servers s) : where(std::move(s)) {
    omnibus::migrate(db, opts.schema);
    pqxx::work tx{db};
    tx.exec0("CREATE TABLE \"" + opts.schema +
             "\".handled (seq bigint GENERATED ALWAYS AS IDENTITY, n bigint NOT NULL, worker text NOT NULL, "
             "at timestamptz NOT NULL DEFAULT clock_timestamp())");
    tx.commit();
  }
  ~worker_fixture() {
    stop_worker();
    (void)js.delete_stream(opts.stream);
    try {
      test_env::drop_schemas(live_db(), {opts.schema});
    } catch (const pqxx::broken_connection&) {  // cut by a PostgreSQL restart: once more, anew
      test_env::drop_schemas(live_db(true), {opts.schema});
    }
  }
  static omnibus::bus_options stream_options(const servers& s) {
    auto o = test_env::test_bus_options("worker");
    o.stream.memory_storage = !s.file_storage;
    if (s.stream_max_bytes > 0) o.stream.max_bytes = s.stream_max_bytes;
    o.stream.replicas = s.stream_replicas;
    if (s.stream_max_age.count() > 0) {
      o.stream.max_age = s.stream_max_age;
      o.stream.duplicate_window = std::min(o.stream.duplicate_window, s.stream_max_age);
    }
    return o;
  }
  /// `db`, or after a PostgreSQL restart cut it (libpqxx 6 connections do not reconnect), a
  /// new connection; `renew` opens another one.
  pqxx::connection& live_db(bool renew = false) {
    if (renew) replacement_db_.emplace(where.database_url);
    return replacement_db_ ? *replacement_db_ : db;
  }
  std::optional<pqxx::connection> replacement_db_;

  void start_worker(std::chrono::milliseconds parked_poll = 1000ms) {
    omnibus::worker_options wo;
    wo.database_url = where.database_url;
    wo.parked_poll = parked_poll;
    start_worker(wo);
  }
  void start_worker(omnibus::worker_options wo) {
    wo.fetch_wait = 200ms;
    w = std::make_unique<omnibus::worker>(b, wo, log);
    runner = std::jthread([this](std::stop_token st) {
      try {
        w->run(st);
      } catch (...) {
        run_error = std::current_exception();
      }
    });
    // The worker provisions before it drains: wait for its consumers.
    REQUIRE(test_env::eventually([&] { return js.consumers(opts.stream).size() >= b.consumer_configs().size(); }, 10s));
  }
  void stop_worker() {
    if (runner.joinable()) {
      runner.request_stop();
      runner.join();
    }
  }

  omnibus::event_id publish(long n) {
    omnibus::context ctx;
    return b.publish(ctx, tool_event{n});
  }
  std::vector<omnibus::dead_letter> dead_letters(const std::string& listener = {}) {
    return omnibus::list_dead_letters(db, opts.schema, listener);
  }
  /// Whether a running worker reports `listener` in `state` ("paused", "running", ...).
  bool reported(const std::string& listener, const std::string& state) {
    for (const auto& r : omnibus::list_listener_reports(db, opts.schema, 10s)) {
      if (r.listener == listener && r.state == state) return true;
    }
    return false;
  }
  bool settled(const std::string& listener) {  // nothing pending or unacked on its consumer
    auto i = js.info(opts.stream, "g_" + listener);
    return i && i->pending == 0 && i->ack_pending == 0;
  }
  std::string logs() { return log_sink->text(); }
  static omnibus::listener_options quick_retries(int attempts) {
    omnibus::listener_options o;
    o.retry.max_attempts = attempts;
    o.retry.initial = 20ms;
    o.retry.max = 100ms;
    return o;
  }
};


struct process_fixture : worker_fixture {
  using worker_fixture::worker_fixture;

  std::vector<std::string> worker_argv(const std::string& tag) const {
    return {test_env::tool_path("OMNIBUS_WORKER_TOOL"), opts.schema, opts.stream.name, tag};
  }
  /// The environment a tool process needs to reach this fixture's servers and stream.
  std::vector<std::string> tool_env(std::vector<std::string> extra) const {
    extra.push_back("OMNIBUS_NATS_URL=" + where.nats_url);
    extra.push_back("OMNIBUS_DATABASE_URL=" + where.database_url);
    if (where.file_storage) extra.push_back("OMNIBUS_TEST_FILE_STORAGE=1");
    if (where.stream_max_bytes > 0) extra.push_back("OMNIBUS_TEST_MAX_BYTES=" + std::to_string(where.stream_max_bytes));
    extra.push_back("OMNIBUS_TEST_REPLICAS=" + std::to_string(where.stream_replicas));
    return extra;
  }
  test_env::child_process worker_process(const std::string& tag, std::vector<std::string> env = {}) {
    return test_env::child_process(worker_argv(tag), tool_env(std::move(env)));
  }
  std::unique_ptr<test_env::child_process> worker_process_ptr(const std::string& tag, std::vector<std::string> env = {}) {
    return std::make_unique<test_env::child_process>(worker_argv(tag), tool_env(std::move(env)));
  }
  void publish_many(long count) {
    std::vector<tool_event> events;
    for (long i = 0; i < count; ++i) events.push_back({i});
    omnibus::context ctx;
    REQUIRE(b.publish_batch(ctx, std::span<const tool_event>(events)).ok());
  }
  long count(const std::string& condition = "true") {
    return scalar("SELECT count(*) FROM \"" + opts.schema + "\".handled WHERE " + condition);
  }
  long distinct_handled() { return scalar("SELECT count(DISTINCT n) FROM \"" + opts.schema + "\".handled"); }
  /// One number from the database; through a PostgreSQL restart, -1 until it is back.
  long scalar(const std::string& sql) {
    try {
      pqxx::nontransaction q{live_db()};
      return q.exec1(sql)[0].as<long>();
    } catch (const pqxx::broken_connection&) {
      try {
        (void)live_db(true);
      } catch (const pqxx::broken_connection&) {  // still down: the next call tries again
      }
      return -1;
    }
  }
  // The recorder listener, as worker_tool registers it, so that the stream and consumer exist
  // before the first worker process starts.
  void provision_recorder(std::chrono::milliseconds ack_wait = 30s, bool ordered = false) {
    omnibus::listener_options lo;
    lo.ack_wait = ack_wait;
    lo.ordered = ordered;
    b.add_async_listener<tool_event>("recorder", [](omnibus::context&, const tool_event&) {}, lo);
    b.provision();
  }
};


}  // namespace test_env
