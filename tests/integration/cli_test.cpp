// The worker binary as an operator uses it, on the example shop: retrying a dead letter runs
// only its listener; consumers prune removes what no listener owns; bad configuration gets a
// clear error; and the demo runs end to end.

#include <chrono>
#include <csignal>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <pqxx/pqxx>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include "omnibus/codec.hpp"
#include "omnibus/dead_letters.hpp"
#include "omnibus/envelope.hpp"
#include "omnibus/redrive.hpp"
#include "omnibus/migrations.hpp"
#include "omnibus/relay.hpp"
#include "omnibus/schedules.hpp"
#include "omnibus/worker.hpp"
#include "omnibus/jetstream.hpp"
#include "omnibus/listener_control.hpp"
#include "omnibus/nats_connection.hpp"
#include "models/order_placed.hpp"
#include "models/user_registered.hpp"
#include "services/shop.hpp"
#include "support/child_process.hpp"
#include "support/private_servers.hpp"
#include "support/shop_fixture.hpp"
#include "support/stream_reader.hpp"
#include "support/schema.hpp"
#include "support/test_env.hpp"
#include "support/wait.hpp"

using namespace std::chrono_literals;
using test_env::shop_fixture;

TEST_CASE_METHOD(shop_fixture, "retrying a dead letter from the CLI re-runs only its listener", "[integration][cli]") {
  omnibus::event_bus b{js, opts};
  auto shop = services::make_shop(b, shop_opts);
  auto log = std::make_shared<spdlog::logger>("t", std::make_shared<spdlog::sinks::null_sink_mt>());
  omnibus::relay_options ro;
  ro.database_url = test_env::database_url();
  ro.schema = opts.schema;
  ro.stream = opts.stream;
  omnibus::relay relay{js, ro, log};
  relay.start();
  omnibus::worker_options wo;
  wo.database_url = test_env::database_url();
  omnibus::worker w{b, wo, log};
  std::jthread runner([&](std::stop_token st) { w.run(st); });
  REQUIRE(test_env::eventually([&] { return js.consumers(opts.stream).size() == b.async_listeners().size(); }, 10s));
  {
    pqxx::work tx{db};
    omnibus::context ctx{tx};
    shop->inventory.restock(ctx, "mug", 10);
    shop->orders.place(ctx, "ada@example.com", "mug", 1, 1200);
    tx.commit();
  }
  const std::string emails = "SELECT count(*) FROM \"" + shop_opts.schema + "\".emails WHERE kind = 'confirmation'";
  const std::string loyalty = "SELECT count(*) FROM \"" + shop_opts.schema + "\".loyalty";
  REQUIRE(test_env::eventually([&] { return omnibus::list_dead_letters(db, opts.schema).size() == 1 && count(emails) == 1; }, 20s));
  // The worker reports its calls per listener and minute (the dashboard's rates): the
  // confirmation handled once; loyalty failed twice (a retry, then the dead letter).
  auto calls = [&](const std::string& listener, bool handled) {
    std::uint64_t n = 0;
    for (const auto& m : omnibus::list_listener_minutes(db, opts.schema)) {
      if (m.listener == listener) n += handled ? m.handled : m.failed;
    }
    return n;
  };
  CHECK(test_env::eventually([&] { return calls("confirmation_email", true) == 1 && calls("loyalty", false) == 2; }, 10s));
  CHECK(calls("loyalty", true) == 0);
  runner.request_stop();
  runner.join();
  const auto dl = omnibus::list_dead_letters(db, opts.schema).front();
  CHECK(dl.listener == "loyalty");

  auto list = cli({"dead-letters", "list", "--listener", "loyalty"});
  REQUIRE(list.wait(20s) == 0);
  CHECK_THAT(list.output(), Catch::Contains("loyalty") && Catch::Contains("1 dead letter(s)"));
  auto show = cli({"dead-letters", "show", std::to_string(dl.id)});
  REQUIRE(show.wait(20s) == 0);
  CHECK_THAT(show.output(), Catch::Contains("Nats-Msg-Id: " + dl.event_id) && Catch::Contains("loyalty backend timed out"));

  auto retry = cli({"--flaky-rate", "0", "dead-letters", "retry", std::to_string(dl.id)});
  REQUIRE(retry.wait(20s) == 0);
  CHECK_THAT(retry.output(), Catch::Contains("ok, removed"));
  CHECK(count(loyalty) == 1);                              // its listener ran
  CHECK(count(emails) == 1);                               // the other listener did not
  CHECK(omnibus::list_dead_letters(db, opts.schema).empty());  // and the dead letter is gone

  auto again = cli({"dead-letters", "retry", std::to_string(dl.id)});
  CHECK(again.wait(20s) == 1);
  CHECK_THAT(again.output(), Catch::Contains("no dead letter"));
}

TEST_CASE_METHOD(shop_fixture, "consumers prune removes what no listener owns, and keeps the rest", "[integration][cli]") {
  auto consumer = [&](const std::string& name, const std::string& group) {
    omnibus::consumer_config c;
    c.name = name;
    c.group = group;
    c.filter_subject = opts.stream.subject_prefix + ".order.placed";
    return c;
  };
  std::vector<omnibus::consumer_config> v{consumer("shop_loyalty", "shop"), consumer("shop_renamed_listener", "shop"),
                                          consumer("billing_invoices", "billing"),
                                          consumer("shop_eu_mailer", "shop_eu"),  // "shop_" by its name, not by its group
                                          consumer("shop_made_by_hand", "")};     // no group: never ours to delete
  js.provision(opts.stream, v);

  auto dry = cli({"consumers", "prune", "--dry-run"});
  REQUIRE(dry.wait(20s) == 0);
  CHECK_THAT(dry.output(), Catch::Contains("would delete shop_renamed_listener") && Catch::Contains("1 consumer(s) to prune"));
  CHECK(js.info(opts.stream, "shop_renamed_listener").has_value());

  auto unconfirmed = cli({"consumers", "prune"});
  REQUIRE(unconfirmed.wait(20s) == 2);
  CHECK_THAT(unconfirmed.output(), Catch::Contains("would delete shop_renamed_listener") && Catch::Contains("add --yes"));
  CHECK(js.info(opts.stream, "shop_renamed_listener").has_value());

  auto prune = cli({"consumers", "prune", "--yes"});
  REQUIRE(prune.wait(20s) == 0);
  CHECK_THAT(prune.output(), Catch::Contains("deleted shop_renamed_listener") && Catch::Contains("1 consumer(s) pruned"));
  CHECK_FALSE(js.info(opts.stream, "shop_renamed_listener").has_value());
  CHECK(js.info(opts.stream, "shop_loyalty").has_value());      // owned by a listener
  CHECK(js.info(opts.stream, "billing_invoices").has_value());  // another group's: never touched
  CHECK(js.info(opts.stream, "shop_eu_mailer").has_value());
  CHECK(js.info(opts.stream, "shop_made_by_hand").has_value());
  CHECK(js.info(opts.stream, "shop_eu_mailer")->group == "shop_eu");

  auto list = cli({"consumers", "list"});
  REQUIRE(list.wait(20s) == 0);
  CHECK_THAT(list.output(), Catch::Contains("shop_loyalty") && Catch::Contains("billing_invoices"));
}

TEST_CASE_METHOD(shop_fixture, "stream info says how full the stream is; purge needs --yes", "[integration][cli]") {
  omnibus::event_bus b{js, opts};
  b.provision();
  omnibus::context ctx;
  for (int i = 0; i < 3; ++i) (void)b.publish(ctx, models::user_registered{i, "u@example.com"});

  auto info = cli({"stream", "info"});
  REQUIRE(info.wait(20s) == 0);
  CHECK_THAT(info.output(), Catch::Contains("stream " + opts.stream.name + ": 3 event(s)") && Catch::Contains("% full"));

  auto refused = cli({"stream", "purge"});
  REQUIRE(refused.wait(20s) == 2);
  CHECK_THAT(refused.output(), Catch::Contains("add --yes"));
  CHECK(js.state(opts.stream)->messages == 3);

  auto purge = cli({"stream", "purge", "--yes"});
  REQUIRE(purge.wait(20s) == 0);
  CHECK_THAT(purge.output(), Catch::Contains("3 event(s) removed"));
  CHECK(js.state(opts.stream)->messages == 0);
}

TEST_CASE_METHOD(shop_fixture, "a producer's escape sequences in a dead letter reach the terminal escaped",
                 "[integration][cli]") {
  omnibus::dead_letter dl;
  dl.listener = "mailer";
  dl.event_id = "\x1b]0;owned\x07";
  dl.event_name = "user.registered";
  dl.msg.subject = opts.stream.subject_prefix + ".user.registered";
  dl.msg.headers = {{"Omnibus-Event", "user.registered"}, {"X-Evil", "\x1b[2J\x1b[31mred\r"}};
  dl.raw_header_block = "NATS/1.0\r\nNoColon\x1b[5m\r\n\r\n";
  dl.msg.body = "\x1b[0m";
  dl.reason = "bad_header";
  dl.error = "header X-Evil: \x1b[31mred \xff";
  dl.attempts = 1;
  omnibus::write_dead_letter(db, opts.schema, dl);
  const long id = count("SELECT max(id) FROM \"" + opts.schema + "\".bus_dead_letters");
  for (std::vector<std::string> args : {std::vector<std::string>{"dead-letters", "list"},
                                        std::vector<std::string>{"dead-letters", "show", std::to_string(id)}}) {
    auto p = cli(args);
    REQUIRE(p.wait(20s) == 0);
    INFO(p.output());
    CHECK(p.output().find('\x1b') == std::string::npos);  // no ESC byte at all
    CHECK(p.output().find('\x07') == std::string::npos);
    CHECK_THAT(p.output(), Catch::Contains("\\e[31mred"));
    if (args[1] == "show") {
      CHECK_THAT(p.output(), Catch::Contains("\\e]0;owned\\x07") && Catch::Contains("\\e[2J") &&
                                 Catch::Contains("raw header block") && Catch::Contains("NoColon\\e[5m"));
    }
  }
}

TEST_CASE_METHOD(shop_fixture, "retrying every dead letter without a filter needs --yes", "[integration][cli]") {
  auto refused = cli({"--flaky-rate", "0", "dead-letters", "retry", "--all"});
  CHECK(refused.wait(20s) == 2);
  CHECK_THAT(refused.output(), Catch::Contains("add --yes"));
  auto confirmed = cli({"--flaky-rate", "0", "dead-letters", "retry", "--all", "--yes"});
  CHECK(confirmed.wait(20s) == 0);
  CHECK_THAT(confirmed.output(), Catch::Contains("retry 0 dead letter(s)") && Catch::Contains("done"));
  auto narrowed = cli({"--flaky-rate", "0", "dead-letters", "retry", "--all", "--listener", "loyalty"});
  CHECK(narrowed.wait(20s) == 0);
}

TEST_CASE_METHOD(shop_fixture, "a bulk retry by filter: a dry run first, then a redrive over a snapshot at its rate, audited",
                 "[integration][cli][redrive]") {
  dead_letters("loyalty", 1, 30);
  dead_letters("loyalty", 100, 3, "card declined");  // the filter leaves these
  dead_letters("emails", 200, 2);                      // and these

  auto dry = cli({"dead-letters", "retry", "--listener", "loyalty", "--error-like", "%timed out%", "--rate", "20", "--dry-run"});
  REQUIRE(dry.wait(20s) == 0);
  CHECK_THAT(dry.output(), Catch::Contains("this would retry 30 dead letter(s)") &&
                               Catch::Contains("listener=loyalty error~%timed out%"));
  CHECK(omnibus::list_redrives(db, opts.schema).empty());  // a dry run changes nothing

  const auto started = std::chrono::steady_clock::now();
  auto run = cli({"--flaky-rate", "0", "dead-letters", "retry", "--listener", "loyalty", "--error-like", "%timed out%", "--rate",
                  "20"},
                 {"OMNIBUS_OPERATOR=ada"});
  REQUIRE(test_env::eventually([&] { return !omnibus::list_redrives(db, opts.schema).empty(); }, 20s));
  dead_letters("loyalty", 50, 5);  // after the snapshot: not swept in
  REQUIRE(run.wait(30s) == 0);
  // 30 at 20 per second: the first goes at once, the 30th a second and a half later.
  CHECK(std::chrono::steady_clock::now() - started >= 1400ms);
  CHECK_THAT(run.output(), Catch::Contains("30 ok, 0 failed, 0 gone, 0 interrupted, 0 pending of 30"));
  CHECK(count("SELECT count(*) FROM \"" + shop_opts.schema + "\".loyalty WHERE order_id < 50") == 30);

  const auto remaining = omnibus::list_dead_letters(db, opts.schema, {}, {}, 100);
  CHECK(remaining.size() == 3 + 2 + 5);
  const auto audit = omnibus::list_redrives(db, opts.schema);
  REQUIRE(audit.size() == 1);
  CHECK(audit[0].requested_by == "cli:ada");
  CHECK(audit[0].filter == "listener=loyalty error~%timed out%");
  CHECK(audit[0].state == "done");
  CHECK(audit[0].rate == 20);
  CHECK(audit[0].finished_at.has_value());
}

TEST_CASE_METHOD(shop_fixture, "a redrive killed mid-way carries on where it was, and no dead letter is retried twice",
                 "[integration][cli][redrive]") {
  dead_letters("loyalty", 1, 40);
  auto first = cli({"--flaky-rate", "0", "dead-letters", "retry", "--listener", "loyalty", "--rate", "25"});
  REQUIRE(test_env::eventually([&] { return !omnibus::list_redrives(db, opts.schema).empty(); }, 20s));
  const std::int64_t id = omnibus::list_redrives(db, opts.schema)[0].id;
  REQUIRE(test_env::eventually([&] { return items(id, "ok") >= 10; }, 20s));
  first.signal(SIGKILL);
  REQUIRE(first.wait(10s) == 128 + SIGKILL);
  const long done_before = items(id, "ok");
  const long started_before = items(id, "started");  // the one it was on, if any
  CHECK(started_before <= 1);

  auto second = cli({"--flaky-rate", "0", "dead-letters", "redrives", "run", std::to_string(id)});
  const int code = second.wait(30s);
  // loyalty has no inbox: a dead letter the killed run had started is left alone, not run again.
  const long interrupted = items(id, "interrupted");
  CHECK(code == (interrupted == 0 ? 0 : 1));
  CHECK(interrupted <= started_before);
  CHECK(items(id, "ok") + interrupted == 40);
  CHECK(items(id, "ok") >= done_before);
  const auto left = omnibus::list_dead_letters(db, opts.schema, {}, {}, 100);
  CHECK(static_cast<long>(left.size()) == interrupted);
  for (const auto& dl : left) CHECK(dl.attempts == 2);  // never retried again after the kill
  CHECK(count("SELECT count(*) FROM \"" + shop_opts.schema + "\".loyalty") >= 40 - interrupted);
  CHECK(omnibus::find_redrive(db, opts.schema, id)->state == "done");
}

TEST_CASE_METHOD(shop_fixture, "a crash between taking a dead letter and recording it: never run twice, with or without an inbox",
                 "[integration][cli][redrive]") {
  // The crash comes at the 5th dead letter: after marking it started (before running it), or
  // after running it (before recording how it went).
  const std::string point = GENERATE(as<std::string>{}, "redrive_after_start@5", "redrive_after_run@5");
  const std::string listener = GENERATE(as<std::string>{}, "loyalty", "customer_stats");
  INFO(point << " " << listener);
  dead_letters(listener, 1, 12);
  auto crashed = cli({"--flaky-rate", "0", "dead-letters", "retry", "--listener", listener}, {"OMNIBUS_FAILPOINT=" + point});
  REQUIRE(crashed.wait(30s) == 86);
  const std::int64_t id = omnibus::list_redrives(db, opts.schema)[0].id;
  CHECK(items(id, "started") == 1);
  CHECK(items(id, "ok") == 4);

  auto resumed = cli({"--flaky-rate", "0", "dead-letters", "redrives", "run", std::to_string(id)});
  const int code = resumed.wait(30s);
  INFO(resumed.output());
  const bool ran = point == "redrive_after_run@5";
  const bool again = listener == "customer_stats";  // an inbox listener: safe to run again
  // loyalty: the one taken before it ran is left alone (interrupted), the one that ran is
  // found gone and counted ok. customer_stats: run again under its inbox.
  const long interrupted = !ran && !again ? 1 : 0;
  CHECK(code == (interrupted == 0 ? 0 : 1));
  CHECK(items(id, "interrupted") == interrupted);
  CHECK(items(id, "ok") == 12 - interrupted);
  CHECK(static_cast<long>(omnibus::list_dead_letters(db, opts.schema).size()) == interrupted);
  if (listener == "loyalty") {
    CHECK(count("SELECT count(*) FROM \"" + shop_opts.schema + "\".loyalty") == 12 - interrupted);
  } else {  // every order counted once: the inbox kept a second run from counting it again
    CHECK(count("SELECT count(*) FROM \"" + shop_opts.schema + "\".customer_stats WHERE orders = 1") == 12);
  }
}

TEST_CASE_METHOD(shop_fixture, "a worker killed with SIGKILL mid-redrive: the next worker carries it on, nothing run twice",
                 "[integration][cli][redrive]") {
  dead_letters("loyalty", 1, 30);
  omnibus::redrive_request req;
  req.filter.listener = "loyalty";
  req.rate = 10;
  req.requested_by = "test";
  const std::int64_t id = omnibus::start_redrive(db, opts.schema, req).id;
  auto first = cli({"--flaky-rate", "0", "run", "--no-relay", "--no-scheduler"});
  REQUIRE(test_env::eventually([&] { return items(id, "ok") >= 5; }, 30s));
  first.signal(SIGKILL);
  REQUIRE(first.wait(10s) == 128 + SIGKILL);
  const long done_before = items(id, "ok");

  auto second = cli({"--flaky-rate", "0", "run", "--no-relay", "--no-scheduler"});
  REQUIRE(test_env::eventually([&] { return omnibus::find_redrive(db, opts.schema, id)->state == "done"; }, 30s));
  second.signal(SIGTERM);
  CHECK(second.wait(20s) == 0);
  const long interrupted = items(id, "interrupted");
  CHECK(interrupted <= 1);
  CHECK(items(id, "ok") >= done_before);
  CHECK(items(id, "ok") + interrupted == 30);
  const auto left = omnibus::list_dead_letters(db, opts.schema, {}, {}, 100);
  CHECK(static_cast<long>(left.size()) == interrupted);
  for (const auto& dl : left) CHECK(dl.attempts == 2);
  CHECK(count("SELECT count(*) FROM \"" + shop_opts.schema + "\".loyalty") >= 30 - interrupted);
}

TEST_CASE_METHOD(shop_fixture, "a redrive paused while it runs stops there, and the process that ran it exits",
                 "[integration][cli][redrive]") {
  dead_letters("loyalty", 1, 40);
  auto run = cli({"--flaky-rate", "0", "dead-letters", "retry", "--listener", "loyalty", "--rate", "10"});
  REQUIRE(test_env::eventually([&] { return !omnibus::list_redrives(db, opts.schema).empty(); }, 20s));
  const std::int64_t id = omnibus::list_redrives(db, opts.schema)[0].id;
  REQUIRE(test_env::eventually([&] { return items(id, "ok") >= 2; }, 20s));
  (void)omnibus::set_redrive_state(db, opts.schema, id, "paused", "test:carol");
  REQUIRE(run.wait(10s) == 0);
  CHECK_THAT(run.output(), Catch::Contains("paused (last change by test:carol)"));
  const auto r = *omnibus::find_redrive(db, opts.schema, id);
  CHECK(r.state == "paused");
  CHECK(r.pending > 0);
  CHECK(r.ok + r.pending == 40);
  CHECK(items(id, "started") == 0);
}

TEST_CASE_METHOD(shop_fixture, "a redrive pauses, resumes and cancels; a running worker carries one on",
                 "[integration][cli][redrive]") {
  dead_letters("loyalty", 1, 20);
  auto request = [](omnibus::redrive_action action, double rate) {
    omnibus::redrive_request req;
    req.filter.listener = "loyalty";
    req.action = action;
    req.rate = rate;
    req.requested_by = "test";
    return req;
  };
  auto r = omnibus::start_redrive(db, opts.schema, request(omnibus::redrive_action::discard, 0));
  CHECK(r.total == 20);
  CHECK(r.state == "running");

  r = omnibus::set_redrive_state(db, opts.schema, r.id, "paused", "test:bob");
  CHECK(r.state == "paused");
  CHECK(r.updated_by == "test:bob");
  auto paused = cli({"dead-letters", "redrives", "run", std::to_string(r.id)});
  REQUIRE(paused.wait(20s) == 0);
  CHECK_THAT(paused.output(), Catch::Contains("paused") && Catch::Contains("20 pending of 20"));

  auto resumed = cli({"dead-letters", "redrives", "resume", std::to_string(r.id)});
  REQUIRE(resumed.wait(20s) == 0);
  // A worker picks it up (its redrive runner), without anyone running it by hand.
  auto worker = cli({"run", "--no-relay", "--no-scheduler"});
  REQUIRE(test_env::eventually([&] { return omnibus::find_redrive(db, opts.schema, r.id)->state == "done"; }, 30s));
  worker.signal(SIGTERM);
  CHECK(worker.wait(20s) == 0);
  CHECK(omnibus::find_redrive(db, opts.schema, r.id)->ok == 20);
  CHECK(omnibus::list_dead_letters(db, opts.schema).empty());

  dead_letters("loyalty", 100, 5);
  auto cancelled = omnibus::start_redrive(db, opts.schema, request(omnibus::redrive_action::retry, 1));
  auto cancel = cli({"dead-letters", "redrives", "cancel", std::to_string(cancelled.id)});
  REQUIRE(cancel.wait(20s) == 0);
  CHECK_THAT(cancel.output(), Catch::Contains("cancelled"));
  CHECK_THROWS_WITH(omnibus::set_redrive_state(db, opts.schema, cancelled.id, "running", "test"),
                    Catch::Contains("is cancelled"));
  auto after_cancel = cli({"--flaky-rate", "0", "dead-letters", "redrives", "run", std::to_string(cancelled.id)});
  REQUIRE(after_cancel.wait(20s) == 0);
  CHECK(omnibus::list_dead_letters(db, opts.schema).size() == 5);  // nothing of a cancelled redrive runs
  auto list = cli({"dead-letters", "redrives", "list"});
  REQUIRE(list.wait(20s) == 0);
  CHECK_THAT(list.output(), Catch::Contains("2 redrive(s)"));
}

TEST_CASE_METHOD(shop_fixture, "bulk retries and discards refuse what they cannot do, with a clear error",
                 "[integration][cli][redrive]") {
  struct bad {
    std::vector<std::string> args;
    const char* says;
  };
  for (const bad& b : {bad{{"dead-letters", "retry", "--listener", "loyalty", "--rate", "-1"}, "--rate"},
                       bad{{"dead-letters", "retry", "--listener", "loyalty", "--since", "yesterday"}, "--since"},
                       bad{{"dead-letters", "retry"}, "give an id, a filter"},
                       bad{{"dead-letters", "discard", "--all"}, "add --yes"},
                       bad{{"dead-letters", "retry", "7", "--listener", "loyalty"}, "excludes"},
                       bad{{"dead-letters", "redrives", "pause", "999999"}, "no redrive 999999"}}) {
    auto p = cli(b.args);
    const int code = p.wait(20s);
    INFO(p.output());
    CHECK(code != 0);  // 2 for configuration, 1 for an unknown redrive, CLI11's own for its rules
    CHECK_THAT(p.output(), Catch::Contains(b.says));
  }
  CHECK(omnibus::list_redrives(db, opts.schema).empty());
}

TEST_CASE_METHOD(shop_fixture, "bad configuration gets a clear error and exit code 2", "[integration][cli]") {
  SECTION("a schema name that is not an identifier") {
    auto p = test_env::child_process({test_env::tool_path("OMNIBUS_WORKER_BIN"), "--schema", "bad;name", "dead-letters", "list"});
    CHECK(p.wait(20s) == 2);
    CHECK_THAT(p.output(), Catch::Contains("schema name 'bad;name'"));
  }
  SECTION("a flaky rate out of range") {
    auto p = cli({"--flaky-rate", "2", "run"});
    CHECK(p.wait(20s) == 2);
    CHECK_THAT(p.output(), Catch::Contains("--flaky-rate"));
  }
  SECTION("a hold line outside (0, 1], a message limit of 0, a check interval of 0") {
    auto hold = cli({"--stream-hold-above", "1.5", "run"});
    CHECK(hold.wait(20s) == 2);
    CHECK_THAT(hold.output(), Catch::Contains("--stream-hold-above must be in (0, 1]"));
    auto msgs = cli({"--stream-max-msgs", "0", "run"});
    CHECK(msgs.wait(20s) == 2);
    CHECK_THAT(msgs.output(), Catch::Contains("--stream-max-msgs must be positive"));
    auto every = cli({"run", "--stream-check-every", "0"});
    CHECK(every.wait(20s) == 2);
    CHECK_THAT(every.output(), Catch::Contains("--stream-check-every must be between"));
  }
  SECTION("stream purge needs --yes or --handled, not both") {
    auto neither = cli({"stream", "purge"});
    CHECK(neither.wait(20s) == 2);
    CHECK_THAT(neither.output(), Catch::Contains("--handled to delete only handled events"));
    auto both = cli({"stream", "purge", "--yes", "--handled"});
    CHECK(both.wait(20s) == 2);
  }
  SECTION("a start wait out of range") {
    auto p = cli({"run", "--start-wait", "-1"});
    CHECK(p.wait(20s) == 2);
    CHECK_THAT(p.output(), Catch::Contains("--start-wait must be between"));
  }
  SECTION("an unknown log level") {
    auto p = cli({"--log-level", "loud", "run"});
    CHECK(p.wait(20s) == 2);
    CHECK_THAT(p.output(), Catch::Contains("unknown level 'loud'"));
  }
  SECTION("a database that cannot be reached, without its password in the message") {
    auto p = test_env::child_process({test_env::tool_path("OMNIBUS_WORKER_BIN"), "--database-url",
                                      "postgresql://app:s3cret-pw@127.0.0.1:1/app", "dead-letters", "list"});
    CHECK(p.wait(20s) == 1);
    CHECK_THAT(p.output(), Catch::Contains("cannot connect to PostgreSQL") && !Catch::Contains("s3cret-pw"));
  }
  SECTION("--help on a subcommand") {
    auto p = test_env::child_process({test_env::tool_path("OMNIBUS_WORKER_BIN"), "dead-letters", "retry", "--help"});
    CHECK(p.wait(20s) == 0);
    CHECK_THAT(p.output(), Catch::Contains("--all"));
  }
}

TEST_CASE_METHOD(shop_fixture, "run waits for a PostgreSQL that is down at start, up to --start-wait, then runs or exits 1",
                 "[integration][cli]") {
  test_env::private_postgres pg;
  pg.down();
  SECTION("it comes back within the wait: the worker runs and handles") {
    auto worker = cli({"--database-url", pg.url(), "run", "--start-wait", "120"});
    REQUIRE(test_env::eventually([&] {
      return worker.output().find("PostgreSQL is unreachable") != std::string::npos || worker.wait(0ms) != -1;
    }, 30s));
    INFO(worker.output());
    REQUIRE(worker.wait(0ms) == -1);  // waiting, not gone
    pg.up();
    REQUIRE(test_env::eventually([&] { return worker.output().find("handler slot(s)") != std::string::npos; }, 60s));
    worker.signal(SIGTERM);
    CHECK(worker.wait(30s) == 0);
  }
  SECTION("a stop while it waits: exit 0") {
    auto worker = cli({"--database-url", pg.url(), "run", "--start-wait", "120"});
    REQUIRE(test_env::eventually([&] {
      return worker.output().find("PostgreSQL is unreachable") != std::string::npos || worker.wait(0ms) != -1;
    }, 30s));
    worker.signal(SIGTERM);
    CHECK(worker.wait(30s) == 0);
    CHECK_THAT(worker.output(), Catch::Contains("stopped while waiting for PostgreSQL"));
  }
  SECTION("a server that answers but has no such database: exit 1 at once, no waiting") {
    // The shared server, up: waiting would not mend it.
    const std::string shared = test_env::database_url();
    const std::string missing = shared.substr(0, shared.rfind('/')) + "/no_such_database";
    const auto t0 = std::chrono::steady_clock::now();
    auto worker = cli({"--database-url", missing, "run", "--start-wait", "120"});
    CHECK(worker.wait(60s) == 1);
    CHECK(std::chrono::steady_clock::now() - t0 < 60s);
    CHECK_THAT(worker.output(), Catch::Contains("cannot connect to PostgreSQL") &&
                                    !Catch::Contains("PostgreSQL is unreachable"));
  }
  SECTION("it stays down: exit 1 after the wait, naming why, without the password") {
    const auto t0 = std::chrono::steady_clock::now();
    const std::string url = "postgresql://postgres:s3cret-pw@127.0.0.1:" + pg.url().substr(pg.url().rfind(':') + 1);
    auto worker = cli({"--database-url", url, "run", "--start-wait", "1"});
    CHECK(worker.wait(30s) == 1);
    CHECK(std::chrono::steady_clock::now() - t0 >= 1s);
    CHECK_THAT(worker.output(), Catch::Contains("PostgreSQL is unreachable") &&
                                    Catch::Contains("cannot connect to PostgreSQL") && !Catch::Contains("s3cret-pw"));
  }
}

TEST_CASE("the demo runs end to end and its summary checks out against the database", "[integration][demo]") {
  const std::string suffix = test_env::unique_name("d");
  auto demo = test_env::child_process({test_env::tool_path("OMNIBUS_DEMO_BIN"), "--orders", "150", "--schema", "omnibus_" + suffix,
                                       "--shop-schema", "shop_" + suffix, "--stream", "DEMO_" + suffix});
  const int rc = demo.wait(150s);
  {  // the demo's stream is on file: delete it and its schemas, whatever the outcome
    omnibus::nats_connection conn{{.url = test_env::nats_url()}};
    omnibus::jetstream js{conn};
    omnibus::stream_config stream;
    stream.name = "DEMO_" + suffix;
    (void)js.delete_stream(stream);
    pqxx::connection db{test_env::database_url()};
    test_env::drop_schemas(db, {"omnibus_" + suffix, "shop_" + suffix});
  }
  INFO(demo.output());
  REQUIRE(rc == 0);
  CHECK_THAT(demo.output(), Catch::Contains("every count checks out against the database"));
  CHECK_THAT(demo.output(), Catch::Contains("orders rolled back") && Catch::Contains("dead-lettered"));
}

TEST_CASE_METHOD(shop_fixture, "listeners pause stops every worker fetching for one listener; resume drains it",
                 "[integration][cli]") {
  auto pause = cli({"listeners", "pause", "confirmation_email", "--reason", "mail provider down"});
  REQUIRE(pause.wait(20s) == 0);
  CHECK_THAT(pause.output(), Catch::Contains("paused confirmation_email"));
  auto list = cli({"listeners", "list"});
  REQUIRE(list.wait(20s) == 0);
  CHECK_THAT(list.output(), Catch::Contains("PAUSED") && Catch::Contains("mail provider down") &&
                                Catch::Contains("loyalty") && Catch::Contains("running"));

  auto w1 = cli({"--flaky-rate", "0", "run"});
  auto w2 = cli({"--flaky-rate", "0", "run", "--no-relay"});
  REQUIRE(test_env::eventually([&] { return js.consumers(opts.stream).size() >= 4; }, 30s));
  {
    omnibus::event_bus b{js, as_worker_run()};  // the stream as the workers made it
    auto shop = services::make_shop(b, shop_opts);
    b.provision();
    pqxx::work tx{db};
    omnibus::context ctx{tx};
    shop->inventory.restock(ctx, "mug", 10);
    for (int i = 0; i < 3; ++i) shop->orders.place(ctx, "ada@example.com", "mug", 1, 1200);
    tx.commit();
  }
  const std::string emails = "SELECT count(*) FROM \"" + shop_opts.schema + "\".emails WHERE kind = 'confirmation'";
  const std::string loyalty = "SELECT count(*) FROM \"" + shop_opts.schema + "\".loyalty";
  // Loyalty handled the same three orders: a confirmation_email that fetched would have too.
  REQUIRE(test_env::eventually([&] { return count(loyalty) == 3; }, 30s));
  CHECK(count(emails) == 0);
  // Both workers report their listeners: the others run in both, the paused one is paused.
  REQUIRE(test_env::eventually([&] {
    auto running = cli({"listeners", "list"});
    return running.wait(20s) == 0 && running.output().find("running in 2 worker(s)") != std::string::npos;
  }, 30s));
  auto stats = cli({"stats", "--json"});
  REQUIRE(stats.wait(20s) == 0);
  CHECK_THAT(stats.output(), Catch::Contains("{\"name\":\"confirmation_email\"") && Catch::Contains("\"paused\":true"));

  auto resume = cli({"listeners", "resume", "confirmation_email"});
  REQUIRE(resume.wait(20s) == 0);
  CHECK(test_env::eventually([&] { return count(emails) == 3; }, 30s));
  CHECK_THAT(w1.output() + w2.output(), Catch::Contains("listener confirmation_email: paused by an operator") &&
                                            Catch::Contains("listener confirmation_email: resumed"));

  auto unknown = cli({"listeners", "pause", "no_such_listener"});
  CHECK(unknown.wait(20s) == 2);
  CHECK_THAT(unknown.output(), Catch::Contains("no listener named 'no_such_listener'"));
  auto not_paused = cli({"listeners", "resume", "loyalty"});
  CHECK(not_paused.wait(20s) == 1);
  CHECK_THAT(not_paused.output(), Catch::Contains("not paused"));

  // consumers replay says what it would redeliver and asks first; bad input is refused.
  auto plan = cli({"consumers", "replay", "confirmation_email", "--from-seq", "1"});
  CHECK(plan.wait(20s) == 2);
  CHECK_THAT(plan.output(), Catch::Contains("confirmation_email: 3 event(s) to deliver again") &&
                                Catch::Contains("add --yes to confirm"));
  auto bad_time = cli({"consumers", "replay", "confirmation_email", "--from", "yesterday"});
  CHECK(bad_time.wait(20s) == 2);
  CHECK_THAT(bad_time.output(), Catch::Contains("is not an RFC 3339 UTC time"));
  auto no_from = cli({"consumers", "replay", "confirmation_email"});
  CHECK(no_from.wait(20s) == 2);
  CHECK_THAT(no_from.output(), Catch::Contains("needs --from TIME or --from-seq N"));
  auto replay = cli({"consumers", "replay", "confirmation_email", "--from-seq", "1", "--keep-inbox", "--yes"});
  CHECK(replay.wait(30s) == 0);
  CHECK_THAT(replay.output(), Catch::Contains("replaying confirmation_email"));
  // Its consumer was made anew from sequence 1 and delivered the three orders again (the
  // mailer keys its rows by event id, so no second email).
  CHECK(test_env::eventually([&] {
    for (const auto& ci : js.consumers(opts.stream)) {
      if (ci.name.ends_with("_confirmation_email")) {
        return ci.last_delivered.has_value() && ci.pending == 0 && ci.ack_pending == 0;
      }
    }
    return false;
  }, 30s));
  CHECK(count(emails) == 3);
  w1.signal(SIGTERM);
  w2.signal(SIGTERM);
  CHECK(w1.wait(30s) == 0);
  CHECK(w2.wait(30s) == 0);
}

TEST_CASE_METHOD(shop_fixture, "stream purge --handled deletes only what every consumer handled", "[integration][cli]") {
  omnibus::event_bus b{js, opts};
  auto shop = services::make_shop(b, shop_opts);
  b.provision();
  // Straight to the stream, from a bus without the shop's sync listeners (they need a transaction).
  omnibus::event_bus publisher{js, opts};
  omnibus::context direct;
  for (int i = 0; i < 3; ++i) (void)publisher.publish(direct, models::order_placed{i + 1, "ada@example.com", "mug", 1, 1200});
  const auto before = js.state(opts.stream);
  REQUIRE(before->messages > 0);

  // Nothing handled yet: nothing goes.
  auto none = cli({"stream", "purge", "--handled"});
  REQUIRE(none.wait(20s) == 0);
  CHECK_THAT(none.output(), Catch::Contains("0 event(s) removed"));
  CHECK(js.state(opts.stream)->messages == before->messages);

  // Every listener settles every event (loyalty by dead-lettering it): all of it goes.
  auto log = std::make_shared<spdlog::logger>("t", std::make_shared<spdlog::sinks::null_sink_mt>());
  omnibus::worker_options wo;
  wo.database_url = test_env::database_url();
  omnibus::worker w{b, wo, log};
  std::jthread runner([&](std::stop_token st) { w.run(st); });
  REQUIRE(test_env::eventually([&] {
    for (const auto& c : js.consumers(opts.stream)) {
      if (c.pending + c.ack_pending > 0) return false;
    }
    return true;
  }, 20s));
  runner.request_stop();
  runner.join();
  auto all = cli({"stream", "purge", "--handled"});
  REQUIRE(all.wait(20s) == 0);
  CHECK_THAT(all.output(), Catch::Contains(std::to_string(before->messages) + " event(s) removed, 0 left"));
  CHECK(js.state(opts.stream)->messages == 0);
}

TEST_CASE_METHOD(shop_fixture, "schedules: list, show, cancel a pending event; pause, resume and trigger a recurring one",
                 "[integration][cli][scheduler]") {
  place_one_order();  // the worker's `run` below makes the stream as this publisher did
  auto list = cli({"schedules", "list"});
  REQUIRE(list.wait(20s) == 0);
  CHECK_THAT(list.output(), Catch::Contains("1 scheduled event(s) pending") && Catch::Contains("order.review_requested") &&
                                Catch::Contains("review:order:1"));
  const auto pending = omnibus::list_scheduled(db, opts.schema);
  REQUIRE(pending.size() == 1);
  const std::string id = pending[0].id.to_string();
  auto show = cli({"schedules", "show", id});
  REQUIRE(show.wait(20s) == 0);
  CHECK_THAT(show.output(), Catch::Contains("Nats-Msg-Id: " + id) && Catch::Contains("unique key:  review:order:1"));
  auto json = cli({"schedules", "list", "--json", "--key", "review:order:1"});
  REQUIRE(json.wait(20s) == 0);
  CHECK_THAT(json.output(), Catch::Contains("\"pending\":1") && Catch::Contains("\"id\":\"" + id + "\""));
  auto cancel = cli({"schedules", "cancel", id});
  REQUIRE(cancel.wait(20s) == 0);
  CHECK_THAT(cancel.output(), Catch::Contains("cancelled " + id));
  auto again = cli({"schedules", "cancel", id});
  CHECK(again.wait(20s) == 1);
  CHECK_THAT(again.output(), Catch::Contains("no pending scheduled event"));
  auto bad_id = cli({"schedules", "show", "not-a-uuid"});
  CHECK(bad_id.wait(20s) == 2);

  // No worker has registered the recurring schedule yet: pause says so.
  auto early = cli({"schedules", "pause", "sales_report"});
  CHECK(early.wait(20s) == 1);
  CHECK_THAT(early.output(), Catch::Contains("a worker registers its schedules when it starts"));
  auto worker = cli({"run"});
  REQUIRE(test_env::eventually([&] { return omnibus::list_recurring(db, opts.schema).size() == 1; }, 30s));
  auto pause = cli({"schedules", "pause", "sales_report"});
  REQUIRE(pause.wait(20s) == 0);
  auto paused = cli({"schedules", "list"});
  REQUIRE(paused.wait(20s) == 0);
  CHECK_THAT(paused.output(), Catch::Contains("sales_report") && Catch::Contains("\"0 9 * * MON-FRI\" Europe/Berlin  PAUSED"));
  auto resume = cli({"schedules", "resume", "sales_report"});
  REQUIRE(resume.wait(20s) == 0);
  CHECK_FALSE(omnibus::list_recurring(db, opts.schema)[0].paused);
  auto trigger = cli({"schedules", "trigger", "sales_report"});
  REQUIRE(trigger.wait(20s) == 0);
  CHECK_THAT(trigger.output(), Catch::Contains("triggered sales_report"));
  const std::string reports = "SELECT count(*) FROM \"" + shop_opts.schema + "\".emails WHERE kind = 'report'";
  const bool handled = test_env::eventually([&] { return count(reports) == 1; }, 30s);  // the running worker handled it
  INFO(worker.output());
  REQUIRE(handled);
  auto unknown = cli({"schedules", "trigger", "nightly"});
  CHECK(unknown.wait(20s) == 2);
  CHECK_THAT(unknown.output(), Catch::Contains("no recurring schedule named 'nightly'") && Catch::Contains("sales_report"));
  worker.signal(SIGTERM);
  CHECK(worker.wait(30s) == 0);
}

TEST_CASE("schedules preview: next fire times without servers; a bad expression or zone exits 2, naming it",
          "[integration][cli][scheduler]") {
  const std::string bin = test_env::tool_path("OMNIBUS_WORKER_BIN");
  auto berlin = test_env::child_process(
      {bin, "schedules", "preview", "30 2 * * *", "--tz", "Europe/Berlin", "--from", "2026-03-28T00:00:00Z", "--count", "3"});
  REQUIRE(berlin.wait(20s) == 0);
  CHECK(berlin.output() == "2026-03-28T01:30:00Z\n2026-03-29T01:00:00Z\n2026-03-30T00:30:00Z\n");  // the gap's end
  auto bad = test_env::child_process({bin, "schedules", "preview", "0 25 * * *"});
  CHECK(bad.wait(20s) == 2);
  CHECK_THAT(bad.output(), Catch::Contains("cron \"0 25 * * *\"") && Catch::Contains("hour"));
  auto zone = test_env::child_process({bin, "schedules", "preview", "@daily", "--tz", "Mars/Olympus"});
  CHECK(zone.wait(20s) == 2);
  CHECK_THAT(zone.output(), Catch::Contains("Mars/Olympus"));
  auto from = test_env::child_process({bin, "schedules", "preview", "@daily", "--from", "tomorrow"});
  CHECK(from.wait(20s) == 2);
  CHECK_THAT(from.output(), Catch::Contains("--from"));
}
