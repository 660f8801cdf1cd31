// The worker's HTTP endpoint as an operator and Prometheus meet it: /metrics counts what the
// worker did (and a real Prometheus scrapes it, promtool finds nothing wrong), /readyz follows
// PostgreSQL, `stats` agrees, JSON logs parse, and hostile clients get a 4xx or are cut off
// without slowing the worker.

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cctype>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <catch2/catch.hpp>
#include <pqxx/pqxx>

#include "omnibus/event_bus.hpp"
#include "omnibus/jetstream.hpp"
#include "omnibus/listener_control.hpp"
#include "omnibus/migrations.hpp"
#include "omnibus/nats_connection.hpp"
#include "services/shop.hpp"
#include "support/child_process.hpp"
#include "support/http_client.hpp"
#include "support/private_servers.hpp"
#include "support/schema.hpp"
#include "support/stream_reader.hpp"
#include "support/test_env.hpp"
#include "support/wait.hpp"

namespace {

using namespace std::chrono_literals;
using test_env::eventually;
using test_env::http_get;

struct metrics_fixture {
  omnibus::nats_connection conn{{.url = test_env::nats_url()}};
  omnibus::jetstream js{conn};
  omnibus::bus_options opts = [] {
    auto o = test_env::test_bus_options("metrics");
    o.group = "shop";
    // The stream as omnibus-worker makes it from its defaults (file storage, 7 days, 1 GiB):
    // the publisher provisions it too, and a stream's settings must agree.
    const omnibus::stream_config defaults;
    o.stream.memory_storage = defaults.memory_storage;
    o.stream.max_age = defaults.max_age;
    o.stream.max_bytes = defaults.max_bytes;
    return o;
  }();
  services::shop_options shop_opts = [] {
    services::shop_options s;
    s.schema = test_env::unique_name("shop");
    s.flaky_failure_rate = 1.0;  // loyalty always fails: 3 attempts, then a dead letter
    s.review_delay = std::chrono::hours(1);  // each order's review request stays scheduled
    return s;
  }();
  pqxx::connection db{test_env::database_url()};
  std::string work = "/tmp/" + test_env::unique_name("omnibus-metrics");

  metrics_fixture() {
    omnibus::migrate(db, opts.schema);
    services::migrate_shop(db, shop_opts);
    REQUIRE(std::system(("mkdir -p " + work).c_str()) == 0);
  }
  ~metrics_fixture() {
    (void)js.delete_stream(opts.stream);
    test_env::drop_schemas(db, {opts.schema, shop_opts.schema});
    (void)std::system(("rm -rf " + work).c_str());
  }

  // omnibus-worker with this fixture's names; `before` goes before the command, `after` after.
  test_env::child_process cli(std::vector<std::string> args, std::vector<std::string> env = {}) {
    std::vector<std::string> argv{test_env::tool_path("OMNIBUS_WORKER_BIN"), "--group", opts.group, "--schema", opts.schema,
                                  "--shop-schema", shop_opts.schema, "--stream", opts.stream.name, "--subject-prefix",
                                  opts.stream.subject_prefix, "--flaky-rate", "1"};
    argv.insert(argv.end(), args.begin(), args.end());
    return test_env::child_process(argv, std::move(env));
  }

  // The port a worker started with --http 127.0.0.1:0 listens on (it logs it).
  static int http_port(test_env::child_process& w) {
    int port = 0;
    REQUIRE(eventually([&] { return (port = test_env::logged_http_port(w.output())) > 0; }, 30s));
    return port;
  }

  void place_orders(int n) {
    omnibus::event_bus b{js, opts};
    auto shop = services::make_shop(b, shop_opts);
    b.provision();  // as every publisher does: the listeners' consumers exist before the events
    pqxx::work tx{db};
    omnibus::context ctx{tx};
    shop->inventory.restock(ctx, "mug", n);
    for (int i = 0; i < n; ++i) shop->orders.place(ctx, "ada@example.com", "mug", 1, 1200);
    tx.commit();  // the worker's relay sends them
  }
};

// The value of the series `series` (name and labels exactly as exposed), or -1.
double value_of(const std::string& exposition, const std::string& series) {
  const std::string text = "\n" + exposition;
  const auto pos = text.find("\n" + series + " ");
  if (pos == std::string::npos) return -1;
  return std::atof(text.c_str() + pos + 1 + series.size() + 1);
}

// The PromQL of every panel of contrib/grafana/omnibus.json.
std::vector<std::string> dashboard_queries() {
  const char* root = std::getenv("OMNIBUS_SOURCE_ROOT");
  REQUIRE(root != nullptr);
  std::ifstream in(std::string(root) + "/contrib/grafana/omnibus.json");
  REQUIRE(in);
  std::vector<std::string> out;
  const std::regex expr("\"expr\": \"([^\"]+)\"");
  for (std::string line; std::getline(in, line);) {
    std::smatch m;
    if (std::regex_search(line, m, expr)) out.push_back(m[1]);
  }
  return out;
}

std::string url_encode(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '_' || c == '.' || c == '-') {
      out += static_cast<char>(c);
    } else {
      char buf[4];
      std::snprintf(buf, sizeof buf, "%%%02X", c);
      out += buf;
    }
  }
  return out;
}

bool parses_as_json(const std::string& path) {
  const std::string cmd = "/usr/bin/python3 -c 'import json,sys\nfor l in open(sys.argv[1]):\n  json.loads(l)' " + path;
  return std::system(cmd.c_str()) == 0;
}

}  // namespace

TEST_CASE_METHOD(metrics_fixture, "a worker's /metrics, /readyz and stats say what it did; its JSON logs parse",
                 "[integration][metrics]") {
  auto w = cli({"--log-format", "json", "run", "--http", "127.0.0.1:0"});
  const int port = http_port(w);
  REQUIRE(eventually([&] { return http_get(port, "/readyz").status == 200; }, 30s));
  CHECK_THAT(http_get(port, "/readyz").body, Catch::Contains("\"ready\":true"));
  const auto health = http_get(port, "/healthz");
  CHECK(health.status == 200);
  CHECK(health.body == "ok\n");

  place_orders(5);
  std::string text;
  const std::string handled = "omnibus_handled_total{listener=\"confirmation_email\",outcome=\"handled\"}";
  const std::string dead = "omnibus_dead_letters{listener=\"loyalty\"}";
  REQUIRE(eventually([&] {
    text = http_get(port, "/metrics").body;
    return value_of(text, handled) == 5 && value_of(text, dead) == 5;
  }, 60s));
  CHECK(value_of(text, "omnibus_handled_total{listener=\"loyalty\",outcome=\"retry\"}") == 10);
  CHECK(value_of(text, "omnibus_handled_total{listener=\"loyalty\",outcome=\"dead_letter\"}") == 5);
  CHECK(value_of(text, "omnibus_handler_duration_seconds_count{listener=\"confirmation_email\"}") == 5);
  CHECK(value_of(text, "omnibus_handlers_in_flight{listener=\"confirmation_email\"}") == 0);
  CHECK(value_of(text, "omnibus_consumer_pending{listener=\"confirmation_email\"}") == 0);
  CHECK(value_of(text, "omnibus_outbox_backlog_rows") == 0);
  CHECK(value_of(text, "omnibus_relay_active") == 1);
  CHECK(value_of(text, "omnibus_relay_lock_held") == 1);
  CHECK(value_of(text, "omnibus_relayed_total") == 5);
  CHECK(value_of(text, "omnibus_scheduled_pending") == 5);  // the orders' review requests, an hour away
  CHECK(value_of(text, "omnibus_scheduled_overdue_seconds") == 0);
  CHECK(value_of(text, "omnibus_worker_ready") == 1);
  CHECK(value_of(text, "omnibus_stream_messages") >= 5);

  // Every metric the Grafana dashboard queries exists in a real scrape.
  const auto queries = dashboard_queries();
  CHECK(queries.size() >= 15);
  const std::regex metric_name("omnibus_[a-z_]+");
  for (const auto& q : queries) {
    for (std::sregex_iterator it(q.begin(), q.end(), metric_name), end; it != end; ++it) {
      std::string name = it->str();
      for (const char* suffix : {"_bucket", "_count", "_sum"}) {
        const std::string sfx = suffix;
        if (name.size() > sfx.size() && name.compare(name.size() - sfx.size(), sfx.size(), sfx) == 0 &&
            text.find("# TYPE " + name.substr(0, name.size() - sfx.size()) + " histogram") != std::string::npos) {
          name.resize(name.size() - sfx.size());
        }
      }
      INFO("dashboard query: " << q);
      CHECK(text.find("# TYPE " + name + " ") != std::string::npos);
    }
  }

  // promtool, Prometheus's own linter, finds nothing wrong with the exposition.
  const std::string scraped = work + "/metrics.txt";
  std::ofstream(scraped) << text;
  CHECK(std::system(("promtool check metrics < " + scraped + " > " + work + "/promtool.log 2>&1").c_str()) == 0);

  // stats agrees, as text and as JSON.
  auto stats = cli({"stats", "--json"});
  REQUIRE(stats.wait(30s) == 0);
  const std::string json = work + "/stats.json";
  std::ofstream(json) << stats.output();
  CHECK(parses_as_json(json));
  CHECK_THAT(stats.output(), Catch::Contains("{\"name\":\"loyalty\"") && Catch::Contains("\"dead_letters\":5") &&
                                 Catch::Contains("\"relay_active\":true"));
  auto screen = cli({"stats"});
  REQUIRE(screen.wait(30s) == 0);
  CHECK_THAT(screen.output(), Catch::Contains("loyalty") && Catch::Contains("relay      active"));

  w.signal(SIGTERM);
  REQUIRE(w.wait(30s) == 0);
  // Every log line is one JSON object (the last stdout line is the worker's plain summary).
  std::ofstream logs(work + "/log.jsonl");
  int lines = 0;
  std::istringstream in(w.output());
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("worker: handled=", 0) == 0) continue;
    logs << line << "\n";
    ++lines;
  }
  logs.close();
  CHECK(lines > 5);
  CHECK(parses_as_json(work + "/log.jsonl"));
  CHECK_THAT(w.output(), Catch::Contains("\"listener\":\"loyalty\""));
}

TEST_CASE_METHOD(metrics_fixture, "a real Prometheus scrapes the worker", "[integration][metrics]") {
  auto w = cli({"run", "--http", "127.0.0.1:0"});
  const int port = http_port(w);
  const int prom_port = test_env::free_loopback_port();
  std::ofstream(work + "/prometheus.yml") << "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: omnibus\n"
                                             "    static_configs:\n      - targets: ['127.0.0.1:"
                                          << port << "']\n";
  test_env::child_process prometheus({"/usr/bin/prometheus", "--config.file=" + work + "/prometheus.yml",
                                      "--storage.tsdb.path=" + work + "/tsdb",
                                      "--web.listen-address=127.0.0.1:" + std::to_string(prom_port)});
  place_orders(4);
  // Prometheus's own HTTP API answers the questions an operator asks it.
  auto query = [&](const std::string& q) {
    return http_get(prom_port, "/api/v1/query?query=" + q).body;
  };
  CHECK(eventually([&] {
    return query("sum(omnibus_handled_total%7Boutcome%3D%22handled%22,listener%3D%22confirmation_email%22%7D)")
               .find("\"4\"]") != std::string::npos;
  }, 60s));
  CHECK(eventually([&] {
    return query("omnibus_dead_letters%7Blistener%3D%22loyalty%22%7D").find("\"4\"]") != std::string::npos;
  }, 60s));
  CHECK(eventually([&] { return query("up%7Bjob%3D%22omnibus%22%7D").find("\"1\"]") != std::string::npos; }, 30s));
  // A listener that stops taking events: the age of its oldest waiting event grows.
  auto pause = cli({"listeners", "pause", "confirmation_email"});
  REQUIRE(pause.wait(20s) == 0);
  REQUIRE(eventually([&] {  // the worker obeys within its control poll
    return query("omnibus_listener_flow_state%7Blistener%3D%22confirmation_email%22,state%3D%22paused%22%7D")
               .find("\"1\"]") != std::string::npos;
  }, 30s));
  place_orders(2);
  const auto oldest = [&] {
    const std::string body = query("omnibus_consumer_oldest_unacked_age_seconds%7Blistener%3D%22confirmation_email%22%7D");
    std::smatch m;
    static const std::regex value(R"re("value":\[[^,]+,"([0-9.e+-]+)"\])re");
    return std::regex_search(body, m, value) ? std::stod(m[1].str()) : -1.0;
  };
  double first = 0;
  const bool grows = eventually([&] { return (first = oldest()) > 0; }, 30s);
  INFO(query("omnibus_consumer_oldest_unacked_age_seconds") << "\n" << query("omnibus_consumer_pending"));
  REQUIRE(grows);
  CHECK(eventually([&] { return oldest() > first + 1; }, 30s));
  // Every panel of the Grafana dashboard is valid PromQL that this Prometheus answers.
  for (const auto& q : dashboard_queries()) {
    INFO("dashboard query: " << q);
    CHECK_THAT(query(url_encode(q)), Catch::Contains("\"status\":\"success\""));
  }
  w.signal(SIGTERM);
  CHECK(w.wait(30s) == 0);
}

TEST_CASE_METHOD(metrics_fixture, "hostile HTTP clients get a 4xx or are cut off, and the worker goes on",
                 "[integration][metrics]") {
  auto w = cli({"run", "--http", "127.0.0.1:0"});
  const int port = http_port(w);
  REQUIRE(eventually([&] { return http_get(port, "/readyz").status == 200; }, 30s));

  CHECK(http_get(port, "/nowhere").status == 404);
  CHECK(test_env::raw_request(port, "POST /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .status == 405);
  CHECK(test_env::raw_request(port, "this is not http\r\n\r\n").status == 400);
  CHECK(test_env::raw_request(port, "GET /metrics HTTP/1.1\r\nX-Big: " + std::string(20000, 'a') + "\r\n\r\n").status == 431);
  CHECK(test_env::raw_request(port, "GET /metrics HTTP/1.1\r\nContent-Length: 10000\r\n\r\n" + std::string(10000, 'b'))
            .status == 413);

  // A slow client that never finishes its request is cut off after the read timeout (5 s).
  {
    const int fd = test_env::connect_loopback(port);
    REQUIRE(fd >= 0);
    (void)::send(fd, "GET /metrics HTTP/1.1\r\n", 23, MSG_NOSIGNAL);
    const auto start = std::chrono::steady_clock::now();
    (void)test_env::read_all(fd, 15s);  // returns when the server closes
    CHECK(std::chrono::steady_clock::now() - start < 12s);
    ::close(fd);
  }

  // Hundreds of idle connections: past 64 they are closed at once, the rest after the read
  // timeout; meanwhile the worker handles events, and afterwards the endpoint answers.
  std::vector<int> idle;
  for (int i = 0; i < 300; ++i) idle.push_back(test_env::connect_loopback(port));
  place_orders(3);
  CHECK(eventually([&] {
    return value_of(http_get(port, "/metrics").body,
                    "omnibus_handled_total{listener=\"confirmation_email\",outcome=\"handled\"}") == 3;
  }, 60s));
  for (int fd : idle) {
    if (fd < 0) continue;
    (void)test_env::read_all(fd, 15s);
    ::close(fd);
  }
  CHECK(http_get(port, "/healthz").status == 200);
  w.signal(SIGTERM);
  CHECK(w.wait(30s) == 0);
}

TEST_CASE_METHOD(metrics_fixture, "a bad or taken --http address fails start-up and names it", "[integration][metrics]") {
  auto bad = cli({"run", "--http", "localhost"});
  CHECK(bad.wait(30s) == 2);
  CHECK_THAT(bad.output(), Catch::Contains("--http 'localhost'"));

  auto first = cli({"run", "--http", "127.0.0.1:0"});
  const int port = http_port(first);
  auto second = cli({"run", "--http", "127.0.0.1:" + std::to_string(port)});
  CHECK(second.wait(30s) == 1);
  CHECK_THAT(second.output(), Catch::Contains("127.0.0.1:" + std::to_string(port)) && Catch::Contains("cannot listen"));
  first.signal(SIGTERM);
  CHECK(first.wait(30s) == 0);
}

TEST_CASE_METHOD(metrics_fixture, "/readyz goes 503 while PostgreSQL is down and 200 when it is back",
                 "[integration][metrics]") {
  test_env::private_postgres pg;
  {
    pqxx::connection own{pg.url()};
    services::migrate_shop(own, shop_opts);
  }
  auto w = cli({"--database-url", pg.url(), "run", "--http", "127.0.0.1:0"});
  const int port = http_port(w);
  REQUIRE(eventually([&] { return http_get(port, "/readyz").status == 200; }, 30s));
  pg.stop();
  CHECK(eventually([&] {
    const auto r = http_get(port, "/readyz");
    return r.status == 503 && r.body.find("\"postgres\":false") != std::string::npos;
  }, 30s));
  CHECK(http_get(port, "/healthz").status == 200);  // alive all the same
  pg.start();  // a new cluster: restore the tables, as an operator restoring the database would
  {
    pqxx::connection own{pg.url()};
    omnibus::migrate(own, opts.schema);
    services::migrate_shop(own, shop_opts);
  }
  CHECK(eventually([&] { return http_get(port, "/readyz").status == 200; }, 60s));
  w.signal(SIGTERM);
  CHECK(w.wait(30s) == 0);
}

TEST_CASE_METHOD(metrics_fixture, "outbox rows that no relay sends fail /readyz, and stats, metrics and logs say so",
                 "[integration][metrics]") {
  auto w = cli({"--outbox-alert-after", "1", "run", "--no-relay", "--http", "127.0.0.1:0"});
  const int port = http_port(w);
  REQUIRE(eventually([&] { return http_get(port, "/readyz").status == 200; }, 30s));
  place_orders(2);  // into the outbox; nothing relays this schema
  CHECK(eventually([&] {
    const auto r = http_get(port, "/readyz");
    return r.status == 503 && r.body.find("no process holds the relay lock") != std::string::npos;
  }, 30s));
  CHECK(value_of(http_get(port, "/metrics").body, "omnibus_outbox_unrelayed") == 1);
  auto stats = cli({"--outbox-alert-after", "1", "stats", "--json"});
  REQUIRE(stats.wait(30s) == 0);
  CHECK_THAT(stats.output(), Catch::Contains("\"outbox_unrelayed\":true") && Catch::Contains("\"rows\":2"));
  auto screen = cli({"--outbox-alert-after", "1", "stats"});
  REQUIRE(screen.wait(30s) == 0);
  CHECK_THAT(screen.output(), Catch::Contains("ALERT") && Catch::Contains("no relay"));
  CHECK(eventually([&] { return w.output().find("outbox: 2 row(s) have waited") != std::string::npos; }, 30s));

  // A worker with its relay sends them: ready again.
  auto relaying = cli({"run"});
  CHECK(eventually([&] { return http_get(port, "/readyz").status == 200; }, 60s));
  relaying.signal(SIGTERM);
  CHECK(relaying.wait(30s) == 0);
  w.signal(SIGTERM);
  CHECK(w.wait(30s) == 0);
}

TEST_CASE_METHOD(metrics_fixture, "a paused listener's events purged from the stream: lost, counted, /readyz fails until "
                                  "acknowledged",
                 "[integration][metrics][lost]") {
  // Paused before the worker starts: it never fetches for the listener (a pause while a fetch
  // waits hands what it brings back with a nak, and those would not count as pending).
  auto pause = cli({"listeners", "pause", "confirmation_email"});
  REQUIRE(pause.wait(30s) == 0);
  auto w = cli({"run", "--stream-check-every", "0.2", "--http", "127.0.0.1:0"});
  const int port = http_port(w);
  REQUIRE(eventually([&] { return http_get(port, "/readyz").status == 200; }, 30s));
  REQUIRE(eventually([&] {
    for (const auto& r : omnibus::list_listener_reports(db, opts.schema, 10s)) {
      if (r.listener == "confirmation_email" && r.state == "paused") return true;
    }
    return false;
  }, 30s));
  place_orders(3);
  // The other listeners are done (loyalty dead-letters each order), the paused one has 3
  // events waiting, and a check has seen them.
  const std::string paused = opts.group + "_confirmation_email";
  std::string seen;  // what the last poll saw, for a failure's message
  const bool ready = eventually([&] {
    seen.clear();
    bool done = true;
    for (const auto& c : js.consumers(opts.stream)) {
      seen += c.name + ": pending " + std::to_string(c.pending) + ", ack pending " + std::to_string(c.ack_pending) + "\n";
      done = done && (c.name == paused ? c.pending == 3 : c.pending + c.ack_pending == 0);
    }
    pqxx::nontransaction q{db};
    const bool marked = q.exec_params1("SELECT count(*) FROM \"" + opts.schema +
                                           "\".bus_stream_marks WHERE consumer = $1 AND pending = 3",
                                       paused)[0].as<int>() == 1;
    seen += marked ? "marked\n" : "not marked\n";
    return done && marked;
  }, 60s);
  INFO(seen << "worker output:\n" << w.output());
  REQUIRE(ready);

  auto purge = cli({"stream", "purge", "--yes"});  // an operator's mistake
  REQUIRE(purge.wait(30s) == 0);
  CHECK(eventually([&] {
    const auto r = http_get(port, "/readyz");
    return r.status == 503 && r.body.find("confirmation_email lost 3") != std::string::npos;
  }, 30s));
  CHECK_THAT(http_get(port, "/readyz").body, Catch::Contains("\"events_lost\":true"));
  const std::string metrics = http_get(port, "/metrics").body;
  CHECK(value_of(metrics, "omnibus_events_lost{listener=\"confirmation_email\"}") == 3);
  CHECK(value_of(metrics, "omnibus_events_lost_unacknowledged{listener=\"confirmation_email\"}") == 3);
  CHECK(value_of(metrics, "omnibus_events_lost{listener=\"customer_stats\"}") == 0);
  CHECK_THAT(w.output(), Catch::Contains("listener confirmation_email: 3 of its event(s) left stream " + opts.stream.name));

  auto losses = cli({"listeners", "losses"});
  REQUIRE(losses.wait(30s) == 0);
  CHECK_THAT(losses.output(), Catch::Contains("confirmation_email") && Catch::Contains("3 event(s) among stream sequences") &&
                                  Catch::Contains("UNACKNOWLEDGED"));
  auto list = cli({"listeners", "list"});
  REQUIRE(list.wait(30s) == 0);
  CHECK_THAT(list.output(), Catch::Contains("LOST 3 event(s)"));
  auto bad = cli({"listeners", "losses", "no_such_listener"});
  CHECK(bad.wait(30s) == 2);

  auto ack = cli({"listeners", "losses", "--acknowledge"});
  REQUIRE(ack.wait(30s) == 0);
  CHECK_THAT(ack.output(), Catch::Contains("acknowledged 1 loss record(s)"));
  CHECK(eventually([&] { return http_get(port, "/readyz").status == 200; }, 30s));
  CHECK(value_of(http_get(port, "/metrics").body, "omnibus_events_lost{listener=\"confirmation_email\"}") == 3);
  w.signal(SIGTERM);
  CHECK(w.wait(30s) == 0);
}
