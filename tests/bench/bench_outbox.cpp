// The outbox and the relay, against libpqxx and NATS.c doing the same work by hand.

#include <span>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include <nats/nats.h>
#include <pqxx/pqxx>

#include "bench_support.hpp"
#include "bench_world.hpp"
#include "omnibus/codec.hpp"
#include "omnibus/envelope.hpp"
#include "core/outbox.hpp"
#include "omnibus/relay.hpp"

namespace bench {
namespace {

std::string hex(const std::string& bytes) {
  static constexpr char d[] = "0123456789abcdef";
  std::string s = "\\x";
  for (unsigned char c : bytes) {
    s += d[c >> 4];
    s += d[c & 15];
  }
  return s;
}

// The messages publish_batch would make for `n` events, with fresh ids.
std::vector<omnibus::message> fresh_messages(const world& w, std::size_t n) {
  omnibus::envelope env;
  env.name = payload::name;
  env.version = 1;
  env.body = omnibus::detail::encode_body(payload{});
  std::vector<omnibus::message> msgs;
  msgs.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    env.id = omnibus::event_id::generate();
    msgs.push_back(omnibus::encode(env, w.opts.stream.subject_prefix));
  }
  return msgs;
}

// The rows of `msgs`, as the outbox keeps them, in one COPY into the plain table.
void copy_plain(world& w, const std::string& s, std::span<const omnibus::message> msgs) {
  pqxx::work tx{w.db};
  pqxx::stream_to copy{tx, s + ".plain", std::vector<std::string>{"event_id", "subject", "headers", "body"}};
  for (const auto& m : msgs) {
    copy << std::make_tuple(*m.header("Nats-Msg-Id"), m.subject, omnibus::detail::join_headers(m), hex(m.body));
  }
  copy.complete();
  tx.commit();
}

// Relay throughput: 20,000 committed rows, from commit to an empty outbox; against a plain
// loop: SELECT 1,000 ORDER BY id, js_PublishMsgAsync each, wait, DELETE up to the last id.
// Five rounds, each side first in turn; the medians.
void relay_throughput(world& w, const std::string& s) {
  constexpr int rows = 20000;
  const std::vector<payload> many(rows, payload{});
  natsConnection* nc = nullptr;
  if (natsConnection_ConnectTo(&nc, env("OMNIBUS_NATS_URL").c_str()) != NATS_OK) throw std::runtime_error("connect");
  jsCtx* js = nullptr;
  natsConnection_JetStream(&js, nc, nullptr);
  omnibus::relay relay{w.js, w.relay_options(), w.log};
  relay.start();
  await([&] { return relay.stats().active.load(); }, "the relay to take its lock");

  auto ours = [&] {
    pqxx::work tx{w.db};
    omnibus::context ctx{tx};
    auto r = w.bus->publish_batch(ctx, std::span<const payload>(many));
    const std::size_t before = relay.stats().relayed.load();
    const auto t = clock::now();
    tx.commit();  // the NOTIFY wakes the running relay
    // Watched through the relay's counter: a count(*) every millisecond would take a share of
    // the database the plain loop does not pay. Then the last DELETE.
    await([&] { return relay.stats().relayed.load() >= before + rows; }, "the relay to send 20,000 rows");
    await([&] { return w.outbox_rows() == 0; }, "the relay to delete the last batch");
    return rows / seconds_since(t);
  };
  auto plain = [&] {
    copy_plain(w, s, fresh_messages(w, many.size()));
    const auto t = clock::now();
    for (;;) {
      pqxx::nontransaction q{w.db};
      auto batch = q.exec("SELECT id, subject, headers, body FROM " + s + ".plain ORDER BY id LIMIT 1000");
      if (batch.empty()) break;
      for (const auto& row : batch) {
        omnibus::message m;
        omnibus::detail::split_headers(row[2].c_str(), m);
        pqxx::binarystring body{row[3]};
        natsMsg* msg = nullptr;
        natsMsg_Create(&msg, row[1].c_str(), nullptr, reinterpret_cast<const char*>(body.data()), static_cast<int>(body.size()));
        for (const auto& [k, v] : m.headers) natsMsgHeader_Add(msg, k.c_str(), v.c_str());
        if (js_PublishMsgAsync(js, &msg, nullptr) != NATS_OK) throw std::runtime_error("js_PublishMsgAsync");
      }
      jsPubOptions po;
      jsPubOptions_Init(&po);
      po.MaxWait = 30000;
      if (js_PublishAsyncComplete(js, &po) != NATS_OK) throw std::runtime_error("js_PublishAsyncComplete");
      q.exec_params0("DELETE FROM " + s + ".plain WHERE id <= $1", batch[batch.size() - 1][0].as<long>());
    }
    return rows / seconds_since(t);
  };
  std::vector<double> a, b;
  for (int round = 0; round < 5; ++round) {
    if (round % 2 == 0) {
      a.push_back(ours());
      b.push_back(plain());
    } else {
      b.push_back(plain());
      a.push_back(ours());
    }
  }
  relay.stop();
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
  line("relay_throughput", median(a), "events/s", median(b), median(a) / median(b), ">=", 0.8);
}

}  // namespace

void bench_outbox() {
  world w{"outbox"};
  w.bus->provision();
  const std::string s = "\"" + w.opts.schema + "\"";
  {
    pqxx::work tx{w.db};
    tx.exec0("CREATE TABLE " + s + ".plain (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, event_id uuid NOT NULL, "
             "subject text NOT NULL, headers text NOT NULL, body bytea NOT NULL, created_at timestamptz NOT NULL DEFAULT now())");
    tx.exec0("CREATE TABLE " + s + ".business (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, n bigint NOT NULL)");
    tx.commit();
  }
  const std::vector<payload> events(1000, payload{});
  std::vector<double> ours, base;

  // publish_batch of 1,000 in one transaction, against stream_to of the same rows.
  for (int round = 0; round < 5 && wanted("outbox_publish_batch_1000_in_tx"); ++round) {
    auto t = clock::now();
    {
      pqxx::work tx{w.db};
      omnibus::context ctx{tx};
      auto r = w.bus->publish_batch(ctx, std::span<const payload>(events));
      tx.commit();
    }
    ours.push_back(events.size() / seconds_since(t));

    const std::vector<omnibus::message> msgs = fresh_messages(w, events.size());
    t = clock::now();
    copy_plain(w, s, msgs);
    base.push_back(events.size() / seconds_since(t));
    pqxx::work tx{w.db};
    tx.exec0("TRUNCATE " + s + ".bus_outbox, " + s + ".plain");
    tx.commit();
  }
  if (!ours.empty()) {
    line("outbox_publish_batch_1000_in_tx", median(ours), "events/s", median(base), median(ours) / median(base), ">=", 0.5);
  }

  // One event per small transaction, the relay running, against the same transaction without it.
  omnibus::relay relay{w.js, w.relay_options(), w.log};
  relay.start();
  ours.clear();
  base.clear();
  // Interleaved in short runs, each side first in turn: how fast a transaction commits here
  // swings with where the scheduler puts the client and its backend, and both sides should
  // see the same swings.
  auto run = [&](bool with_event, int count) {
    const auto t = clock::now();
    for (int i = 0; i < count; ++i) {
      pqxx::work tx{w.db};
      tx.exec_params0("INSERT INTO " + s + ".business (n) VALUES ($1)", i);
      if (with_event) {
        omnibus::context ctx{tx};
        w.bus->publish(ctx, events[0]);
      }
      tx.commit();
    }
    return seconds_since(t);
  };
  if (wanted("outbox_one_event_per_tx_with_relay")) {
    constexpr int runs = 40, per_run = 100;
    double ours_s = 0, base_s = 0;
    for (int r = 0; r < runs; ++r) {
      if (r % 2 == 0) {
        ours_s += run(true, per_run);
        base_s += run(false, per_run);
      } else {
        base_s += run(false, per_run);
        ours_s += run(true, per_run);
      }
    }
    ours.push_back(runs * per_run / ours_s);
    base.push_back(runs * per_run / base_s);
  }
  if (!ours.empty()) {
    line("outbox_one_event_per_tx_with_relay", median(ours), "tx/s", median(base), median(ours) / median(base), ">=", 0.7);
  }
  await([&] { return w.outbox_rows() == 0; }, "the relay to empty the outbox");
  relay.stop();
  if (wanted("relay_throughput")) relay_throughput(w, s);
}

}  // namespace bench
