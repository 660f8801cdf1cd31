#pragma once
// Who may see and change what through the worker's HTTP endpoint: the token, sessions, the
// CSRF token and the Origin and Host checks. Pure decisions over a request, so that they can be
// tested without a socket. Internal to the worker library.

#include <chrono>
#include <cstddef>
#include <map>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

#include "http_server.hpp"

namespace omnibus::detail {

/// Equal contents, in a time that depends only on the lengths (the token is compared this way).
[[nodiscard]] bool constant_time_equal(std::string_view a, std::string_view b) noexcept;
/// `n` random bytes from the kernel, as 2n hex digits. Throws omnibus::error when it cannot.
[[nodiscard]] std::string random_hex(std::size_t n);

/// How the endpoint was configured.
struct access_config {
  std::string token;                 ///< empty: no token (allowed on a loopback bind only)
  bool read_only = false;            ///< no action is shown or accepted
  bool loopback_bind = true;         ///< the endpoint listens on loopback only
  std::vector<std::string> origins;  ///< more origins allowed to POST ("https://ops.example.com")
  /// The session cookie's name: one per port (browsers do not keep cookies apart by port).
  std::string cookie_name = "omnibus_session";
};

/// What to do with a request before its route runs.
enum class access_verdict {
  allow,
  unauthorized,   ///< 401: a token is configured and the request has neither it nor a session
  forbidden,      ///< 403: an action refused (read-only, no CSRF token, a foreign Origin)
  misdirected,    ///< 421: a Host that is not this endpoint's (DNS rebinding)
};

/// The endpoint's gatekeeper: decides, and keeps the login sessions (in memory, at most 256,
/// 12 hours each). Thread-safe.
class access_control {
 public:
  /// Throws omnibus::error when no random bytes can be had.
  explicit access_control(access_config config);

  /// The verdict for `r`. `form_csrf` is the POST's csrf field (empty for GET).
  [[nodiscard]] access_verdict decide(const http_request& r, std::string_view form_csrf) const;
  /// True for /metrics, /healthz and /readyz: scrapers and probes.
  [[nodiscard]] static bool is_probe(std::string_view path) noexcept;
  /// The token every form carries (hidden field "csrf").
  [[nodiscard]] const std::string& csrf_token() const noexcept { return csrf_; }
  /// The configuration.
  [[nodiscard]] const access_config& config() const noexcept { return config_; }

  /// Checks a login's token; on success returns a new session id for the cookie, else empty.
  /// Not throttled: a token has 16 bytes or more (worker_main refuses shorter ones), and a
  /// throttle keyed on the peer would lock out everyone behind one proxy.
  [[nodiscard]] std::string login(std::string_view token);
  /// Forgets the session named in `cookie_header`.
  void logout(std::string_view cookie_header);

 private:
  [[nodiscard]] bool has_session(std::string_view cookie_header) const;
  [[nodiscard]] bool host_allowed(std::string_view host) const;
  [[nodiscard]] bool origin_allowed(const http_request& r) const;

  access_config config_;
  std::string csrf_;
  mutable std::mutex mutex_;
  std::map<std::string, std::chrono::steady_clock::time_point> sessions_;  // id -> expiry
};

/// The values of every cookie called `name` in a Cookie header (at most 8), in order.
[[nodiscard]] std::vector<std::string> cookie_values(std::string_view cookie_header, std::string_view name);

}  // namespace omnibus::detail
