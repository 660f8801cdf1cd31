#pragma once
// An in-memory omnibus::queue for users' own unit tests: publish, dedup by Nats-Msg-Id, durable
// consumers with ack, nak with delay, term, AckWait redelivery and MaxAckPending. One process
// only; it keeps every message until destroyed (no MaxAge). Omnibus's own integration tests
// never use it: they run against a real nats-server.

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "omnibus/export.hpp"
#include "omnibus/queue.hpp"

namespace omnibus {

/// Thread-safe. Deliveries it hands out must not outlive it.
class OMNIBUS_API memory_queue final : public queue {
 public:
  memory_queue() = default;
  ~memory_queue() override;
  memory_queue(const memory_queue&) = delete;
  memory_queue& operator=(const memory_queue&) = delete;

  void provision(const stream_config& stream, std::span<const consumer_config> consumers) override;
  publish_ack publish(const message& msg, std::chrono::milliseconds timeout) override;
  std::vector<batch_result> publish_batch(std::span<const message> msgs, std::chrono::milliseconds timeout) override;
  std::unique_ptr<consumer> open_consumer(const stream_config& stream, const std::string& consumer_name) override;
  std::optional<consumer_info> info(const stream_config& stream, const std::string& consumer_name) override;
  std::vector<consumer_info> consumers(const stream_config& stream) override;
  bool delete_consumer(const stream_config& stream, const std::string& consumer_name) override;
  void flush(std::chrono::milliseconds) override {}


  /// Every message stored so far, in stream order (a copy).
  [[nodiscard]] std::vector<message> messages() const;

 private:
  using clock = std::chrono::steady_clock;
  struct stored {
    message msg;
    std::chrono::system_clock::time_point at;
  };
  struct outstanding {
    std::uint64_t count = 0;         // deliveries so far
    clock::time_point redeliver_at;  // when it may go out again (ack wait or nak delay)
  };
  struct durable {
    consumer_config cfg;
    std::uint64_t next_seq = 1;                     // first sequence never delivered
    std::map<std::uint64_t, outstanding> in_flight; // delivered, not acked or termed
  };
  class memory_delivery;
  class memory_consumer;

  publish_ack publish_locked(const message& msg);
  std::vector<std::unique_ptr<delivery>> take(const std::string& name, std::size_t max);
  void settle(const std::string& name, std::uint64_t seq, std::optional<clock::duration> redeliver_in);
  [[nodiscard]] consumer_info info_locked(const durable& d) const;
  [[nodiscard]] bool matches(const durable& d, const std::string& subject) const;
  [[nodiscard]] const stream_config& stream_locked() const;

  mutable std::mutex mutex_;
  std::condition_variable changed_;
  std::optional<stream_config> stream_;
  std::vector<stored> log_;  // sequence n is log_[n - 1]
  std::int64_t bytes_ = 0;
  std::map<std::string, clock::time_point> recent_ids_;  // Nats-Msg-Id -> when first seen
  std::map<std::string, durable> durables_;
};

}  // namespace omnibus
