// Credentials and TLS to nats-server, against private servers started with authorization and
// TLS on loopback; and no secret in an error message or the worker's output.

#include <chrono>
#include <cstdlib>
#include <string>
#include <vector>

#include <catch2/catch.hpp>
#include <unistd.h>

#include "omnibus/event.hpp"
#include "omnibus/event_bus.hpp"
#include "omnibus/nats_connection.hpp"
#include "omnibus/nats_error.hpp"
#include "omnibus/jetstream.hpp"
#include "support/child_process.hpp"
#include "support/nkeys.hpp"
#include "support/private_servers.hpp"
#include "support/schema.hpp"
#include "support/stream_reader.hpp"
#include "support/test_env.hpp"

namespace {

using namespace std::chrono_literals;

struct secret_event {
  static constexpr std::string_view name = "test.secret_event";
  static constexpr int version = 1;
  std::int64_t n = 0;
  OMNIBUS_FIELDS(n);
};

// A throwaway CA, a server certificate for IP 127.0.0.1, and a client certificate.
struct test_certs {
  std::string dir = "/tmp/omnibus-test-tls-" + std::to_string(::getpid()) + "-" + test_env::unique_name("c");
  test_certs() {
    const std::string ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    const std::string cmd =
        "set -e; mkdir -p " + dir + "; cd " + dir + "; " +
        "openssl req -x509 " + ec + " -keyout ca.key -out ca.pem -days 2 -subj /CN=omnibus-test-ca; " +
        "openssl req " + ec + " -keyout server.key -out server.csr -subj /CN=127.0.0.1; " +
        "printf 'subjectAltName=IP:127.0.0.1\\n' > san.ext; " +
        "openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out server.pem -days 2 -extfile san.ext; " +
        "openssl req " + ec + " -keyout client.key -out client.csr -subj /CN=omnibus-client; " +
        "openssl x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out client.pem -days 2";
    REQUIRE(std::system(("(" + cmd + ") >/dev/null 2>&1").c_str()) == 0);
  }
  ~test_certs() { (void)std::system(("rm -rf " + dir).c_str()); }
  std::string file(const char* name) const { return dir + "/" + name; }
};

// A JetStream round trip on `opts`: the connection is not only open but usable.
void round_trip(const omnibus::nats_options& opts) {
  omnibus::nats_connection conn{opts};
  omnibus::jetstream js{conn};
  auto bo = test_env::test_bus_options("sec");
  omnibus::event_bus b{js, bo};
  b.provision();
  omnibus::context ctx;
  auto id = b.publish(ctx, secret_event{1});
  auto stored = test_env::read_stream(js, bo.stream, 1);
  REQUIRE(stored.size() == 1);
  CHECK(omnibus::decode(stored[0], bo.stream.subject_prefix).id == id);
  (void)js.delete_stream(bo.stream);
}

std::string refusal(const omnibus::nats_options& opts) {
  try {
    omnibus::nats_connection conn{opts};
  } catch (const omnibus::nats_error& e) {
    return e.what();
  }
  FAIL("the connection was accepted");
  return {};
}

}  // namespace

TEST_CASE("user and password: the right ones connect, a wrong one is refused without echoing it",
          "[integration][security]") {
  test_env::private_nats server{"--user alice --pass s3cret-pw"};
  round_trip({.url = server.url(), .user = "alice", .password = "s3cret-pw"});

  SECTION("credentials in the URL are never handed back") {
    const std::string url = "nats://alice:s3cret-pw@" + server.url().substr(std::string("nats://").size());
    omnibus::nats_connection conn{{.url = url}};
    CHECK_THAT(conn.connected_url(), !Catch::Contains("s3cret-pw") && Catch::Contains("127.0.0.1"));
  }
  SECTION("a wrong password") {
    auto what = refusal({.url = server.url(), .connect_timeout = 2000ms, .user = "alice", .password = "wr0ng-pw"});
    CHECK_THAT(what, Catch::Contains("Authorization") && !Catch::Contains("wr0ng-pw") && !Catch::Contains("s3cret-pw"));
  }
  SECTION("no credentials") {
    CHECK_THAT(refusal({.url = server.url(), .connect_timeout = 2000ms}), Catch::Contains("Authorization"));
  }
}

TEST_CASE("a .creds file (user JWT and NKey seed) connects to a server in operator mode; a wrong seed is refused",
          "[integration][security]") {
  test_env::nkeys::decentralized_auth auth;
  const std::string dir = "/tmp/omnibus-test-creds-" + test_env::unique_name("c");
  REQUIRE(std::system(("mkdir -p " + dir).c_str()) == 0);
  test_env::nkeys::write_file(dir + "/server.conf", auth.server_config());
  test_env::nkeys::write_file(dir + "/user.creds", auth.creds());
  const test_env::nkeys::key_pair stranger{test_env::nkeys::kind::user};
  test_env::nkeys::write_file(dir + "/wrong.creds", auth.creds(&stranger));
  test_env::private_nats server{"-c " + dir + "/server.conf"};
  round_trip({.url = server.url(), .credentials_file = dir + "/user.creds"});
  SECTION("a seed that does not match the JWT") {
    CHECK_THAT(refusal({.url = server.url(), .connect_timeout = 2000ms, .credentials_file = dir + "/wrong.creds"}),
               Catch::Contains("Authorization") && !Catch::Contains(stranger.seed()) && !Catch::Contains(auth.user.seed()));
  }
  SECTION("no credentials") {
    CHECK_THAT(refusal({.url = server.url(), .connect_timeout = 2000ms}), Catch::Contains("Authorization"));
  }
  (void)std::system(("rm -rf " + dir).c_str());
}

TEST_CASE("a token connects; without it the server refuses", "[integration][security]") {
  test_env::private_nats server{"--auth tok-s3cret"};
  round_trip({.url = server.url(), .token = "tok-s3cret"});
  CHECK_THAT(refusal({.url = server.url(), .connect_timeout = 2000ms, .token = "tok-wr0ng"}),
             Catch::Contains("Authorization") && !Catch::Contains("tok-wr0ng"));
}

TEST_CASE("TLS to nats-server with the project's CA; a client that does not trust it is refused",
          "[integration][security]") {
  test_certs certs;
  test_env::private_nats server{"--tls --tlscert " + certs.file("server.pem") + " --tlskey " + certs.file("server.key")};
  round_trip({.url = server.url(), .tls_ca_file = certs.file("ca.pem")});
  CHECK_FALSE(refusal({.url = server.url(), .connect_timeout = 2000ms, .tls = true}).empty());  // system CAs only
}

TEST_CASE("TLS with a client certificate for a server that verifies clients", "[integration][security]") {
  test_certs certs;
  test_env::private_nats server{"--tlsverify --tlscert " + certs.file("server.pem") + " --tlskey " +
                                certs.file("server.key") + " --tlscacert " + certs.file("ca.pem")};
  round_trip({.url = server.url(), .tls_ca_file = certs.file("ca.pem"), .tls_cert_file = certs.file("client.pem"),
              .tls_key_file = certs.file("client.key")});
  CHECK_FALSE(refusal({.url = server.url(), .connect_timeout = 2000ms, .tls_ca_file = certs.file("ca.pem")}).empty());
}

TEST_CASE("the worker binary never prints a secret it was given", "[integration][security]") {
  test_env::private_nats server{"--user alice --pass s3cret-pw"};
  const std::string host = server.url().substr(std::string("nats://").size());
  const std::string bin = test_env::tool_path("OMNIBUS_WORKER_BIN");
  const std::string db = test_env::database_url();
  SECTION("a wrong password in the URL") {
    test_env::child_process p({bin, "--nats-url", "nats://alice:Wr0ng-Secret@" + host, "--database-url", db, "consumers", "list"});
    CHECK(p.wait(30s) == 1);
    CHECK_THAT(p.output(), Catch::Contains("Authorization") && !Catch::Contains("Wr0ng-Secret"));
  }
  SECTION("a wrong password in the environment") {
    test_env::child_process p({bin, "--nats-url", server.url(), "--nats-user", "alice", "--database-url", db, "consumers", "list"},
                              {"OMNIBUS_NATS_PASSWORD=Wr0ng-Secret"});
    CHECK(p.wait(30s) == 1);
    CHECK_THAT(p.output(), Catch::Contains("Authorization") && !Catch::Contains("Wr0ng-Secret"));
  }
  SECTION("the right password: it works and still prints no secret") {
    test_env::child_process p({bin, "--nats-url", server.url(), "--nats-user", "alice", "--database-url", db, "--stream",
                               test_env::unique_name("S"), "consumers", "list"},
                              {"OMNIBUS_NATS_PASSWORD=s3cret-pw"});
    CHECK(p.wait(30s) == 0);
    CHECK_THAT(p.output(), Catch::Contains("consumer") && !Catch::Contains("s3cret-pw"));
  }
}

TEST_CASE("a PostgreSQL password in the database URL never reaches the output", "[integration][security]") {
  const std::string bin = test_env::tool_path("OMNIBUS_WORKER_BIN");
  // The test cluster trusts loopback, so any password is accepted: what matters is the output.
  std::string db = test_env::database_url();
  db.insert(db.find("postgres@"), "postgres:Db-S3cret@");
  db.erase(db.find("@postgres@"), std::string("@postgres").size());
  REQUIRE_THAT(db, Catch::Contains("postgres:Db-S3cret@127.0.0.1"));
  SECTION("a server that is down, URL from the environment") {
    const int free_port = test_env::free_loopback_port();
    std::string down = db.substr(0, db.rfind(':') + 1) + std::to_string(free_port) + "/postgres";
    test_env::child_process p({bin, "migrations", "apply"}, {"OMNIBUS_DATABASE_URL=" + down});
    CHECK(p.wait(30s) == 1);
    CHECK_THAT(p.output(), Catch::Contains("PostgreSQL") && !Catch::Contains("Db-S3cret"));
  }
  SECTION("the server up: it works and prints no secret") {
    const std::string schema = test_env::unique_name("s");
    test_env::child_process p({bin, "--schema", schema, "migrations", "apply"}, {"OMNIBUS_DATABASE_URL=" + db});
    CHECK(p.wait(30s) == 0);
    CHECK_THAT(p.output(), !Catch::Contains("Db-S3cret"));
    pqxx::connection cleanup{test_env::database_url()};
    test_env::drop_schemas(cleanup, {schema});
  }
}
