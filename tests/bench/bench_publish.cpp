// Publishing without a transaction, against NATS.c publishing the same bytes.

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <nats/nats.h>

#include "bench_support.hpp"
#include "bench_world.hpp"
#include "omnibus/codec.hpp"
#include "omnibus/envelope.hpp"

namespace bench {
namespace {

natsMsg* raw_message(const omnibus::message& m) {
  natsMsg* msg = nullptr;
  natsMsg_Create(&msg, m.subject.c_str(), nullptr, m.body.data(), static_cast<int>(m.body.size()));
  for (const auto& [k, v] : m.headers) natsMsgHeader_Add(msg, k.c_str(), v.c_str());
  return msg;
}

// The wire message Omnibus sends for `e`, for NATS.c to send as is.
omnibus::message same_bytes(const world& w, const payload& e) {
  omnibus::envelope env;
  env.id = omnibus::event_id::generate();
  env.name = payload::name;
  env.version = payload::version;
  env.published_at = std::chrono::time_point_cast<std::chrono::microseconds>(std::chrono::system_clock::now());
  env.body = omnibus::detail::encode_body(e);
  return omnibus::encode(env, w.opts.stream.subject_prefix);
}

}  // namespace

void bench_publish() {
  world w{"pub"};
  w.bus->provision();
  natsConnection* nc = nullptr;
  if (natsConnection_ConnectTo(&nc, env("OMNIBUS_NATS_URL").c_str()) != NATS_OK) throw std::runtime_error("connect");
  jsCtx* js = nullptr;
  natsConnection_JetStream(&js, nc, nullptr);
  const std::vector<payload> events(10000, payload{});
  omnibus::context ctx;

  std::vector<double> ours, base;
  // Fifteen rounds, each side first in turn: a round takes a fifteenth of a second, and one
  // slow moment of the machine would decide three.
  auto omnibus_round = [&] {
    const auto t = clock::now();
    auto report = w.bus->publish_batch(ctx, std::span<const payload>(events));
    if (!report.ok()) throw std::runtime_error("publish_batch failed");
    ours.push_back(events.size() / seconds_since(t));
  };
  auto raw_round = [&] {
    std::vector<omnibus::message> msgs;  // prepared outside the timing: the baseline only sends
    for (const auto& e : events) msgs.push_back(same_bytes(w, e));
    const auto t = clock::now();
    for (const auto& m : msgs) {
      natsMsg* msg = raw_message(m);
      if (js_PublishMsgAsync(js, &msg, nullptr) != NATS_OK) throw std::runtime_error("js_PublishMsgAsync");
    }
    jsPubOptions po;
    jsPubOptions_Init(&po);
    po.MaxWait = 30000;
    if (js_PublishAsyncComplete(js, &po) != NATS_OK) throw std::runtime_error("js_PublishAsyncComplete");
    base.push_back(events.size() / seconds_since(t));
  };
  for (int round = 0; round < 15 && wanted("publish_batch_10000_no_tx"); ++round) {
    if (round % 2 == 0) {
      omnibus_round();
      raw_round();
    } else {
      raw_round();
      omnibus_round();
    }
  }
  if (!ours.empty()) {
    line("publish_batch_10000_no_tx", median(ours), "msg/s", median(base), median(ours) / median(base), ">=", 0.85);
  }

  ours.clear();
  base.clear();
  constexpr int n = 2000;
  for (int round = 0; round < 3 && wanted("publish_one_at_a_time_with_puback"); ++round) {
    auto t = clock::now();
    for (int i = 0; i < n; ++i) w.bus->publish(ctx, events[0]);
    ours.push_back(n / seconds_since(t));
    std::vector<omnibus::message> msgs;
    for (int i = 0; i < n; ++i) msgs.push_back(same_bytes(w, events[0]));
    t = clock::now();
    for (const auto& m : msgs) {
      natsMsg* msg = raw_message(m);
      jsPubAck* pa = nullptr;
      if (js_PublishMsg(&pa, js, msg, nullptr, nullptr) != NATS_OK) throw std::runtime_error("js_PublishMsg");
      jsPubAck_Destroy(pa);
      natsMsg_Destroy(msg);
    }
    base.push_back(n / seconds_since(t));
  }
  if (!ours.empty()) {
    line("publish_one_at_a_time_with_puback", median(ours), "msg/s", median(base), median(ours) / median(base), ">=", 0.9);
  }
  jsCtx_Destroy(js);
  natsConnection_Destroy(nc);
}

}  // namespace bench
