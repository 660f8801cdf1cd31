// Scale-out: one stream drained by 1, 2 and 4 worker processes (this program again, in its
// "drain-child" mode), against the one-process figure of the same run. Every process notes the
// steady clock (one clock for the whole machine) at its first and last handled event; the rate
// is all events over the span from the first first to the last last, so process start-up is
// not counted. On a two-core machine the curve flattens: the figure says so with the core count.

#include <atomic>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bench_support.hpp"
#include "bench_world.hpp"
#include "omnibus/worker.hpp"

extern char** environ;

namespace bench {
namespace {

std::int64_t steady_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now().time_since_epoch()).count();
}

std::atomic<bool> child_stop{false};

omnibus::listener_options wide() { return {}; }  // the defaults, as in the one-process drain
extern "C" void on_child_signal(int) { child_stop = true; }

// A child process: its stdout is a pipe the parent reads.
struct child {
  pid_t pid = -1;
  FILE* out = nullptr;
};

child spawn_child(const std::string& self, const std::vector<std::string>& args) {
  int fds[2];
  if (pipe(fds) != 0) throw std::runtime_error("pipe");
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, fds[1], STDOUT_FILENO);
  posix_spawn_file_actions_addclose(&actions, fds[0]);
  posix_spawn_file_actions_addclose(&actions, fds[1]);
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(self.c_str()));
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  child c;
  const int rc = posix_spawn(&c.pid, self.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(fds[1]);
  if (rc != 0) {
    close(fds[0]);
    throw std::runtime_error("posix_spawn " + self);
  }
  c.out = fdopen(fds[0], "r");
  return c;
}

std::string read_line(FILE* f) {
  char buf[512];
  if (std::fgets(buf, sizeof buf, f) == nullptr) return {};
  return buf;
}

// All `n` events of `w`'s one listener acked: the consumer has nothing pending or unacked.
bool drained(world& w, long n) {
  const auto info = w.js.info(w.opts.stream, w.bus->async_listeners().front().consumer_name);
  return info && info->pending == 0 && info->ack_pending == 0 && info->ack_floor >= static_cast<std::uint64_t>(n);
}

// Events per second `processes` worker processes drain together.
double drain_with(const std::string& self, int processes, long n) {
  world w{"scale" + std::to_string(processes) + "_"};
  w.bus->add_async_listener<payload>("noop", [](omnibus::context&, const payload&) {}, wide());
  w.bus->provision();
  {
    omnibus::context ctx;
    std::vector<payload> chunk(10000, payload{});
    for (long done = 0; done < n; done += static_cast<long>(chunk.size())) {
      if (!w.bus->publish_batch(ctx, std::span<const payload>(chunk)).ok()) throw std::runtime_error("publish_batch failed");
    }
  }
  std::vector<child> children;
  for (int i = 0; i < processes; ++i) {
    children.push_back(spawn_child(self, {"drain-child", w.opts.stream.name, w.opts.stream.subject_prefix, w.opts.schema}));
  }
  await([&] { return drained(w, n); }, "the worker processes to drain", std::chrono::seconds(300));
  std::int64_t first = 0;
  std::int64_t last = 0;
  long handled = 0;
  for (child& c : children) {
    kill(c.pid, SIGTERM);
    const std::string report = read_line(c.out);  // "first=<ns> last=<ns> handled=<n>"
    long long f = 0, l = 0, h = 0;
    if (std::sscanf(report.c_str(), "first=%lld last=%lld handled=%lld", &f, &l, &h) != 3) {
      throw std::runtime_error("a drain child reported '" + report + "'");
    }
    std::fclose(c.out);
    int status = 0;
    waitpid(c.pid, &status, 0);
    if (h == 0) continue;  // it came too late to get any
    first = first == 0 ? f : std::min<std::int64_t>(first, f);
    last = std::max<std::int64_t>(last, l);
    handled += h;
  }
  if (handled < n || last <= first) throw std::runtime_error("the drain children handled " + std::to_string(handled));
  return static_cast<double>(n) / (static_cast<double>(last - first) / 1e9);
}

}  // namespace

// The child: one worker on the parent's stream and schema, a no-op listener, until SIGTERM.
int drain_child(const std::string& stream, const std::string& prefix, const std::string& schema) {
  std::signal(SIGTERM, on_child_signal);
  omnibus::nats_connection conn({.url = env("OMNIBUS_NATS_URL"), .name = "omnibus-bench-child"});
  omnibus::jetstream js(conn);
  omnibus::bus_options opts;
  opts.group = "bench";
  opts.schema = schema;
  opts.stream.name = stream;
  opts.stream.subject_prefix = prefix;
  opts.stream.max_bytes = std::int64_t{4} << 30;
  omnibus::event_bus bus(js, opts);
  std::atomic<std::int64_t> first{0};
  std::atomic<std::int64_t> last{0};
  std::atomic<long> handled{0};
  bus.add_async_listener<payload>("noop", [&](omnibus::context&, const payload&) {
    const std::int64_t now = steady_ns();
    std::int64_t none = 0;
    (void)first.compare_exchange_strong(none, now);
    std::int64_t seen = last.load();
    while (seen < now && !last.compare_exchange_weak(seen, now)) {
    }
    handled.fetch_add(1);
  }, wide());
  omnibus::worker_options wo;
  wo.database_url = env("OMNIBUS_DATABASE_URL");
  auto log = std::make_shared<spdlog::logger>("bench", std::make_shared<spdlog::sinks::null_sink_mt>());
  omnibus::worker worker{bus, wo, log};
  std::jthread run([&](std::stop_token st) { worker.run(st); });
  while (!child_stop) std::this_thread::sleep_for(std::chrono::milliseconds(5));  // the signal's flag
  run.request_stop();
  run.join();
  std::printf("first=%lld last=%lld handled=%ld\n", static_cast<long long>(first.load()),
              static_cast<long long>(last.load()), handled.load());
  std::fflush(stdout);
  return 0;
}

void bench_scale(const std::string& self) {
  constexpr long n = 100000;
  const unsigned cores = std::thread::hardware_concurrency();
  const double one = drain_with(self, 1, n);
  line("worker_drain_1_process", one, "msg/s", one, 1.0, ">=", 0);
  for (int k : {2, 4}) {
    const double rate = drain_with(self, k, n);
    line("worker_drain_" + std::to_string(k) + "_processes_on_" + std::to_string(cores) + "_cores", rate, "msg/s", one,
         rate / one, ">=", 0);
  }
}

}  // namespace bench
