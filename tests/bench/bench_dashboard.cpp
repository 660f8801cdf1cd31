// The dashboard's cost: the overview and a dead-letter page rendered server-side with 50
// listeners and 100,000 dead letters, against the reads they cannot avoid; and a worker's drain
// while a client loads the dashboard every second, against the same drain without it.

#include <atomic>
#include <condition_variable>
#include <chrono>
#include <memory>
#include <mutex>
#include <span>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <pqxx/pqxx>

#include "bench_support.hpp"
#include "bench_world.hpp"
#include "omnibus/redrive.hpp"
#include "omnibus/worker.hpp"
#include "dashboard/access.hpp"
#include "dashboard/dashboard.hpp"
#include "http_server.hpp"
#include "stats.hpp"
#include "../support/http_client.hpp"

namespace bench {
namespace {

omnibus::detail::http_request get(const std::string& path, const std::string& query = {}) {
  omnibus::detail::http_request r;
  r.method = "GET";
  r.path = path;
  r.query = query;
  r.host = "127.0.0.1:9464";
  r.peer_loopback = true;
  r.peer = "127.0.0.1";
  return r;
}

// Milliseconds each call of `f` takes, median of `rounds` after two to warm up.
template <class F>
double median_ms(int rounds, F&& f) {
  f();
  f();
  std::vector<double> ms;
  for (int i = 0; i < rounds; ++i) {
    const auto t = clock::now();
    f();
    ms.push_back(seconds_since(t) * 1000);
  }
  return median(ms);
}

void seed_dead_letters(world& w, int listeners, long n) {
  pqxx::work tx{w.db};
  tx.exec_params0("INSERT INTO \"" + w.opts.schema +
                      "\".bus_dead_letters (listener, event_id, event_name, subject, headers, body, reason, error, attempts, "
                      "first_failed_at, last_failed_at) SELECT 'listener' || (i % $2), 'e' || i, 'bench.payload', 'bench', '', "
                      "'\\x83a16e01'::bytea, 'handler_failed', 'backend timed out after ' || i || ' ms', 3, "
                      "now() - i * interval '1 second', now() - i * interval '1 second' FROM generate_series(1, $1) i",
                  n, listeners);
  tx.exec0("ANALYZE \"" + w.opts.schema + "\".bus_dead_letters");
  tx.commit();
}

}  // namespace

void bench_dashboard() {
  if (wanted("dashboard_overview") || wanted("dashboard_dead_letters")) {
    constexpr int listeners = 50;
    constexpr long dead = 100000;
    world w{"dash"};
    for (int i = 0; i < listeners; ++i) {
      w.bus->add_async_listener<payload>("listener" + std::to_string(i), [](omnibus::context&, const payload&) {});
    }
    w.bus->provision();
    seed_dead_letters(w, listeners, dead);
    omnibus::detail::access_control access{omnibus::detail::access_config{}};
    omnibus::detail::dashboard_options o;
    o.database_url = env("OMNIBUS_DATABASE_URL");
    o.overview_cache = std::chrono::milliseconds(0);  // every render reads the servers: the cold cost
    omnibus::detail::dashboard board{*w.bus, nullptr, access, o, w.log};

    if (wanted("dashboard_overview")) {
      const double page = median_ms(21, [&] {
        const auto r = board.handle(get("/"));
        if (r.status != 200 || r.body.find("data-listener=\"listener49\"") == std::string::npos) {
          throw std::runtime_error("the overview did not render: " + std::to_string(r.status));
        }
      });
      // What `stats --json` does for the same numbers: the reads the page cannot avoid.
      const double reads = median_ms(21, [&] {
        (void)omnibus::detail::stats_json(omnibus::detail::read_stats(*w.bus, w.db), std::chrono::seconds(60));
      });
      line("dashboard_overview_50_listeners_100k_dead_letters", page, "ms", reads, page / reads, "<=", 100);
    }
    if (wanted("dashboard_dead_letters")) {
      const double page = median_ms(21, [&] {
        const auto r = board.handle(get("/dead-letters", "listener=listener7&error=timed+out"));
        if (r.status != 200 || r.body.find("listener7") == std::string::npos) throw std::runtime_error("no dead letters page");
      });
      omnibus::dead_letter_filter f;
      f.listener = "listener7";
      f.error_like = "%timed out%";
      const double reads = median_ms(21, [&] { (void)omnibus::list_dead_letter_page(w.db, w.opts.schema, f, {}, 50); });
      line("dashboard_dead_letters_page_100k", page, "ms", reads, page / reads, "<=", 100);
    }
  }

  if (wanted("dashboard_drain")) {
    // A drain long enough (about 3 s) for several loads of the overview and the dead letters.
    constexpr long n = 300000;
    auto drain = [&](bool watched) {
      world w{watched ? "dwon" : "dwoff"};
      std::atomic<long> handled{0};
      w.bus->add_async_listener<payload>("noop", [&](omnibus::context&, const payload&) { handled.fetch_add(1); });
      w.bus->provision();
      omnibus::context ctx;
      std::vector<payload> chunk(10000, payload{});
      for (long done = 0; done < n; done += static_cast<long>(chunk.size())) {
        if (!w.bus->publish_batch(ctx, std::span<const payload>(chunk)).ok()) throw std::runtime_error("publish failed");
      }
      omnibus::worker_options wo;
      wo.database_url = env("OMNIBUS_DATABASE_URL");
      omnibus::worker worker{*w.bus, wo, w.log};
      omnibus::detail::access_control access{omnibus::detail::access_config{}};
      omnibus::detail::dashboard_options o;
      o.database_url = wo.database_url;
      omnibus::detail::dashboard board{*w.bus, nullptr, access, o, w.log};
      std::unique_ptr<omnibus::detail::http_server> http;
      std::jthread browser;
      long loads = 0;
      if (watched) {
        http = std::make_unique<omnibus::detail::http_server>(
            "127.0.0.1:0", [&](const omnibus::detail::http_request& r) { return board.handle(r); }, w.log);
        const int port = http->port();
        browser = std::jthread([&, port](std::stop_token st) {  // a browser tab refreshing every second
          while (!st.stop_requested()) {
            if (test_env::http_get(port, "/").status == 200) ++loads;
            if (test_env::http_get(port, "/dead-letters").status == 200) ++loads;
            std::mutex m;
            std::condition_variable_any cv;
            std::unique_lock lock(m);
            (void)cv.wait_for(lock, st, std::chrono::seconds(1), [] { return false; });
          }
        });
      }
      const auto t = clock::now();
      std::jthread run([&](std::stop_token st) { worker.run(st); });
      await([&] { return handled.load() >= n; }, "the worker to drain");
      const double rate = static_cast<double>(n) / seconds_since(t);
      browser = {};
      run.request_stop();
      run.join();
      if (watched && loads < 2) throw std::runtime_error("the dashboard was not loaded during the drain");
      return rate;
    };
    std::vector<double> off, on;
    for (int round = 0; round < 3; ++round) {  // interleaved: both see the same machine
      off.push_back(drain(false));
      on.push_back(drain(true));
    }
    line("worker_drain_while_dashboard_refreshes", median(on), "msg/s", median(off), median(on) / median(off), ">=", 0.95);
  }
}

}  // namespace bench
