#pragma once
// The worker's one HTTP endpoint (Boost.Beast): GET, HEAD and small form POSTs, bounded time,
// size and connections, security headers on every answer. Requests are answered on a small
// thread pool, so one slow page never holds up /metrics. What it serves is the caller's
// (metrics, health, the dashboard); internal to the worker library.

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <spdlog/fwd.h>

namespace omnibus::detail {

/// One request, as the route sees it. Everything in it came from the client: untrusted.
struct http_request {
  std::string method;         ///< GET, HEAD or POST (others never reach a route)
  std::string path;           ///< the target up to '?', still percent-encoded; checked: starts with '/',
                              ///< no "..", "\" or NUL segment, raw or decoded
  std::string query;          ///< after '?', still encoded; empty when none
  std::string body;           ///< POST only: at most http_limits::max_post_bytes
  std::string host;           ///< the Host header
  std::string origin;         ///< the Origin header; empty when absent
  std::string cookie;         ///< the Cookie header
  std::string authorization;  ///< the Authorization header
  std::string content_type;   ///< the Content-Type header
  bool forwarded = false;     ///< X-Forwarded-For, Forwarded or X-Real-IP present: it came through a proxy
  bool peer_loopback = false; ///< the TCP peer is 127.0.0.0/8 or ::1 (or ::ffff:127.0.0.0/104)
  std::string peer;           ///< the TCP peer's address, for logs (never trusted for access)
};

/// One answer.
struct http_reply {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  ///< more headers (Location, Set-Cookie, ...)
};

/// Limits that keep hostile clients from costing more than a bounded amount.
struct http_limits {
  std::size_t max_connections = 64;                        ///< more are closed at once
  std::size_t max_header_bytes = 8 * 1024;                 ///< request line and headers (431 beyond)
  std::size_t max_target_bytes = 2 * 1024;                 ///< path and query (414 beyond)
  std::size_t max_body_bytes = 1024;                       ///< a GET or HEAD needs none (413 beyond)
  std::size_t max_post_bytes = 16 * 1024;                  ///< a form POST (413 beyond)
  std::size_t handler_threads = 2;                         ///< routes run here, not on the I/O thread
  /// Paths answered on the I/O thread itself: quick ones that touch no server (/healthz), so
  /// a stalled database or NATS can never fail a liveness probe.
  std::vector<std::string> inline_paths;
  /// Paths answered on a thread of their own (/metrics, /readyz): never queued behind slow
  /// pages, and never holding up the I/O thread when what they read is slow.
  std::vector<std::string> priority_paths;
  std::chrono::milliseconds read_timeout{5000};            ///< to receive one whole request
  std::chrono::milliseconds write_timeout{10000};          ///< to send one answer
};

/// Throws std::invalid_argument unless `address` is "ip:port" (IPv6 in brackets).
void check_http_address(const std::string& address);
/// True when `address` ("ip:port", checked) binds only loopback: 127.0.0.0/8 or [::1].
[[nodiscard]] bool is_loopback_address(const std::string& address);

/// Serves requests on its own I/O thread and `limits.handler_threads` handler threads until
/// destroyed. `route` runs on a handler thread, possibly on several at once (on the I/O thread
/// for `limits.inline_paths`).
class http_server {
 public:
  using route_function = std::function<http_reply(const http_request&)>;
  /// Binds `address` ("host:port"; port 0 picks one) at once. Throws std::invalid_argument for
  /// an address that does not parse, omnibus::error naming it when it cannot be bound.
  http_server(const std::string& address, route_function route, std::shared_ptr<spdlog::logger> log,
              http_limits limits = {});
  /// Stops accepting, waits for routes that are running (queued ones never run), closes every
  /// connection.
  ~http_server();
  http_server(const http_server&) = delete;
  http_server& operator=(const http_server&) = delete;

  /// The port it listens on.
  [[nodiscard]] unsigned short port() const noexcept;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace omnibus::detail
