#include "http_server.hpp"

#include <algorithm>
#include <atomic>
#include <optional>
#include <stdexcept>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/strand.hpp>
#include <boost/asio/thread_pool.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <spdlog/spdlog.h>

#include "omnibus/error.hpp"

namespace omnibus::detail {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

namespace {

tcp::endpoint parse_address(const std::string& address) {
  const auto colon = address.rfind(':');
  if (colon == std::string::npos || colon == 0 || colon + 1 == address.size()) {
    throw std::invalid_argument("--http '" + address + "': expected host:port, e.g. 127.0.0.1:9464");
  }
  std::string host = address.substr(0, colon);
  if (host.size() > 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  const std::string port_text = address.substr(colon + 1);
  unsigned long port = 0;
  try {
    std::size_t used = 0;
    port = std::stoul(port_text, &used);
    if (used != port_text.size() || port > 65535) throw std::out_of_range("port");
  } catch (const std::exception&) {
    throw std::invalid_argument("--http '" + address + "': the port must be a number from 0 to 65535");
  }
  boost::system::error_code ec;
  const auto ip = asio::ip::make_address(host, ec);
  if (ec) throw std::invalid_argument("--http '" + address + "': '" + host + "' is not an IP address");
  return {ip, static_cast<unsigned short>(port)};
}

}  // namespace

void check_http_address(const std::string& address) { (void)parse_address(address); }

namespace {
// 127.0.0.0/8, ::1, and IPv4 loopback seen through an IPv6 socket (::ffff:127.x.y.z).
bool loopback(const asio::ip::address& a) {
  if (a.is_loopback()) return true;
  return a.is_v6() && a.to_v6().is_v4_mapped() &&
         asio::ip::make_address_v4(asio::ip::v4_mapped, a.to_v6()).is_loopback();
}
}  // namespace

bool is_loopback_address(const std::string& address) { return loopback(parse_address(address).address()); }

namespace {

// Sent with every answer, errors included. The dashboard's pages need nothing inline: scripts,
// styles and images come from the worker itself, so the policy forbids everything else.
constexpr std::pair<const char*, const char*> security_headers[] = {
    {"Content-Security-Policy",
     "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
     "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"},
    {"X-Content-Type-Options", "nosniff"},
    // same-origin, not no-referrer: under no-referrer a browser sends "Origin: null" with a form
    // POST, and the dashboard's actions check Origin. Other sites still get no referrer.
    {"Referrer-Policy", "same-origin"},
    {"X-Frame-Options", "DENY"},
    {"Cross-Origin-Opener-Policy", "same-origin"},
    {"Cache-Control", "no-store"},
};

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// A path the routes may look at: absolute, and no segment that climbs or hides a byte a file
// system or a proxy could read differently ("..", ".", "\", NUL), raw or percent-decoded.
bool acceptable_path(std::string_view path) {
  if (path.empty() || path.front() != '/') return false;
  std::string decoded;
  for (std::size_t i = 0; i < path.size(); ++i) {
    if (path[i] == '%') {
      if (i + 2 >= path.size() || hex_value(path[i + 1]) < 0 || hex_value(path[i + 2]) < 0) return false;
      decoded += static_cast<char>(hex_value(path[i + 1]) * 16 + hex_value(path[i + 2]));
      i += 2;
    } else {
      decoded += path[i];
    }
  }
  for (const std::string_view s : {std::string_view(path), std::string_view(decoded)}) {
    if (s.find('\\') != std::string_view::npos || s.find('\0') != std::string_view::npos) return false;
    std::size_t at = 0;
    while (at <= s.size()) {
      const auto slash = s.find('/', at);
      const auto seg = s.substr(at, slash == std::string_view::npos ? std::string_view::npos : slash - at);
      if (seg == ".." || seg == ".") return false;
      if (slash == std::string_view::npos) break;
      at = slash + 1;
    }
  }
  return true;
}

}  // namespace

struct http_server::impl {
  impl(route_function r, std::shared_ptr<spdlog::logger> l, http_limits lim)
      : route(std::move(r)), log(std::move(l)), limits(lim), acceptor(io), pool(std::max<std::size_t>(1, lim.handler_threads)) {}

  route_function route;
  std::shared_ptr<spdlog::logger> log;
  http_limits limits;
  std::atomic<std::size_t> connections{0};  // before io: sessions destroyed with io count down
  asio::io_context io;
  tcp::acceptor acceptor;
  asio::thread_pool pool;  // after io: handlers it drops on stop release sessions while io lives
  asio::thread_pool priority_pool{1};  // limits.priority_paths: probes never wait for a page
  std::thread thread;

  // One connection: read a request, answer it, repeat while the client keeps it alive.
  struct session : std::enable_shared_from_this<session> {
    session(impl& s, tcp::socket socket) : server(s), stream(std::move(socket)) {
      beast::error_code ec;
      const auto peer = stream.socket().remote_endpoint(ec);
      peer_loopback = !ec && loopback(peer.address());
      if (!ec) peer_address = peer.address().to_string();
    }
    ~session() { server.connections.fetch_sub(1, std::memory_order_relaxed); }

    impl& server;
    beast::tcp_stream stream;
    bool peer_loopback = false;
    std::string peer_address;
    beast::flat_buffer buffer{8 * 1024};
    std::optional<http::request_parser<http::string_body>> parser;
    http::response<http::string_body> response;

    void read() {
      parser.emplace();
      parser->header_limit(static_cast<std::uint32_t>(server.limits.max_header_bytes));
      stream.expires_after(server.limits.read_timeout);
      http::async_read_header(stream, buffer, *parser,
                              [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_header(ec); });
    }

    // The header decides how much body may follow: none to speak of for GET, a form for POST.
    void on_header(beast::error_code ec) {
      if (ec) return on_error(ec);
      const auto method = parser->get().method();
      const std::size_t limit = method == http::verb::post ? server.limits.max_post_bytes : server.limits.max_body_bytes;
      // The parser checked the announced length against its limit before it was lowered here.
      if (const auto length = parser->content_length(); length && *length > limit) {
        return reply_error(413, "request body too large", false);
      }
      parser->body_limit(limit);
      http::async_read(stream, buffer, *parser,
                       [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_read(ec); });
    }

    void on_error(beast::error_code ec) {
      if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == asio::error::operation_aborted) {
        return close();
      }
      if (ec == http::error::header_limit) return reply_error(431, "request headers too large", false);
      if (ec == http::error::body_limit) return reply_error(413, "request body too large", false);
      return reply_error(400, "malformed request", false);
    }

    void on_read(beast::error_code ec) {
      if (ec) return on_error(ec);
      const auto& req = parser->get();
      if (req.method() != http::verb::get && req.method() != http::verb::head && req.method() != http::verb::post) {
        return reply_error(405, "only GET, HEAD and POST", req.keep_alive(), "GET, HEAD, POST");
      }
      const std::string_view target(req.target().data(), req.target().size());
      if (target.size() > server.limits.max_target_bytes) return reply_error(414, "request target too long", false);
      http_request r;
      r.method = std::string(req.method_string());
      const auto q = target.find('?');
      r.path = std::string(target.substr(0, q));
      if (q != std::string_view::npos) r.query = std::string(target.substr(q + 1));
      // An error to a HEAD carries a body all the same: the connection closes after it, so the
      // client never reads those bytes as the next answer.
      if (!acceptable_path(r.path)) {
        return reply_error(400, "bad request path", req.keep_alive() && req.method() != http::verb::head);
      }
      auto header = [&](http::field f) {
        const auto it = req.find(f);
        return it == req.end() ? std::string() : std::string(it->value());
      };
      r.host = header(http::field::host);
      r.origin = header(http::field::origin);
      r.cookie = header(http::field::cookie);
      r.authorization = header(http::field::authorization);
      r.content_type = header(http::field::content_type);
      r.forwarded = req.find("X-Forwarded-For") != req.end() || req.find(http::field::forwarded) != req.end() ||
                    req.find("X-Real-IP") != req.end();
      r.peer_loopback = peer_loopback;
      r.peer = peer_address;
      if (req.method() == http::verb::post) r.body = req.body();
      const bool head = req.method() == http::verb::head;
      const unsigned version = req.version();
      const bool keep_alive = req.keep_alive();
      auto listed = [&](const std::vector<std::string>& paths) {
        return std::find(paths.begin(), paths.end(), r.path) != paths.end();
      };
      if (listed(server.limits.inline_paths)) return answer(call_route(r), head, version, keep_alive);
      // The route may read the database: on a pool, and the answer goes back to this
      // connection's strand.
      auto& pool = listed(server.limits.priority_paths) ? server.priority_pool : server.pool;
      asio::post(pool, [self = shared_from_this(), r = std::move(r), head, version, keep_alive]() mutable {
        http_reply out = self->call_route(r);
        asio::post(self->stream.get_executor(), [self, out = std::move(out), head, version, keep_alive]() mutable {
          self->answer(std::move(out), head, version, keep_alive);
        });
      });
    }

    http_reply call_route(const http_request& r) {
      try {
        return server.route(r);
      } catch (const std::exception& e) {
        server.log->warn("http: {} {} failed: {}", r.method, r.path, e.what());
        return {500, "text/plain; charset=utf-8", "internal error\n", {}};
      }
    }

    void answer(http_reply r, bool head, unsigned version, bool keep_alive) {
      response = {};
      response.result(static_cast<unsigned>(r.status));
      response.version(version);
      add_security_headers();
      response.set(http::field::content_type, r.content_type);
      for (auto& [name, value] : r.headers) response.insert(name, value);
      response.keep_alive(keep_alive);
      const std::size_t length = r.body.size();
      response.body() = head ? std::string() : std::move(r.body);
      response.prepare_payload();
      if (head) response.content_length(length);  // what a GET would send
      write();
    }

    void add_security_headers() {
      for (const auto& [name, value] : security_headers) response.set(name, value);
    }

    void reply_error(unsigned status, const char* why, bool keep_alive, const char* allow = nullptr) {
      response = {};  // nothing of an earlier answer on this connection (Location, Set-Cookie)
      response.result(status);
      if (allow) response.set(http::field::allow, allow);
      response.version(11);
      add_security_headers();
      response.set(http::field::content_type, "text/plain; charset=utf-8");
      response.keep_alive(keep_alive);
      response.body() = std::string(why) + "\n";
      response.prepare_payload();
      write();
    }

    void write() {
      stream.expires_after(server.limits.write_timeout);
      http::async_write(stream, response, [self = shared_from_this()](beast::error_code ec, std::size_t) {
        if (ec || !self->response.keep_alive()) return self->close();
        self->read();
      });
    }

    void close() {
      beast::error_code ignored;
      stream.socket().shutdown(tcp::socket::shutdown_send, ignored);
      stream.close();
    }
  };

  void accept() {
    acceptor.async_accept(asio::make_strand(io), [this](beast::error_code ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted) return;
      if (!ec) {
        if (connections.fetch_add(1, std::memory_order_relaxed) >= limits.max_connections) {
          connections.fetch_sub(1, std::memory_order_relaxed);
          beast::error_code ignored;
          socket.close(ignored);  // over the limit: cut off at once, nothing read
        } else {
          std::make_shared<session>(*this, std::move(socket))->read();
        }
      }
      accept();
    });
  }
};

http_server::http_server(const std::string& address, route_function route, std::shared_ptr<spdlog::logger> log,
                         http_limits limits)
    : impl_(std::make_unique<impl>(std::move(route), std::move(log), limits)) {
  const tcp::endpoint at = parse_address(address);
  beast::error_code ec;
  impl_->acceptor.open(at.protocol(), ec);
  if (!ec) impl_->acceptor.set_option(asio::socket_base::reuse_address(true), ec);
  if (!ec) impl_->acceptor.bind(at, ec);
  if (!ec) impl_->acceptor.listen(asio::socket_base::max_listen_connections, ec);
  if (ec) throw error("--http " + address + ": cannot listen there: " + ec.message());
  impl_->accept();
  impl_->thread = std::thread([this] { impl_->io.run(); });
}

http_server::~http_server() {
  impl_->io.stop();
  if (impl_->thread.joinable()) impl_->thread.join();
  for (auto* p : {&impl_->pool, &impl_->priority_pool}) {
    p->stop();  // queued routes never run
    p->join();  // running ones finish; their answers are dropped with io
  }
}

unsigned short http_server::port() const noexcept { return impl_->acceptor.local_endpoint().port(); }

}  // namespace omnibus::detail
