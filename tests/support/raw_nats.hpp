#pragma once
// A NATS client of a few lines, below NATS.c's API, for tests that must send what no client
// library would: any bytes as the header block (HPUB), any bytes in the subject. It waits for
// each JetStream PubAck, so a message it published is in the stream when publish() returns.
// Loopback only: it connects to the host and port of the test's NATS URL.

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <catch2/catch.hpp>

namespace test_env {

class raw_nats {
 public:
  /// `url` as nats://127.0.0.1:<port> (the form scripts/servers exports).
  explicit raw_nats(const std::string& url) {
    const auto colon = url.rfind(':');
    const int port = std::stoi(url.substr(colon + 1));
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd_ >= 0);
    timeval tv{5, 0};  // every read is bounded: a missing answer fails the test, never hangs it
    ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(static_cast<std::uint16_t>(port));
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
    (void)line();  // INFO {...}
    send("CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true,\"no_responders\":true,\"protocol\":1}\r\n"
         "SUB _RAW_ACK.1 1\r\nPING\r\n");
    while (line() != "PONG") {
    }
  }
  ~raw_nats() { ::close(fd_); }
  raw_nats(const raw_nats&) = delete;
  raw_nats& operator=(const raw_nats&) = delete;

  /// Publishes `header_block` (empty: none) and `body` on `subject` as they are, and returns
  /// the server's PubAck (a JSON object; it names the error when the stream refused it).
  std::string publish(std::string_view subject, std::string_view header_block, std::string_view body) {
    std::string out;
    if (header_block.empty()) {
      out = "PUB " + std::string(subject) + " _RAW_ACK.1 " + std::to_string(body.size()) + "\r\n";
    } else {
      out = "HPUB " + std::string(subject) + " _RAW_ACK.1 " + std::to_string(header_block.size()) + " " +
            std::to_string(header_block.size() + body.size()) + "\r\n";
      out += header_block;
    }
    out += body;
    out += "\r\n";
    send(out);
    for (;;) {
      const std::string l = line();
      if (l == "PING") {
        send("PONG\r\n");
        continue;
      }
      if (l.rfind("-ERR", 0) == 0) FAIL("nats-server refused the raw publish: " << l);
      if (l.rfind("MSG _RAW_ACK.1 ", 0) != 0 && l.rfind("HMSG _RAW_ACK.1 ", 0) != 0) continue;
      const std::size_t total = std::stoul(l.substr(l.rfind(' ') + 1));
      std::string payload = read_exactly(total + 2);
      payload.resize(total);
      return payload;
    }
  }

 private:
  void send(std::string_view bytes) {
    while (!bytes.empty()) {
      const ssize_t n = ::send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL);
      REQUIRE(n > 0);
      bytes.remove_prefix(static_cast<std::size_t>(n));
    }
  }
  void fill() {
    char buf[4096];
    const ssize_t n = ::recv(fd_, buf, sizeof buf, 0);
    if (n <= 0) FAIL("nats-server did not answer the raw client within 5 s");
    in_.append(buf, static_cast<std::size_t>(n));
  }
  std::string line() {
    std::size_t eol;
    while ((eol = in_.find("\r\n")) == std::string::npos) fill();
    std::string l = in_.substr(0, eol);
    in_.erase(0, eol + 2);
    return l;
  }
  std::string read_exactly(std::size_t n) {
    while (in_.size() < n) fill();
    std::string out = in_.substr(0, n);
    in_.erase(0, n);
    return out;
  }

  int fd_ = -1;
  std::string in_;
};

}  // namespace test_env
