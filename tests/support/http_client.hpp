#pragma once
// A bare HTTP/1.1 client over a loopback socket, for the worker's endpoint: whole requests
// (GET), and raw bytes for the hostile-input tests.

#include <chrono>
#include <cctype>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

namespace test_env {

struct http_result {
  int status = 0;     ///< 0: no answer (refused, closed or timed out)
  std::string body;
  std::string raw;    ///< everything received
};

/// A connected socket to 127.0.0.1:port, or -1.
inline int connect_loopback(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

/// Reads until the peer closes or `within` passes.
inline std::string read_all(int fd, std::chrono::milliseconds within) {
  std::string out;
  const auto deadline = std::chrono::steady_clock::now() + within;
  char buf[4096];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) break;
    const ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

/// Sends `request` as is (Connection: close expected), returns what came back.
inline http_result raw_request(int port, const std::string& request,
                               std::chrono::milliseconds within = std::chrono::seconds(10)) {
  http_result r;
  const int fd = connect_loopback(port);
  if (fd < 0) return r;
  (void)::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  r.raw = read_all(fd, within);
  ::close(fd);
  if (r.raw.rfind("HTTP/1.", 0) == 0 && r.raw.size() >= 12) r.status = std::atoi(r.raw.c_str() + 9);
  if (const auto at = r.raw.find("\r\n\r\n"); at != std::string::npos) r.body = r.raw.substr(at + 4);
  return r;
}

/// The value of response header `name` (case-insensitive) in `raw`, or empty.
inline std::string header_of(const std::string& raw, std::string name) {
  for (auto& c : name) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const auto end = raw.find("\r\n\r\n");
  std::size_t at = raw.find("\r\n");
  while (at != std::string::npos && at < end) {
    const auto next = raw.find("\r\n", at + 2);
    std::string line = raw.substr(at + 2, next - at - 2);
    const auto colon = line.find(':');
    if (colon != std::string::npos) {
      std::string key = line.substr(0, colon);
      for (auto& c : key) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      if (key == name) {
        std::string v = line.substr(colon + 1);
        while (!v.empty() && v.front() == ' ') v.erase(0, 1);
        return v;
      }
    }
    at = next;
  }
  return {};
}

/// `method` `path` with `headers` ("Name: value" each) and `body`, one request per connection.
inline http_result http_send(int port, const std::string& method, const std::string& path,
                             const std::vector<std::string>& headers = {}, const std::string& body = {},
                             const std::string& host = "127.0.0.1") {
  std::string req = method + " " + path + " HTTP/1.1\r\nHost: " + host + "\r\nConnection: close\r\n";
  for (const auto& h : headers) req += h + "\r\n";
  if (!body.empty() || method == "POST") req += "Content-Length: " + std::to_string(body.size()) + "\r\n";
  req += "\r\n" + body;
  return raw_request(port, req);
}

/// The port a worker started with `--http 127.0.0.1:0` logged ("... /readyz on port N"), or 0.
inline int logged_http_port(const std::string& output) {
  const std::string marker = "/readyz on port ";
  const auto at = output.find(marker);
  return at == std::string::npos ? 0 : std::atoi(output.c_str() + at + marker.size());
}

/// GET `path`, one request per connection.
inline http_result http_get(int port, const std::string& path) {
  return raw_request(port, "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
}

}  // namespace test_env
