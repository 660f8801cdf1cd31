// The dashboard's access rules as a table: who may see pages, who may act, which probes need
// no token, and how Host and Origin are read. No socket: access_control decides on a request.

#include "dashboard/access.hpp"

#include <string>
#include <vector>

#include <catch2/catch.hpp>

using omnibus::detail::access_config;
using omnibus::detail::access_control;
using omnibus::detail::access_verdict;
using omnibus::detail::constant_time_equal;
using omnibus::detail::cookie_values;
using omnibus::detail::http_request;

namespace {

http_request get(std::string path, std::string host = "127.0.0.1:9464") {
  http_request r;
  r.method = "GET";
  r.path = std::move(path);
  r.host = std::move(host);
  r.peer_loopback = true;
  return r;
}

http_request post(std::string path, std::string origin = "http://127.0.0.1:9464") {
  http_request r = get(std::move(path));
  r.method = "POST";
  r.origin = std::move(origin);
  r.content_type = "application/x-www-form-urlencoded";
  return r;
}

}  // namespace

TEST_CASE("constant_time_equal compares contents and lengths", "[unit][dashboard]") {
  CHECK(constant_time_equal("", ""));
  CHECK(constant_time_equal("abc", "abc"));
  CHECK_FALSE(constant_time_equal("abc", "abd"));
  CHECK_FALSE(constant_time_equal("abc", "abcd"));
  CHECK_FALSE(constant_time_equal("abcd", "abc"));
  CHECK_FALSE(constant_time_equal("", "a"));
  CHECK_FALSE(constant_time_equal(std::string_view("a\0b", 3), std::string_view("a\0c", 3)));
}

TEST_CASE("cookie_values finds every cookie of a name among several", "[unit][dashboard]") {
  using v = std::vector<std::string>;
  CHECK(cookie_values("a=1; omnibus_session=xyz; b=2", "omnibus_session") == v{"xyz"});
  CHECK(cookie_values("omnibus_session=planted; omnibus_session=xyz", "omnibus_session") == v{"planted", "xyz"});
  CHECK(cookie_values("xomnibus_session=1", "omnibus_session").empty());
  CHECK(cookie_values("", "omnibus_session").empty());
}

TEST_CASE("without a token, on loopback: pages open, actions need the CSRF token and our Origin", "[unit][dashboard]") {
  access_control a{access_config{}};
  const std::string csrf = a.csrf_token();
  REQUIRE(csrf.size() == 64);
  CHECK(a.decide(get("/"), "") == access_verdict::allow);
  CHECK(a.decide(get("/dead-letters", "localhost:9464"), "") == access_verdict::allow);
  CHECK(a.decide(get("/", "[::1]:9464"), "") == access_verdict::allow);
  CHECK(a.decide(get("/", "evil.example"), "") == access_verdict::misdirected);
  CHECK(a.decide(get("/", "127.0.0.1.evil.example:9464"), "") == access_verdict::misdirected);
  CHECK(a.decide(get("/", "127.0.0.2:9464"), "") == access_verdict::allow);  // --http may bind any of 127/8
  CHECK(a.decide(get("/", "127.evil:9464"), "") == access_verdict::misdirected);
  CHECK(a.decide(get("/metrics", "evil.example"), "") == access_verdict::misdirected);  // a rebinding page reads nothing
  CHECK(a.decide(get("/metrics", "127.0.0.1:9464"), "") == access_verdict::allow);
  CHECK(a.decide(get("/healthz", ""), "") == access_verdict::allow);  // an HTTP/1.0 checker here sends no Host
  CHECK(a.decide(get("/", ""), "") == access_verdict::misdirected);
  auto proxied = get("/");
  proxied.forwarded = true;  // a reverse proxy on this machine: without a token nothing is open that way
  CHECK(a.decide(proxied, "") == access_verdict::unauthorized);
  proxied.path = "/healthz";
  CHECK(a.decide(proxied, "") == access_verdict::unauthorized);
  CHECK(a.decide(post("/listeners/x/pause"), csrf) == access_verdict::allow);
  CHECK(a.decide(post("/listeners/x/pause"), "") == access_verdict::forbidden);
  CHECK(a.decide(post("/listeners/x/pause"), csrf.substr(1)) == access_verdict::forbidden);
  CHECK(a.decide(post("/listeners/x/pause", ""), csrf) == access_verdict::forbidden);
  CHECK(a.decide(post("/listeners/x/pause", "http://evil.example"), csrf) == access_verdict::forbidden);
  CHECK(a.decide(post("/listeners/x/pause", "null"), csrf) == access_verdict::forbidden);
  access_control other{access_config{}};
  CHECK(other.csrf_token() != csrf);  // random per process
}

TEST_CASE("read-only refuses every action, with or without the CSRF token", "[unit][dashboard]") {
  access_config c;
  c.read_only = true;
  access_control a{c};
  CHECK(a.decide(get("/"), "") == access_verdict::allow);
  CHECK(a.decide(post("/redrives"), a.csrf_token()) == access_verdict::forbidden);
}

TEST_CASE("with a token: Bearer or a session for pages; probes free from loopback unless proxied", "[unit][dashboard]") {
  access_config c;
  c.token = "0123456789abcdef0123";
  c.loopback_bind = false;
  c.origins = {"https://ops.example.com"};
  access_control a{c};
  auto with = [](http_request r, std::string auth) {
    r.authorization = std::move(auth);
    return r;
  };
  CHECK(a.decide(get("/"), "") == access_verdict::unauthorized);
  CHECK(a.decide(with(get("/"), "Bearer 0123456789abcdef0123"), "") == access_verdict::allow);
  CHECK(a.decide(with(get("/"), "Bearer 0123456789abcdef012"), "") == access_verdict::unauthorized);
  CHECK(a.decide(with(get("/"), "Basic 0123456789abcdef0123"), "") == access_verdict::unauthorized);
  CHECK(a.decide(get("/login"), "") == access_verdict::allow);
  CHECK(a.decide(get("/assets/style.css"), "") == access_verdict::allow);
  CHECK(a.decide(get("/", "ops.example.com"), "") == access_verdict::unauthorized);  // any Host beyond loopback

  CHECK(a.decide(get("/metrics"), "") == access_verdict::allow);  // from loopback
  auto far = get("/metrics");
  far.peer_loopback = false;
  CHECK(a.decide(far, "") == access_verdict::unauthorized);
  CHECK(a.decide(with(far, "Bearer 0123456789abcdef0123"), "") == access_verdict::allow);
  auto via_proxy = get("/healthz");
  via_proxy.forwarded = true;
  CHECK(a.decide(via_proxy, "") == access_verdict::unauthorized);

  // Logins: the right token opens a session, a wrong one is refused and holds the door a second.
  auto session_request = [](const std::string& id) {
    http_request r = get("/");
    r.cookie = "omnibus_session=" + id;
    return r;
  };
  const std::string id = a.login("0123456789abcdef0123");
  REQUIRE(id.size() == 64);
  CHECK(a.decide(session_request(id), "") == access_verdict::allow);
  CHECK(a.decide(session_request(id + "0"), "") == access_verdict::unauthorized);
  CHECK(a.decide(session_request("planted; omnibus_session=" + id), "") == access_verdict::allow);
  CHECK(a.login("wrong").empty());
  CHECK(a.login("0123456789abcdef012").empty());
  CHECK(a.login("0123456789abcdef0123").size() == 64);  // a wrong one before never holds up the right one
  CHECK(a.login("0123456789abcdef0123") != id);          // a new session each time
  a.logout("omnibus_session=" + id);
  CHECK(a.decide(session_request(id), "") == access_verdict::unauthorized);

  // A POST from a configured origin, or from the Host's own, with the CSRF token.
  auto p = with(post("/redrives", "https://ops.example.com"), "Bearer 0123456789abcdef0123");
  CHECK(a.decide(p, a.csrf_token()) == access_verdict::allow);
  CHECK(a.decide(with(post("/redrives", "https://elsewhere.example"), "Bearer 0123456789abcdef0123"), a.csrf_token()) ==
        access_verdict::forbidden);
  CHECK(a.decide(post("/redrives", "https://ops.example.com"), a.csrf_token()) == access_verdict::unauthorized);
}

TEST_CASE("a loopback bind behind a proxy answers to the proxy's origin host", "[unit][dashboard]") {
  access_config c;
  c.origins = {"https://ops.example.com"};
  access_control a{c};
  CHECK(a.decide(get("/", "ops.example.com"), "") == access_verdict::allow);
  CHECK(a.decide(get("/", "OPS.EXAMPLE.COM:443"), "") == access_verdict::allow);
  CHECK(a.decide(get("/", "other.example.com"), "") == access_verdict::misdirected);
}
