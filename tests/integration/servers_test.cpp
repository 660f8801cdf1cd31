// The servers the project's scripts start are real and reachable: a JetStream round trip
// and a PostgreSQL row round trip, each under names no other test uses.

#include <chrono>
#include <string>

#include <catch2/catch.hpp>
#include <nats/nats.h>
#include <pqxx/pqxx>

#include "omnibus/nats_connection.hpp"
#include "omnibus/nats_error.hpp"
#include "support/test_env.hpp"

TEST_CASE("nats-server with JetStream takes a message and gives it back", "[integration][nats]") {
  omnibus::nats_connection conn{{.url = test_env::nats_url()}};
  CHECK(conn.connected_url().find("127.0.0.1") != std::string::npos);

  // Raw NATS.c on purpose: this checks the server, not our adapter.
  natsConnection* nc = nullptr;
  REQUIRE(natsConnection_ConnectTo(&nc, test_env::nats_url().c_str()) == NATS_OK);
  jsCtx* js = nullptr;
  REQUIRE(natsConnection_JetStream(&js, nc, nullptr) == NATS_OK);

  const std::string stream = test_env::unique_name("smoke");
  const std::string subject = stream + ".hello";
  jsStreamConfig cfg;
  jsStreamConfig_Init(&cfg);
  cfg.Name = stream.c_str();
  const char* subjects[] = {subject.c_str()};
  cfg.Subjects = subjects;
  cfg.SubjectsLen = 1;
  cfg.Storage = js_MemoryStorage;
  jsErrCode jerr{};
  jsStreamInfo* si = nullptr;
  REQUIRE(js_AddStream(&si, js, &cfg, nullptr, &jerr) == NATS_OK);
  jsStreamInfo_Destroy(si);

  jsPubAck* pa = nullptr;
  REQUIRE(js_Publish(&pa, js, subject.c_str(), "hi", 2, nullptr, &jerr) == NATS_OK);
  CHECK(pa->Sequence == 1);
  jsPubAck_Destroy(pa);

  natsSubscription* sub = nullptr;
  const std::string durable = stream + "_reader";
  REQUIRE(js_PullSubscribe(&sub, js, subject.c_str(), durable.c_str(), nullptr, nullptr, &jerr) == NATS_OK);
  natsMsgList list{};
  REQUIRE(natsSubscription_Fetch(&list, sub, 1, 5000, &jerr) == NATS_OK);
  REQUIRE(list.Count == 1);
  CHECK(std::string(natsMsg_GetData(list.Msgs[0]), natsMsg_GetDataLength(list.Msgs[0])) == "hi");
  CHECK(natsMsg_Ack(list.Msgs[0], nullptr) == NATS_OK);
  natsMsgList_Destroy(&list);

  natsSubscription_Destroy(sub);
  CHECK(js_DeleteStream(js, stream.c_str(), nullptr, &jerr) == NATS_OK);
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
}

TEST_CASE("an unreachable nats-server gives an omnibus::nats_error that says how to start it", "[integration][nats]") {
  // Port 1 on loopback: nothing listens there, and nothing leaves the machine.
  try {
    omnibus::nats_connection conn{{.url = "nats://127.0.0.1:1", .connect_timeout = std::chrono::milliseconds(500)}};
    FAIL("connected to a port where no server listens");
  } catch (const omnibus::nats_error& e) {
    CHECK(e.status() != 0);
    CHECK_THAT(e.what(), Catch::Contains("connecting to nats-server"));
  }
}

TEST_CASE("PostgreSQL stores a row and reads it back", "[integration][postgres]") {
  pqxx::connection conn{test_env::database_url()};
  const std::string schema = test_env::unique_name("smoke");
  {
    pqxx::work tx{conn};
    tx.exec0("CREATE SCHEMA " + tx.quote_name(schema));
    tx.exec0("CREATE TABLE " + tx.quote_name(schema) + ".t (id int primary key, v text)");
    tx.exec_params0("INSERT INTO " + tx.quote_name(schema) + ".t VALUES ($1, $2)", 1, "hello");
    tx.commit();
  }
  pqxx::work tx{conn};
  auto row = tx.exec1("SELECT v FROM " + tx.quote_name(schema) + ".t WHERE id = 1");
  CHECK(row[0].as<std::string>() == "hello");
  tx.exec0("DROP SCHEMA " + tx.quote_name(schema) + " CASCADE");
  tx.commit();
}
