#include "omnibus/jetstream.hpp"

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>

#include "omnibus/envelope.hpp"
#include "omnibus/nats_error.hpp"
#include "nats.hpp"
#include "wire.hpp"

namespace omnibus {
namespace {

using namespace std::chrono;
using detail::check;

constexpr std::int64_t ns(nanoseconds d) { return d.count(); }

using stream_info_ptr = std::unique_ptr<jsStreamInfo, detail::c_deleter<jsStreamInfo_Destroy>>;
using consumer_info_ptr = std::unique_ptr<jsConsumerInfo, detail::c_deleter<jsConsumerInfo_Destroy>>;
using meta_ptr = std::unique_ptr<jsMsgMetaData, detail::c_deleter<jsMsgMetaData_Destroy>>;

omnibus::event_id id_of(const omnibus::message& m) {
  if (const std::string* id = m.header(omnibus::header::msg_id)) {
    try {
      return omnibus::event_id::parse(*id);
    } catch (const omnibus::error&) {
      return {};  // a foreign producer's id: the error still names the subject
    }
  }
  return {};
}

detail::msg_ptr to_nats(const omnibus::message& m) {
  natsMsg* raw = nullptr;
  check(natsMsg_Create(&raw, m.subject.c_str(), nullptr, m.body.data(), static_cast<int>(m.body.size())),
        "creating a message for " + m.subject);
  detail::msg_ptr msg{raw};
  for (const auto& [k, v] : m.headers) {
    check(natsMsgHeader_Add(msg.get(), k.c_str(), v.c_str()), "setting header " + k);
  }
  return msg;
}

// Which publish failures certainly stored nothing.
omnibus::publish_error::outcome classify(natsStatus s, jsErrCode code) {
  if (code != 0) return omnibus::publish_error::outcome::not_sent;  // the server answered: refused
  switch (s) {
    case NATS_NO_RESPONDERS:       // no stream takes the subject, or JetStream is off
    case NATS_CONNECTION_CLOSED:   // nothing was buffered
    case NATS_INVALID_ARG:
    case NATS_INVALID_SUBJECT:
    case NATS_MAX_PAYLOAD:
      return omnibus::publish_error::outcome::not_sent;
    default:
      return omnibus::publish_error::outcome::unknown;  // timeout, reconnecting: it may land yet
  }
}

std::string describe(natsStatus s, jsErrCode code, const char* text) {
  std::string d = natsStatus_GetText(s);
  if (code != 0) d += " (JetStream error " + std::to_string(static_cast<int>(code)) + ")";
  if (text != nullptr && *text != '\0') d += std::string(": ") + text;
  return d;
}

std::string stream_subject(const omnibus::stream_config& s) { return s.subject_prefix + ".>"; }

void fill(jsStreamConfig& c, const omnibus::stream_config& s, const char** subjects) {
  jsStreamConfig_Init(&c);
  c.Name = s.name.c_str();
  subjects[0] = nullptr;  // set by the caller, which owns the string
  c.Subjects = subjects;
  c.SubjectsLen = 1;
  c.Retention = js_LimitsPolicy;  // never interest: it drops events no consumer matches yet
  c.Discard = js_DiscardNew;      // a full stream refuses, visibly
  c.MaxAge = ns(s.max_age);
  c.MaxBytes = s.max_bytes;
  c.MaxMsgs = s.max_msgs;
  c.MaxMsgSize = s.max_msg_size;
  c.Duplicates = ns(s.duplicate_window);
  c.Storage = s.memory_storage ? js_MemoryStorage : js_FileStorage;
  c.Replicas = s.replicas;
}

// What differs between an existing stream and the wanted one, or "" when nothing does.
std::string stream_differences(const jsStreamConfig& have, const jsStreamConfig& want) {
  std::string d;
  auto note = [&](const char* what, auto h, auto w) {
    if (h != w) d += std::string(d.empty() ? "" : ", ") + what + " is " + std::to_string(h) + ", configured " + std::to_string(w);
  };
  bool subjects_ok = have.SubjectsLen == 1 && std::strcmp(have.Subjects[0], want.Subjects[0]) == 0;
  if (!subjects_ok) d += std::string("subjects differ (configured ") + want.Subjects[0] + ")";
  note("retention", static_cast<int>(have.Retention), static_cast<int>(want.Retention));
  note("discard policy", static_cast<int>(have.Discard), static_cast<int>(want.Discard));
  note("storage", static_cast<int>(have.Storage), static_cast<int>(want.Storage));
  note("max_age_ns", have.MaxAge, want.MaxAge);
  note("max_bytes", have.MaxBytes, want.MaxBytes);
  note("max_msgs", have.MaxMsgs, want.MaxMsgs);
  note("max_msg_size", have.MaxMsgSize, want.MaxMsgSize);
  note("duplicate_window_ns", have.Duplicates, want.Duplicates);
  note("replicas", have.Replicas, want.Replicas);
  return d;
}

std::optional<system_clock::time_point> time_of(std::int64_t unix_ns) {
  if (unix_ns <= 0) return std::nullopt;
  return system_clock::time_point{duration_cast<system_clock::duration>(nanoseconds{unix_ns})};
}

// A stream's placement as NATS.c takes it, pointing into `s`: keep both alive while it is used.
class placement_of {
 public:
  explicit placement_of(const omnibus::stream_config& s) {
    if (s.placement_cluster.empty() && s.placement_tags.empty()) return;
    for (const auto& t : s.placement_tags) tags_.push_back(t.c_str());
    p_.Cluster = s.placement_cluster.empty() ? nullptr : s.placement_cluster.c_str();
    p_.Tags = tags_.empty() ? nullptr : tags_.data();
    p_.TagsLen = static_cast<int>(tags_.size());
    used_ = true;
  }
  jsPlacement* get() { return used_ ? &p_ : nullptr; }

 private:
  jsPlacement p_{};
  std::vector<const char*> tags_;
  bool used_ = false;
};

// A stream the server cannot place for want of servers: say which setting asks for them.
void check_replicas(natsStatus s, jsErrCode code, const std::string& stream, int replicas) {
  if (s == NATS_OK) return;
  if (code == JSStreamReplicasNotSupportedErr) {
    throw omnibus::error("provisioning stream " + stream + ": stream_config::replicas is " + std::to_string(replicas) +
                         ", and this nats-server is not in a JetStream cluster. Set replicas to 1 (--stream-replicas 1), "
                         "or connect to a cluster (README \"Running on a cluster\")");
  }
  if (code == JSInsufficientResourcesErr || code == JSClusterNoPeersErr) {
    throw omnibus::error("provisioning stream " + stream + ": no " + std::to_string(replicas) +
                         " JetStream server(s) can take a copy (stream_config::replicas " + std::to_string(replicas) +
                         "; too few servers, none matching placement_cluster or placement_tags, or out of storage). "
                         "Lower replicas, fix the placement, or add servers");
  }
}

constexpr std::string_view group_mark = "omnibus group ";

// How long after a pull request's expiry its answer (408) may still arrive.
constexpr std::chrono::milliseconds request_margin{200};
// How long provision() goes on through a cluster's unanswered or unavailable JetStream API.
constexpr std::chrono::seconds provision_patience{30};
// Reading one stored message back from the stream ($JS.API.STREAM.MSG.GET).
constexpr std::chrono::seconds stored_read_timeout{5};
// A max-deliveries report is written as a dead letter within this, or delivered again.
constexpr std::chrono::seconds reports_ack_wait{30};

omnibus::consumer_info to_info(const jsConsumerInfo& ci) {
  omnibus::consumer_info info;
  info.name = ci.Name != nullptr ? ci.Name : "";
  if (ci.Config != nullptr && ci.Config->FilterSubject != nullptr) info.filter_subject = ci.Config->FilterSubject;
  if (ci.Config != nullptr && ci.Config->Description != nullptr) {
    const std::string_view d = ci.Config->Description;
    if (d.substr(0, group_mark.size()) == group_mark) info.group = std::string(d.substr(group_mark.size()));
  }
  info.pending = ci.NumPending;
  info.ack_pending = static_cast<std::uint64_t>(ci.NumAckPending);
  info.redelivered = static_cast<std::uint64_t>(ci.NumRedelivered);
  info.last_delivered = time_of(ci.Delivered.Last);
  info.ack_floor = ci.AckFloor.Stream;
  info.deliveries = ci.Delivered.Consumer;
  info.delivered_sequence = ci.Delivered.Stream;
  info.created = time_of(ci.Created);
  return info;
}

// Reads every header of `m` through NATS.c. Returns NATS.c's complaint when the header block
// does not parse, "" otherwise.
std::string read_headers(natsMsg* m, omnibus::message& out) {
  const char** keys = nullptr;
  int count = 0;
  natsStatus s = natsMsgHeader_Keys(m, &keys, &count);
  if (s == NATS_NOT_FOUND) return {};  // no headers at all
  auto complaint = [](natsStatus st) {
    const char* last = nats_GetLastError(nullptr);
    std::string text = natsStatus_GetText(st);
    if (last != nullptr && *last != '\0') text += std::string(": ") + last;
    return text;
  };
  if (s != NATS_OK) return complaint(s);
  std::unique_ptr<const char*, void (*)(const char**)> keys_owner{keys, [](const char** p) { std::free(p); }};
  for (int i = 0; i < count; ++i) {
    const char** values = nullptr;
    int nvalues = 0;
    s = natsMsgHeader_Values(m, keys[i], &values, &nvalues);
    if (s != NATS_OK) return complaint(s);
    std::unique_ptr<const char*, void (*)(const char**)> values_owner{values, [](const char** p) { std::free(p); }};
    for (int j = 0; j < nvalues; ++j) out.headers.emplace_back(keys[i], values[j]);
  }
  return {};
}

// $JS.API.STREAM.MSG.GET: one stored message by sequence, byte-exact. nullopt when the stream
// no longer has it. Throws omnibus::nats_error when the server does not answer.
std::optional<detail::stored_message> read_stored(natsConnection* conn, const std::string& stream, std::uint64_t seq,
                                                  milliseconds timeout) {
  const std::string subject = "$JS.API.STREAM.MSG.GET." + stream;
  const std::string request = "{\"seq\":" + std::to_string(seq) + "}";
  natsMsg* raw = nullptr;
  check(natsConnection_Request(&raw, conn, subject.c_str(), request.data(), static_cast<int>(request.size()),
                               std::max<std::int64_t>(1, timeout.count())),
        "reading message " + std::to_string(seq) + " of stream " + stream);
  detail::msg_ptr reply{raw};
  const char* data = natsMsg_GetData(reply.get());
  try {
    return detail::parse_msg_get_response(std::string_view(data != nullptr ? data : "", static_cast<std::size_t>(natsMsg_GetDataLength(reply.get()))));
  } catch (const std::runtime_error& e) {
    throw nats_error("reading message " + std::to_string(seq) + " of stream " + stream + ": " + e.what(), NATS_ERR, 0);
  }
}

// The first message the stream stores on `subject` after sequence `after`; nullopt when there
// is none or the server does not say (never throws: it is for operators' screens and checks).
std::optional<detail::stored_message> first_stored_after(natsConnection* conn, const std::string& stream,
                                                         std::uint64_t after, const std::string& subject) {
  const std::string api = "$JS.API.STREAM.MSG.GET." + stream;
  const std::string request = "{\"seq\":" + std::to_string(after + 1) + ",\"next_by_subj\":\"" + subject + "\"}";
  natsMsg* raw = nullptr;
  if (natsConnection_Request(&raw, conn, api.c_str(), request.data(), static_cast<int>(request.size()), 2000) != NATS_OK) {
    return std::nullopt;
  }
  detail::msg_ptr reply{raw};
  const char* data = natsMsg_GetData(reply.get());
  try {
    return detail::parse_msg_get_response(
        std::string_view(data != nullptr ? data : "", static_cast<std::size_t>(natsMsg_GetDataLength(reply.get()))));
  } catch (const std::exception&) {
    return std::nullopt;
  }
}

// When the stream stored the first message on `subject` after `after`; nullopt as above.
std::optional<system_clock::time_point> first_stored_time(natsConnection* conn, const std::string& stream,
                                                          std::uint64_t after, const std::string& subject) {
  const auto m = first_stored_after(conn, stream, after, subject);
  if (!m) return std::nullopt;
  const auto ns = detail::parse_rfc3339_ns(m->time);
  return ns ? time_of(*ns) : std::nullopt;
}

// A delivery that may carry a header block that did not parse, with its exact bytes.
class readable_delivery : public omnibus::delivery {
 public:
  std::string_view header_error() const noexcept final {
    read();
    return header_error_;
  }
  std::string_view raw_header_block() const noexcept final {
    read();
    return raw_header_block_;
  }
  void set_malformed(std::string why, std::string raw_block) {
    header_error_ = std::move(why);
    raw_header_block_ = std::move(raw_block);
  }

 protected:
  // Reads what a subclass reads lazily, before either of the above is returned.
  virtual void read() const noexcept {}

 private:
  std::string header_error_;
  std::string raw_header_block_;
};

// One message fetched by jetstream_consumer, settled by publishing JetStream's ack protocol to
// its reply subject (NATS.c's natsMsg_Ack family needs a JetStream subscription; ours is plain).
// Its subject, body and headers are copied out of the NATS message on first use, on the thread
// that handles it: the fetcher, which makes one of these per message, only parses the reply.
class jetstream_delivery final : public readable_delivery {
 public:
  jetstream_delivery(natsConnection* conn, detail::msg_ptr msg, detail::ack_metadata meta,
                     std::shared_ptr<const std::string> stream)
      : conn_(conn), msg_(std::move(msg)), meta_(std::move(meta)), stream_(std::move(stream)) {}
  const omnibus::message& msg() const noexcept override {
    read();
    return copy_;
  }
  std::uint64_t delivery_count() const noexcept override { return meta_.delivered; }
  std::uint64_t stream_sequence() const noexcept override { return meta_.stream_sequence; }
  void ack() override { send("+ACK", "acking"); }
  void nak(std::chrono::milliseconds delay) override {
    if (delay.count() <= 0) return send("-NAK", "naking");
    send("-NAK {\"delay\": " + std::to_string(duration_cast<nanoseconds>(delay).count()) + "}", "naking");
  }
  void term() override { send("+TERM", "terminating"); }
  void in_progress() override { send("+WPI", "signalling progress on"); }

 private:
  void read() const noexcept override {
    std::call_once(read_once_, [this] { const_cast<jetstream_delivery*>(this)->copy_out(); });
  }
  void copy_out() noexcept {
    try {
      copy_.subject = natsMsg_GetSubject(msg_.get());
      if (const char* data = natsMsg_GetData(msg_.get())) {
        copy_.body.assign(data, static_cast<std::size_t>(natsMsg_GetDataLength(msg_.get())));
      }
      std::string complaint = read_headers(msg_.get(), copy_);
      if (complaint.empty()) return;
      // Keep the exact bytes for the dead letter: NATS.c does not hand them out, the stream does.
      std::string raw;
      try {
        if (auto st = read_stored(conn_, *stream_, meta_.stream_sequence, stored_read_timeout)) {
          raw = std::move(st->header_block);
        }
      } catch (const std::exception& e) {
        complaint += " (its raw header block could not be read back: " + std::string(e.what()) + ")";
      }
      set_malformed("the header block does not parse: " + complaint, std::move(raw));
    } catch (const std::exception& e) {  // out of memory, say: the message goes to dead letters unread
      set_malformed(std::string("the message could not be read: ") + e.what(), {});
    }
  }
  void send(const std::string& body, const char* verb) const {
    natsStatus s = natsConnection_Publish(conn_, natsMsg_GetReply(msg_.get()), body.data(), static_cast<int>(body.size()));
    // The error text is built only on failure: these run once per message.
    if (s != NATS_OK) {
      check(s, std::string(verb) + " " + natsMsg_GetSubject(msg_.get()) + " #" + std::to_string(meta_.stream_sequence));
    }
  }

  natsConnection* conn_;  // borrowed: the connection outlives every delivery
  detail::msg_ptr msg_;
  detail::ack_metadata meta_;
  std::shared_ptr<const std::string> stream_;  // where to read a malformed message's raw bytes
  mutable std::once_flag read_once_;
  omnibus::message copy_;  // filled by read()
};

// One pull request the server has not finished: it fills open requests in the order they came.
struct pull_request {
  std::uint64_t number = 0;               // its reply subject is "<inbox>.<number>"
  std::size_t remaining = 0;              // messages it may still bring
  std::chrono::steady_clock::time_point ends;  // its expiry, plus the trip: after that it is lost
};

// What the subscription's callback hands to fetch(): messages, and the ends of pull requests.
struct inbox_state {
  std::mutex mutex;
  std::condition_variable arrived;
  std::deque<detail::msg_ptr> messages;  // user messages, in arrival order
  std::deque<pull_request> open;         // requests sent and not finished, oldest first
  std::uint64_t requests = 0;            // pull requests sent so far (the newest one's number)
  bool waiting = false;                  // fetch() waits for a message or an error
  std::string request_error;             // a status that is an error (409 consumer deleted, 503)

  [[nodiscard]] std::size_t coming() const {  // messages the open requests may still bring
    std::size_t n = 0;
    for (const pull_request& r : open) n += r.remaining;
    return n;
  }
};

// A status line's code and description: "408" and "Request Timeout". Server-made, so NATS.c's
// own header reading is trusted here.
std::pair<int, std::string> status_of(natsMsg* m) {
  const char* code = nullptr;
  const char* description = nullptr;
  int status = 0;
  if (natsMsgHeader_Get(m, "Status", &code) == NATS_OK && code != nullptr) status = std::atoi(code);
  std::string text;
  if (natsMsgHeader_Get(m, "Description", &description) == NATS_OK && description != nullptr) text = description;
  return {status, text};
}

// Called on NATS.c's delivery thread for each message on the consumer's inbox: queues user
// messages, counts them against the oldest open request, and notes the end of a request. Never
// runs user code; never throws.
void on_inbox_message(natsConnection*, natsSubscription*, natsMsg* raw, void* closure) {
  detail::msg_ptr m{raw};
  auto* st = static_cast<inbox_state*>(closure);
  const char* reply = natsMsg_GetReply(m.get());
  const bool user = reply != nullptr && std::strncmp(reply, "$JS.ACK.", 8) == 0;
  std::lock_guard lock(st->mutex);
  if (user) {
    st->messages.push_back(std::move(m));
    if (!st->open.empty() && --st->open.front().remaining == 0) st->open.pop_front();
  } else {
    // A status for request n arrives on "<inbox>.<n>": it ends that request (a status for one
    // that ended already is ignored).
    const std::string_view subject = natsMsg_GetSubject(m.get());
    const auto dot = subject.rfind('.');
    if (dot == std::string_view::npos) return;
    const auto [status, description] = status_of(m.get());
    if (status == 100) return;  // an idle heartbeat: the request goes on
    const std::string_view number = subject.substr(dot + 1);
    const auto it = std::find_if(st->open.begin(), st->open.end(),
                                 [&](const pull_request& r) { return std::to_string(r.number) == number; });
    if (it == st->open.end()) return;
    st->open.erase(it);
    if (status == 409 || status == 503) {
      st->request_error = std::to_string(status) + " " + (description.empty() ? "from the server" : description);
    }
  }
  // Only a waiting fetch() is woken, and by the first message: the rest of a burst is taken
  // by the next call, not one wake (two context switches) per message.
  if (st->waiting) st->arrived.notify_all();
}

// A durable pull consumer read through a plain subscription on an inbox of its own, so that
// every message reaches Omnibus whatever its header block holds: NATS.c's own fetch reads the
// headers of each message on the way and fails the whole fetch on one it cannot parse.
class jetstream_consumer final : public omnibus::consumer {
 public:
  jetstream_consumer(natsConnection* conn, std::string stream, const std::string& name)
      : conn_(conn),
        stream_(std::move(stream)),
        stream_name_(std::make_shared<const std::string>(stream_)),
        next_subject_("$JS.API.CONSUMER.MSG.NEXT." + stream_ + "." + name),
        state_(std::make_unique<inbox_state>()) {
    natsInbox* raw_inbox = nullptr;
    check(natsInbox_Create(&raw_inbox), "creating an inbox for consumer " + name);
    inbox_ = raw_inbox;
    natsInbox_Destroy(raw_inbox);
    natsSubscription* raw_sub = nullptr;
    check(natsConnection_Subscribe(&raw_sub, conn_, (inbox_ + ".*").c_str(), on_inbox_message, state_.get()),
          "subscribing to consumer " + name);
    sub_.reset(raw_sub);
    // The default limits would drop messages past 64 MiB queued; fetch() asks for no more
    // than the worker has slots for, so the queue stays small anyway.
    check(natsSubscription_SetPendingLimits(sub_.get(), -1, -1), "lifting the pending limits of consumer " + name);
  }

  ~jetstream_consumer() override {
    // Drain: no callback runs once the drain completed, so the state may go. If it does not
    // complete in time (connection gone), keep the state alive rather than risk a late callback.
    bool drained = natsSubscription_Drain(sub_.get()) == NATS_OK &&
                   natsSubscription_WaitForDrainCompletion(sub_.get(), 5000) == NATS_OK;
    if (!drained && natsSubscription_IsValid(sub_.get())) {
      (void)state_.release();
      return;
    }
    // Delivered to us but never fetched: give them back now rather than after their AckWait.
    for (const auto& m : state_->messages) (void)natsConnection_PublishString(conn_, natsMsg_GetReply(m.get()), "-NAK");
  }

  // What came, up to `max`, at once; waits up to `timeout` only when nothing did. Requests
  // more for whatever `max` leaves beyond what came and what the open requests still bring, so
  // the server always has a request to fill while the worker has room (its slots): the next
  // messages are on their way while these run, never more than the caller has room for.
  std::vector<std::unique_ptr<omnibus::delivery>> fetch(std::size_t max, std::chrono::milliseconds timeout) override {
    std::vector<detail::msg_ptr> taken;
    if (max == 0) return {};
    std::unique_lock lock(state_->mutex);
    const auto now = steady_clock::now();
    // A request the server forgot (a reconnect) never ends by itself: past its time it is gone.
    std::erase_if(state_->open, [&](const pull_request& r) { return r.ends < now; });
    take(taken, max);
    const std::size_t room = max - taken.size();
    const std::size_t coming = state_->coming();
    // A small top-up waits until it is worth a round trip: half of `max`, or nothing else coming.
    if (room > coming && (coming == 0 || room - coming >= std::max<std::size_t>(max / 2, 1))) {
      const std::size_t want = room - coming;
      const std::uint64_t n = ++state_->requests;
      state_->open.push_back({n, want, now + timeout + request_margin});
      lock.unlock();
      const std::string request = "{\"batch\":" + std::to_string(want) + ",\"expires\":" +
                                  std::to_string(duration_cast<nanoseconds>(std::max(timeout, milliseconds(1))).count()) + "}";
      const std::string reply = inbox_ + "." + std::to_string(n);
      const natsStatus s = natsConnection_PublishRequest(conn_, next_subject_.c_str(), reply.c_str(), request.data(),
                                                         static_cast<int>(request.size()));
      if (s != NATS_OK) {
        lock.lock();
        std::erase_if(state_->open, [&](const pull_request& r) { return r.number == n; });
        lock.unlock();
        check(s, "asking consumer " + next_subject_ + " for messages");
      }
      // NATS.c's flusher holds a write back for a millisecond to gather more: a millisecond per
      // request. Flushing here costs one round trip to the server instead (and sends the acks
      // written meanwhile). A failure is not this request's: the wait below sees what comes.
      (void)natsConnection_FlushTimeout(conn_, std::max<std::int64_t>(timeout.count(), 1));
      lock.lock();
      take(taken, max);
    }
    if (taken.empty()) {
      // The server ends a request itself at `timeout` (408); the margin covers the trip. Once
      // no request is open (all ended) the caller asks again at once: waiting on would leave the
      // server nothing to deliver into while events arrive.
      const auto until = steady_clock::now() + timeout + request_margin;
      state_->waiting = true;
      state_->arrived.wait_until(lock, until, [&] {
        return !state_->messages.empty() || !state_->request_error.empty() || state_->open.empty();
      });
      state_->waiting = false;
      take(taken, max);
    }
    if (taken.empty() && !state_->request_error.empty()) {
      const std::string why = std::exchange(state_->request_error, {});
      lock.unlock();
      throw nats_error("fetching from " + next_subject_ + ": " + why, NATS_ERR, 0);
    }
    lock.unlock();
    std::vector<std::unique_ptr<omnibus::delivery>> out;
    out.reserve(taken.size());
    for (auto& m : taken) out.push_back(to_delivery(std::move(m)));
    return out;
  }

  // Messages that came ahead of fetch() go back now: a paused listener does not hold them until
  // their AckWait. They come back to a consumer once its open requests have ended, so that
  // they are not delivered straight back into this one (each delivery counts). Requests still
  // open may bring more: the next call gives those back.
  void give_back() override {
    std::deque<detail::msg_ptr> back;
    nanoseconds delay{0};
    {
      std::lock_guard lock(state_->mutex);
      back.swap(state_->messages);
      const auto now = steady_clock::now();
      for (const pull_request& r : state_->open) delay = std::max(delay, duration_cast<nanoseconds>(r.ends - now));
      // A request that ended in an error while the listener was paused (a replay deletes its
      // consumer) says nothing of the next fetch.
      state_->request_error.clear();
    }
    const std::string nak = delay.count() > 0 ? "-NAK {\"delay\": " + std::to_string(delay.count()) + "}" : "-NAK";
    for (const auto& m : back) (void)natsConnection_PublishString(conn_, natsMsg_GetReply(m.get()), nak.c_str());
  }

  // The message as stored in the stream, byte-exact; nullopt when the stream no longer has it.
  std::optional<detail::stored_message> stored(std::uint64_t seq) { return read_stored(conn_, stream_, seq, stored_read_timeout); }

 private:
  void take(std::vector<detail::msg_ptr>& into, std::size_t max) {  // under the state's mutex
    while (into.size() < max && !state_->messages.empty()) {
      into.push_back(std::move(state_->messages.front()));
      state_->messages.pop_front();
    }
  }

  std::unique_ptr<omnibus::delivery> to_delivery(detail::msg_ptr m) {
    // The callback queued only messages whose reply starts with $JS.ACK.; one that does not
    // parse further is still settled through its reply, counted as a first delivery.
    auto meta = detail::parse_ack_subject(natsMsg_GetReply(m.get())).value_or(detail::ack_metadata{});
    if (meta.delivered == 0) meta.delivered = 1;
    return std::make_unique<jetstream_delivery>(conn_, std::move(m), meta, stream_name_);
  }

  natsConnection* conn_;  // borrowed: the connection outlives every consumer
  std::string stream_;
  std::shared_ptr<const std::string> stream_name_;  // the same, shared with the deliveries
  std::string next_subject_;
  std::string inbox_;
  std::unique_ptr<inbox_state> state_;  // reached by the callback until the subscription drained
  detail::subscription_ptr sub_;        // declared last: drained and destroyed first
};

// A report that the server gave up on a message: the advisory's own delivery (settling it
// settles the report) around the abandoned message, read back from the stream.
class abandoned_delivery final : public readable_delivery {
 public:
  abandoned_delivery(std::unique_ptr<omnibus::delivery> report, omnibus::message original, detail::max_deliveries_advisory a)
      : report_(std::move(report)), original_(std::move(original)), advisory_(std::move(a)) {}
  const omnibus::message& msg() const noexcept override { return original_; }
  std::uint64_t delivery_count() const noexcept override { return advisory_.deliveries; }
  std::uint64_t stream_sequence() const noexcept override { return advisory_.stream_sequence; }
  void ack() override { report_->ack(); }
  void nak(std::chrono::milliseconds delay) override { report_->nak(delay); }
  void term() override { report_->term(); }
  void in_progress() override { report_->in_progress(); }
  std::string_view abandoned_by() const noexcept override { return advisory_.consumer; }

 private:
  std::unique_ptr<omnibus::delivery> report_;
  omnibus::message original_;
  detail::max_deliveries_advisory advisory_;
};

// Reads the max-deliveries advisories that the stream <events>_ABANDONED captures, and hands
// out each abandoned message with the consumer that gave up on it.
class abandoned_consumer final : public omnibus::consumer {
 public:
  abandoned_consumer(natsConnection* conn, std::string events_stream, const std::string& advisory_stream,
                     const std::string& name)
      : conn_(conn), events_stream_(std::move(events_stream)), reports_(conn, advisory_stream, name) {}

  std::vector<std::unique_ptr<omnibus::delivery>> fetch(std::size_t max, std::chrono::milliseconds timeout) override {
    std::vector<std::unique_ptr<omnibus::delivery>> out;
    for (auto& report : reports_.fetch(max, timeout)) {
      auto advisory = detail::parse_max_deliveries_advisory(report->msg().body);
      if (!advisory) {  // the stream captures only these advisories; anything else is not ours to act on
        report->term();
        continue;
      }
      omnibus::message original;
      std::string why;
      std::string raw;
      std::optional<detail::stored_message> s;
      try {
        s = read_stored(conn_, events_stream_, advisory->stream_sequence, stored_read_timeout);
      } catch (const std::exception&) {
        report->nak(seconds(1));  // the server did not answer: the report comes back
        continue;
      }
      if (s) {
        original.subject = s->subject;
        original.body = std::move(s->body);
        if (!s->header_block.empty()) {
          try {
            original.headers = detail::parse_header_block(s->header_block).headers;
          } catch (const detail::header_block_error& e) {
            why = std::string("the header block does not parse: ") + e.what();
            raw = std::move(s->header_block);
          }
        }
      } else {
        why = "the stream no longer holds it (aged out or purged)";
      }
      auto d = std::make_unique<abandoned_delivery>(std::move(report), std::move(original), std::move(*advisory));
      if (!why.empty()) d->set_malformed(std::move(why), std::move(raw));
      out.push_back(std::move(d));
    }
    return out;
  }

 private:
  natsConnection* conn_;  // borrowed: the connection outlives every consumer
  std::string events_stream_;
  jetstream_consumer reports_;
};

// The state of one publish_batch, reached from NATS.c's ack-handler thread.
struct batch_state {
  std::mutex mutex;
  std::unordered_map<natsMsg*, std::size_t> index;  // message -> position in the batch
  std::vector<omnibus::batch_result>* results = nullptr;
};

void on_batch_ack(jsCtx*, natsMsg* msg, jsPubAck* pa, jsPubAckErr* pae, void* closure) {
  auto* st = static_cast<batch_state*>(closure);
  {
    std::lock_guard lock(st->mutex);
    if (auto it = st->index.find(msg); it != st->index.end()) {
      omnibus::batch_result& r = (*st->results)[it->second];
      if (pa != nullptr) {
        r.ack = omnibus::publish_ack{pa->Sequence, pa->Duplicate};
      } else if (pae != nullptr) {
        r.failure = classify(pae->Err, pae->ErrCode);
        r.error = describe(pae->Err, pae->ErrCode, pae->ErrText);
      }
      st->index.erase(it);
    }
  }
  natsMsg_Destroy(msg);
}

// Creates the stream, or checks that the existing one has the same settings (Omnibus never
// recreates or silently changes a stream).
void provision_stream(jsCtx* js, const omnibus::stream_config& stream) {
  const std::string subject = stream_subject(stream);
  const char* subjects[1];
  jsStreamConfig want;
  fill(want, stream, subjects);
  subjects[0] = subject.c_str();
  placement_of placement{stream};
  want.Placement = placement.get();

  jsErrCode code{};
  jsStreamInfo* raw = nullptr;
  natsStatus s = js_GetStreamInfo(&raw, js, stream.name.c_str(), nullptr, &code);
  stream_info_ptr info{raw};
  if (s == NATS_NOT_FOUND || code == JSStreamNotFoundErr) {
    code = {};
    raw = nullptr;
    s = js_AddStream(&raw, js, &want, nullptr, &code);
    info.reset(raw);
    if (s != NATS_OK && code == JSStreamNameExistErr) {  // another process won the race: compare with its stream
      code = {};
      raw = nullptr;
      s = js_GetStreamInfo(&raw, js, stream.name.c_str(), nullptr, &code);
      info.reset(raw);
    }
  }
  check_replicas(s, code, stream.name, stream.replicas);
  check(s, "provisioning stream " + stream.name, code);
  if (std::string diff = stream_differences(*info->Config, want); !diff.empty()) {
    throw omnibus::error("stream " + stream.name + " exists with other settings: " + diff +
                     ". Omnibus never recreates a stream; change the configuration to match, or edit the stream "
                     "deliberately");
  }
}

// The settings a listener's durable consumer should have. Points into `c` and `description`.
jsConsumerConfig consumer_settings(const omnibus::consumer_config& c, const std::string& description) {
  jsConsumerConfig cc;
  jsConsumerConfig_Init(&cc);
  cc.Durable = c.name.c_str();
  if (!description.empty()) cc.Description = description.c_str();
  cc.FilterSubject = c.filter_subject.c_str();
  cc.AckPolicy = js_AckExplicit;
  cc.AckWait = ns(c.ack_wait);
  // The worker counts attempts and dead-letters long before this ceiling; when the server
  // reaches it anyway, its advisory lands in <stream>_ABANDONED and becomes a dead letter.
  cc.MaxDeliver = c.max_deliver;
  cc.MaxAckPending = c.max_ack_pending;
  if (c.start_sequence) {
    cc.DeliverPolicy = js_DeliverByStartSequence;
    cc.OptStartSeq = std::max<std::uint64_t>(1, *c.start_sequence);
  } else if (c.start_time && c.start_time->time_since_epoch().count() <= 0) {
    cc.DeliverPolicy = js_DeliverAll;  // the server reads a zero start time as "not set"
  } else if (c.start_time) {
    cc.DeliverPolicy = js_DeliverByStartTime;
    cc.OptStartTime = ns(c.start_time->time_since_epoch());
  } else {
    cc.DeliverPolicy = js_DeliverNew;
  }
  return cc;
}

// Creates a listener's durable consumer, or updates what the server lets change (ack wait,
// max ack pending, max deliver, the group mark); a different filter is refused.
void provision_consumer(jsCtx* js, const omnibus::stream_config& stream, const omnibus::consumer_config& c) {
  const std::string description = c.group.empty() ? std::string() : std::string(group_mark) + c.group;
  jsConsumerConfig cc = consumer_settings(c, description);
  jsConsumerInfo* raw_ci = nullptr;
  jsErrCode code{};
  natsStatus s = js_GetConsumerInfo(&raw_ci, js, stream.name.c_str(), c.name.c_str(), nullptr, &code);
  consumer_info_ptr ci{raw_ci};
  if (s == NATS_NOT_FOUND || code == JSConsumerNotFoundErr) {
    code = {};
    raw_ci = nullptr;
    s = js_AddConsumer(&raw_ci, js, stream.name.c_str(), &cc, nullptr, &code);
    ci.reset(raw_ci);
    check(s, "creating consumer " + c.name, code);
    return;
  }
  check(s, "reading consumer " + c.name, code);
  const jsConsumerConfig& have = *ci->Config;
  const char* have_filter = have.FilterSubject != nullptr ? have.FilterSubject : "";
  if (c.filter_subject != have_filter) {
    throw omnibus::error("consumer " + c.name + " exists with filter '" + have_filter + "', but its listener wants '" +
                     c.filter_subject +
                     "'. A listener name belongs to one event: rename the listener, or delete the old consumer "
                     "(omnibus-worker consumers prune)");
  }
  const std::string_view have_description = have.Description != nullptr ? have.Description : "";
  if (have.AckWait == cc.AckWait && have.MaxAckPending == cc.MaxAckPending && have.MaxDeliver == cc.MaxDeliver &&
      (description.empty() || have_description == description)) {
    return;
  }
  // Keep what the server cannot change (where it started), update the rest.
  cc.DeliverPolicy = have.DeliverPolicy;
  cc.OptStartTime = have.OptStartTime;
  cc.OptStartSeq = have.OptStartSeq;
  cc.MaxWaiting = have.MaxWaiting;
  code = {};
  raw_ci = nullptr;
  s = js_UpdateConsumer(&raw_ci, js, stream.name.c_str(), &cc, nullptr, &code);
  consumer_info_ptr updated{raw_ci};
  check(s, "updating consumer " + c.name, code);
}

}  // namespace

jetstream::jetstream(nats_connection& conn) : conn_(conn) {}
jetstream::~jetstream() = default;

void jetstream::provision(const omnibus::stream_config& stream, std::span<const omnibus::consumer_config> consumers) {
  jsCtx* js = conn_.native().js.get();
  // In a cluster, the JetStream API can go unanswered for a few seconds (an election, a new
  // stream's replicas being placed): every step is idempotent, so go again, for a while.
  const auto give_up = steady_clock::now() + provision_patience;
  for (milliseconds wait{250};; wait = std::min(wait * 2, milliseconds(4000))) {
    try {
      provision_stream(js, stream);
      provision_abandoned(stream);
      for (const omnibus::consumer_config& c : consumers) provision_consumer(js, stream, c);
      return;
    } catch (const omnibus::nats_error& e) {
      // No responders with JSNotEnabledErr: a server without JetStream, for good.
      const bool transient = (e.status() == NATS_TIMEOUT || e.status() == NATS_NO_RESPONDERS ||
                              e.js_code() == JSClusterNotAvailErr || e.js_code() == JSStreamOfflineErr ||
                              e.js_code() == JSConsumerOfflineErr) &&
                             e.js_code() != JSNotEnabledErr && e.js_code() != JSNotEnabledForAccountErr;
      if (!transient || steady_clock::now() + wait > give_up) throw;
      std::this_thread::sleep_for(wait);
    }
  }
}

omnibus::publish_ack jetstream::publish(const omnibus::message& m, std::chrono::milliseconds timeout) {
  detail::msg_ptr msg = to_nats(m);
  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MaxWait = std::max<std::int64_t>(1, timeout.count());
  jsPubAck* raw = nullptr;
  jsErrCode code{};
  natsStatus s = js_PublishMsg(&raw, conn_.native().js.get(), msg.get(), &po, &code);
  std::unique_ptr<jsPubAck, detail::c_deleter<jsPubAck_Destroy>> ack{raw};
  if (s != NATS_OK) {
    auto outcome = classify(s, code);
    const omnibus::event_id id = id_of(m);
    throw omnibus::publish_error(outcome, id,
                             std::string(outcome == omnibus::publish_error::outcome::not_sent ? "not sent: " : "outcome unknown: ") +
                                 "publishing " + m.subject + " " + id.to_string() + ": " +
                                 describe(s, code, nats_GetLastError(nullptr)));
  }
  return {ack->Sequence, ack->Duplicate};
}

std::vector<omnibus::batch_result> jetstream::publish_batch(std::span<const omnibus::message> msgs,
                                                        std::chrono::milliseconds timeout) {
  return publish_each(msgs.size(), [&](std::size_t i) { return &msgs[i]; }, timeout);
}

std::vector<omnibus::batch_result> jetstream::publish_each(std::size_t count,
                                                       const std::function<const omnibus::message*(std::size_t)>& next,
                                                       std::chrono::milliseconds timeout) {
  std::vector<omnibus::batch_result> results;
  if (count == 0) return results;
  results.reserve(count);
  batch_state st;
  st.results = &results;
  st.index.reserve(count);

  // A context of its own, so that this batch's acks reach this batch's handler.
  jsOptions jo;
  jsOptions_Init(&jo);
  jo.PublishAsync.AckHandler = on_batch_ack;
  jo.PublishAsync.AckHandlerClosure = &st;
  jo.PublishAsync.MaxPending = 4096;  // bounds memory; a full window waits (StallWait)
  jo.PublishAsync.StallWait = std::max<std::int64_t>(1, timeout.count());
  jsCtx* raw_js = nullptr;
  check(natsConnection_JetStream(&raw_js, conn_.native().conn.get(), &jo), "creating a JetStream context");
  detail::js_ptr js{raw_js};

  const auto deadline = steady_clock::now() + timeout;
  std::exception_ptr stopped;  // next() or a message threw: what was sent is waited for first
  // Made and registered a group at a time: one lock per group, not per message, so the main
  // thread and the ack handler seldom meet on the mutex.
  constexpr std::size_t group = 64;
  std::vector<detail::msg_ptr> made;
  made.reserve(group);
  bool ended = false;
  for (std::size_t first = 0; first < count && !ended;) {
    made.clear();
    try {
      while (made.size() < group && first + made.size() < count) {
        const omnibus::message* m = next(first + made.size());
        if (m == nullptr) {
          ended = true;
          break;
        }
        made.push_back(to_nats(*m));
      }
    } catch (...) {
      stopped = std::current_exception();
      ended = true;
    }
    {
      std::lock_guard lock(st.mutex);  // before sending: an ack may come back at once
      for (std::size_t k = 0; k < made.size(); ++k) {
        results.emplace_back();  // the handler may write it from now on: reserved, never moved
        st.index.emplace(made[k].get(), first + k);
      }
    }
    for (std::size_t k = 0; k < made.size(); ++k) {
      natsMsg* key = made[k].get();
      natsMsg* handoff = made[k].release();
      natsStatus s = js_PublishMsgAsync(js.get(), &handoff, nullptr);
      if (s != NATS_OK) {
        natsMsg_Destroy(handoff);  // still ours: the library did not take it
        std::lock_guard lock(st.mutex);
        st.index.erase(key);
        results[first + k].failure = omnibus::publish_error::outcome::not_sent;
        results[first + k].error = describe(s, {}, nats_GetLastError(nullptr));
      }
    }
    first += made.size();
  }

  jsPubOptions po;
  jsPubOptions_Init(&po);
  po.MaxWait = std::max<std::int64_t>(1, duration_cast<milliseconds>(deadline - steady_clock::now()).count());
  natsStatus s = js_PublishAsyncComplete(js.get(), &po);
  if (s != NATS_OK) {
    // Whatever is still pending may yet be stored: its outcome is unknown.
    natsMsgList pending{};
    if (js_PublishAsyncGetPendingList(&pending, js.get()) == NATS_OK) {
      std::lock_guard lock(st.mutex);
      for (int i = 0; i < pending.Count; ++i) {
        if (auto it = st.index.find(pending.Msgs[i]); it != st.index.end()) {
          results[it->second].failure = omnibus::publish_error::outcome::unknown;
          results[it->second].error = "no PubAck within the timeout: " + describe(s, {}, nullptr);
          st.index.erase(it);
        }
      }
      natsMsgList_Destroy(&pending);
    }
    // NATS.c takes a message off its pending list before calling the handler and counts it
    // done after: taking the list leaves counted exactly the handlers running now, which may
    // still write `st`. Wait for them before `st` goes.
    jsPubOptions last;
    jsPubOptions_Init(&last);
    last.MaxWait = 10000;
    (void)js_PublishAsyncComplete(js.get(), &last);
  }
  // No handler runs now, and none will touch `st`: every message is acked or off the pending
  // list. Destroying the context drops any ack still on its way.
  js.reset();
  std::lock_guard lock(st.mutex);
  for (const auto& [msg, i] : st.index) {
    results[i].failure = omnibus::publish_error::outcome::unknown;
    results[i].error = "no PubAck received";
  }
  if (stopped) std::rethrow_exception(stopped);
  return results;
}

std::unique_ptr<omnibus::consumer> jetstream::open_consumer(const omnibus::stream_config& stream, const std::string& name) {
  jsConsumerInfo* raw_ci = nullptr;
  jsErrCode code{};
  check(js_GetConsumerInfo(&raw_ci, conn_.native().js.get(), stream.name.c_str(), name.c_str(), nullptr, &code),
        "reading consumer " + name + " (provision() creates it)", code);
  consumer_info_ptr ci{raw_ci};
  return std::make_unique<jetstream_consumer>(conn_.native().conn.get(), stream.name, name);
}

std::string jetstream::abandoned_stream(const omnibus::stream_config& stream) { return stream.name + "_ABANDONED"; }

void jetstream::provision_abandoned(const omnibus::stream_config& stream) {
  // The server's max-deliveries advisories for this stream's consumers, kept until a worker
  // of each group has turned them into dead letters: an advisory nobody hears is lost.
  const std::string name = abandoned_stream(stream);
  const std::string subject = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + stream.name + ".*";
  const char* subjects[1] = {subject.c_str()};
  jsStreamConfig c;
  jsStreamConfig_Init(&c);
  c.Name = name.c_str();
  c.Subjects = subjects;
  c.SubjectsLen = 1;
  c.Retention = js_LimitsPolicy;
  c.Discard = js_DiscardOld;  // reports are small; a full report stream drops the oldest
  c.MaxAge = ns(stream.max_age);
  c.MaxBytes = 8 * 1024 * 1024;  // ~25,000 reports
  c.Storage = stream.memory_storage ? js_MemoryStorage : js_FileStorage;
  c.Replicas = stream.replicas;
  placement_of placement{stream};  // beside the stream it reports on
  c.Placement = placement.get();
  jsStreamInfo* raw = nullptr;
  jsErrCode code{};
  natsStatus s = js_AddStream(&raw, conn_.native().js.get(), &c, nullptr, &code);
  stream_info_ptr info{raw};
  if (s != NATS_OK && code == JSStreamNameExistErr) return;  // made earlier, by this or another process
  check_replicas(s, code, name, stream.replicas);
  check(s, "provisioning stream " + name, code);
}

std::unique_ptr<omnibus::consumer> jetstream::open_abandoned(const omnibus::stream_config& stream, const std::string& group) {
  const std::string reports = abandoned_stream(stream);
  const std::string name = group + "__abandoned";
  jsConsumerConfig cc;
  jsConsumerConfig_Init(&cc);
  cc.Durable = name.c_str();
  cc.AckPolicy = js_AckExplicit;
  cc.DeliverPolicy = js_DeliverAll;  // every report since the stream was made
  cc.AckWait = ns(reports_ack_wait);
  cc.MaxDeliver = -1;
  jsConsumerInfo* raw_ci = nullptr;
  jsErrCode code{};
  natsStatus s = js_GetConsumerInfo(&raw_ci, conn_.native().js.get(), reports.c_str(), name.c_str(), nullptr, &code);
  consumer_info_ptr ci{raw_ci};
  if (s == NATS_NOT_FOUND || code == JSConsumerNotFoundErr) {
    code = {};
    raw_ci = nullptr;
    s = js_AddConsumer(&raw_ci, conn_.native().js.get(), reports.c_str(), &cc, nullptr, &code);
    ci.reset(raw_ci);
  }
  check(s, "opening consumer " + name + " on " + reports, code);
  return std::make_unique<abandoned_consumer>(conn_.native().conn.get(), stream.name, reports, name);
}

std::optional<omnibus::consumer_info> jetstream::info(const omnibus::stream_config& stream, const std::string& name) {
  jsConsumerInfo* raw = nullptr;
  jsErrCode code{};
  natsStatus s = js_GetConsumerInfo(&raw, conn_.native().js.get(), stream.name.c_str(), name.c_str(), nullptr, &code);
  consumer_info_ptr ci{raw};
  if (s == NATS_NOT_FOUND || code == JSConsumerNotFoundErr) return std::nullopt;
  check(s, "reading consumer " + name, code);
  omnibus::consumer_info info = to_info(*ci);
  if (info.pending + info.ack_pending > 0 && !info.filter_subject.empty()) {
    // Everything up to the ack floor is acked: the oldest unacked event is the first one of the
    // consumer's subject after it.
    info.oldest_unacked = first_stored_time(conn_.native().conn.get(), stream.name, ci->AckFloor.Stream,
                                             info.filter_subject);
  }
  return info;
}

std::vector<omnibus::consumer_info> jetstream::consumers(const omnibus::stream_config& stream) {
  jsConsumerInfoList* raw = nullptr;
  jsErrCode code{};
  natsStatus s = js_Consumers(&raw, conn_.native().js.get(), stream.name.c_str(), nullptr, &code);
  std::unique_ptr<jsConsumerInfoList, detail::c_deleter<jsConsumerInfoList_Destroy>> list{raw};
  std::vector<omnibus::consumer_info> out;
  if (s == NATS_NOT_FOUND) return out;
  check(s, "listing the consumers of " + stream.name, code);
  for (int i = 0; i < list->Count; ++i) out.push_back(to_info(*list->List[i]));
  return out;
}

bool jetstream::delete_consumer(const omnibus::stream_config& stream, const std::string& name) {
  jsErrCode code{};
  natsStatus s = js_DeleteConsumer(conn_.native().js.get(), stream.name.c_str(), name.c_str(), nullptr, &code);
  if (s == NATS_NOT_FOUND || code == JSConsumerNotFoundErr) return false;
  check(s, "deleting consumer " + name, code);
  return true;
}

std::uint64_t jetstream::last_sequence(const omnibus::stream_config& stream) { return state(stream)->last_sequence; }

std::optional<omnibus::stream_state> jetstream::state(const omnibus::stream_config& stream) {
  jsStreamInfo* raw = nullptr;
  jsErrCode code{};
  check(js_GetStreamInfo(&raw, conn_.native().js.get(), stream.name.c_str(), nullptr, &code),
        "reading stream " + stream.name, code);
  stream_info_ptr info{raw};
  omnibus::stream_state st{info->State.Msgs, info->State.Bytes, info->State.FirstSeq, info->State.LastSeq,
                           info->Config->MaxBytes, info->Config->MaxMsgs,
                           info->State.Msgs > 0 ? time_of(info->State.FirstTime) : std::nullopt,
                           static_cast<int>(info->Config->Replicas), {}, 0};
  if (st.replicas > 1 && info->Cluster != nullptr && info->Cluster->Leader != nullptr) {
    st.leader = info->Cluster->Leader;
    st.current = 1;
    for (int i = 0; i < info->Cluster->ReplicasLen; ++i) st.current += info->Cluster->Replicas[i]->Current ? 1 : 0;
  }
  return st;
}

std::uint64_t jetstream::count_deliverable(const omnibus::stream_config& stream, const omnibus::consumer_config& probe) {
  jsCtx* js = conn_.native().js.get();
  jsConsumerConfig cc = consumer_settings(probe, "");
  jsConsumerInfo* raw = nullptr;
  jsErrCode code{};
  // A probe left by an earlier run (killed between its create and delete) would refuse a new start.
  (void)js_DeleteConsumer(js, stream.name.c_str(), probe.name.c_str(), nullptr, &code);
  code = {};
  check(js_AddConsumer(&raw, js, stream.name.c_str(), &cc, nullptr, &code), "creating probe consumer " + probe.name, code);
  consumer_info_ptr ci{raw};
  const std::uint64_t n = ci->NumPending;
  code = {};
  (void)js_DeleteConsumer(js, stream.name.c_str(), probe.name.c_str(), nullptr, &code);
  return n;
}

std::optional<std::chrono::system_clock::time_point> jetstream::stored_time(const omnibus::stream_config& stream,
                                                                            const std::string& subject,
                                                                            std::uint64_t sequence) {
  return first_stored_time(conn_.native().conn.get(), stream.name, sequence > 0 ? sequence - 1 : 0, subject);
}

std::optional<std::uint64_t> jetstream::first_stored(const omnibus::stream_config& stream, const std::string& subject,
                                                     std::uint64_t sequence) {
  const auto m = first_stored_after(conn_.native().conn.get(), stream.name, sequence > 0 ? sequence - 1 : 0, subject);
  if (!m) return std::nullopt;
  return m->sequence;
}

bool jetstream::delete_stream(const omnibus::stream_config& stream) {
  jsErrCode code{};
  // Its reports go with it (there may be none).
  (void)js_DeleteStream(conn_.native().js.get(), abandoned_stream(stream).c_str(), nullptr, &code);
  code = {};
  natsStatus s = js_DeleteStream(conn_.native().js.get(), stream.name.c_str(), nullptr, &code);
  if (s == NATS_NOT_FOUND || code == JSStreamNotFoundErr) return false;
  check(s, "deleting stream " + stream.name, code);
  return true;
}

void jetstream::purge_stream(const omnibus::stream_config& stream) {
  jsErrCode code{};
  check(js_PurgeStream(conn_.native().js.get(), stream.name.c_str(), nullptr, &code), "purging stream " + stream.name,
        code);
}

void jetstream::purge_before(const omnibus::stream_config& stream, std::uint64_t sequence) {
  if (sequence <= 1) return;  // nothing is below the first sequence
  jsOptions o;
  jsOptions_Init(&o);
  o.Stream.Purge.Sequence = sequence;
  jsErrCode code{};
  check(js_PurgeStream(conn_.native().js.get(), stream.name.c_str(), &o, &code),
        "purging stream " + stream.name + " below sequence " + std::to_string(sequence), code);
}

}  // namespace omnibus
