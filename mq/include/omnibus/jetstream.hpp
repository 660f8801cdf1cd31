#pragma once
// omnibus::queue over NATS JetStream (NATS.c): streams with limits retention and DiscardNew,
// one durable pull consumer per async listener, publish with PubAck, pipelined batches.

#include <chrono>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "omnibus/export.hpp"
#include "omnibus/nats_connection.hpp"
#include "omnibus/queue.hpp"

namespace omnibus {

/// The JetStream implementation of omnibus::queue. Borrows `conn`, which must outlive it and every
/// consumer and delivery it hands out. Thread-safe. NATS.c failures surface as omnibus::nats_error,
/// except publish failures (omnibus::publish_error) and configuration conflicts (omnibus::error).
class OMNIBUS_API jetstream final : public omnibus::queue {
 public:
  /// Borrows `conn`; talks to the server only when a member function is called.
  explicit jetstream(nats_connection& conn);
  ~jetstream() override;
  jetstream(const jetstream&) = delete;
  jetstream& operator=(const jetstream&) = delete;

  /// Creates the stream if missing (limits retention, DiscardNew, the configured MaxAge,
  /// MaxBytes, duplicate window); an existing stream whose settings differ throws omnibus::error
  /// naming each difference, and is never recreated. Then each consumer: created if missing
  /// (no BackOff, MaxDeliver the configured ceiling, explicit ack); an existing one gets its
  /// editable fields (AckWait, MaxAckPending, MaxDeliver) updated, and throws omnibus::error if its
  /// filter differs. Also creates `<stream>_ABANDONED`, which keeps the server's max-deliveries
  /// advisories for the stream's consumers until open_abandoned() reads them.
  /// Consumers are read through plain subscriptions (see open_consumer), so a message whose
  /// header block NATS.c cannot parse is still fetched, alone, with delivery::header_error().
  /// Every step is idempotent: a timeout or a cluster's "temporarily unavailable" (an election,
  /// replicas being placed) is tried again with backoff, for up to 30 s.
  void provision(const omnibus::stream_config& stream, std::span<const omnibus::consumer_config> consumers) override;

  /// js_PublishMsg, waiting at most `timeout` for the PubAck. Throws omnibus::publish_error:
  /// not_sent when the server refused it or no stream listens; unknown on a timeout (NATS.c
  /// may still deliver a publish it buffered during a reconnect).
  omnibus::publish_ack publish(const omnibus::message& msg, std::chrono::milliseconds timeout) override;

  /// js_PublishMsgAsync for all, in order, then waits up to `timeout` for every PubAck.
  std::vector<omnibus::batch_result> publish_batch(std::span<const omnibus::message> msgs,
                                               std::chrono::milliseconds timeout) override;
  /// The same, asking for each message just before it is sent: only NATS.c's copies of the
  /// messages awaiting their PubAcks are held at once.
  std::vector<omnibus::batch_result> publish_each(std::size_t count,
                                              const std::function<const omnibus::message*(std::size_t)>& next,
                                              std::chrono::milliseconds timeout) override;

  std::unique_ptr<omnibus::consumer> open_consumer(const omnibus::stream_config& stream,
                                               const std::string& consumer_name) override;
  std::optional<omnibus::consumer_info> info(const omnibus::stream_config& stream, const std::string& consumer_name) override;
  std::vector<omnibus::consumer_info> consumers(const omnibus::stream_config& stream) override;
  bool delete_consumer(const omnibus::stream_config& stream, const std::string& consumer_name) override;
  /// natsConnection_FlushTimeout: acks, naks and terms are fire-and-forget publishes.
  void flush(std::chrono::milliseconds timeout) override { conn_.flush(timeout); }
  [[nodiscard]] std::optional<omnibus::stream_state> state(const omnibus::stream_config& stream) override;
  [[nodiscard]] std::uint64_t count_deliverable(const omnibus::stream_config& stream,
                                                const omnibus::consumer_config& probe) override;
  [[nodiscard]] std::optional<std::chrono::system_clock::time_point> stored_time(const omnibus::stream_config& stream,
                                                                                 const std::string& subject,
                                                                                 std::uint64_t sequence) override;
  [[nodiscard]] std::optional<std::uint64_t> first_stored(const omnibus::stream_config& stream, const std::string& subject,
                                                          std::uint64_t sequence) override;
  /// The durable "<group>__abandoned" on `<stream>_ABANDONED`: each report carries the message,
  /// read back byte-exact by its sequence.
  std::unique_ptr<omnibus::consumer> open_abandoned(const omnibus::stream_config& stream, const std::string& group) override;
  /// The name of the stream that keeps `stream`'s max-deliveries advisories.
  [[nodiscard]] static std::string abandoned_stream(const omnibus::stream_config& stream);


  /// The stream's last sequence (0 when empty). Throws omnibus::nats_error when the stream is missing.
  [[nodiscard]] std::uint64_t last_sequence(const omnibus::stream_config& stream);
  /// Deletes the stream; false when it did not exist. For tests and operators.
  bool delete_stream(const omnibus::stream_config& stream);
  /// Removes every message of the stream and keeps the stream and its consumers: room for
  /// publishers after a full stream (DiscardNew). Unhandled events go too. For operators.
  void purge_stream(const omnibus::stream_config& stream);
  /// Removes the stream's messages with a sequence below `sequence` (handled_by_all() tells where
  /// nothing unhandled is lost), and keeps the rest, the stream and its consumers.
  void purge_before(const omnibus::stream_config& stream, std::uint64_t sequence);

 private:
  void provision_abandoned(const omnibus::stream_config& stream);

  nats_connection& conn_;  // borrowed; outlives this
};

}  // namespace omnibus
