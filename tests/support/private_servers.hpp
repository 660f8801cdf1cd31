#pragma once
// A nats-server or a PostgreSQL cluster of one test's own, on a free loopback port, started
// and stopped through scripts/nats and scripts/postgres: for tests that take a server down.

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <random>
#include <set>
#include <string>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>

namespace test_env {

/// Whether nothing listens on loopback port `port` right now.
inline bool loopback_port_free(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  const bool free = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return free;
}

/// Claims `port` for this test process against every other test process: a lock (flock) on
/// /tmp/omnibus-test-port-<port>.lock, held until the process ends (the kernel drops it if the
/// process dies). Tests run in parallel, and a probe alone cannot tell a port nobody uses from
/// the port of another test's server that is down for a while: two tests drew the same port
/// and one's client met the other's server. False when another process (or this one) holds it.
inline bool claim_port(int port) {
  static std::mutex mutex;
  static std::set<int> held;
  std::lock_guard lock(mutex);
  if (held.contains(port)) return false;
  const std::string path = "/tmp/omnibus-test-port-" + std::to_string(port) + ".lock";
  // Read-only (flock needs no more), and readable by all: a file left by a run as root must
  // not turn a later run as another user away from the port.
  const int fd = ::open(path.c_str(), O_RDONLY | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) return false;
  if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
    ::close(fd);
    return false;
  }
  held.insert(port);  // the descriptor stays open: the claim lasts as long as this process
  return true;
}

/// A loopback port nothing listens on right now, claimed by this process (claim_port).
inline int free_loopback_port() {
  std::mt19937 random{std::random_device{}()};
  for (int attempt = 0; attempt < 50; ++attempt) {
    const int port = 22000 + static_cast<int>(random() % 10000);  // below the kernel's ephemeral ports
    if (claim_port(port) && loopback_port_free(port)) return port;
  }
  FAIL("no free loopback port for a private server");
  return 0;
}

/// Runs `scripts/<script> <cmd> <port>` with `env` ("A=b C=d") in front; its exit code.
inline int run_server_script(const std::string& env, const char* script, const char* cmd, int port) {
  const char* root = std::getenv("OMNIBUS_SOURCE_ROOT");
  if (root == nullptr) return -1;  // the caller's REQUIRE reports it
  std::string line = env + " " + root + "/scripts/" + script + " " + cmd + " " + std::to_string(port) + " >/dev/null 2>&1";
  return std::system(line.c_str());
}

class private_nats {
 public:
  /// `server_args`: extra nats-server flags (authorization, TLS). Storage is on file, kept
  /// across stop() and start().
  explicit private_nats(std::string server_args = {}) : args_(std::move(server_args)) {
    REQUIRE(std::getenv("OMNIBUS_SOURCE_ROOT") != nullptr);  // meson test sets it
    // A port found free can be taken before the server binds it (tests run in parallel): then
    // another one.
    for (int attempt = 0; attempt < 5; ++attempt) {
      port_ = free_loopback_port();
      dir_ = "/tmp/omnibus-test-nats-" + std::to_string(port_);
      if (run("start") == 0) return;
      (void)run("stop");
      (void)std::system(("rm -rf " + dir_).c_str());
    }
    FAIL("scripts/nats could not start a private server on 5 free-looking ports");
  }
  ~private_nats() {
    (void)run("stop");
    (void)std::system(("rm -rf " + dir_).c_str());
  }
  private_nats(const private_nats&) = delete;
  private_nats& operator=(const private_nats&) = delete;

  void start() {
    REQUIRE(std::getenv("OMNIBUS_SOURCE_ROOT") != nullptr);  // meson test sets it
    REQUIRE(run("start") == 0);
  }
  void stop() { REQUIRE(run("stop") == 0); }
  [[nodiscard]] std::string url() const { return "nats://127.0.0.1:" + std::to_string(port_); }

 private:
  int run(const char* cmd) const {
    return run_server_script("OMNIBUS_RUN_DIR=" + dir_ + " OMNIBUS_NATS_ARGS='" + args_ + "'", "nats", cmd, port_);
  }

  int port_ = 0;
  std::string dir_;
  std::string args_;
};

/// A three-node JetStream cluster of one test's own (scripts/nats-cluster), stores on file.
class private_cluster {
 public:
  private_cluster() {
    REQUIRE(std::getenv("OMNIBUS_SOURCE_ROOT") != nullptr);  // meson test sets it
    for (int attempt = 0; attempt < 3; ++attempt) {
      base_ = free_base();
      dir_ = "/tmp/omnibus-test-cluster-" + std::to_string(base_);
      if (run("start") == 0) return;
      (void)run("stop");  // the destructor will not run if this fails: leave no node behind
      (void)std::system(("rm -rf " + dir_).c_str());
    }
    FAIL("scripts/nats-cluster could not start a private cluster on 3 free-looking port ranges");
  }
  ~private_cluster() {
    (void)run("stop");
    (void)std::system(("rm -rf " + dir_).c_str());
  }
  private_cluster(const private_cluster&) = delete;
  private_cluster& operator=(const private_cluster&) = delete;

  /// Every node's URL, comma-separated, as OMNIBUS_NATS_URL takes them.
  [[nodiscard]] std::string urls() const {
    return "nats://127.0.0.1:" + std::to_string(base_) + ",nats://127.0.0.1:" + std::to_string(base_ + 1) +
           ",nats://127.0.0.1:" + std::to_string(base_ + 2);
  }
  /// SIGKILL node n (1-3); its store stays.
  void kill(int n) { REQUIRE(run("kill " + std::to_string(n)) == 0); }
  /// Node n again, on its store.
  void start(int n) { REQUIRE(run("start-node " + std::to_string(n)) == 0); }
  /// The node a client URL ("nats://127.0.0.1:<port>") points at; 0 for none of them.
  [[nodiscard]] int node_of(const std::string& url) const {
    for (int n = 1; n <= 3; ++n) {
      if (url.find(":" + std::to_string(base_ + n - 1)) != std::string::npos) return n;
    }
    return 0;
  }

 private:
  // A base port whose client, route and monitoring ports (base..base+2, +2000, +4000) are free
  // and claimed (claim_port; a range that fails part-way keeps its first claims, harmlessly):
  // from 16500-17499, so that none of them meets free_loopback_port()'s range (22000-31999) or
  // the shared servers' ports.
  static int free_base() {
    std::mt19937 random{std::random_device{}()};
    for (int attempt = 0; attempt < 50; ++attempt) {
      const int base = 16500 + static_cast<int>(random() % 1000);
      bool all = true;
      for (int offset : {0, 1, 2, 2000, 2001, 2002, 4000, 4001, 4002}) {
        all = all && claim_port(base + offset) && loopback_port_free(base + offset);
      }
      if (all) return base;
    }
    FAIL("no free loopback ports for a private cluster");
    return 0;
  }
  // The script's own words go to a file; on a failure they are printed, with the end of every
  // node's log, since the directory goes with the cluster.
  int run(const std::string& cmd) const {
    const char* root = std::getenv("OMNIBUS_SOURCE_ROOT");
    if (root == nullptr) return -1;
    const std::string out = dir_ + "-script.log";
    const std::string line = "OMNIBUS_RUN_DIR=" + dir_ + " " + root + "/scripts/nats-cluster " + cmd + " " +
                             std::to_string(base_) + " >" + out + " 2>&1";
    const int status = std::system(line.c_str());
    if (status != 0) {
      std::fprintf(stderr, "private_cluster: 'scripts/nats-cluster %s %d' failed (status %d):\n", cmd.c_str(), base_,
                   status);
      const std::string show = "cat " + out + " >&2; for n in 1 2 3; do echo \"--- node $n: the end of " + dir_ +
                               "/nats-cluster-" + std::to_string(base_) + "/n$n/nats.log\" >&2; tail -n 30 " + dir_ +
                               "/nats-cluster-" + std::to_string(base_) + "/n$n/nats.log >&2; done";
      (void)std::system(show.c_str());
    }
    (void)std::remove(out.c_str());
    return status;
  }

  int base_ = 0;
  std::string dir_;
};

class private_postgres {
 public:
  private_postgres() : port_(free_loopback_port()) {
    REQUIRE(std::getenv("OMNIBUS_SOURCE_ROOT") != nullptr);  // meson test sets it
    REQUIRE(run("start") == 0);
  }
  ~private_postgres() { (void)run("stop"); }
  private_postgres(const private_postgres&) = delete;
  private_postgres& operator=(const private_postgres&) = delete;

  /// A fast restart: every session is cut, the data stays.
  void restart() { REQUIRE(run("restart") == 0); }
  /// Down: every session is cut, and nothing answers on the port.
  void stop() { REQUIRE(run("stop") == 0); }
  /// Down for a while: every session is cut, nothing answers, the data stays for up().
  void down() { REQUIRE(run("down") == 0); }
  /// Up again on the data down() kept.
  void up() { REQUIRE(run("up") == 0); }
  /// Up again, as a new cluster (scripts/postgres keeps no data across a stop).
  void start() { REQUIRE(run("start") == 0); }
  [[nodiscard]] std::string url() const { return "postgresql://postgres@127.0.0.1:" + std::to_string(port_) + "/postgres"; }

 private:
  int run(const char* cmd) const { return run_server_script("", "postgres", cmd, port_); }
  int port_;
};

}  // namespace test_env
