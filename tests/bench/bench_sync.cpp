// Sync dispatch (instructions, allocations) and the codec, against direct calls and msgpack-c.

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include <valgrind/callgrind.h>

#include "bench_support.hpp"
#include "omnibus/event.hpp"
#include "omnibus/event_bus.hpp"

namespace bench {

void listener_work(long n);
extern std::atomic<long> allocations;  // counted by the replaced operator new in bench.cpp

namespace {

struct tick {
  static constexpr std::string_view name = "bench.tick";
  static constexpr int version = 1;
  static constexpr bool local_only = true;
  std::int64_t n = 0;
  OMNIBUS_FIELDS(n);
};

std::unique_ptr<omnibus::event_bus> bus_with(int listeners) {
  auto b = std::make_unique<omnibus::event_bus>();
  for (int i = 0; i < listeners; ++i) {
    b->add_sync_listener<tick>([](omnibus::context&, const tick& e) { listener_work(e.n); });
  }
  b->freeze();
  return b;
}

// Counts instructions of `mode` under callgrind: only the measured loop is collected.
double instructions_per_op(const std::string& self, const std::string& mode, long n) {
  const std::string cmd = "valgrind --tool=callgrind --collect-atstart=no --callgrind-out-file=/dev/null " + self +
                          " inner " + mode + " " + std::to_string(n) + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  if (p == nullptr) throw std::runtime_error("cannot run valgrind");
  std::string out;
  char buf[512];
  while (std::fgets(buf, sizeof buf, p) != nullptr) out += buf;
  if (pclose(p) != 0) throw std::runtime_error("valgrind failed:\n" + out);
  std::smatch m;
  if (!std::regex_search(out, m, std::regex("Collected : ([0-9]+)"))) throw std::runtime_error("no callgrind count:\n" + out);
  return std::stod(m[1]) / static_cast<double>(n);
}

}  // namespace

// Runs inside callgrind: the measured loop between two collection toggles.
int inner(const std::string& mode, long n) {
  if (mode == "sync1" || mode == "sync10") {
    auto b = bus_with(mode == "sync1" ? 1 : 10);
    omnibus::context ctx;
    CALLGRIND_TOGGLE_COLLECT;
    for (long i = 0; i < n; ++i) b->publish(ctx, tick{i});
    CALLGRIND_TOGGLE_COLLECT;
    return 0;
  }
  if (mode == "fn1" || mode == "fn10") {
    std::vector<std::function<void(long)>> fns(mode == "fn1" ? 1 : 10, [](long v) { listener_work(v); });
    CALLGRIND_TOGGLE_COLLECT;
    for (long i = 0; i < n; ++i) {
      for (auto& f : fns) f(i);
    }
    CALLGRIND_TOGGLE_COLLECT;
    return 0;
  }
  std::fprintf(stderr, "unknown inner mode %s\n", mode.c_str());
  return 2;
}

void bench_sync(const std::string& self) {
  constexpr long n = 100000;
  const double ours1 = instructions_per_op(self, "sync1", n);
  const double base1 = instructions_per_op(self, "fn1", n);
  line("sync_publish_1_listener_instructions", ours1, "instr", base1, ours1 / base1, "<=", 2.5);
  const double ours10 = instructions_per_op(self, "sync10", n);
  const double base10 = instructions_per_op(self, "fn10", n);
  line("sync_publish_10_listeners_instructions", ours10, "instr", base10, ours10 / base10, "<=", 1.5);

  auto b = bus_with(1);
  omnibus::context ctx;
  b->publish(ctx, tick{0});
  const long before = allocations.load();
  for (long i = 0; i < 10000; ++i) b->publish(ctx, tick{i});
  const double per_publish = static_cast<double>(allocations.load() - before) / 10000.0;
  line("sync_publish_heap_allocations", per_publish, "allocs", 1, per_publish, "<=", 0);
}

namespace {

struct order6 {  // the map wire format, decoded field by field
  static constexpr std::string_view name = "bench.order6";
  static constexpr int version = 1;
  std::int64_t id = 0;
  std::string customer;
  std::string sku;
  std::int32_t quantity = 0;
  std::int64_t cents = 0;
  bool gift = false;
  OMNIBUS_FIELDS(id, customer, sku, quantity, cents, gift);
};

struct order6_array {  // msgpack-c's array form of the same fields
  std::int64_t id = 0;
  std::string customer;
  std::string sku;
  std::int32_t quantity = 0;
  std::int64_t cents = 0;
  bool gift = false;
  MSGPACK_DEFINE(id, customer, sku, quantity, cents, gift)
};

}  // namespace

void bench_codec() {
  const order6 in{1042, "ada@example.com", "kettle-2l", 2, 3499, true};
  const std::string map_bytes = omnibus::detail::encode_body(in);
  msgpack::sbuffer arr;
  msgpack::pack(arr, order6_array{in.id, in.customer, in.sku, in.quantity, in.cents, in.gift});
  const std::string array_bytes(arr.data(), arr.size());
  constexpr int n = 300000;
  std::vector<double> ours, base;
  long check = 0;
  for (int round = 0; round < 5; ++round) {
    auto t = clock::now();
    for (int i = 0; i < n; ++i) {
      order6 out;
      omnibus::detail::decode_body(map_bytes, out);
      check += out.quantity;
    }
    ours.push_back(seconds_since(t) / n * 1e9);
    t = clock::now();
    for (int i = 0; i < n; ++i) {
      msgpack::object_handle oh = msgpack::unpack(array_bytes.data(), array_bytes.size());
      order6_array out;
      oh.get().convert(out);
      check += out.quantity;
    }
    base.push_back(seconds_since(t) / n * 1e9);
  }
  if (check != 2L * 2 * n * 5) throw std::runtime_error("codec benchmark decoded wrong values");
  const double o = median(ours), bl = median(base);
  line("decode_6_field_event_map_vs_array", o, "ns", bl, o / bl, "<=", 2);
}

}  // namespace bench
