#pragma once
// Reads a test stream back from its first message, through a throwaway consumer.

#include <chrono>
#include <string>
#include <vector>

#include "omnibus/queue.hpp"
#include "support/test_env.hpp"

namespace test_env {

/// Up to `expected` messages of `stream`, in stream order, waiting at most 30 s for them.
inline std::vector<omnibus::message> read_stream(omnibus::queue& q, const omnibus::stream_config& stream, std::size_t expected) {
  using namespace std::chrono_literals;
  omnibus::consumer_config all;
  all.name = unique_name("reader");
  all.filter_subject = stream.subject_prefix + ".>";
  all.start_time = std::chrono::system_clock::time_point{};  // from the stream's first message
  std::vector<omnibus::consumer_config> v{all};
  q.provision(stream, v);
  auto c = q.open_consumer(stream, all.name);
  std::vector<omnibus::message> out;
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (out.size() < expected && std::chrono::steady_clock::now() < deadline) {
    for (auto& d : c->fetch(256, 500ms)) {
      out.push_back(d->msg());
      d->ack();
    }
  }
  (void)q.delete_consumer(stream, all.name);
  return out;
}

/// A stream of one test's own: unique name and prefix, memory storage.
inline omnibus::bus_options test_bus_options(const std::string& stem) {
  omnibus::bus_options o;
  o.group = "g";
  o.stream.name = unique_name(stem);
  o.stream.subject_prefix = o.stream.name;
  o.stream.memory_storage = true;
  o.stream.max_age = std::chrono::hours(1);
  o.stream.max_bytes = 256 * 1024 * 1024;
  o.schema = unique_name(stem);
  return o;
}

}  // namespace test_env
