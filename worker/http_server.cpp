#include "http_server.hpp"

#include <atomic>
#include <optional>
#include <stdexcept>
#include <thread>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/strand.hpp>
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

struct http_server::impl {
  impl(route_function r, std::shared_ptr<spdlog::logger> l, http_limits lim)
      : route(std::move(r)), log(std::move(l)), limits(lim), acceptor(io) {}

  route_function route;
  std::shared_ptr<spdlog::logger> log;
  http_limits limits;
  std::atomic<std::size_t> connections{0};  // before io: sessions destroyed with io count down
  asio::io_context io;
  tcp::acceptor acceptor;
  std::thread thread;

  // One connection: read a request, answer it, repeat while the client keeps it alive.
  struct session : std::enable_shared_from_this<session> {
    session(impl& s, tcp::socket socket) : server(s), stream(std::move(socket)) {}
    ~session() { server.connections.fetch_sub(1, std::memory_order_relaxed); }

    impl& server;
    beast::tcp_stream stream;
    beast::flat_buffer buffer{8 * 1024};
    std::optional<http::request_parser<http::string_body>> parser;
    http::response<http::string_body> response;

    void read() {
      parser.emplace();
      parser->header_limit(static_cast<std::uint32_t>(server.limits.max_header_bytes));
      parser->body_limit(server.limits.max_body_bytes);
      stream.expires_after(server.limits.read_timeout);
      http::async_read(stream, buffer, *parser,
                       [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_read(ec); });
    }

    void on_read(beast::error_code ec) {
      if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == asio::error::operation_aborted) {
        return close();
      }
      if (ec == http::error::header_limit) return reply_error(431, "request headers too large", false);
      if (ec == http::error::body_limit) return reply_error(413, "request body too large", false);
      if (ec) return reply_error(400, "malformed request", false);
      const auto& req = parser->get();
      if (req.method() != http::verb::get && req.method() != http::verb::head) {
        response = {};
        response.set(http::field::allow, "GET, HEAD");
        return reply_error(405, "only GET and HEAD", req.keep_alive());
      }
      std::string path(req.target());
      if (const auto q = path.find('?'); q != std::string::npos) path.resize(q);
      http_reply r;
      try {
        r = server.route(path);
      } catch (const std::exception& e) {
        server.log->warn("http: {} failed: {}", path, e.what());
        r = {500, "text/plain; charset=utf-8", "internal error\n"};
      }
      response = {};
      response.result(static_cast<unsigned>(r.status));
      response.version(req.version());
      response.set(http::field::content_type, r.content_type);
      response.set(http::field::cache_control, "no-store");
      response.keep_alive(req.keep_alive());
      response.body() = req.method() == http::verb::head ? std::string() : std::move(r.body);
      response.prepare_payload();
      write();
    }

    void reply_error(unsigned status, const char* why, bool keep_alive) {
      response.result(status);
      response.version(11);
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
}

unsigned short http_server::port() const noexcept { return impl_->acceptor.local_endpoint().port(); }

}  // namespace omnibus::detail
