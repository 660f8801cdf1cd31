// The fault suite: worker and publisher processes, a real nats-server and PostgreSQL, and the
// faults a deployment meets. Every scenario prints one line:
//
//   chaos: <scenario> seed=<s> events=<n> handled=<h> lost=<l> duplicate_effects=<d> dead=<k>
//
// events: events whose publisher committed (or whose direct publish was acked); handled: those
// every listener due to handle them did; lost = events - handled; duplicate_effects: events
// whose inbox listener's row appears more than once; dead: dead letters.
//
// OMNIBUS_FAULT_VARIANT=long runs the long variant (scripts/fault long). Kills and restarts
// happen at seeded counts of handled events, never at times: OMNIBUS_FAULT_SEED=<s> replays.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <pqxx/pqxx>
#include <spdlog/sinks/ostream_sink.h>

#include "omnibus/codec.hpp"
#include "omnibus/envelope.hpp"
#include "omnibus/event.hpp"
#include "omnibus/listener_control.hpp"
#include "omnibus/operations.hpp"
#include "omnibus/relay.hpp"
#include "support/private_servers.hpp"
#include "support/raw_nats.hpp"
#include "support/worker_fixture.hpp"
#include "tools/keyed_event.hpp"

using namespace std::chrono_literals;

namespace {

bool long_variant() {
  const char* v = std::getenv("OMNIBUS_FAULT_VARIANT");
  return v != nullptr && std::string_view(v) == "long";
}
template <class T>
T pick(T short_value, T long_value) {
  return long_variant() ? long_value : short_value;
}

unsigned chaos_seed() {
  if (const char* v = std::getenv("OMNIBUS_FAULT_SEED"); v != nullptr && *v != '\0') {
    return static_cast<unsigned>(std::strtoul(v, nullptr, 10));
  }
  return std::random_device{}();
}

/// `count` distinct seeded values in [low, high), sorted: the handled counts at which to strike.
std::vector<long> strike_points(std::mt19937& random, int count, long low, long high) {
  std::vector<long> at;
  for (int i = 0; i < count; ++i) at.push_back(low + static_cast<long>(random() % static_cast<unsigned long>(high - low)));
  std::sort(at.begin(), at.end());
  return at;
}

struct tally {
  long events = 0;
  long handled = 0;
  long lost = 0;
  long duplicate_effects = 0;
  long dead = 0;
};

// One scenario's world: its stream, schema, worker processes, and the bookkeeping behind its
// summary line. <schema>.committed holds the number of every event a publisher committed (in
// the same transaction) or whose direct publish was acked; <schema>.handled every effect.
struct chaos_fixture : test_env::process_fixture {
  explicit chaos_fixture(test_env::servers s = test_env::servers::shared()) : process_fixture(std::move(s)) {
    pqxx::work tx{db};
    tx.exec0("CREATE TABLE " + table("committed") + " (n bigint PRIMARY KEY)");
    tx.commit();
  }

  [[nodiscard]] std::string table(const char* name) const { return "\"" + opts.schema + "\"." + name; }

  /// The listeners worker_tool registers, provisioned before any event is published (a new
  /// consumer starts at "now").
  void provision_listeners(bool bystander, std::chrono::milliseconds ack_wait, bool bystander_ordered = false) {
    omnibus::listener_options lo;
    lo.ack_wait = ack_wait;
    lo.inbox = true;
    b.add_async_listener<tool_event>("recorder", [](omnibus::context&, const tool_event&) {}, lo);
    omnibus::listener_options bo;
    bo.ordered = bystander_ordered;
    if (bystander) b.add_async_listener<tool_event>("bystander", [](omnibus::context&, const tool_event&) {}, bo);
    b.provision();
  }

  /// Publishes [first, first + count) directly, acked as one batch, and records them.
  void commit_direct(long first, long count) {
    std::vector<tool_event> events;
    for (long i = 0; i < count; ++i) events.push_back({first + i});
    omnibus::context ctx;
    REQUIRE(b.publish_batch(ctx, std::span<const tool_event>(events)).ok());
    pqxx::work tx{db};
    tx.exec_params0("INSERT INTO " + table("committed") + " SELECT generate_series($1::bigint, $2::bigint)", first,
                    first + count - 1);
    tx.commit();
  }

  /// A worker_tool process whose recorder is an inbox listener.
  std::unique_ptr<test_env::child_process> worker(const std::string& tag, std::vector<std::string> env = {}) {
    env.push_back("OMNIBUS_TEST_INBOX=1");
    return worker_process_ptr(tag, std::move(env));
  }

  /// Committed events some due listener has not handled yet.
  long missing(bool bystander) {
    std::string sql = "SELECT count(*) FROM " + table("committed") + " c WHERE NOT EXISTS (SELECT 1 FROM " +
                      table("handled") + " h WHERE h.n = c.n AND h.worker <> 'bystander')";
    if (bystander) {
      sql += " OR NOT EXISTS (SELECT 1 FROM " + table("handled") + " h WHERE h.n = c.n AND h.worker = 'bystander')";
    }
    return scalar(sql);
  }

  tally count_up(bool bystander) {
    tally t;
    t.events = scalar("SELECT count(*) FROM " + table("committed"));
    t.lost = missing(bystander);
    t.handled = t.events - t.lost;
    t.duplicate_effects = scalar("SELECT count(*) FROM (SELECT n FROM " + table("handled") +
                                 " WHERE worker <> 'bystander' GROUP BY n HAVING count(*) > 1) d");
    t.dead = scalar("SELECT count(*) FROM " + table("bus_dead_letters"));
    return t;
  }

  /// Waits (bounded) until every committed event is handled, with `tend` called on each poll
  /// (restarting exited workers, say), then prints the scenario's line.
  template <class F>
  tally settle_and_report(const char* scenario, unsigned seed, bool bystander, std::chrono::milliseconds within,
                          F&& tend) {
    (void)test_env::eventually([&] {
      tend();
      return missing(bystander) == 0;
    }, within);
    const tally t = count_up(bystander);
    if (t.lost > 0 || t.dead > 0) {  // what a failing run needs to be understood
      for (const auto& dl : dead_letters()) {
        std::printf("dead letter: %s %s reason=%s attempts=%d: %s\n", dl.listener.c_str(), dl.event_id.c_str(),
                    dl.reason.c_str(), dl.attempts, dl.error.c_str());
      }
    }
    std::printf("chaos: %s seed=%u events=%ld handled=%ld lost=%ld duplicate_effects=%ld dead=%ld\n", scenario, seed,
                t.events, t.handled, t.lost, t.duplicate_effects, t.dead);
    std::fflush(stdout);
    return t;
  }
  tally settle_and_report(const char* scenario, unsigned seed, bool bystander, std::chrono::milliseconds within) {
    return settle_and_report(scenario, seed, bystander, within, [] {});
  }

  long outbox_rows() { return scalar("SELECT count(*) FROM " + table("bus_outbox")); }

  /// Publishes 10,000,000 .. + count through the outbox, five to a transaction, each recorded
  /// in it; `done` counts them. Never fails for NATS's sake: the relay sends them.
  void commit_through_outbox(long count, std::atomic<long>& done) {
    pqxx::connection own{where.database_url};
    for (long t = 0; t < count / 5; ++t) {
      pqxx::work tx{own};
      omnibus::context ctx{tx};
      for (long i = 0; i < 5; ++i) {
        const long n = 10'000'000 + t * 5 + i;
        b.publish(ctx, tool_event{n});
        tx.exec_params0("INSERT INTO " + table("committed") + " (n) VALUES ($1)", n);
      }
      tx.commit();
      done += 5;
    }
  }
};

/// The end of a worker's output, for a failure's message (CI shows a failure's messages, not
/// the whole log).
std::string output_end(const test_env::child_process& w, std::size_t chars = 2500) {
  const std::string o = w.output();
  return o.substr(o.size() > chars ? o.size() - chars : 0);
}

/// SIGTERM to every worker: each must stop gracefully (exit 0), or, where `stuck_ok`, may
/// have exited 3 on its own meanwhile because every slot of a listener was stuck.
void stop_all(std::vector<std::unique_ptr<test_env::child_process>>& workers, bool stuck_ok = false) {
  for (auto& w : workers) {
    // A worker started a moment ago (a restart) may not have blocked SIGTERM yet: it would die
    // of it, not stop gracefully. Wait for it to say it has (a sanitized build starts slowly).
    (void)test_env::eventually([&] {
      return w->wait(0ms) != -1 || w->output().find("worker_tool: signals blocked") != std::string::npos;
    }, 30s);
    if (w->wait(0ms) == -1) w->signal(SIGTERM);
  }
  for (auto& w : workers) {
    const int code = w->wait(60s);
    if (code != 0) UNSCOPED_INFO("worker exited " << code << " (-1: still running); the end of its output:\n" << output_end(*w));
    CHECK((code == 0 || (stuck_ok && code == 3)));
    if (code != 0 || std::getenv("OMNIBUS_FAULT_VERBOSE") != nullptr) {
      std::printf("--- worker output (exit %d):\n%s\n", code, w->output().c_str());
    }
  }
}

/// Every worker still running: none exited on its own (of one that did, its exit code and the
/// end of its output go with the failure).
void check_running(const std::vector<std::unique_ptr<test_env::child_process>>& workers) {
  for (std::size_t i = 0; i < workers.size(); ++i) {
    const int code = workers[i]->wait(0ms);
    if (code != -1) UNSCOPED_INFO("worker " << i << " exited " << code << "; the end of its output:\n" << output_end(*workers[i]));
    CHECK(code == -1);
  }
}

/// Waits until every worker has started its listeners (its "handler slot(s)" line): a scenario
/// that strikes at the database must not catch a worker still starting, which would wait for
/// it at start (or give up) instead of holding events.
void require_started(const std::vector<std::unique_ptr<test_env::child_process>>& workers) {
  for (std::size_t i = 0; i < workers.size(); ++i) {
    const bool started = test_env::eventually([&] {
      return workers[i]->output().find("handler slot(s)") != std::string::npos || workers[i]->wait(0ms) != -1;
    }, 60s);
    if (!started || workers[i]->wait(0ms) != -1) {
      UNSCOPED_INFO("worker " << i << " did not start its listeners (exit " << workers[i]->wait(0ms)
                              << ", -1: running); the end of its output:\n" << output_end(*workers[i]));
    }
    REQUIRE((started && workers[i]->wait(0ms) == -1));
  }
}

/// What every scenario requires of its line: nothing lost, no inbox effect twice, and only the
/// dead letters it expects.
void check_line(const tally& t, long expected_dead = 0) {
  CHECK(t.events > 0);
  CHECK(t.lost == 0);
  CHECK(t.duplicate_effects == 0);
  CHECK(t.dead == expected_dead);
}

/// At each of `points` (handled counts), kill -9 one of `workers` at random and start another
/// in its place, named "w<n>" from `next_name` on. Returns how many it killed.
int strike_workers(chaos_fixture& f, std::vector<std::unique_ptr<test_env::child_process>>& workers, std::mt19937& random,
                   const std::vector<long>& points, const std::vector<std::string>& env, int next_name) {
  int killed = 0;
  for (long at : points) {
    REQUIRE(test_env::eventually([&] { return f.count() >= at; }, pick(120s, 600s)));
    auto& victim = workers[random() % workers.size()];
    victim->signal(SIGKILL);
    REQUIRE(victim->wait(10s) == 128 + SIGKILL);
    victim = f.worker("w" + std::to_string(next_name + killed), env);
    ++killed;
  }
  return killed;
}

std::string replay(unsigned seed) {
  return "seed " + std::to_string(seed) + " (replay: OMNIBUS_FAULT_SEED=" + std::to_string(seed) + ")";
}

}  // namespace

TEST_CASE("worker kills: kill -9 workers while two drain; inbox effects exactly once", "[fault][worker_kills]") {
  const unsigned seed = chaos_seed();
  INFO(replay(seed));
  const long events = pick(10'000L, 100'000L);
  const int kills = pick(10, 20);
  chaos_fixture f;
  f.provision_listeners(false, 2s);
  f.commit_direct(0, events);
  std::mt19937 random{seed};
  const std::vector<std::string> env{"OMNIBUS_TEST_ACK_WAIT_MS=2000"};
  std::vector<std::unique_ptr<test_env::child_process>> workers;
  workers.push_back(f.worker("w0", env));
  workers.push_back(f.worker("w1", env));
  const int killed = strike_workers(f, workers, random, strike_points(random, kills, events / 50, events * 9 / 10), env, 2);
  const tally t = f.settle_and_report("worker_kills", seed, false, pick(180s, 900s));
  stop_all(workers);
  CHECK(killed == kills);
  CHECK(t.events == events);
  check_line(t);  // no duplicate effect, though killed workers left committed effects unacked
}

TEST_CASE("publisher kills: kill -9 right after COMMIT, before the publisher's relay sends", "[fault][publisher_kills]") {
  const unsigned seed = chaos_seed();
  INFO(replay(seed));
  chaos_fixture f;
  f.provision_listeners(false, 5s);
  std::vector<std::unique_ptr<test_env::child_process>> workers;
  workers.push_back(f.worker("w0", {"OMNIBUS_TEST_RELAY=1"}));  // a relay that outlives the publishers
  workers.push_back(f.worker("w1"));
  std::mt19937 random{seed};
  const int publishers = pick(10, 40);
  long next = 0;
  for (int p = 0; p < publishers; p += 2) {  // two publishers at a time
    std::vector<std::unique_ptr<test_env::child_process>> pair;
    for (int i = 0; i < 2; ++i) {
      const long txs = 5 + static_cast<long>(random() % 20);
      const long per_tx = 1 + static_cast<long>(random() % 10);
      const long kill_after = 1 + static_cast<long>(random() % static_cast<unsigned long>(txs));
      pair.push_back(std::make_unique<test_env::child_process>(
          std::vector<std::string>{test_env::tool_path("OMNIBUS_OUTBOX_TOOL"), "publisher", f.opts.schema,
                                   f.opts.stream.name, std::to_string(txs)},
          f.tool_env({"OMNIBUS_TEST_PER_TX=" + std::to_string(per_tx), "OMNIBUS_TEST_FIRST=" + std::to_string(next),
                      "OMNIBUS_TEST_KILL_AFTER_TX=" + std::to_string(kill_after)})));
      next += txs * per_tx;
    }
    for (auto& pub : pair) REQUIRE(pub->wait(60s) == 128 + SIGKILL);
  }
  const tally t = f.settle_and_report("publisher_kills", seed, false, 120s);
  stop_all(workers);
  check_line(t);
  CHECK(test_env::eventually([&] { return f.outbox_rows() == 0; }, 10s));  // deleted after the stream's ack
}

TEST_CASE("random rollbacks: no event of a rolled-back transaction is ever handled", "[fault][random_rollbacks]") {
  const unsigned seed = chaos_seed();
  INFO(replay(seed));
  chaos_fixture f;
  std::set<long> poisoned;  // a sync listener throws for these: the publish fails, the transaction rolls back
  f.b.add_sync_listener<tool_event>([&](omnibus::context&, const tool_event& e) {
    if (poisoned.contains(e.n)) throw std::runtime_error("poisoned event " + std::to_string(e.n));
  });
  f.provision_listeners(false, 5s);
  std::vector<std::unique_ptr<test_env::child_process>> workers;
  workers.push_back(f.worker("w0", {"OMNIBUS_TEST_RELAY=1"}));
  workers.push_back(f.worker("w1"));
  std::mt19937 random{seed};
  const long txs = pick(500L, 5000L);
  long next = 0;
  long rolled_back = 0;
  long listener_failures = 0;
  for (long t = 0; t < txs; ++t) {
    const long size = 1 + static_cast<long>(random() % 5);
    const unsigned fate = random() % 10;  // 0-1: rollback, 2-3: a sync listener throws, else commit
    if (fate == 2 || fate == 3) poisoned.insert(next + static_cast<long>(random() % static_cast<unsigned long>(size)));
    pqxx::work tx{f.db};
    omnibus::context ctx{tx};
    try {
      for (long i = 0; i < size; ++i) {
        f.b.publish(ctx, tool_event{next + i});
        tx.exec_params0("INSERT INTO " + f.table("committed") + " (n) VALUES ($1)", next + i);
      }
      if (fate >= 4) {
        tx.commit();
      } else {
        tx.abort();
        ++rolled_back;
      }
    } catch (const std::runtime_error& e) {
      REQUIRE_THAT(e.what(), Catch::Contains("poisoned event"));
      ++listener_failures;  // the transaction's destructor rolls it back
    }
    next += size;
  }
  const tally t = f.settle_and_report("random_rollbacks", seed, false, 120s);
  INFO(rolled_back << " rolled back, " << listener_failures << " failed by a sync listener");
  CHECK(rolled_back + listener_failures > 0);
  check_line(t);
  CHECK(test_env::eventually([&] { return f.outbox_rows() == 0; }, 10s));  // deleted after the stream's ack
  // Nothing from a rolled-back transaction reached a listener. The relay is idle by now (the
  // outbox is empty), so nothing can still arrive.
  CHECK(f.scalar("SELECT count(*) FROM " + f.table("handled") + " h WHERE NOT EXISTS (SELECT 1 FROM " +
                 f.table("committed") + " c WHERE c.n = h.n)") == 0);
  stop_all(workers);
}

TEST_CASE("nats-server restart mid-publish and mid-drain (file storage)", "[fault][nats_restart]") {
  const unsigned seed = chaos_seed();
  INFO(replay(seed));
  test_env::private_nats nats;
  chaos_fixture f{test_env::servers{nats.url(), test_env::database_url(), true}};
  f.provision_listeners(false, 5s);
  std::vector<std::unique_ptr<test_env::child_process>> workers;
  workers.push_back(f.worker("w0", {"OMNIBUS_TEST_RELAY=1"}));
  workers.push_back(f.worker("w1"));
  const long per_publisher = pick(3000L, 30000L);
  std::atomic<long> direct_errors{0};
  std::atomic<long> direct_done{0};
  std::atomic<long> outbox_done{0};
  std::mutex odd_mutex;
  std::vector<std::string> odd_errors;  // errors a publisher is not documented to get
  std::jthread direct([&] {  // direct publishes: acked, or a documented publish_error
    pqxx::connection db{f.where.database_url};
    for (long n = 0; n < per_publisher; ++n) {
      omnibus::context ctx;
      try {
        f.b.publish(ctx, tool_event{n});
        pqxx::work tx{db};
        tx.exec_params0("INSERT INTO " + f.table("committed") + " (n) VALUES ($1)", n);
        tx.commit();
      } catch (const omnibus::publish_error&) {
        ++direct_errors;  // not_sent or unknown: the caller may retry; not counted as committed
      } catch (const std::exception& e) {
        std::lock_guard lock(odd_mutex);
        odd_errors.emplace_back(e.what());
      }
      ++direct_done;
    }
  });
  std::jthread outbox([&] { f.commit_through_outbox(per_publisher, outbox_done); });
  std::mt19937 random{seed};
  const int restarts = pick(1, 3);
  for (long at : strike_points(random, restarts, per_publisher / 10, per_publisher)) {
    REQUIRE(test_env::eventually([&] { return f.distinct_handled() >= at; }, 120s));
    const long errors_before = direct_errors;
    nats.stop();
    // Down until a direct publisher has met it (or has finished).
    (void)test_env::eventually([&] { return direct_errors > errors_before || direct_done == per_publisher; }, 30s);
    nats.start();
  }
  direct.join();
  outbox.join();
  const tally t = f.settle_and_report("nats_restart", seed, false, 180s);
  INFO(direct_errors << " direct publish(es) failed with a documented publish_error");
  {
    std::lock_guard lock(odd_mutex);
    for (auto& e : odd_errors) UNSCOPED_INFO("undocumented error: " << e);  // shown with the check below
    CHECK(odd_errors.empty());
  }
  CHECK(outbox_done == per_publisher / 5 * 5);  // outbox publishers all finished
  check_line(t);
  CHECK(test_env::eventually([&] { return f.outbox_rows() == 0; }, 10s));  // deleted after the stream's ack
  check_running(workers);  // the workers reconnected, never exited
  stop_all(workers);
}

TEST_CASE("PostgreSQL restart: relay, worker and inbox reconnect", "[fault][postgres_restart]") {
  const unsigned seed = chaos_seed();
  INFO(replay(seed));
  test_env::private_postgres pg;
  chaos_fixture f{test_env::servers{test_env::nats_url(), pg.url()}};
  f.provision_listeners(true, 5s);
  std::vector<std::unique_ptr<test_env::child_process>> workers;
  workers.push_back(f.worker("w0", {"OMNIBUS_TEST_RELAY=1", "OMNIBUS_TEST_BYSTANDER=1"}));
  workers.push_back(f.worker("w1", {"OMNIBUS_TEST_RELAY=1", "OMNIBUS_TEST_BYSTANDER=1"}));
  const long txs = pick(1000L, 10000L);
  std::atomic<long> tx_done{0};
  std::atomic<long> tx_failed{0};
  std::jthread publisher([&] {  // a service: its transactions fail while the database is away
    std::optional<pqxx::connection> db;
    for (long t = 0; t < txs; ++t) {
      try {
        if (!db || !db->is_open()) db.emplace(f.where.database_url);
        pqxx::work tx{*db};
        omnibus::context ctx{tx};
        for (long i = 0; i < 5; ++i) {
          f.b.publish(ctx, tool_event{t * 5 + i});
          tx.exec_params0("INSERT INTO " + f.table("committed") + " (n) VALUES ($1)", t * 5 + i);
        }
        tx.commit();  // in doubt when cut here: the committed table says what happened
      } catch (const std::exception&) {  // pqxx's broken_connection, in_doubt_error, ...
        ++tx_failed;
        db.reset();
        // As a service would: wait for the database before the next transaction (bounded).
        (void)test_env::eventually([&] {
          try {
            db.emplace(f.where.database_url);
            return true;
          } catch (const pqxx::broken_connection&) {
            return false;
          }
        }, 30s);
      }
      ++tx_done;
    }
  });
  std::mt19937 random{seed};
  for (long at : strike_points(random, pick(1, 3), txs / 10, txs * 2)) {
    REQUIRE(test_env::eventually([&] { return f.distinct_handled() >= at || tx_done == txs; }, 120s));
    pg.restart();
  }
  publisher.join();
  const tally t = f.settle_and_report("postgres_restart", seed, true, 180s);
  INFO(tx_failed << " transaction(s) failed while the database restarted");
  check_line(t);
  CHECK(test_env::eventually([&] { return f.outbox_rows() == 0; }, 10s));  // deleted after the stream's ack
  check_running(workers);
  stop_all(workers);
}

TEST_CASE("PostgreSQL down as a worker starts: it waits and drains once it is back; down past start_wait, the "
          "worker stops naming it", "[fault][postgres_at_start]") {
  const unsigned seed = chaos_seed();
  INFO(replay(seed));
  test_env::private_postgres pg;
  chaos_fixture f{test_env::servers{test_env::nats_url(), pg.url()}};
  f.provision_listeners(true, 5s);
  const long events = pick(500L, 5000L);
  f.commit_direct(0, events);
  pg.down();
  std::vector<std::unique_ptr<test_env::child_process>> workers;
  workers.push_back(f.worker("w0", {"OMNIBUS_TEST_BYSTANDER=1"}));
  REQUIRE(test_env::eventually([&] {
    return workers[0]->output().find("PostgreSQL is unreachable") != std::string::npos || workers[0]->wait(0ms) != -1;
  }, 60s));
  INFO(workers[0]->output());
  REQUIRE(workers[0]->wait(0ms) == -1);  // waiting, not gone
  pg.up();
  const tally t = f.settle_and_report("postgres_at_start", seed, true, 120s);
  check_line(t);
  CHECK(workers[0]->wait(0ms) == -1);
  stop_all(workers);

  // Down for longer than start_wait: the worker's run() throws, and the process says why.
  pg.down();
  auto late = f.worker("w1", {"OMNIBUS_TEST_START_WAIT_MS=1000"});
  CHECK(late->wait(60s) == 1);
  CHECK_THAT(late->output(), Catch::Contains("PostgreSQL is unreachable") &&
                                 Catch::Contains("the worker stopped: cannot connect to PostgreSQL"));
  pg.up();
}

namespace {
long occurrences(const std::string& text, const std::string& needle) {
  long n = 0;
  for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + 1)) ++n;
  return n;
}
}  // namespace

TEST_CASE("PostgreSQL down for many times the retry budget: nothing dead-lettered, every event handled, one pause "
          "and one resume per listener",
          "[fault][postgres_outage]") {
  const unsigned seed = chaos_seed();
  INFO(replay(seed));
  test_env::private_postgres pg;
  chaos_fixture f{test_env::servers{test_env::nats_url(), pg.url()}};
  f.provision_listeners(true, 5s);
  // A retry budget of 3 attempts 20 ms apart: without outage handling, a second without the
  // database dead-letters every event in flight.
  const std::vector<std::string> env{"OMNIBUS_TEST_BYSTANDER=1", "OMNIBUS_TEST_MAX_ATTEMPTS=3",
                                     "OMNIBUS_TEST_OUTAGE_RETRY_MS=50", "OMNIBUS_TEST_OUTAGE_RETRY_MAX_MS=200",
                                     "OMNIBUS_TEST_DELAY_MS=1", "OMNIBUS_TEST_DEBUG_LOG=1"};
  std::vector<std::unique_ptr<test_env::child_process>> workers;
  workers.push_back(f.worker("w0", env));
  workers.push_back(f.worker("w1", env));
  // Both running before the events come: on a loaded machine one worker could otherwise drain
  // the strike point alone while the other still starts, and meet the outage at its start.
  require_started(workers);
  const long events = pick(2000L, 20000L);
  f.commit_direct(0, events);
  std::mt19937 random{seed};
  const long at = strike_points(random, 1, events / 10, events / 2).front();
  REQUIRE(test_env::eventually([&] { return f.distinct_handled() >= at; }, 120s));
  pg.down();
  // The outage lasts until each worker has held its events through many times the retry
  // budget (each held call logs "waits ... for a dependency" at debug level).
  const long held_calls = pick(150L, 1500L);
  const bool held_long = test_env::eventually([&] {
    for (auto& w : workers) {
      if (occurrences(w->output(), "for a dependency") < held_calls) return false;
    }
    return true;
  }, 120s);
  if (!held_long) {
    for (std::size_t i = 0; i < workers.size(); ++i) {
      UNSCOPED_INFO("worker " << i << ": " << occurrences(workers[i]->output(), "for a dependency")
                              << " held call(s) of " << held_calls << ", exit " << workers[i]->wait(0ms)
                              << " (-1: running); the end of its output:\n" << output_end(*workers[i]));
    }
  }
  REQUIRE(held_long);
  pg.up();
  const tally t = f.settle_and_report("postgres_outage", seed, true, 180s);
  check_line(t);
  check_running(workers);
  stop_all(workers);
  for (auto& w : workers) {
    const std::string out = w->output();
    std::string transitions;  // what a failure needs to be understood: the outage lines only
    std::istringstream lines(out);
    for (std::string line; std::getline(lines, line);) {
      if (line.find("outage") != std::string::npos && line.find("for a dependency") == std::string::npos) {
        transitions += line + "\n";
      }
    }
    INFO("the worker's outage lines:\n" << transitions);
    for (const char* listener : {"recorder", "bystander"}) {
      INFO("listener " << listener);
      const long paused = occurrences(out, std::string("listener ") + listener + ": paused by an outage");
      CHECK(paused <= 1);
      CHECK(occurrences(out, std::string("listener ") + listener + ": resumed after an outage") == paused);
    }
    CHECK(occurrences(out, "dead-lettered") == 0);
  }
}

// A message as raw bytes: what a hostile or broken producer can put on the stream.
struct crafted {
  std::string subject;
  std::string block;   ///< the header block, exactly as sent ("" for none)
  std::string body;
  std::string needle;  ///< bytes the dead letter's headers must hold exactly ("" for none)
  const char* reason;  ///< the dead letter's reason; nullptr: no listener's subject, no dead letter
};

std::string header_block_of(const omnibus::message& m) {
  std::string b = "NATS/1.0\r\n";
  for (const auto& [k, v] : m.headers) b += k + ": " + v + "\r\n";
  return b + "\r\n";
}

crafted crafted_from(const omnibus::message& m, const char* reason) {
  return {m.subject, m.headers.empty() ? "" : header_block_of(m), m.body, "", reason};
}

TEST_CASE("garbage on the event subjects is dead-lettered with its reason and exact bytes; good events keep flowing",
          "[fault][garbage]") {
  const unsigned seed = chaos_seed();
  INFO(replay(seed));
  chaos_fixture f;
  f.provision_listeners(true, 5s, true);  // the bystander is ordered: one stuck message would stall it
  constexpr std::size_t body_limit = 4096;
  std::vector<std::unique_ptr<test_env::child_process>> workers;
  workers.push_back(f.worker("w0", {"OMNIBUS_TEST_MAX_BODY=" + std::to_string(body_limit), "OMNIBUS_TEST_BYSTANDER=1",
                                    "OMNIBUS_TEST_BYSTANDER_ORDERED=1"}));
  const std::string prefix = f.opts.stream.subject_prefix;
  const std::string subject = prefix + ".test.tool_event";
  std::mt19937 random{seed};
  auto good_envelope = [&] {
    omnibus::envelope env;
    env.id = omnibus::event_id::generate();
    env.name = "test.tool_event";
    env.version = 1;
    env.body = omnibus::detail::encode_body(tool_event{static_cast<std::int64_t>(random())});
    return env;
  };
  auto good = [&] { return omnibus::encode(good_envelope(), prefix); };
  auto with_header = [&](const std::string& name, const std::string& value, const char* reason) {
    omnibus::message m = good();
    std::erase_if(m.headers, [&](const auto& h) { return h.first == name; });
    m.headers.emplace_back(name, value);
    crafted c = crafted_from(m, reason);
    c.needle = value;
    return c;
  };
  // Each kind of garbage and the reason its dead letter must carry.
  const std::vector<std::function<crafted()>> kinds{
      [&] {  // random bytes, no headers at all
        omnibus::message m;
        m.subject = subject;
        for (int i = 0; i < 1 + static_cast<int>(random() % 64); ++i) m.body += static_cast<char>(random());
        return crafted_from(m, "missing_header");
      },
      [&] {  // msgpack cut short
        auto env = good_envelope();
        env.body = omnibus::detail::encode_body(tool_event{1'000'000'000'000});
        env.body.resize(env.body.size() - 1 - random() % 3);
        return crafted_from(omnibus::encode(env, prefix), "malformed_body");
      },
      [&] {  // {"n": "one"}
        auto env = good_envelope();
        env.body = "\x81\xa1n\xa3one";
        return crafted_from(omnibus::encode(env, prefix), "wrong_type");
      },
      [&] {  // the name header says another event than the subject
        auto env = good_envelope();
        env.name = "test.other_event";
        auto m = omnibus::encode(env, prefix);
        m.subject = subject;
        return crafted_from(m, "name_mismatch");
      },
      [&] {  // over the worker's body limit
        auto m = good();
        m.body.append(body_limit, '\0');  // trailing bytes too, but the size is checked first
        return crafted_from(m, "oversized");
      },
      [&] {  // a good body without its event-name header
        auto m = good();
        std::erase_if(m.headers, [](const auto& h) { return h.first == omnibus::header::event; });
        return crafted_from(m, "missing_header");
      },
      [&] { return with_header(std::string(omnibus::header::version), "one", "bad_header"); },
      [&] {  // unique, or the stream would drop it as a duplicate of the first one
        return with_header(std::string(omnibus::header::msg_id), "\xff\xfe-not-a-uuid-" + std::to_string(random()), "bad_header");
      },
      [&] { return with_header(std::string(omnibus::header::event), "test.tool\xff_event", "bad_header"); },
      [&] { return with_header("Omnibus-Meta-origin", "caf\xe9 \x1b[31mred", "bad_header"); },
      [&] {  // a header line without a colon
        return crafted{subject, "NATS/1.0\r\nNoColonHere\r\n\r\n", good().body, "", "malformed_headers"};
      },
      [&] {  // the same with no body: NATS.c's own fetch failed on this one
        return crafted{subject, "NATS/1.0\r\nNoColonHere\r\n\r\n", "", "", "malformed_headers"};
      },
      [&] {  // a status line that is not NATS/1.0
        omnibus::message m = good();
        std::string block = header_block_of(m);
        block.replace(0, 8, "HTTP/1.1 200 OK");
        return crafted{subject, block, m.body, "", "malformed_headers"};
      },
      [&] {  // an Omnibus header twice, with two values
        omnibus::message m = good();
        m.headers.emplace_back(std::string(omnibus::header::msg_id), omnibus::event_id::generate().to_string());
        return crafted_from(m, "bad_header");
      },
      [&] {  // an empty header
        omnibus::message m = good();
        std::string block = header_block_of(m);
        block.insert(block.size() - 2, "Omnibus-Event:\r\n");
        return crafted{subject, block, m.body, "", "malformed_headers"};
      },
      [&] {  // 10,000 headers (short ones: nats-server refuses header blocks over 64 KiB)
        omnibus::message m = good();
        for (int i = 0; i < 10'000; ++i) m.headers.emplace_back("X", std::to_string(i % 10));
        return crafted_from(m, "too_many_headers");
      },
      [&] {  // nested containers, each announcing 2^32 - 1 elements
        auto env = good_envelope();
        env.body.clear();
        for (int i = 0; i < 64; ++i) env.body += "\xdd\xff\xff\xff\xff";
        return crafted_from(omnibus::encode(env, prefix), "malformed_body");
      },
      [&] {  // not UTF-8 in the subject's event token: no listener's subject, so no dead letter
        omnibus::message m = good();
        m.subject = prefix + ".test.tool\xff\xfe";
        return crafted_from(m, nullptr);
      },
  };

  test_env::raw_nats raw{f.where.nats_url};
  struct sent {
    crafted what;
    std::uint64_t seq;
  };
  std::vector<sent> garbage;
  long published = 0;
  auto publish_garbage = [&](const crafted& c) {
    const std::string ack = raw.publish(c.subject, c.block, c.body);
    INFO("PubAck: " << ack);
    const auto at = ack.find("\"seq\":");
    REQUIRE(at != std::string::npos);
    REQUIRE(ack.find("duplicate") == std::string::npos);
    REQUIRE(ack.find("\"error\"") == std::string::npos);
    garbage.push_back({c, std::stoull(ack.substr(at + 6))});
    ++published;
  };
  auto handled_by_both = [&](long n) {
    return f.scalar("SELECT count(DISTINCT worker = 'bystander') FROM " + f.table("handled") +
                    " WHERE n = " + std::to_string(n)) == 2;
  };

  // Every kind once, each followed by a good event that both listeners, the ordered one
  // included, must handle within seconds: no kind of garbage stalls a listener.
  long n = 0;
  for (const auto& kind : kinds) {
    publish_garbage(kind());
    f.commit_direct(n, 1);
    ++published;
    INFO("the good event after garbage of reason " << (garbage.back().what.reason ? garbage.back().what.reason : "none"));
    CHECK(test_env::eventually([&] { return handled_by_both(n); }, 4s));
    ++n;
  }
  // Then the seeded mix.
  const long goods = pick(2000L, 20000L);
  const long garbage_every = 25;
  for (; n < goods; n += garbage_every) {
    f.commit_direct(n, garbage_every);
    published += garbage_every;
    publish_garbage(kinds[random() % kinds.size()]());
  }

  long expected_dead = 0;
  std::map<std::string, long> expected;
  for (const auto& g : garbage) {
    if (g.what.reason != nullptr) {
      expected[g.what.reason] += 2;  // one dead letter per listener
      expected_dead += 2;
    }
  }
  // Every dead letter first, so that the line printed below counts them all.
  CHECK(test_env::eventually([&] { return f.count_up(true).dead == expected_dead; }, 120s));
  const tally t = f.settle_and_report("garbage", seed, true, 120s);
  std::map<std::string, long> reasons;
  {
    pqxx::nontransaction q{f.db};
    for (const auto& row : q.exec("SELECT reason, count(*) FROM " + f.table("bus_dead_letters") + " GROUP BY reason")) {
      reasons[row[0].as<std::string>()] = row[1].as<long>();
    }
    // Each dead letter keeps the producer's bytes exactly.
    for (const auto& g : garbage) {
      if (g.what.reason == nullptr) continue;
      INFO("garbage at stream sequence " << g.seq << ", reason " << g.what.reason);
      const auto rows = q.exec_params("SELECT reason, body, coalesce(raw_headers, ''::bytea), "
                                      "position($2::bytea IN headers) > 0 FROM " + f.table("bus_dead_letters") +
                                      " WHERE stream_sequence = $1",
                                      static_cast<std::int64_t>(g.seq), pqxx::binarystring(g.what.needle));
      CHECK(rows.size() == 2);
      for (const auto& row : rows) {
        CHECK(row[0].as<std::string>() == g.what.reason);
        CHECK(pqxx::binarystring(row[1]).str() == g.what.body);
        if (std::string_view(g.what.reason) == "malformed_headers") CHECK(pqxx::binarystring(row[2]).str() == g.what.block);
        if (!g.what.needle.empty()) CHECK(row[3].as<bool>());
      }
    }
  }
  CHECK(reasons == expected);
  check_line(t, expected_dead);
  // Termed, not pending: nothing comes back after AckWait. And nothing was lost from the stream.
  for (const char* listener : {"recorder", "bystander"}) {
    CHECK(test_env::eventually([&] { return f.js.info(f.opts.stream, "g_" + std::string(listener))->ack_pending == 0; }, 10s));
  }
  CHECK(f.js.state(f.opts.stream)->messages == static_cast<std::uint64_t>(published));
  check_running(workers);  // no garbage crashed it
  stop_all(workers);
}

TEST_CASE("stream nearly full, listener behind: publishers stop at hold_above, the server drops nothing, purging "
          "handled events makes room, no event vanishes",
          "[fault][stream_full]") {
  const unsigned seed = chaos_seed();
  INFO(replay(seed));
  std::mt19937 random{seed};
  test_env::servers small = test_env::servers::shared();
  small.stream_max_bytes = 16 * 1024;
  chaos_fixture f{small};
  f.provision_listeners(false, 5s);
  std::vector<std::unique_ptr<test_env::child_process>> workers;
  // A listener that does not keep up: each event takes it 20-60 ms (four at a time).
  const std::string delay = std::to_string(std::uniform_int_distribution<int>{20, 60}(random));
  workers.push_back(f.worker("w0", {"OMNIBUS_TEST_STREAM_CHECK_MS=200", "OMNIBUS_TEST_DELAY_MS=" + delay}));

  // Direct publishers, as fast as they go: refused before the server's limit with a
  // publish_error that names the stream and its fill. Nothing was stored: safe to retry.
  long direct = 0;
  std::string refusal;
  for (; direct < 10'000; ++direct) {
    omnibus::context ctx;
    try {
      f.b.publish(ctx, tool_event{direct});
    } catch (const omnibus::publish_error& e) {
      CHECK(e.result() == omnibus::publish_error::outcome::not_sent);
      refusal = e.what();
      break;
    }
    pqxx::work tx{f.db};
    tx.exec_params0("INSERT INTO " + f.table("committed") + " (n) VALUES ($1)", direct);
    tx.commit();
  }
  INFO("the refusal: " << refusal);
  REQUIRE_THAT(refusal, Catch::Contains("stream " + f.opts.stream.name + " is nearly full: ") &&
                            Catch::Contains("publishers stop at 90%"));
  const auto held = f.js.state(f.opts.stream);
  REQUIRE(held);
  INFO("the stream: " << held->messages << " events, " << held->bytes << " of " << held->max_bytes << " bytes");
  CHECK(static_cast<double>(held->bytes) <= 0.9 * static_cast<double>(held->max_bytes));
  CHECK(held->first_sequence == 1);  // the server dropped nothing from the front (nats-server#4771)
  CHECK(f.missing(false) > 0);       // the listener is behind

  // The outbox: 20 events committed now wait in the outbox; the relay holds them without
  // sending (no refusal from the server, no failed batch).
  {
    pqxx::work tx{f.db};
    omnibus::context ctx{tx};
    for (long i = 0; i < 20; ++i) {
      f.b.publish(ctx, tool_event{100'000 + i});
      tx.exec_params0("INSERT INTO " + f.table("committed") + " (n) VALUES ($1)", 100'000 + i);
    }
    tx.commit();
  }
  std::ostringstream relay_log;
  omnibus::relay_options ro;
  ro.database_url = f.where.database_url;
  ro.schema = f.opts.schema;
  ro.stream = f.opts.stream;
  ro.retry_backoff = 100ms;
  ro.sweep_interval = 100ms;
  ro.publish_timeout = 2s;
  omnibus::relay relay{f.js, ro,
                   std::make_shared<spdlog::logger>("relay", std::make_shared<spdlog::sinks::ostream_sink_mt>(relay_log))};
  relay.start();
  const bool holding = test_env::eventually([&] { return relay.stats().holding.load(); }, 30s);
  relay_log.flush();
  INFO("relay log:\n" << relay_log.str());
  REQUIRE(holding);
  CHECK(f.outbox_rows() > 0);  // what fit below the line went; the rest waits
  CHECK(relay.stats().failures.load() == 0);
  const auto after_relay = f.js.state(f.opts.stream);
  CHECK(static_cast<double>(after_relay->bytes) <= 0.9 * static_cast<double>(after_relay->max_bytes));
  CHECK(after_relay->first_sequence == 1);
  CHECK_THAT(relay_log.str(), Catch::Contains("holding outbox rows back: stream " + f.opts.stream.name + " is nearly full"));
  REQUIRE(test_env::eventually([&] { return workers[0]->output().find("% full") != std::string::npos; }, 10s));
  CHECK_THAT(workers[0]->output(), Catch::Contains("publishers stop at 90%"));

  // An operator purges what every consumer handled (`stream purge --handled`), again as the
  // listener works through the rest; the relay sends every row once room comes back.
  std::uint64_t purges = 0;
  const auto purge_handled = [&] {
    const std::uint64_t below = omnibus::handled_by_all(f.js, f.opts.stream);
    if (below > f.js.state(f.opts.stream)->first_sequence) {
      f.js.purge_before(f.opts.stream, below);
      ++purges;
    }
  };
  REQUIRE(test_env::eventually([&] {
    purge_handled();
    return f.outbox_rows() == 0;
  }, 120s));
  const tally t = f.settle_and_report("stream_full", seed, false, 120s, purge_handled);
  relay.stop();
  check_line(t);
  INFO("purges: " << purges);
  CHECK(purges > 0);
  // No event left the stream unhandled, as the workers' loss check sees it too.
  CHECK(omnibus::list_lost_events(f.db, f.opts.schema, false).empty());
  CHECK(workers[0]->output().find("left stream") == std::string::npos);
  stop_all(workers);
}

TEST_CASE("a hung handler is bounded by its deadline and retried; another listener is unaffected",
          "[fault][hung_handler]") {
  const unsigned seed = chaos_seed();
  INFO(replay(seed));
  chaos_fixture f;
  f.provision_listeners(true, 30s);
  const long events = pick(3000L, 30000L);
  std::mt19937 random{seed};
  std::set<long> hang;  // their first attempt never returns
  while (static_cast<int>(hang.size()) < pick(6, 24)) hang.insert(static_cast<long>(random() % static_cast<unsigned long>(events)));
  std::string hang_list;
  for (long n : hang) hang_list += (hang_list.empty() ? "" : ",") + std::to_string(n);
  const std::vector<std::string> env{"OMNIBUS_TEST_BYSTANDER=1", "OMNIBUS_TEST_DEADLINE_MS=500",
                                     "OMNIBUS_TEST_HANG_N=" + hang_list};
  std::vector<std::unique_ptr<test_env::child_process>> workers;
  workers.push_back(f.worker("w0", env));
  workers.push_back(f.worker("w1", env));
  f.commit_direct(0, events);
  int restarts = 0;
  int next_tag = 2;
  // The supervisor: a worker whose every slot of a listener is stuck exits 3; start another.
  auto supervise = [&] {
    for (auto& w : workers) {
      const int code = w->wait(0ms);
      if (code == -1) continue;
      REQUIRE(code == 3);
      ++restarts;
      w = f.worker("w" + std::to_string(next_tag++), env);
    }
  };
  const tally t = f.settle_and_report("hung_handler", seed, true, 180s, supervise);
  INFO(restarts << " worker restart(s) after every slot was stuck");
  check_line(t);
  // The hung events were handled by a later attempt, after their deadline.
  CHECK(f.scalar("SELECT count(DISTINCT n) FROM " + f.table("handled") + " WHERE worker <> 'bystander' AND n IN (" +
                 hang_list + ")") == static_cast<long>(hang.size()));
  stop_all(workers, true);  // hung handlers do not hold up a graceful stop
}

namespace {

// The node number of a cluster server name ("n2" -> 2); 0 when it is none of them.
int node_number(const std::string& server_name) {
  return server_name.size() == 2 && server_name[0] == 'n' && server_name[1] >= '1' && server_name[1] <= '3'
             ? server_name[1] - '0'
             : 0;
}

}  // namespace

TEST_CASE("a three-node cluster with an R3 stream: its leader, a follower and a worker's node killed mid-run; "
          "nothing lost",
          "[fault][cluster]") {
  const unsigned seed = chaos_seed();
  INFO(replay(seed));
  std::mt19937 random{seed};
  test_env::private_cluster cluster;
  test_env::servers where{cluster.urls(), test_env::database_url(), true};
  where.stream_replicas = 3;
  chaos_fixture f{where};
  f.provision_listeners(false, 5s);  // the recorder, an inbox listener: effects are counted
  std::vector<std::unique_ptr<test_env::child_process>> workers;
  workers.push_back(f.worker("w0", {"OMNIBUS_TEST_RELAY=1"}));
  workers.push_back(f.worker("w1", {"OMNIBUS_TEST_RELAY=1"}));
  const long per_publisher = pick(25'000L, 100'000L);  // 50,000 events in all: half direct, half through the outbox

  using steady = std::chrono::steady_clock;
  std::atomic<long> direct_errors{0};
  std::atomic<long> direct_done{0};
  std::atomic<long> outbox_done{0};
  std::atomic<long> longest_publish_stall_ms{0};
  std::mutex odd_mutex;
  std::vector<std::string> odd_errors;  // errors a publisher is not documented to get
  std::jthread direct([&] {  // direct publishes in batches of 50: acked, or a documented failure
    pqxx::connection db{f.where.database_url};
    auto last_ack = steady::now();
    for (long first = 0; first < per_publisher; first += 50) {
      std::vector<tool_event> batch;
      for (long n = first; n < std::min(first + 50, per_publisher); ++n) batch.push_back({n});
      omnibus::context ctx;
      try {
        const omnibus::batch_report r = f.b.publish_batch(ctx, std::span<const tool_event>(batch));
        pqxx::work tx{db};
        for (std::size_t i = 0; i < batch.size(); ++i) {
          if (r.results[i].ack) {
            tx.exec_params0("INSERT INTO " + f.table("committed") + " (n) VALUES ($1)", batch[i].n);
          } else {
            ++direct_errors;  // not_sent or unknown: the caller may retry; not counted as committed
          }
        }
        tx.commit();
        if (r.ok()) {
          const auto now = steady::now();
          const long gap = std::chrono::duration_cast<std::chrono::milliseconds>(now - last_ack).count();
          if (gap > longest_publish_stall_ms) longest_publish_stall_ms = gap;
          last_ack = now;
        }
      } catch (const std::exception& e) {
        std::lock_guard lock(odd_mutex);
        odd_errors.emplace_back(e.what());
      }
      direct_done += static_cast<long>(batch.size());
    }
  });
  std::jthread outbox([&] { f.commit_through_outbox(per_publisher, outbox_done); });

  // The stream's leader now, as a node number; 0 while there is none (an election).
  const auto leader = [&] {
    try {
      const auto st = f.js.state(f.opts.stream);
      return st ? node_number(st->leader) : 0;
    } catch (const std::exception&) {
      return 0;
    }
  };
  // The node worker w0 is connected to (it says so when it starts).
  const auto worker_node = [&] {
    const std::string out = workers[0]->output();
    const auto at = out.rfind("worker_tool: connected to ");
    return at == std::string::npos ? 0 : cluster.node_of(out.substr(at, out.find('\n', at) - at));
  };
  // Killed, the stream out of reach until the others take over; then back on its store.
  const auto strike = [&](int node, const char* what) {
    REQUIRE(node >= 1);
    const long handled_before = f.distinct_handled();
    std::printf("cluster: killing node %d (%s)\n", node, what);
    cluster.kill(node);
    // The rest goes on: a leader among the others, and events handled again.
    REQUIRE(test_env::eventually([&] { const int l = leader(); return l != 0 && l != node; }, 60s));
    REQUIRE(test_env::eventually([&] { return f.distinct_handled() > handled_before; }, 60s));
    cluster.start(node);
    // Caught up before the next strike: two nodes down at once would be no quorum.
    REQUIRE(test_env::eventually([&] {
      try {
        const auto st = f.js.state(f.opts.stream);
        return st && st->current == 3;
      } catch (const std::exception&) {
        return false;
      }
    }, 120s));
  };
  const std::vector<long> at = strike_points(random, 3, per_publisher / 5, per_publisher);
  // Until `target` events are handled; fails only when handling stalls (nothing new for a
  // minute): a slow machine (a sanitized build, two cores) takes longer, a stuck bus fails.
  const auto handled_reaches = [&](long target) {
    long seen = -2;
    auto progress_at = steady::now();
    (void)test_env::eventually([&] {
      const long now = f.distinct_handled();
      if (now > seen) {
        seen = now;
        progress_at = steady::now();
      }
      return now >= target || steady::now() - progress_at > 60s;
    }, 900s);
    UNSCOPED_INFO("handled " << seen << ", waiting for " << target);
    return seen >= target;
  };
  REQUIRE(handled_reaches(at[0]));
  {
    int l = 0;
    REQUIRE(test_env::eventually([&] { return (l = leader()) != 0; }, 60s));
    strike(l, "the stream's leader");
  }
  REQUIRE(handled_reaches(at[1]));
  {
    int l = 0;
    REQUIRE(test_env::eventually([&] { return (l = leader()) != 0; }, 60s));
    const int follower = 1 + static_cast<int>((static_cast<unsigned>(l) + random() % 2) % 3);  // any node but l
    strike(follower, "a follower");
  }
  REQUIRE(handled_reaches(at[2]));
  {
    int w = 0;
    REQUIRE(test_env::eventually([&] { return (w = worker_node()) != 0; }, 30s));
    strike(w, "the node worker w0 is connected to");
  }
  direct.join();
  outbox.join();

  const tally t = f.settle_and_report("cluster", seed, false, 300s);
  const long worker_stall_ms = f.scalar("SELECT coalesce((extract(epoch FROM max(gap)) * 1000)::bigint, 0) FROM (SELECT at - lag(at) "
                                        "OVER (ORDER BY at) AS gap FROM " + f.table("handled") + ") g");
  std::printf("cluster: longest stall: publisher %ld ms, worker %ld ms; %ld direct publish(es) failed with a "
              "documented publish_error\n",
              longest_publish_stall_ms.load(), worker_stall_ms, direct_errors.load());
  std::fflush(stdout);
  {
    std::lock_guard lock(odd_mutex);
    for (auto& e : odd_errors) UNSCOPED_INFO("undocumented error: " << e);  // shown with the check below
    CHECK(odd_errors.empty());
  }
  CHECK(outbox_done == per_publisher / 5 * 5);
  check_line(t);
  CHECK(test_env::eventually([&] { return f.outbox_rows() == 0; }, 10s));  // deleted after the stream's ack
  check_running(workers);  // the workers reconnected, never exited
  stop_all(workers);
}

TEST_CASE("scheduler kills: kill -9 workers while their schedulers move due events; each fires once",
          "[fault][scheduler_kills]") {
  const unsigned seed = chaos_seed();
  INFO(replay(seed));
  const long events = pick(5'000L, 50'000L);
  const int kills = pick(6, 20);
  chaos_fixture f;
  f.provision_listeners(false, 2s);
  // Due over a few seconds from now, each recorded as committed in the same transaction.
  {
    pqxx::work tx{f.db};
    omnibus::context ctx{tx};
    const auto t0 = std::chrono::system_clock::now() + 2s;
    const auto spread = pick(6000ms, 30000ms);
    for (long i = 0; i < events; ++i) (void)f.b.publish_at(ctx, t0 + spread * i / events, tool_event{i});
    tx.exec_params0("INSERT INTO " + f.table("committed") + " SELECT generate_series(0, $1 - 1)", events);
    tx.commit();
  }
  std::mt19937 random{seed};
  // Every worker also fires a per-second recurring schedule ("tick", missed policy all).
  // Batches of 100: 50 or more transactions move the rows, so the kills below land among them.
  const std::vector<std::string> env{"OMNIBUS_TEST_ACK_WAIT_MS=2000", "OMNIBUS_TEST_RELAY=1", "OMNIBUS_TEST_SCHEDULER=1",
                                     "OMNIBUS_TEST_CRON=* * * * * *", "OMNIBUS_TEST_SCHEDULER_BATCH=100"};
  std::vector<std::unique_ptr<test_env::child_process>> workers;
  // One dies inside a transaction that moved due rows (deleted, in the outbox, not committed),
  // then another inside one that fired an occurrence. One at a time: the first has every due
  // row to itself, so it reaches its 2nd–11th move however late it started (two started
  // together, a slow start left one fewer moves than its failpoint waited for: CI, seed
  // 399560189).
  std::vector<std::string> doomed = env;
  doomed.push_back("OMNIBUS_FAILPOINT=scheduler_before_commit@" + std::to_string(2 + random() % 10));
  std::vector<std::string> doomed_tick = env;
  doomed_tick.push_back("OMNIBUS_FAILPOINT=scheduler_recurring_before_commit@" + std::to_string(1 + random() % 3));
  workers.push_back(f.worker("w0", doomed));
  REQUIRE(workers[0]->wait(60s) == 86);
  workers.push_back(f.worker("w1", doomed_tick));
  REQUIRE(workers[1]->wait(60s) == 86);
  workers[0] = f.worker("w2", env);
  workers[1] = f.worker("w3", env);
  const int killed = strike_workers(f, workers, random, strike_points(random, kills, events / 20, events * 9 / 10), env, 4);
  const tally t = f.settle_and_report("scheduler_kills", seed, false, pick(180s, 900s));
  // Ticks for a while yet, so that the check below spans several seconds however fast the
  // events settled (the tick window was once only 4 s long on a quick run).
  const std::string ticks = " FROM " + f.table("handled") + " WHERE n >= 1000000000";
  CHECK(test_env::eventually([&] { return f.scalar("SELECT coalesce(max(n) - min(n), 0)" + ticks) >= 8; }, 60s));
  stop_all(workers);
  CHECK(killed == kills);
  CHECK(t.events == events);
  CHECK(f.scalar("SELECT count(*) FROM " + f.table("bus_scheduled")) == 0);
  check_line(t);  // duplicate_effects counts a tick fired twice too (two events, one n)
  // Every second from the first tick on fired, through the kills (the last few may still have
  // been in flight when the workers stopped).
  const long first = f.scalar("SELECT min(n)" + ticks), last = f.scalar("SELECT max(n)" + ticks) - 3;
  CHECK(last > first);
  CHECK(f.scalar("SELECT count(DISTINCT n)" + ticks + " AND n <= " + std::to_string(last)) == last - first + 1);
  std::printf("chaos: scheduler_kills ticks=%ld (every second from the first, once)\n", last - first + 1);
}

namespace {

// The per-key scenarios' world: worker_tool's "keyed" listener (per key, inbox) provisioned, and
// <schema>.keyed_handled, where each handler call records its key, sequence and instants.
void provision_keyed(chaos_fixture& f) {
  pqxx::work tx{f.db};
  tx.exec0("CREATE TABLE " + f.table("keyed_handled") +
           " (key text NOT NULL, seq bigint NOT NULL, worker text NOT NULL, started timestamptz NOT NULL, "
           "ended timestamptz NOT NULL)");
  tx.commit();
  omnibus::listener_options ko;  // as worker_tool registers it
  ko.order = omnibus::ordering::per_key;
  ko.inbox = true;
  ko.ack_wait = 2s;
  ko.concurrency = 8;
  f.b.add_async_listener<keyed_event>("keyed", [](omnibus::context&, const keyed_event&) {}, ko);
  f.b.provision();
}

// Each of `keys` keys' events numbered 1..per_key, the keys interleaved at random (seeded).
void publish_keyed(chaos_fixture& f, std::mt19937& random, long keys, long per_key) {
  std::vector<long> next(static_cast<std::size_t>(keys), 1);
  std::vector<keyed_event> batch;
  for (long i = 0; i < keys * per_key; ++i) {
    long k = static_cast<long>(random() % static_cast<unsigned>(keys));
    while (next[static_cast<std::size_t>(k)] > per_key) k = (k + 1) % keys;
    batch.push_back({"key-" + std::to_string(k), next[static_cast<std::size_t>(k)]++});
    if (batch.size() == 1000 || i + 1 == keys * per_key) {
      omnibus::context ctx;
      REQUIRE(f.b.publish_batch(ctx, std::span<const keyed_event>(batch)).ok());
      batch.clear();
    }
  }
}

const std::vector<std::string> keyed_env{"OMNIBUS_TEST_KEYED=1", "OMNIBUS_TEST_FLAKY_PERCENT=5",
                                         "OMNIBUS_TEST_ACK_WAIT_MS=2000", "OMNIBUS_TEST_DEADLINE_MS=1000",
                                         "OMNIBUS_TEST_LEASE_MS=4000"};

long keyed_handled(chaos_fixture& f) { return f.scalar("SELECT count(*) FROM " + f.table("keyed_handled")); }

// Waits (bounded) for every event, prints the scenario's line and checks it: per key exactly
// 1..per_key, once each (the inbox), by the handlers' start instants in order and never one
// started before the previous ended; no dead letter, no key parked.
void settle_keyed(chaos_fixture& f, const char* scenario, unsigned seed, long keys, long per_key, int killed,
                  std::chrono::milliseconds within) {
  const long events = keys * per_key;
  (void)test_env::eventually([&] { return keyed_handled(f) >= events; }, within);
  const long distinct = f.scalar("SELECT count(*) FROM (SELECT DISTINCT key, seq FROM " + f.table("keyed_handled") + ") d");
  const long rows = keyed_handled(f);
  const long bad_keys = f.scalar("SELECT count(*) FROM (SELECT key FROM " + f.table("keyed_handled") +
                                 " GROUP BY key HAVING count(DISTINCT seq) <> " + std::to_string(per_key) +
                                 " OR min(seq) <> 1 OR max(seq) <> " + std::to_string(per_key) + ") b");
  const long out_of_order = f.scalar("SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY key ORDER BY started) "
                                     "AS prev FROM " + f.table("keyed_handled") + ") x WHERE prev IS NOT NULL AND seq <> prev + 1");
  const long overlapping = f.scalar("SELECT count(*) FROM (SELECT started, lag(ended) OVER (PARTITION BY key ORDER BY "
                                    "started) AS prev_end FROM " + f.table("keyed_handled") + ") x WHERE started < prev_end");
  const long dead = f.scalar("SELECT count(*) FROM " + f.table("bus_dead_letters"));
  const long parked = f.scalar("SELECT count(*) FROM " + f.table("bus_parked_keys"));
  std::printf("chaos: %s seed=%u events=%ld handled=%ld lost=%ld duplicate_effects=%ld dead=%ld killed=%d "
              "out_of_order=%ld overlapping=%ld parked=%ld\n", scenario, seed, events, distinct, events - distinct,
              rows - distinct, dead, killed, out_of_order, overlapping, parked);
  std::fflush(stdout);
  CHECK(distinct == events);
  CHECK(rows == distinct);
  CHECK(bad_keys == 0);
  CHECK(out_of_order == 0);
  CHECK(overlapping == 0);
  CHECK(dead == 0);
  CHECK(parked == 0);
}

}  // namespace

TEST_CASE("per-key order: 4 workers, 200 keys, kill -9 at random, 5% flaky; each key exactly 1..n, in order, never two "
          "at once", "[fault][per_key_order]") {
  const unsigned seed = chaos_seed();
  INFO(replay(seed));
  const long keys = 200;
  const long per_key = pick(100L, 500L);  // 20,000 events; 100,000 in the long run
  const long events = keys * per_key;
  const int kills = pick(6, 16);
  chaos_fixture f;
  provision_keyed(f);
  std::mt19937 random{seed};
  publish_keyed(f, random, keys, per_key);
  std::vector<std::unique_ptr<test_env::child_process>> workers;
  for (int i = 0; i < 4; ++i) workers.push_back(f.worker_process_ptr("w" + std::to_string(i), keyed_env));
  // What the workers said, for a run that stalls.
  const auto outputs = [&] {
    std::string all;
    for (auto& w : workers) all += "--- worker:\n" + output_end(*w, 4000);
    return all;
  };
  int killed = 0;
  for (long at : strike_points(random, kills, events / 20, events * 8 / 10)) {
    const bool reached = test_env::eventually([&] { return keyed_handled(f) >= at; }, pick(300s, 900s));
    if (!reached) std::printf("stalled at %ld of %ld handled\n%s\n", keyed_handled(f), at, outputs().c_str());
    REQUIRE(reached);
    auto& victim = workers[random() % workers.size()];
    victim->signal(SIGKILL);
    REQUIRE(victim->wait(10s) == 128 + SIGKILL);
    victim = f.worker_process_ptr("w" + std::to_string(4 + killed), keyed_env);
    ++killed;
  }
  settle_keyed(f, "per_key_order", seed, keys, per_key, killed, pick(300s, 1200s));
  stop_all(workers);
  CHECK(killed == kills);
}

TEST_CASE("per-key order through a PostgreSQL outage longer than the lease: the workers give their partitions up, "
          "claim them again, and each key stays in order", "[fault][per_key_outage]") {
  const unsigned seed = chaos_seed();
  INFO(replay(seed));
  const long keys = 100;
  const long per_key = pick(60L, 300L);
  test_env::private_postgres pg;
  chaos_fixture f{test_env::servers{test_env::nats_url(), pg.url()}};
  provision_keyed(f);
  std::mt19937 random{seed};
  publish_keyed(f, random, keys, per_key);
  std::vector<std::unique_ptr<test_env::child_process>> workers;
  for (int i = 0; i < 2; ++i) workers.push_back(f.worker_process_ptr("w" + std::to_string(i), keyed_env));
  const long at = keys * per_key / 4 + static_cast<long>(random() % static_cast<unsigned>(keys * per_key / 4));
  REQUIRE(test_env::eventually([&] { return keyed_handled(f) >= at; }, pick(120s, 600s)));
  pg.down();
  // Down until every worker that held partitions has seen its lease run out and given them up.
  const bool lost = test_env::eventually([&] {
    for (auto& w : workers) {
      const std::string o = w->output();
      if (o.find("claimed (epoch") != std::string::npos && o.find("is no longer held by this worker") == std::string::npos) {
        return false;
      }
    }
    return true;
  }, 60s);
  pg.up();
  if (!lost) {  // which worker kept its partitions: alive or not, and the end of what it said
    for (std::size_t i = 0; i < workers.size(); ++i) {
      UNSCOPED_INFO("w" << i << " (wait: " << workers[i]->wait(0ms) << "), the last of its output:\n"
                        << output_end(*workers[i], 6000));
    }
  }
  REQUIRE(lost);
  settle_keyed(f, "per_key_outage", seed, keys, per_key, 0, pick(180s, 600s));
  check_running(workers);
  stop_all(workers);
}
