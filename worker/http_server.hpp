#pragma once
// The worker's one HTTP endpoint (Boost.Beast): GET only, small requests, bounded time and
// connections. What it serves is the caller's (metrics, health); internal to the worker library.

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include <spdlog/fwd.h>

namespace omnibus::detail {

/// One answer.
struct http_reply {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
};

/// Limits that keep hostile clients from costing more than a bounded amount.
struct http_limits {
  std::size_t max_connections = 64;                        ///< more are closed at once
  std::size_t max_header_bytes = 8 * 1024;                 ///< request line and headers (431 beyond)
  std::size_t max_body_bytes = 1024;                       ///< a GET needs none (413 beyond)
  std::chrono::milliseconds read_timeout{5000};            ///< to receive one whole request
  std::chrono::milliseconds write_timeout{10000};          ///< to send one answer
};

/// Throws std::invalid_argument unless `address` is "ip:port" (IPv6 in brackets).
void check_http_address(const std::string& address);

/// Serves GET requests on its own thread until destroyed. `route` gets the request's path
/// (without the query) and runs on that thread.
class http_server {
 public:
  using route_function = std::function<http_reply(const std::string& path)>;
  /// Binds `address` ("host:port"; port 0 picks one) at once. Throws std::invalid_argument for
  /// an address that does not parse, omnibus::error naming it when it cannot be bound.
  http_server(const std::string& address, route_function route, std::shared_ptr<spdlog::logger> log,
              http_limits limits = {});
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
