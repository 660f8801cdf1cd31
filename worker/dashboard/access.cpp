#include "dashboard/access.hpp"

#include <algorithm>

#include <sys/random.h>

#include "omnibus/error.hpp"

namespace omnibus::detail {

namespace {

constexpr std::size_t max_sessions = 256;
constexpr auto session_life = std::chrono::hours(12);

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

// "host:port" -> host, lower case; "[::1]:80" -> "[::1]".
std::string host_part(std::string_view host) {
  std::string h(host);
  if (!h.empty() && h.front() == '[') {
    const auto close = h.find(']');
    h = close == std::string::npos ? h : h.substr(0, close + 1);
  } else if (const auto colon = h.rfind(':'); colon != std::string::npos) {
    h.resize(colon);
  }
  std::transform(h.begin(), h.end(), h.begin(), [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return h;
}

}  // namespace

bool constant_time_equal(std::string_view a, std::string_view b) noexcept {
  const std::size_t n = std::max(a.size(), b.size());
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (std::size_t i = 0; i < n; ++i) {
    const unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    const unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff = static_cast<unsigned char>(diff | (x ^ y));
  }
  return diff == 0;
}

std::string random_hex(std::size_t n) {
  std::string bytes(n, '\0');
  std::size_t got = 0;
  while (got < n) {
    const ssize_t r = ::getrandom(bytes.data() + got, n - got, 0);
    if (r < 0) throw error("http: no random bytes from the kernel (getrandom)");
    got += static_cast<std::size_t>(r);
  }
  static constexpr char digits[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * n);
  for (const unsigned char c : bytes) {
    out += digits[c >> 4];
    out += digits[c & 15];
  }
  return out;
}

std::vector<std::string> cookie_values(std::string_view header, std::string_view name) {
  std::vector<std::string> out;
  while (!header.empty() && out.size() < 8) {
    const auto semi = header.find(';');
    const std::string_view part = trim(header.substr(0, semi));
    if (const auto eq = part.find('='); eq != std::string_view::npos && part.substr(0, eq) == name) {
      out.emplace_back(part.substr(eq + 1));
    }
    if (semi == std::string_view::npos) break;
    header.remove_prefix(semi + 1);
  }
  return out;
}

access_control::access_control(access_config config) : config_(std::move(config)), csrf_(random_hex(32)) {}

bool access_control::is_probe(std::string_view path) noexcept {
  return path == "/metrics" || path == "/healthz" || path == "/readyz";
}

// Every cookie of our name counts: another service on the host may have planted one with a
// narrower path, which the browser sends first.
bool access_control::has_session(std::string_view cookie_header) const {
  const auto ids = cookie_values(cookie_header, config_.cookie_name);
  if (ids.empty()) return false;
  std::lock_guard lock(mutex_);
  const auto now = std::chrono::steady_clock::now();
  for (const auto& id : ids) {
    for (const auto& [sid, expiry] : sessions_) {
      if (expiry > now && constant_time_equal(sid, id)) return true;
    }
  }
  return false;
}

// A loopback endpoint answers only to names of loopback (or a configured origin's host): a page
// elsewhere that rebinds its own name to 127.0.0.1 sends its own name as Host.
bool access_control::host_allowed(std::string_view host) const {
  if (!config_.loopback_bind) return true;
  const std::string h = host_part(host);
  const bool loopback_literal = h.rfind("127.", 0) == 0 && h.find_first_not_of("0123456789.") == std::string::npos;
  if (h == "localhost" || h == "[::1]" || loopback_literal) return true;  // any of 127/8: --http may bind 127.0.0.2
  for (const auto& o : config_.origins) {
    const auto scheme = o.find("://");
    if (host_part(scheme == std::string::npos ? o : o.substr(scheme + 3)) == h) return true;
  }
  return false;
}

// A state change must come from our own pages: Origin is this endpoint's (as the Host names
// it) or one configured. Browsers always send Origin on a POST; a missing one is refused.
bool access_control::origin_allowed(const http_request& r) const {
  if (r.origin.empty()) return false;
  if (r.origin == "http://" + r.host || r.origin == "https://" + r.host) return true;
  return std::find(config_.origins.begin(), config_.origins.end(), r.origin) != config_.origins.end();
}

access_verdict access_control::decide(const http_request& r, std::string_view form_csrf) const {
  // A loopback endpoint answers only to loopback's names, probes included: a page elsewhere
  // that rebinds its own name to 127.0.0.1 would otherwise read it from the victim's browser.
  // (An HTTP/1.0 health checker on this machine may send no Host at all.)
  const bool hostless_probe = r.host.empty() && r.peer_loopback && is_probe(r.path);
  if (!hostless_probe && !host_allowed(r.host)) return access_verdict::misdirected;
  const bool authorized = [&] {
    // Without a token only this machine's clients reach a loopback bind; through a reverse
    // proxy (a forwarding header) anyone could, so nothing is open that way.
    if (config_.token.empty()) return !r.forwarded;
    const std::string_view auth = r.authorization;
    if (auth.substr(0, 7) == "Bearer ") return constant_time_equal(trim(auth.substr(7)), config_.token);
    return has_session(r.cookie);
  }();
  if (is_probe(r.path)) {
    // Scrapers and probes on the same machine need no token; through a proxy they do.
    if (authorized || (r.peer_loopback && !r.forwarded)) return access_verdict::allow;
    return access_verdict::unauthorized;
  }
  const bool login_page = r.path == "/login";
  const bool asset = r.path.rfind("/assets/", 0) == 0;
  if (!authorized && !login_page && !asset) return access_verdict::unauthorized;
  if (r.method == "POST") {
    if (!origin_allowed(r)) return access_verdict::forbidden;
    if (login_page) return access_verdict::allow;  // the token itself is the proof (login() checks it)
    if (config_.read_only && r.path != "/logout") return access_verdict::forbidden;
    if (!constant_time_equal(form_csrf, csrf_)) return access_verdict::forbidden;
  }
  return access_verdict::allow;
}

std::string access_control::login(std::string_view token) {
  if (config_.token.empty() || !constant_time_equal(token, config_.token)) return {};
  const auto now = std::chrono::steady_clock::now();
  std::lock_guard lock(mutex_);
  std::erase_if(sessions_, [&](const auto& s) { return s.second <= now; });
  if (sessions_.size() >= max_sessions) {
    sessions_.erase(std::min_element(sessions_.begin(), sessions_.end(),
                                     [](const auto& a, const auto& b) { return a.second < b.second; }));
  }
  std::string id = random_hex(32);
  sessions_.emplace(id, now + session_life);
  return id;
}

void access_control::logout(std::string_view cookie_header) {
  std::lock_guard lock(mutex_);
  for (const auto& id : cookie_values(cookie_header, config_.cookie_name)) sessions_.erase(id);
}

}  // namespace omnibus::detail
