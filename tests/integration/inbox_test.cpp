// The inbox option: exactly-once effects for listeners that write to PostgreSQL, through lost
// acks, handler failures and chains of events. Kill -9 loops are in the fault suite.

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <future>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <pqxx/pqxx>

#include "omnibus/event.hpp"
#include "omnibus/operations.hpp"
#include "support/worker_fixture.hpp"

using namespace std::chrono_literals;
using test_env::process_fixture;
using test_env::worker_fixture;

namespace {

struct follow_up {  // published by a handler, through its inbox transaction
  static constexpr std::string_view name = "test.follow_up";
  static constexpr int version = 1;
  std::int64_t n = 0;
  OMNIBUS_FIELDS(n);
};

omnibus::listener_options inbox_options() {
  omnibus::listener_options o;
  o.inbox = true;
  o.retry.initial = 20ms;
  o.retry.max = 100ms;
  return o;
}

}  // namespace

TEST_CASE_METHOD(process_fixture, "a lost ack: the redelivered event leaves the database changed exactly once",
                 "[integration][inbox]") {
  provision_recorder(2s);
  publish_many(50);
  // The first worker commits its first inbox transaction, then dies before the ack.
  auto first = worker_process("first", {"OMNIBUS_TEST_INBOX=1", "OMNIBUS_TEST_ACK_WAIT_MS=2000",
                                        "OMNIBUS_FAILPOINT=worker_after_inbox_commit"});
  REQUIRE(first.wait(30s) == 86);
  REQUIRE(count() >= 1);  // its effect is committed, its message unacked
  auto second = worker_process("second", {"OMNIBUS_TEST_INBOX=1", "OMNIBUS_TEST_ACK_WAIT_MS=2000"});
  REQUIRE(test_env::eventually([&] { return distinct_handled() == 50; }, 60s));
  REQUIRE(test_env::eventually([&] { return settled("recorder"); }, 30s));  // the redelivery was acked too
  second.signal(SIGTERM);
  REQUIRE(second.wait(20s) == 0);
  CHECK(count() == 50);  // every effect once, the lost-ack one included
}

TEST_CASE_METHOD(worker_fixture, "a throwing inbox handler rolls back its writes and its inbox row; the retry applies them once",
                 "[integration][inbox]") {
  const std::string insert = "INSERT INTO \"" + opts.schema + "\".handled (n, worker) VALUES ($1, 'inproc')";
  b.add_async_listener<tool_event>("ledger", [&](omnibus::context& ctx, const tool_event& e) {
    ctx.tx().exec_params0(insert, e.n);  // written, then thrown away on the first attempt
    if (ctx.attempt() == 1) throw std::runtime_error("first attempt fails after writing");
  }, inbox_options());
  start_worker();
  publish(7);
  REQUIRE(test_env::eventually([&] { return w->stats().handled.load() == 1; }, 10s));
  pqxx::nontransaction q{db};
  CHECK(q.exec1("SELECT count(*) FROM \"" + opts.schema + "\".handled WHERE n = 7")[0].as<long>() == 1);
  CHECK(q.exec1("SELECT count(*) FROM \"" + opts.schema + "\".bus_inbox WHERE listener = 'ledger'")[0].as<long>() == 1);
  CHECK(w->stats().failed.load() == 1);
}

TEST_CASE_METHOD(worker_fixture, "a follow-up event is in the outbox if and only if the handler's transaction committed",
                 "[integration][inbox]") {
  std::promise<void> go;
  std::shared_future<void> second_attempt_may_go = go.get_future().share();
  b.add_async_listener<tool_event>("chain", [&](omnibus::context& ctx, const tool_event& e) {
    if (ctx.attempt() >= 2) second_attempt_may_go.wait();
    b.publish(ctx, follow_up{e.n});  // into the outbox, in the inbox transaction
    if (ctx.attempt() == 1) throw std::runtime_error("fails after publishing");
  }, inbox_options());
  start_worker();
  publish(1);
  const std::string outbox = "SELECT count(*) FROM \"" + opts.schema + "\".bus_outbox WHERE subject LIKE '%.test.follow_up'";
  auto outbox_rows = [&] {
    pqxx::nontransaction q{db};
    return q.exec1(outbox)[0].as<long>();
  };
  REQUIRE(test_env::eventually([&] { return w->stats().failed.load() == 1; }, 10s));
  CHECK(outbox_rows() == 0);  // rolled back with the handler's transaction
  go.set_value();
  REQUIRE(test_env::eventually([&] { return w->stats().handled.load() == 1; }, 10s));
  CHECK(outbox_rows() == 1);  // committed with it, exactly once
}

TEST_CASE_METHOD(worker_fixture, "inbox rows are pruned by the database's clock after their retention",
                 "[integration][inbox]") {
  b.add_async_listener<tool_event>("ledger", [](omnibus::context&, const tool_event&) {}, inbox_options());
  omnibus::worker_options wo;
  wo.database_url = test_env::database_url();
  wo.inbox_prune_every = 1s;
  wo.inbox_retention = std::chrono::hours(2);
  SECTION("a retention not above the stream's MaxAge is refused") {
    wo.inbox_retention = std::chrono::duration_cast<std::chrono::seconds>(opts.stream.max_age);
    omnibus::worker bad{b, wo, log};
    std::stop_source never;
    CHECK_THROWS_WITH(bad.run(never.get_token()), Catch::Contains("inbox_retention must exceed"));
  }
  SECTION("old rows go, recent ones stay") {
    start_worker(wo);
    publish(1);
    publish(2);
    REQUIRE(test_env::eventually([&] { return w->stats().handled.load() == 2; }, 10s));
    const std::string inbox = "\"" + opts.schema + "\".bus_inbox";
    {
      pqxx::work tx{db};
      tx.exec0("UPDATE " + inbox + " SET handled_at = now() - interval '3 hours' WHERE event_id = "
               "(SELECT event_id FROM " + inbox + " ORDER BY handled_at LIMIT 1)");
      tx.commit();
    }
    REQUIRE(test_env::eventually([&] {
      pqxx::nontransaction q{db};
      return q.exec1("SELECT count(*) FROM " + inbox)[0].as<long>() == 1;
    }, 10s));
  }
}

TEST_CASE_METHOD(worker_fixture, "retrying an inbox listener's dead letter runs it in its own inbox transaction, once",
                 "[integration][inbox]") {
  std::atomic<bool> broken{true};
  const std::string insert = "INSERT INTO \"" + opts.schema + "\".handled (n, worker) VALUES ($1, 'retry')";
  b.add_async_listener<tool_event>("ledger", [&](omnibus::context& ctx, const tool_event& e) {
    if (broken) throw omnibus::permanent_error("ledger closed");
    ctx.tx().exec_params0(insert, e.n);
  }, inbox_options());
  start_worker();
  publish(9);
  REQUIRE(test_env::eventually([&] { return dead_letters("ledger").size() == 1; }, 10s));
  stop_worker();
  broken = false;
  const auto id = dead_letters("ledger").front().id;
  auto first = omnibus::retry_dead_letter(b, db, id);
  CHECK(first.ok);
  INFO(first.error);
  {
    pqxx::nontransaction q{db};
    CHECK(q.exec1("SELECT count(*) FROM \"" + opts.schema + "\".handled WHERE n = 9")[0].as<long>() == 1);
    CHECK(q.exec1("SELECT count(*) FROM \"" + opts.schema + "\".bus_inbox WHERE listener = 'ledger'")[0].as<long>() == 1);
  }
  CHECK(dead_letters("ledger").empty());
}
