// The worker's dashboard over HTTP, without a browser (tests/browser drives a real one): every
// page, its security headers, pagination, hostile requests, the access rules (CSRF, Origin,
// Host, token, read-only), and actions that take effect, a bulk retry that survives kill -9.

#include <chrono>
#include <csignal>
#include <set>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <msgpack.hpp>
#include <pqxx/pqxx>

#include "omnibus/dead_letters.hpp"
#include "omnibus/listener_control.hpp"
#include "omnibus/parked_keys.hpp"
#include "omnibus/redrive.hpp"
#include "omnibus/schedules.hpp"
#include "support/http_client.hpp"
#include "support/shop_fixture.hpp"
#include "support/wait.hpp"

using namespace std::chrono_literals;
using test_env::http_get;
using test_env::http_send;

namespace {

constexpr const char* csp =
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

struct dashboard_fixture : test_env::shop_fixture {
  // The port a worker started with --http 127.0.0.1:0 listens on (it logs it).
  static int http_port(test_env::child_process& w) {
    int port = 0;
    REQUIRE(test_env::eventually([&] { return (port = test_env::logged_http_port(w.output())) > 0; }, 30s));
    // Ready: the stream, the consumers and the schema are there for the pages to show.
    REQUIRE(test_env::eventually([&] { return http_get(port, "/readyz").status == 200; }, 30s));
    return port;
  }
  // The CSRF token the pages' forms carry.
  static std::string csrf_of(const std::string& page) {
    const std::string marker = "name=\"csrf\" value=\"";
    const auto at = page.find(marker);
    if (at == std::string::npos) return {};
    return page.substr(at + marker.size(), 64);
  }
  static test_env::http_result post(int port, const std::string& path, const std::string& form,
                                    std::vector<std::string> headers = {}) {
    headers.push_back("Content-Type: application/x-www-form-urlencoded");
    return http_send(port, "POST", path, headers, form, host(port));  // as a browser names it
  }
  static std::string origin(int port) { return "Origin: http://127.0.0.1:" + std::to_string(port); }
  static std::string host(int port) { return "127.0.0.1:" + std::to_string(port); }

  // A dead letter whose every field holds markup a browser would run if it were not escaped.
  std::int64_t hostile_dead_letter() {
    msgpack::sbuffer body;
    msgpack::packer<msgpack::sbuffer> pk(body);
    pk.pack_map(2);
    pk.pack(std::string("note"));
    pk.pack(std::string("<img src=x onerror=alert(1)>"));
    pk.pack(std::string("n"));
    pk.pack(42);
    omnibus::dead_letter dl;
    dl.listener = "loyalty";
    dl.event_id = "hostile-1";
    dl.event_name = "order_placed";
    dl.msg.subject = opts.stream.subject_prefix + ".order_placed";
    dl.msg.headers = {{"X-Evil", "<script>alert('header')</script>"}};
    dl.msg.body.assign(body.data(), body.size());
    dl.reason = "handler_failed";
    dl.error = "<script>alert('error')</script> & \"quotes\"";
    dl.attempts = 3;
    omnibus::write_dead_letter(db, opts.schema, dl);
    return omnibus::list_dead_letters(db, opts.schema, "loyalty", {}, 1).front().id;
  }
};

bool paused(pqxx::connection& db, const std::string& schema, const std::string& listener) {
  for (const auto& p : omnibus::list_paused_listeners(db, schema)) {
    if (p.listener == listener) return true;
  }
  return false;
}

}  // namespace

TEST_CASE_METHOD(dashboard_fixture, "every dashboard page answers with its security headers; dead letters page by id",
                 "[integration][dashboard]") {
  dead_letters("loyalty", 1, 250);
  dead_letters("customer_stats", 1000, 5, "stats database unreachable");
  // The per-minute rates, as the workers report them: the last full minute and the last hour.
  {
    pqxx::work tx{db};
    tx.exec0("INSERT INTO \"" + opts.schema + "\".bus_listener_minutes (listener, minute, handled, failed) VALUES "
             "('loyalty', date_trunc('minute', now()) - interval '1 minute', 1234, 56), "
             "('loyalty', date_trunc('minute', now()) - interval '30 minutes', 99, 0), "
             "('loyalty', date_trunc('minute', now()) - interval '3 hours', 5, 5)");
    tx.commit();
  }
  auto w = cli({"run", "--no-redrives", "--http", "127.0.0.1:0"});
  const int port = http_port(w);
  for (const std::string& path : std::vector<std::string>{"/", "/dead-letters", "/dead-letters/bulk?action=retry&listener=loyalty", "/redrives",
                                 "/parked", "/schedules", "/login"}) {
    INFO(path);
    const auto r = http_get(port, path);
    CHECK(r.status == 200);
    CHECK(test_env::header_of(r.raw, "Content-Security-Policy") == csp);
    CHECK(test_env::header_of(r.raw, "X-Content-Type-Options") == "nosniff");
    CHECK(test_env::header_of(r.raw, "Referrer-Policy") == "same-origin");
    CHECK(test_env::header_of(r.raw, "Content-Type") == "text/html; charset=utf-8");
    CHECK_THAT(r.body, Catch::Contains("<script src=\"/assets/app.js\" defer></script>"));
    CHECK_THAT(r.body, !Catch::Contains("<script>"));  // no inline script: the CSP would block it
  }
  // The overview: every listener, and the dead letters counted.
  const auto overview = http_get(port, "/").body;
  CHECK_THAT(overview, Catch::Contains("<td class=\"num\">1,234</td><td class=\"num\">56</td><td><svg class=\"spark\""));
  CHECK_THAT(overview, Catch::Contains("<title>last hour: up to 1,234 calls a minute</title>"));
  CHECK_THAT(overview, Catch::Contains("data-listener=\"loyalty\""));
  CHECK_THAT(overview, Catch::Contains("<a href=\"/dead-letters?listener=loyalty\">250</a>"));
  CHECK_THAT(overview, Catch::Contains("<div class=\"label\">dead letters</div><div class=\"value\">255</div>"));
  // The dry run counts exactly.
  CHECK_THAT(http_get(port, "/dead-letters/bulk?action=retry&listener=loyalty").body,
             Catch::Contains("This will retry <strong>250</strong> dead letters"));
  CHECK_THAT(http_get(port, "/dead-letters/bulk?action=discard&error=unreachable").body,
             Catch::Contains("This will discard <strong>5</strong> dead letters"));

  // Following the "older" links visits every loyalty dead letter once, newest first.
  std::vector<std::int64_t> seen;
  std::string next = "/dead-letters?listener=loyalty&limit=100";
  for (int pages = 0; !next.empty() && pages < 10; ++pages) {
    const auto r = http_get(port, next);
    REQUIRE(r.status == 200);
    std::size_t at = 0;
    const std::string row = "<tr><td><a href=\"/dead-letters/";
    while ((at = r.body.find(row, at)) != std::string::npos) {
      at += row.size();
      seen.push_back(std::atoll(r.body.c_str() + at));
    }
    next.clear();
    if (const auto link = r.body.find("rel=\"next\" href=\""); link != std::string::npos) {
      const auto start = link + 17;
      next = r.body.substr(start, r.body.find('"', start) - start);
      std::string::size_type amp;
      while ((amp = next.find("&amp;")) != std::string::npos) next.replace(amp, 5, "&");
    }
  }
  CHECK(seen.size() == 250);
  CHECK(std::set<std::int64_t>(seen.begin(), seen.end()).size() == 250);
  CHECK(std::is_sorted(seen.rbegin(), seen.rend()));

  // Bad query values: a clear 400 each.
  for (const std::string& bad : std::vector<std::string>{"/dead-letters?limit=0", "/dead-letters?limit=201", "/dead-letters?limit=abc",
                                "/dead-letters?before=-1", "/dead-letters?before=99999999999999999999999",
                                "/dead-letters?since=yesterday", "/dead-letters?listener=" + std::string(201, 'x'),
                                "/dead-letters?limit=1&limit=2", "/dead-letters?listener=%ZZ", "/dead-letters?event=%FF",
                                "/dead-letters/abc", "/dead-letters/0", "/dead-letters/bulk?action=explode",
                                "/redrives/12x", "/dead-letters?lisener=loyalty",
                                "/dead-letters/bulk?action=discard&lisener=loyalty"}) {
    INFO(bad);
    CHECK(http_get(port, bad).status == 400);
  }
  CHECK(http_get(port, "/dead-letters/999999999").status == 404);
  CHECK(http_get(port, "/redrives/999999999").status == 404);
  CHECK(http_get(port, "/nowhere").status == 404);
  w.signal(SIGTERM);
  CHECK(w.wait(30s) == 0);
}

TEST_CASE_METHOD(dashboard_fixture, "what producers sent is shown as text: markup in a body, header or error never runs",
                 "[integration][dashboard]") {
  const std::int64_t id = hostile_dead_letter();
  auto w = cli({"run", "--no-redrives", "--http", "127.0.0.1:0"});
  const int port = http_port(w);
  const auto r = http_get(port, "/dead-letters/" + std::to_string(id));
  REQUIRE(r.status == 200);
  CHECK_THAT(r.body, Catch::Contains("&lt;script&gt;alert(&#39;error&#39;)&lt;/script&gt; &amp; &quot;quotes&quot;"));
  CHECK_THAT(r.body, Catch::Contains("&lt;script&gt;alert(&#39;header&#39;)&lt;/script&gt;"));
  CHECK_THAT(r.body, Catch::Contains("&lt;img src=x onerror=alert(1)&gt;"));  // the body, decoded from msgpack
  CHECK_THAT(r.body, Catch::Contains("&quot;n&quot;: 42"));
  CHECK_THAT(r.body, !Catch::Contains("<img"));
  CHECK_THAT(r.body, !Catch::Contains("<script>"));
  const auto list = http_get(port, "/dead-letters?error=%3Cscript");  // the filter matches the text
  CHECK_THAT(list.body, Catch::Contains("&lt;script&gt;alert"));
  CHECK_THAT(list.body, Catch::Contains("value=\"&lt;script\""));  // echoed into the form, escaped
  w.signal(SIGTERM);
  CHECK(w.wait(30s) == 0);
}

TEST_CASE_METHOD(dashboard_fixture, "hostile HTTP requests get a clear 4xx and the worker goes on",
                 "[integration][dashboard]") {
  auto w = cli({"run", "--no-redrives", "--http", "127.0.0.1:0"});
  const int port = http_port(w);
  auto raw = [&](const std::string& request) { return test_env::raw_request(port, request).status; };
  CHECK(raw("GET /../../etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n") == 400);
  CHECK(raw("GET /assets/../x HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n") == 400);
  CHECK(raw("GET /%2e%2e/etc/passwd HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n") == 400);
  CHECK(raw("GET /assets/%2E%2E%2Fx HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n") == 400);
  CHECK(raw("GET /a%00b HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n") == 400);
  CHECK(raw("GET \\etc\\passwd HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n") == 400);
  CHECK(raw("GET http://evil/ HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n") == 400);
  CHECK(http_get(port, "/?q=" + std::string(5000, 'a')).status == 414);
  CHECK(http_send(port, "PUT", "/").status == 405);
  CHECK(http_send(port, "DELETE", "/dead-letters/1").status == 405);
  CHECK(post(port, "/listeners/loyalty/pause", std::string(20 * 1024, 'a'), {origin(port)}).status == 413);
  CHECK(http_send(port, "POST", "/listeners/loyalty/pause", {"Content-Type: text/plain", origin(port)}, "x").status == 415);
  CHECK(http_send(port, "POST", "/metrics").status == 405);
  CHECK(http_get(port, "/assets/nope.js").status == 404);
  CHECK(http_get(port, "/assets/app.js").status == 200);
  CHECK(test_env::header_of(http_get(port, "/assets/app.js").raw, "Content-Type") == "text/javascript; charset=utf-8");
  CHECK(test_env::header_of(http_get(port, "/assets/style.css").raw, "Content-Type") == "text/css; charset=utf-8");
  // A page on another name that rebinds it to 127.0.0.1 sends its own Host: refused.
  CHECK(http_send(port, "GET", "/", {}, {}, "evil.example:80").status == 421);
  CHECK(http_send(port, "GET", "/", {}, {}, "localhost:" + std::to_string(port)).status == 200);
  // Through a reverse proxy on this machine, a worker without a token opens nothing.
  CHECK(http_send(port, "GET", "/", {"X-Forwarded-For: 203.0.113.9"}).status == 401);
  CHECK(http_send(port, "GET", "/metrics", {"X-Real-IP: 203.0.113.9"}).status == 401);
  CHECK(http_get(port, "/healthz").status == 200);
  CHECK(http_get(port, "/").status == 200);
  w.signal(SIGTERM);
  CHECK(w.wait(30s) == 0);
}

TEST_CASE_METHOD(dashboard_fixture, "an action needs the page's CSRF token and Origin; read-only refuses all",
                 "[integration][dashboard]") {
  auto w = cli({"run", "--no-redrives", "--http", "127.0.0.1:0"});
  const int port = http_port(w);
  const std::string csrf = csrf_of(http_get(port, "/").body);
  REQUIRE(csrf.size() == 64);
  CHECK(post(port, "/listeners/loyalty/pause", "reason=x", {origin(port)}).status == 403);               // no token
  CHECK(post(port, "/listeners/loyalty/pause", "csrf=" + std::string(64, '0'), {origin(port)}).status == 403);  // wrong
  CHECK(post(port, "/listeners/loyalty/pause", "csrf=" + csrf).status == 403);                           // no Origin
  CHECK(post(port, "/listeners/loyalty/pause", "csrf=" + csrf, {"Origin: http://evil.example"}).status == 403);
  CHECK_FALSE(paused(db, opts.schema, "loyalty"));
  const auto ok = post(port, "/listeners/loyalty/pause", "csrf=" + csrf + "&reason=deploying", {origin(port)});
  CHECK(ok.status == 303);
  CHECK(test_env::header_of(ok.raw, "Location") == "/");
  CHECK(paused(db, opts.schema, "loyalty"));
  CHECK_THAT(http_get(port, "/").body, Catch::Contains("<span class=\"tag warn\">paused</span>"));
  CHECK(post(port, "/listeners/loyalty/resume", "csrf=" + csrf, {origin(port)}).status == 303);
  CHECK_FALSE(paused(db, opts.schema, "loyalty"));
  w.signal(SIGTERM);
  CHECK(w.wait(30s) == 0);

  auto ro = cli({"run", "--no-redrives", "--http", "127.0.0.1:0", "--http-read-only"});
  const int ro_port = http_port(ro);
  const auto page = http_get(ro_port, "/");
  CHECK_THAT(page.body, Catch::Contains("read-only"));
  CHECK_THAT(page.body, !Catch::Contains("<form class=\"inline\""));
  CHECK(post(ro_port, "/listeners/loyalty/pause", "csrf=" + csrf_of(page.body), {origin(ro_port)}).status == 403);
  CHECK_FALSE(paused(db, opts.schema, "loyalty"));
  ro.signal(SIGTERM);
  CHECK(ro.wait(30s) == 0);
}

TEST_CASE_METHOD(dashboard_fixture, "with a token: pages need it or a login, probes only from loopback, and it is never printed",
                 "[integration][dashboard]") {
  const std::string token = "dashboard-test-token-0123456789";
  auto w = cli({"run", "--no-redrives", "--http", "127.0.0.1:0"}, {"OMNIBUS_HTTP_TOKEN=" + token});
  const int port = http_port(w);
  CHECK(http_get(port, "/").status == 401);
  CHECK_THAT(http_get(port, "/").body, Catch::Contains("Sign in"));
  CHECK(http_get(port, "/dead-letters").status == 401);
  CHECK(http_send(port, "GET", "/", {"Authorization: Bearer " + token}).status == 200);
  CHECK(http_get(port, "/healthz").status == 200);  // a probe on the same machine
  CHECK(http_get(port, "/metrics").status == 200);
  CHECK(http_send(port, "GET", "/metrics", {"X-Forwarded-For: 203.0.113.9"}).status == 401);  // through a proxy
  CHECK(http_send(port, "GET", "/metrics", {"X-Forwarded-For: 203.0.113.9", "Authorization: Bearer " + token}).status == 200);
  CHECK(http_send(port, "GET", "/", {"Authorization: Bearer wrong-token-wrong-token"}).status == 401);
  // A login sets a session cookie; the cookie opens the pages, and logging out closes them.
  CHECK(post(port, "/login", "token=wrong", {origin(port)}).status == 401);
  const auto login = post(port, "/login", "token=" + token, {origin(port)});
  const std::string cookie = test_env::header_of(login.raw, "Set-Cookie");
  CHECK_THAT(cookie, Catch::Contains("HttpOnly"));
  CHECK_THAT(cookie, Catch::Contains("SameSite=Strict"));
  CHECK(cookie.rfind("omnibus_session_0=", 0) == 0);  // one name per --http port (here 0: any)
  const std::string session = cookie.substr(0, cookie.find(';'));
  const auto page = http_send(port, "GET", "/", {"Cookie: " + session});
  CHECK(page.status == 200);
  CHECK(post(port, "/logout", "csrf=" + csrf_of(page.body), {"Cookie: " + session, origin(port)}).status == 303);
  CHECK(http_send(port, "GET", "/", {"Cookie: " + session}).status == 401);
  w.signal(SIGTERM);
  CHECK(w.wait(30s) == 0);
  CHECK_THAT(w.output(), !Catch::Contains(token));

  // Beyond loopback a token is required before anything listens (nothing binds here).
  auto open = cli({"run", "--http", "0.0.0.0:0"});
  CHECK(open.wait(30s) == 2);
  CHECK_THAT(open.output(), Catch::Contains("listens beyond loopback: set OMNIBUS_HTTP_TOKEN"));
  auto proxied = cli({"run", "--http", "127.0.0.1:0", "--http-origin", "https://ops.example.com"});
  CHECK(proxied.wait(30s) == 2);
  CHECK_THAT(proxied.output(), Catch::Contains("needs a token"));
  auto weak = cli({"run", "--http", "127.0.0.1:0"}, {"OMNIBUS_HTTP_TOKEN=short"});
  CHECK(weak.wait(30s) == 2);
  CHECK_THAT(weak.output(), Catch::Contains("16 bytes or more"));
  CHECK_THAT(weak.output(), !Catch::Contains("=short"));
}

TEST_CASE_METHOD(dashboard_fixture, "retry one dead letter from its page: handled, gone, audited",
                 "[integration][dashboard]") {
  dead_letters("loyalty", 1, 3);
  auto w = cli({"--flaky-rate", "0", "run", "--http", "127.0.0.1:0"});
  const int port = http_port(w);
  const auto target = omnibus::list_dead_letters(db, opts.schema, "loyalty", {}, 1).front();
  const std::string path = "/dead-letters/" + std::to_string(target.id);
  const auto page = http_get(port, path);
  REQUIRE(page.status == 200);
  CHECK_THAT(page.body, Catch::Contains("&quot;customer&quot;"));  // its body, decoded
  const auto r = post(port, path + "/retry", "csrf=" + csrf_of(page.body), {origin(port)});
  REQUIRE(r.status == 303);
  const std::string location = test_env::header_of(r.raw, "Location");
  REQUIRE(location.rfind("/redrives/", 0) == 0);
  const std::int64_t redrive = std::atoll(location.c_str() + 10);
  REQUIRE(test_env::eventually([&] { return omnibus::find_redrive(db, opts.schema, redrive)->state == "done"; }, 30s));
  const auto s = *omnibus::find_redrive(db, opts.schema, redrive);
  CHECK(s.total == 1);
  CHECK(s.ok == 1);
  CHECK(s.requested_by == "dashboard");
  CHECK(s.filter == "ids=" + std::to_string(target.id));
  CHECK_FALSE(omnibus::find_dead_letter(db, opts.schema, target.id));
  CHECK(omnibus::list_dead_letters(db, opts.schema).size() == 2);  // the others stay
  CHECK(count("SELECT count(*) FROM \"" + shop_opts.schema + "\".loyalty") == 1);
  CHECK(http_get(port, path).status == 404);
  CHECK_THAT(http_get(port, location).body, Catch::Contains("done: 1 ok"));
  w.signal(SIGTERM);
  CHECK(w.wait(30s) == 0);
}

TEST_CASE_METHOD(dashboard_fixture, "a bulk retry from the dashboard: dry run, a rate, kill -9 mid-way, resumed, none twice",
                 "[integration][dashboard]") {
  dead_letters("customer_stats", 1, 200);
  dead_letters("loyalty", 1000, 7);  // not in the filter: left alone
  auto first = cli({"--flaky-rate", "0", "run", "--no-relay", "--no-scheduler", "--http", "127.0.0.1:0"});
  const int port = http_port(first);
  const auto dry = http_get(port, "/dead-letters/bulk?action=retry&listener=customer_stats&rate=50");
  REQUIRE(dry.status == 200);
  CHECK_THAT(dry.body, Catch::Contains("This will retry <strong>200</strong> dead letters (listener=customer_stats)"));
  // Without a filter the form must say "all" (the dry-run page adds it): a bare POST is refused.
  CHECK(post(port, "/redrives", "csrf=" + csrf_of(dry.body) + "&action=retry", {origin(port)}).status == 400);
  // The dry run's count travels with the form: when it no longer holds, nothing starts.
  const auto changed = post(port, "/redrives", "csrf=" + csrf_of(dry.body) + "&action=retry&listener=customer_stats&expected=150",
                            {origin(port)});
  CHECK(changed.status == 409);
  CHECK_THAT(changed.body, Catch::Contains("The dry run showed 150; 200 match now. Nothing was started."));
  CHECK(omnibus::list_redrives(db, opts.schema).empty());
  const auto started = post(port, "/redrives",
                            "csrf=" + csrf_of(dry.body) + "&action=retry&listener=customer_stats&rate=50&expected=200",
                            {origin(port)});
  REQUIRE(started.status == 303);
  const std::int64_t id = std::atoll(test_env::header_of(started.raw, "Location").c_str() + 10);
  dead_letters("customer_stats", 5000, 3);  // arrives after the snapshot: not swept in
  REQUIRE(test_env::eventually([&] { return items(id, "ok") >= 50; }, 30s));
  CHECK_THAT(http_get(port, "/redrives/" + std::to_string(id)).body, Catch::Contains("<progress max=\"200\""));
  first.signal(SIGKILL);
  REQUIRE(first.wait(10s) == 128 + SIGKILL);
  CHECK(items(id, "ok") < 200);  // killed mid-way (50/s: 4 s for all)

  auto second = cli({"--flaky-rate", "0", "run", "--no-relay", "--no-scheduler", "--http", "127.0.0.1:0"});
  const int port2 = http_port(second);
  REQUIRE(test_env::eventually([&] { return omnibus::find_redrive(db, opts.schema, id)->state == "done"; }, 60s));
  CHECK_THAT(http_get(port2, "/redrives/" + std::to_string(id)).body, Catch::Contains("done: 200 ok"));
  second.signal(SIGTERM);
  CHECK(second.wait(30s) == 0);
  // customer_stats has an inbox: the one the kill interrupted ran again, and counted once.
  CHECK(items(id, "ok") == 200);
  CHECK(count("SELECT count(*) FROM \"" + shop_opts.schema + "\".customer_stats WHERE orders = 1") == 200);
  CHECK(count("SELECT count(*) FROM \"" + shop_opts.schema + "\".customer_stats WHERE orders <> 1") == 0);
  CHECK(omnibus::list_dead_letters(db, opts.schema, "customer_stats", {}, 100).size() == 3);
  CHECK(omnibus::list_dead_letters(db, opts.schema, "loyalty", {}, 100).size() == 7);
}

// A real browser (Debian's chromium through playwright-core, tests/browser/dashboard.mjs) on a
// seeded run; registered only in the unsanitized tree (meson test dashboard_browser).
TEST_CASE_METHOD(dashboard_fixture, "in a real browser: overview, filter, decoded body, retry one, bulk retry with "
                                    "progress, markup shown as text, a cross-site form refused",
                 "[browser]") {
  dead_letters("loyalty", 1, 20, "loyalty backend timed out");
  dead_letters("loyalty", 100, 5, "loyalty rejected the card");
  dead_letters("customer_stats", 1000, 1000);
  const std::int64_t hostile = hostile_dead_letter();
  const std::string root = test_env::tool_path("OMNIBUS_SOURCE_ROOT");
  const std::string artifacts = test_env::tool_path("OMNIBUS_BROWSER_ARTIFACTS");
  {
    test_env::child_process install({root + "/tests/browser/install"});
    INFO(install.output());
    REQUIRE(install.wait(300s) == 0);  // node, npm, chromium and playwright-core: never skipped
  }
  auto w = cli({"--flaky-rate", "0", "run", "--http", "127.0.0.1:0"});
  const int port = http_port(w);
  test_env::child_process browser({"/usr/bin/env", "node", root + "/tests/browser/dashboard.mjs", "--base",
                                   "http://127.0.0.1:" + std::to_string(port), "--artifacts", artifacts, "--hostile",
                                   std::to_string(hostile)});
  const int code = browser.wait(300s);
  const std::string out = browser.output();
  INFO(out);
  CHECK(code == 0);
  const auto at = out.find("result: ");
  REQUIRE(at != std::string::npos);
  const std::string result = out.substr(at);
  CHECK_THAT(result, Catch::Contains("\"ok\":true"));
  CHECK_THAT(result, Catch::Contains("\"foreign_requests\":[]"));  // offline: no CDN, nothing beyond loopback
  CHECK_THAT(result, Catch::Contains("\"dialogs\":0"));           // no markup from an event ever ran
  CHECK_THAT(result, Catch::Contains("\"page_errors\":[]"));      // nothing the CSP blocked, no script error
  CHECK_THAT(result, Catch::Contains("{\"name\":\"overview\",\"dead_letters\":\"1,026\",\"listeners\":["));
  CHECK_THAT(result, Catch::Contains("{\"name\":\"filter\",\"rows\":20,\"listeners\":[\"loyalty\"],"
                                     "\"errors\":[\"loyalty backend timed out\"]}"));
  CHECK_THAT(result, Catch::Contains("\"body\":{\"order_id\":20,\"customer\":\"c20@example.com\""));
  CHECK_THAT(result, Catch::Contains("\"state\":\"done: 1 ok, 0 failed"));
  CHECK_THAT(result, Catch::Contains("\"dry_run\":\"This will retry 1,000 dead letters (listener=customer_stats)."));
  CHECK_THAT(result, Catch::Contains("\"state\":\"done: 1,000 ok, 0 failed, 0 gone, 0 interrupted, 0 pending of 1,000\""));
  CHECK_THAT(result, Catch::Contains("\"error\":\"<script>alert('error')</script> & \\\"quotes\\\"\""));
  CHECK_THAT(result, Catch::Contains("\"images\":0,\"scripts\":1"));  // only app.js
  CHECK_THAT(result, Catch::Contains("{\"name\":\"csrf\",\"status\":403}"));

  // What the browser did, in the database: one loyalty dead letter retried, customer_stats all.
  CHECK(omnibus::list_dead_letters(db, opts.schema, "loyalty", {}, 100).size() == 25);  // 24 + the hostile one
  CHECK(omnibus::list_dead_letters(db, opts.schema, "customer_stats", {}, 100).empty());
  CHECK(count("SELECT count(*) FROM \"" + shop_opts.schema + "\".customer_stats WHERE orders = 1") == 1000);
  CHECK(count("SELECT count(*) FROM \"" + shop_opts.schema + "\".loyalty") == 1);
  CHECK_FALSE(paused(db, opts.schema, "loyalty"));  // the cross-site form changed nothing
  w.signal(SIGTERM);
  CHECK(w.wait(30s) == 0);
  // Screenshots for the README: OMNIBUS_SCREENSHOTS=docs/dashboard copies them there.
  if (const char* keep = std::getenv("OMNIBUS_SCREENSHOTS"); keep && *keep) {
    CHECK(std::system(("cp " + artifacts + "/*.png '" + keep + "/'").c_str()) == 0);
  }
}

TEST_CASE_METHOD(dashboard_fixture, "schedules, parked listeners and redrives: each action on its page takes effect",
                 "[integration][dashboard]") {
  dead_letters("loyalty", 1, 5);
  place_one_order();  // its review request stays scheduled for an hour
  auto w = cli({"--flaky-rate", "0", "run", "--no-redrives", "--http", "127.0.0.1:0"});
  const int port = http_port(w);
  REQUIRE(test_env::eventually([&] { return omnibus::list_scheduled(db, opts.schema).size() == 1; }, 30s));
  REQUIRE(test_env::eventually([&] { return !omnibus::list_recurring(db, opts.schema).empty(); }, 30s));
  const auto page = http_get(port, "/schedules");
  REQUIRE(page.status == 200);
  CHECK_THAT(page.body, Catch::Contains("<td>sales_report</td>"));
  const std::string id = omnibus::list_scheduled(db, opts.schema)[0].id.to_string();
  CHECK_THAT(page.body, Catch::Contains(id));
  const std::string csrf = "csrf=" + csrf_of(page.body);
  auto act = [&](const std::string& path) { return post(port, path, csrf, {origin(port)}); };
  auto report_paused = [&] { return omnibus::list_recurring(db, opts.schema)[0].paused; };

  CHECK(act("/recurring/sales_report/pause").status == 303);
  CHECK(report_paused());
  CHECK(act("/recurring/sales_report/resume").status == 303);
  CHECK_FALSE(report_paused());
  CHECK(act("/recurring/nobody/pause").status == 409);
  CHECK(act("/recurring/sales_report/trigger").status == 303);
  CHECK(test_env::eventually([&] {
    return count("SELECT count(*) FROM \"" + shop_opts.schema + "\".emails WHERE kind = 'report'") == 1;
  }, 30s));
  CHECK(act("/schedules/" + id + "/cancel").status == 303);
  CHECK(omnibus::list_scheduled(db, opts.schema).empty());
  CHECK(act("/schedules/" + id + "/cancel").status == 409);
  CHECK(act("/schedules/not-an-id/cancel").status == 400);

  // A parked listener (a row as an ordered listener leaves it): retry and skip are asked for.
  omnibus::park(db, opts.schema, {"audit_trail", "0190e5c1-0000-7000-8000-000000000001", "order.placed", 7, "boom", 3, ""});
  const auto parked = http_get(port, "/parked");
  CHECK_THAT(parked.body, Catch::Contains("<td>audit_trail</td>"));
  CHECK(act("/parked/audit_trail/skip").status == 303);
  CHECK(omnibus::find_parked(db, opts.schema, "audit_trail")->action == "skip");
  CHECK(act("/parked/nobody/retry").status == 409);

  // Parked keys (rows as a per-key listener leaves them; no worker here runs "visits", so the
  // requests stay put): listed with markup escaped, each action carrying the key in its form.
  const auto round = omnibus::detail::lease_partitions(db, opts.schema, "visits", 4, "test:1", 60s, {});
  REQUIRE(round.held.size() == 4);
  const auto park = [&](const std::string& key, int events) {
    const int partition = omnibus::partition_of(key, 4);
    std::uint64_t epoch = 0;
    for (const auto& [p, e] : round.held) {
      if (p == partition) epoch = e;
    }
    for (int i = 1; i <= events; ++i) {
      omnibus::detail::stored_event ev;
      ev.stream_sequence = static_cast<std::uint64_t>(100 * partition + i);
      ev.event_id = key + "-" + std::to_string(i);
      ev.msg.subject = opts.stream.subject_prefix + ".hello.visit.k" + std::to_string(partition);
      ev.msg.body = "\x80";
      ev.attempts = 3;
      REQUIRE(omnibus::detail::park_event(db, opts.schema, "visits", key, partition, "test:1", epoch, "hello.visit", ev,
                                          "<script>alert('key')</script>"));
    }
  };
  // A key with what a path may not hold (a backslash, a ".." start, a slash), markup, a space, UTF-8:
  // the actions carry it in the form, the confirmation in the query.
  const std::string key = "..\\cust/<b>42</b> \xC3\xA9";
  const std::string key_encoded = "..%5Ccust%2F%3Cb%3E42%3C%2Fb%3E%20%C3%A9";
  park(key, 3);
  park("plain", 1);
  const auto keys_page = http_get(port, "/parked");
  const std::string key_html = "..\\cust/&lt;b&gt;42&lt;/b&gt; \xC3\xA9";
  CHECK_THAT(keys_page.body, Catch::Contains("<td class=\"key\">" + key_html + "</td>"));
  CHECK_THAT(keys_page.body, Catch::Contains("&lt;script&gt;alert(&#39;key&#39;)&lt;/script&gt;"));
  CHECK_THAT(keys_page.body, !Catch::Contains("<script>alert"));
  CHECK_THAT(keys_page.body, Catch::Contains("action=\"/parked/visits/keys/retry\">"));
  CHECK_THAT(keys_page.body, Catch::Contains("<input type=\"hidden\" name=\"key\" value=\"" + key_html + "\">"));
  CHECK_THAT(keys_page.body, Catch::Contains("href=\"/parked/visits/keys/discard?key=" + key_encoded + "\""));
  CHECK_THAT(keys_page.body, Catch::Contains("<td>visits</td><td class=\"num\">4</td><td>test:1 (4)</td>"));
  const auto action_of = [&](const std::string& k) {
    for (const auto& p : omnibus::list_parked_keys(db, opts.schema, "visits")) {
      if (p.key == k) return p.action;
    }
    return std::string("(not parked)");
  };
  const auto act_on = [&](const std::string& action, const std::string& encoded_key) {
    return post(port, "/parked/visits/keys/" + action, csrf + "&key=" + encoded_key, {origin(port)}).status;
  };
  // Discard asks first (a GET changes nothing), then takes a POST.
  const auto confirm = http_get(port, "/parked/visits/keys/discard?key=" + key_encoded);
  CHECK(confirm.status == 200);
  CHECK_THAT(confirm.body, Catch::Contains("drop the <strong>3</strong> parked event(s) of key <strong>" + key_html));
  CHECK_THAT(confirm.body, Catch::Contains("<input type=\"hidden\" name=\"key\" value=\"" + key_html + "\">"));
  CHECK(action_of(key).empty());
  CHECK(act_on("skip", key_encoded) == 303);
  CHECK(action_of(key) == "skip");
  CHECK(act_on("discard", key_encoded) == 303);
  CHECK(action_of(key) == "discard");
  CHECK(act_on("retry", "plain") == 303);
  CHECK(action_of("plain") == "retry");
  CHECK(act_on("retry", "nope") == 409);
  CHECK(act_on("explode", "plain") == 404);
  CHECK(act_on("retry", "") == 400);
  CHECK(act_on("retry", std::string(300, 'k')) == 400);
  CHECK(http_get(port, "/parked/visits/keys/discard?key=nope").status == 404);
  CHECK(http_get(port, "/parked/visits/keys/discard").status == 400);
  CHECK(http_get(port, "/parked/visits/keys/discard?key=plain&more=1").status == 400);

  // A redrive paused, resumed and cancelled from its page (no runner here: it stays put).
  omnibus::redrive_request req;
  req.filter.listener = "loyalty";
  req.requested_by = "test";
  const std::int64_t r = omnibus::start_redrive(db, opts.schema, req).id;
  const std::string base = "/redrives/" + std::to_string(r);
  CHECK_THAT(http_get(port, base).body, Catch::Contains("action=\"" + base + "/pause\""));
  CHECK(act(base + "/pause").status == 303);
  CHECK(omnibus::find_redrive(db, opts.schema, r)->state == "paused");
  CHECK(omnibus::find_redrive(db, opts.schema, r)->updated_by == "dashboard");
  CHECK(act(base + "/resume").status == 303);
  CHECK(omnibus::find_redrive(db, opts.schema, r)->state == "running");
  CHECK(act(base + "/cancel").status == 303);
  CHECK(omnibus::find_redrive(db, opts.schema, r)->state == "cancelled");
  CHECK(act(base + "/cancel").status == 409);
  CHECK(act(base + "/explode").status == 404);
  w.signal(SIGTERM);
  CHECK(w.wait(30s) == 0);
}
