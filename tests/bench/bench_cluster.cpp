// R1 on one server against R3 on a three-node cluster, in the same run: publish with PubAck,
// the relay, the worker's drain; and what a publisher waits while the stream's leader is
// killed (scripts/bench starts both and sets OMNIBUS_NATS_CLUSTER_URL).

#include <atomic>
#include <cstdlib>
#include <span>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "bench_world.hpp"
#include "omnibus/relay.hpp"
#include "omnibus/worker.hpp"

namespace bench {
namespace {

struct figures {
  double publish = 0;  // events/s, one publish at a time, each waiting for its PubAck
  double relay = 0;    // events/s, outbox rows to the stream
  double drain = 0;    // events/s, a worker's no-op listener
};

figures measure(const std::string& stem, const std::string& url, int replicas) {
  constexpr long one_by_one = 2000;
  constexpr long rows = 20000;
  world w{stem, url, replicas};
  std::atomic<long> handled{0};
  omnibus::listener_options lo;
  lo.concurrency = 256;
  w.bus->add_async_listener<payload>("noop", [&](omnibus::context&, const payload&) { handled.fetch_add(1); }, lo);
  w.bus->provision();
  figures f;

  omnibus::context direct;
  auto t = clock::now();
  for (long i = 0; i < one_by_one; ++i) (void)w.bus->publish(direct, payload{i});
  f.publish = one_by_one / seconds_since(t);

  {
    std::vector<payload> chunk(1000, payload{});
    for (long done = 0; done < rows; done += 1000) {
      pqxx::work tx{w.db};
      omnibus::context ctx{tx};
      (void)w.bus->publish_batch(ctx, std::span<const payload>(chunk));
      tx.commit();
    }
    omnibus::relay_options ro;
    ro.database_url = env("OMNIBUS_DATABASE_URL");
    ro.schema = w.opts.schema;
    ro.stream = w.opts.stream;
    omnibus::relay relay{w.js, ro, w.log};
    t = clock::now();
    relay.start();
    await([&] { return w.outbox_rows() == 0; }, "the relay to send the outbox");
    f.relay = rows / seconds_since(t);
  }

  omnibus::worker_options wo;
  wo.database_url = env("OMNIBUS_DATABASE_URL");
  omnibus::worker worker{*w.bus, wo, w.log};
  t = clock::now();
  std::jthread run([&](std::stop_token st) { worker.run(st); });
  await([&] { return handled.load() >= one_by_one + rows; }, "the worker to drain");
  f.drain = (one_by_one + rows) / seconds_since(t);
  run.request_stop();
  return f;
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(p * static_cast<double>(v.size() - 1))];
}

int node_of(const std::string& server_name) {
  return server_name.size() == 2 && server_name[0] == 'n' ? server_name[1] - '0' : 0;
}

void run_script(const std::string& args) {
  const std::string line = env("OMNIBUS_SOURCE_ROOT") + "/scripts/nats-cluster " + args + " >/dev/null 2>&1";
  if (std::system(line.c_str()) != 0) throw std::runtime_error("scripts/nats-cluster " + args + " failed");
}

}  // namespace

void bench_cluster() {
  const std::string cluster = env("OMNIBUS_NATS_CLUSTER_URL");
  const figures r1 = measure("r1", env("OMNIBUS_NATS_URL"), 1);
  const figures r3 = measure("r3", cluster, 3);
  line("cluster_r3_publish_with_puback", r3.publish, "events/s", r1.publish, r3.publish / r1.publish, ">=", 0);
  line("cluster_r3_relay", r3.relay, "events/s", r1.relay, r3.relay / r1.relay, ">=", 0);
  line("cluster_r3_worker_drain", r3.drain, "events/s", r1.drain, r3.drain / r1.drain, ">=", 0);

  // How long a publisher waits for each event to be stored, one PubAck at a time, retrying a
  // failed publish at once (a new attempt every 10 ms), while the stream's leader is killed and
  // a new one is elected; against its waits on the same stream before the kill.
  world w{"stall", cluster, 3};
  w.bus->provision();
  omnibus::context ctx;
  long failed = 0;
  const auto publish_until_stored = [&](long i) {
    const auto t = clock::now();
    for (;;) {
      try {
        (void)w.bus->publish(ctx, payload{i});
        return seconds_since(t) * 1000;
      } catch (const omnibus::publish_error&) {
        ++failed;  // during the election: not sent, or unknown
        std::this_thread::sleep_for(std::chrono::milliseconds(10));  // a publisher's retry pace
      }
    }
  };
  std::vector<double> calm;
  for (long i = 0; i < 2000; ++i) calm.push_back(publish_until_stored(i));
  const auto st = w.js.state(w.opts.stream);
  const int leader = st ? node_of(st->leader) : 0;
  if (leader == 0) throw std::runtime_error("the R3 stream has no leader");
  run_script("kill " + std::to_string(leader));
  failed = 0;
  std::vector<double> through;
  for (long i = 0; i < 2000; ++i) through.push_back(publish_until_stored(i));
  run_script("start-node " + std::to_string(leader));
  await([&] {
    try {
      const auto now = w.js.state(w.opts.stream);
      return now && !now->leader.empty();
    } catch (const std::exception&) {
      return false;
    }
  }, "the stream to have a leader again");
  // The election shows in a few waits only: the longest is the figure, the p99 a context.
  const double longest = *std::max_element(through.begin(), through.end());
  const double calm_longest = *std::max_element(calm.begin(), calm.end());
  line("cluster_r3_longest_publish_wait_through_leader_kill", longest, "ms", calm_longest, longest / calm_longest, ">=", 0);
  std::printf("bench: cluster_r3_leader_kill p99=%.2f ms (calm %.2f ms) failed_attempts=%ld (each retried until stored)\n",
              percentile(through, 0.99), percentile(calm, 0.99), failed);
  std::fflush(stdout);
}

}  // namespace bench
