// omnibus_bench: every benchmark measures Omnibus and its raw baseline in the same run and
// prints one line per metric (see bench_support.hpp). Groups: sync, codec, publish, outbox,
// worker, latency, memory, cluster, schedule, scale, dashboard, per_key. `scripts/bench` starts the servers and runs them all.

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <new>
#include <string>

namespace bench {
std::atomic<long> allocations{0};
int inner(const std::string& mode, long n);
void bench_sync(const std::string& self);
void bench_codec();
void bench_publish();
void bench_outbox();
void bench_drain();
void bench_metrics();
void bench_flow();
void bench_cluster();
void bench_schedule();
void bench_scale(const std::string& self);
void bench_dashboard();
void bench_per_key();
int drain_child(const std::string& stream, const std::string& prefix, const std::string& schema);
void bench_latency(bool through_outbox);
void bench_peers();
int memory_child();
}  // namespace bench

// Every heap allocation in this program is counted (the allocation-free dispatch metric).
void* operator new(std::size_t n) {
  bench::allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: omnibus_bench sync|codec|publish|outbox|worker|metrics|flow|latency|memory|cluster|schedule|scale|dashboard|per_key|peers\n");
    return 2;
  }
  const std::string group = argv[1];
  try {
    if (group == "inner" && argc == 4) return bench::inner(argv[2], std::atol(argv[3]));
    if (group == "drain-child" && argc == 5) return bench::drain_child(argv[2], argv[3], argv[4]);
    if (group == "sync") bench::bench_sync(argv[0]);
    else if (group == "codec") bench::bench_codec();
    else if (group == "publish") bench::bench_publish();
    else if (group == "outbox") bench::bench_outbox();
    else if (group == "worker") bench::bench_drain();
    else if (group == "metrics") bench::bench_metrics();
    else if (group == "flow") bench::bench_flow();
    else if (group == "cluster") bench::bench_cluster();
    else if (group == "schedule") bench::bench_schedule();
    else if (group == "scale") bench::bench_scale("/proc/self/exe");
    else if (group == "dashboard") bench::bench_dashboard();
    else if (group == "per_key") bench::bench_per_key();
    else if (group == "peers") bench::bench_peers();  // scripts/bench peers: beside tests/bench/peers
    else if (group == "latency") {
      bench::bench_latency(false);
      bench::bench_latency(true);
    } else if (group == "memory") return bench::memory_child();
    else {
      std::fprintf(stderr, "omnibus_bench: unknown group %s\n", group.c_str());
      return 2;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "omnibus_bench %s: %s\n", group.c_str(), e.what());
    return 1;
  }
  return 0;
}
