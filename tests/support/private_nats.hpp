#pragma once
// A nats-server of one test's own, started and stopped through scripts/nats on a free
// loopback port: for tests that take a server down.

#include <cstdlib>
#include <random>
#include <string>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>

namespace test_env {

class private_nats {
 public:
  /// `server_args`: extra nats-server flags (authorization, TLS).
  explicit private_nats(std::string server_args = {})
      : port_(free_port()), dir_("/tmp/omnibus-test-nats-" + std::to_string(port_)), args_(std::move(server_args)) {
    start();
  }
  ~private_nats() { run("stop"); }
  private_nats(const private_nats&) = delete;
  private_nats& operator=(const private_nats&) = delete;

  void start() {
    REQUIRE(std::getenv("OMNIBUS_SOURCE_ROOT") != nullptr);  // meson test sets it
    REQUIRE(run("start") == 0);
  }
  void stop() { REQUIRE(run("stop") == 0); }
  [[nodiscard]] std::string url() const { return "nats://127.0.0.1:" + std::to_string(port_); }

 private:
  static int free_port() {
    std::mt19937 random{std::random_device{}()};
    for (int attempt = 0; attempt < 50; ++attempt) {
      int port = 20000 + static_cast<int>(random() % 20000);
      int fd = ::socket(AF_INET, SOCK_STREAM, 0);
      sockaddr_in a{};
      a.sin_family = AF_INET;
      a.sin_port = htons(static_cast<uint16_t>(port));
      a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
      bool free = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
      ::close(fd);
      if (free) return port;
    }
    FAIL("no free loopback port for a private nats-server");
    return 0;
  }

  int run(const char* cmd) const {
    const char* root = std::getenv("OMNIBUS_SOURCE_ROOT");
    if (root == nullptr) return -1;  // start() has failed the test already
    std::string line = "OMNIBUS_RUN_DIR=" + dir_ + " OMNIBUS_NATS_ARGS='" + args_ + "' " + root + "/scripts/nats " +
                       cmd + " " + std::to_string(port_) + " >/dev/null 2>&1";
    return std::system(line.c_str());
  }

  int port_;
  std::string dir_;
  std::string args_;
};

}  // namespace test_env
