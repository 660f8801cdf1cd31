#include "mq/jetstream.hpp"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <unordered_map>

#include "bus/envelope.hpp"
#include "mq/error.hpp"
#include "nats.hpp"

namespace mq {
namespace {

using namespace std::chrono;
using detail::check;

constexpr std::int64_t ns(nanoseconds d) { return d.count(); }

using stream_info_ptr = std::unique_ptr<jsStreamInfo, detail::c_deleter<jsStreamInfo_Destroy>>;
using consumer_info_ptr = std::unique_ptr<jsConsumerInfo, detail::c_deleter<jsConsumerInfo_Destroy>>;
using meta_ptr = std::unique_ptr<jsMsgMetaData, detail::c_deleter<jsMsgMetaData_Destroy>>;

bus::event_id id_of(const bus::message& m) {
  if (const std::string* id = m.header(bus::header::msg_id)) {
    try {
      return bus::event_id::parse(*id);
    } catch (const bus::error&) {
      return {};  // a foreign producer's id: the error still names the subject
    }
  }
  return {};
}

detail::msg_ptr to_nats(const bus::message& m) {
  natsMsg* raw = nullptr;
  check(natsMsg_Create(&raw, m.subject.c_str(), nullptr, m.body.data(), static_cast<int>(m.body.size())),
        "creating a message for " + m.subject);
  detail::msg_ptr msg{raw};
  for (const auto& [k, v] : m.headers) {
    check(natsMsgHeader_Add(msg.get(), k.c_str(), v.c_str()), "setting header " + k);
  }
  return msg;
}

bus::message from_nats(natsMsg* m) {
  bus::message out;
  out.subject = natsMsg_GetSubject(m);
  if (const char* data = natsMsg_GetData(m)) out.body.assign(data, static_cast<std::size_t>(natsMsg_GetDataLength(m)));
  const char** keys = nullptr;
  int count = 0;
  natsStatus s = natsMsgHeader_Keys(m, &keys, &count);
  if (s == NATS_NOT_FOUND) return out;  // no headers at all
  check(s, "reading header names");
  std::unique_ptr<const char*, void (*)(const char**)> keys_owner{keys, [](const char** p) { std::free(p); }};
  for (int i = 0; i < count; ++i) {
    const char** values = nullptr;
    int nvalues = 0;
    check(natsMsgHeader_Values(m, keys[i], &values, &nvalues), std::string("reading header ") + keys[i]);
    std::unique_ptr<const char*, void (*)(const char**)> values_owner{values, [](const char** p) { std::free(p); }};
    for (int j = 0; j < nvalues; ++j) out.headers.emplace_back(keys[i], values[j]);
  }
  return out;
}

// Which publish failures certainly stored nothing.
bus::publish_error::outcome classify(natsStatus s, jsErrCode code) {
  if (code != 0) return bus::publish_error::outcome::not_sent;  // the server answered: refused
  switch (s) {
    case NATS_NO_RESPONDERS:       // no stream takes the subject, or JetStream is off
    case NATS_CONNECTION_CLOSED:   // nothing was buffered
    case NATS_INVALID_ARG:
    case NATS_INVALID_SUBJECT:
    case NATS_MAX_PAYLOAD:
      return bus::publish_error::outcome::not_sent;
    default:
      return bus::publish_error::outcome::unknown;  // timeout, reconnecting: it may land yet
  }
}

std::string describe(natsStatus s, jsErrCode code, const char* text) {
  std::string d = natsStatus_GetText(s);
  if (code != 0) d += " (JetStream error " + std::to_string(static_cast<int>(code)) + ")";
  if (text != nullptr && *text != '\0') d += std::string(": ") + text;
  return d;
}

std::string stream_subject(const bus::stream_config& s) { return s.subject_prefix + ".>"; }

void fill(jsStreamConfig& c, const bus::stream_config& s, const char** subjects) {
  jsStreamConfig_Init(&c);
  c.Name = s.name.c_str();
  subjects[0] = nullptr;  // set by the caller, which owns the string
  c.Subjects = subjects;
  c.SubjectsLen = 1;
  c.Retention = js_LimitsPolicy;  // never interest: it drops events no consumer matches yet
  c.Discard = js_DiscardNew;      // a full stream refuses, visibly
  c.MaxAge = ns(s.max_age);
  c.MaxBytes = s.max_bytes;
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
  note("max_msg_size", have.MaxMsgSize, want.MaxMsgSize);
  note("duplicate_window_ns", have.Duplicates, want.Duplicates);
  note("replicas", have.Replicas, want.Replicas);
  return d;
}

std::optional<system_clock::time_point> time_of(std::int64_t unix_ns) {
  if (unix_ns <= 0) return std::nullopt;
  return system_clock::time_point{duration_cast<system_clock::duration>(nanoseconds{unix_ns})};
}

bus::consumer_info to_info(const jsConsumerInfo& ci) {
  bus::consumer_info info;
  info.name = ci.Name != nullptr ? ci.Name : "";
  if (ci.Config != nullptr && ci.Config->FilterSubject != nullptr) info.filter_subject = ci.Config->FilterSubject;
  info.pending = ci.NumPending;
  info.ack_pending = static_cast<std::uint64_t>(ci.NumAckPending);
  info.redelivered = static_cast<std::uint64_t>(ci.NumRedelivered);
  info.last_delivered = time_of(ci.Delivered.Last);
  return info;
}

class jetstream_delivery final : public bus::delivery {
 public:
  jetstream_delivery(detail::msg_ptr msg, bus::message copy, std::uint64_t count, std::uint64_t seq)
      : msg_(std::move(msg)), copy_(std::move(copy)), count_(count), seq_(seq) {}
  const bus::message& msg() const noexcept override { return copy_; }
  std::uint64_t delivery_count() const noexcept override { return count_; }
  std::uint64_t stream_sequence() const noexcept override { return seq_; }
  // The error text is built only on failure: these run once per message.
  void ack() override { settle(natsMsg_Ack(msg_.get(), nullptr), "acking"); }
  void nak(std::chrono::milliseconds delay) override {
    settle(delay.count() <= 0 ? natsMsg_Nak(msg_.get(), nullptr) : natsMsg_NakWithDelay(msg_.get(), delay.count(), nullptr),
           "naking");
  }
  void term() override { settle(natsMsg_Term(msg_.get(), nullptr), "terminating"); }
  void in_progress() override { settle(natsMsg_InProgress(msg_.get(), nullptr), "signalling progress on"); }
 private:
  void settle(natsStatus s, const char* verb) const {
    if (s != NATS_OK) check(s, std::string(verb) + " " + copy_.subject + " #" + std::to_string(seq_));
  }

  detail::msg_ptr msg_;
  bus::message copy_;
  std::uint64_t count_;
  std::uint64_t seq_;
};

class jetstream_consumer final : public bus::consumer {
 public:
  explicit jetstream_consumer(detail::subscription_ptr sub) : sub_(std::move(sub)) {}
  std::vector<std::unique_ptr<bus::delivery>> fetch(std::size_t max, std::chrono::milliseconds timeout) override {
    std::vector<std::unique_ptr<bus::delivery>> out;
    if (max == 0) return out;
    natsMsgList list{};
    jsErrCode code{};
    natsStatus s = natsSubscription_Fetch(&list, sub_.get(), static_cast<int>(max), std::max<std::int64_t>(1, timeout.count()), &code);
    // The list owns the messages until each is moved into a delivery.
    std::unique_ptr<natsMsgList, void (*)(natsMsgList*)> owner{&list, [](natsMsgList* l) { natsMsgList_Destroy(l); }};
    if (s == NATS_TIMEOUT && list.Count == 0) return out;
    if (s != NATS_OK && s != NATS_TIMEOUT) check(s, "fetching", code);
    out.reserve(static_cast<std::size_t>(list.Count));
    for (int i = 0; i < list.Count; ++i) {
      detail::msg_ptr m{list.Msgs[i]};
      list.Msgs[i] = nullptr;
      jsMsgMetaData* raw_meta = nullptr;
      check(natsMsg_GetMetaData(&raw_meta, m.get()), "reading delivery metadata");
      meta_ptr meta{raw_meta};
      bus::message copy = from_nats(m.get());
      out.push_back(std::make_unique<jetstream_delivery>(std::move(m), std::move(copy), meta->NumDelivered,
                                                         meta->Sequence.Stream));
    }
    return out;
  }

 private:
  detail::subscription_ptr sub_;
};

// The state of one publish_batch, reached from NATS.c's ack-handler thread.
struct batch_state {
  std::mutex mutex;
  std::unordered_map<natsMsg*, std::size_t> index;  // message -> position in the batch
  std::vector<bus::batch_result>* results = nullptr;
};

void on_batch_ack(jsCtx*, natsMsg* msg, jsPubAck* pa, jsPubAckErr* pae, void* closure) {
  auto* st = static_cast<batch_state*>(closure);
  {
    std::lock_guard lock(st->mutex);
    if (auto it = st->index.find(msg); it != st->index.end()) {
      bus::batch_result& r = (*st->results)[it->second];
      if (pa != nullptr) {
        r.ack = bus::publish_ack{pa->Sequence, pa->Duplicate};
      } else if (pae != nullptr) {
        r.failure = classify(pae->Err, pae->ErrCode);
        r.error = describe(pae->Err, pae->ErrCode, pae->ErrText);
      }
      st->index.erase(it);
    }
  }
  natsMsg_Destroy(msg);
}

}  // namespace

jetstream::jetstream(connection& conn) : conn_(conn) {}
jetstream::~jetstream() = default;

void jetstream::provision(const bus::stream_config& stream, std::span<const bus::consumer_config> consumers) {
  jsCtx* js = conn_.native().js.get();
  const std::string subject = stream_subject(stream);
  const char* subjects[1];
  jsStreamConfig want;
  fill(want, stream, subjects);
  subjects[0] = subject.c_str();

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
  check(s, "provisioning stream " + stream.name, code);
  if (std::string diff = stream_differences(*info->Config, want); !diff.empty()) {
    throw bus::error("stream " + stream.name + " exists with other settings: " + diff +
                     ". Omnibus never recreates a stream; change the configuration to match, or edit the stream "
                     "deliberately");
  }

  for (const bus::consumer_config& c : consumers) {
    jsConsumerConfig cc;
    jsConsumerConfig_Init(&cc);
    cc.Durable = c.name.c_str();
    cc.FilterSubject = c.filter_subject.c_str();
    cc.AckPolicy = js_AckExplicit;
    cc.AckWait = ns(c.ack_wait);
    cc.MaxDeliver = -1;  // the worker counts attempts and dead-letters; the server must never give up silently
    cc.MaxAckPending = c.max_ack_pending;
    if (c.start_time && c.start_time->time_since_epoch().count() <= 0) {
      cc.DeliverPolicy = js_DeliverAll;  // the server reads a zero start time as "not set"
    } else if (c.start_time) {
      cc.DeliverPolicy = js_DeliverByStartTime;
      cc.OptStartTime = ns(c.start_time->time_since_epoch());
    } else {
      cc.DeliverPolicy = js_DeliverNew;
    }

    jsConsumerInfo* raw_ci = nullptr;
    code = {};
    s = js_GetConsumerInfo(&raw_ci, js, stream.name.c_str(), c.name.c_str(), nullptr, &code);
    consumer_info_ptr ci{raw_ci};
    if (s == NATS_NOT_FOUND || code == JSConsumerNotFoundErr) {
      code = {};
      raw_ci = nullptr;
      s = js_AddConsumer(&raw_ci, js, stream.name.c_str(), &cc, nullptr, &code);
      ci.reset(raw_ci);
      check(s, "creating consumer " + c.name, code);
      continue;
    }
    check(s, "reading consumer " + c.name, code);
    const jsConsumerConfig& have = *ci->Config;
    const char* have_filter = have.FilterSubject != nullptr ? have.FilterSubject : "";
    if (c.filter_subject != have_filter) {
      throw bus::error("consumer " + c.name + " exists with filter '" + have_filter + "', but its listener wants '" +
                       c.filter_subject +
                       "'. A listener name belongs to one event: rename the listener, or delete the old consumer "
                       "(omnibus-worker consumers prune)");
    }
    if (have.AckWait != cc.AckWait || have.MaxAckPending != cc.MaxAckPending || have.MaxDeliver != cc.MaxDeliver) {
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
  }
}

bus::publish_ack jetstream::publish(const bus::message& m, std::chrono::milliseconds timeout) {
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
    const bus::event_id id = id_of(m);
    throw bus::publish_error(outcome, id,
                             std::string(outcome == bus::publish_error::outcome::not_sent ? "not sent: " : "outcome unknown: ") +
                                 "publishing " + m.subject + " " + id.to_string() + ": " +
                                 describe(s, code, nats_GetLastError(nullptr)));
  }
  return {ack->Sequence, ack->Duplicate};
}

std::vector<bus::batch_result> jetstream::publish_batch(std::span<const bus::message> msgs,
                                                        std::chrono::milliseconds timeout) {
  std::vector<bus::batch_result> results(msgs.size());
  if (msgs.empty()) return results;
  batch_state st;
  st.results = &results;
  st.index.reserve(msgs.size());

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
  for (std::size_t i = 0; i < msgs.size(); ++i) {
    detail::msg_ptr msg = to_nats(msgs[i]);
    natsMsg* key = msg.get();
    {
      std::lock_guard lock(st.mutex);
      st.index.emplace(key, i);  // before sending: the ack may come back at once
    }
    natsMsg* handoff = msg.release();
    natsStatus s = js_PublishMsgAsync(js.get(), &handoff, nullptr);
    if (s != NATS_OK) {
      natsMsg_Destroy(handoff);  // still ours: the library did not take it
      std::lock_guard lock(st.mutex);
      st.index.erase(key);
      results[i].failure = bus::publish_error::outcome::not_sent;
      results[i].error = describe(s, {}, nats_GetLastError(nullptr));
    }
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
          results[it->second].failure = bus::publish_error::outcome::unknown;
          results[it->second].error = "no PubAck within the timeout: " + describe(s, {}, nullptr);
          st.index.erase(it);
        }
      }
      natsMsgList_Destroy(&pending);
    }
  }
  // The handler touches `st` only while a message is pending; none is now. Destroying the
  // context drops any ack still in flight.
  js.reset();
  std::lock_guard lock(st.mutex);
  for (const auto& [msg, i] : st.index) {
    results[i].failure = bus::publish_error::outcome::unknown;
    results[i].error = "no PubAck received";
  }
  return results;
}

std::unique_ptr<bus::consumer> jetstream::open_consumer(const bus::stream_config& stream, const std::string& name) {
  jsCtx* js = conn_.native().js.get();
  jsConsumerInfo* raw_ci = nullptr;
  jsErrCode code{};
  check(js_GetConsumerInfo(&raw_ci, js, stream.name.c_str(), name.c_str(), nullptr, &code),
        "reading consumer " + name + " (provision() creates it)", code);
  consumer_info_ptr ci{raw_ci};
  jsSubOptions so;
  jsSubOptions_Init(&so);
  so.Stream = stream.name.c_str();
  so.Consumer = name.c_str();
  natsSubscription* raw_sub = nullptr;
  code = {};
  check(js_PullSubscribe(&raw_sub, js, ci->Config->FilterSubject, name.c_str(), nullptr, &so, &code),
        "subscribing to consumer " + name, code);
  return std::make_unique<jetstream_consumer>(detail::subscription_ptr{raw_sub});
}

std::optional<bus::consumer_info> jetstream::info(const bus::stream_config& stream, const std::string& name) {
  jsConsumerInfo* raw = nullptr;
  jsErrCode code{};
  natsStatus s = js_GetConsumerInfo(&raw, conn_.native().js.get(), stream.name.c_str(), name.c_str(), nullptr, &code);
  consumer_info_ptr ci{raw};
  if (s == NATS_NOT_FOUND || code == JSConsumerNotFoundErr) return std::nullopt;
  check(s, "reading consumer " + name, code);
  return to_info(*ci);
}

std::vector<bus::consumer_info> jetstream::consumers(const bus::stream_config& stream) {
  jsConsumerInfoList* raw = nullptr;
  jsErrCode code{};
  natsStatus s = js_Consumers(&raw, conn_.native().js.get(), stream.name.c_str(), nullptr, &code);
  std::unique_ptr<jsConsumerInfoList, detail::c_deleter<jsConsumerInfoList_Destroy>> list{raw};
  std::vector<bus::consumer_info> out;
  if (s == NATS_NOT_FOUND) return out;
  check(s, "listing the consumers of " + stream.name, code);
  for (int i = 0; i < list->Count; ++i) out.push_back(to_info(*list->List[i]));
  return out;
}

bool jetstream::delete_consumer(const bus::stream_config& stream, const std::string& name) {
  jsErrCode code{};
  natsStatus s = js_DeleteConsumer(conn_.native().js.get(), stream.name.c_str(), name.c_str(), nullptr, &code);
  if (s == NATS_NOT_FOUND || code == JSConsumerNotFoundErr) return false;
  check(s, "deleting consumer " + name, code);
  return true;
}

std::uint64_t jetstream::last_sequence(const bus::stream_config& stream) { return state(stream)->last_sequence; }

std::optional<bus::stream_state> jetstream::state(const bus::stream_config& stream) {
  jsStreamInfo* raw = nullptr;
  jsErrCode code{};
  check(js_GetStreamInfo(&raw, conn_.native().js.get(), stream.name.c_str(), nullptr, &code),
        "reading stream " + stream.name, code);
  stream_info_ptr info{raw};
  return bus::stream_state{info->State.Msgs, info->State.Bytes, info->State.FirstSeq, info->State.LastSeq,
                           info->Config->MaxBytes};
}

bool jetstream::delete_stream(const bus::stream_config& stream) {
  jsErrCode code{};
  natsStatus s = js_DeleteStream(conn_.native().js.get(), stream.name.c_str(), nullptr, &code);
  if (s == NATS_NOT_FOUND || code == JSStreamNotFoundErr) return false;
  check(s, "deleting stream " + stream.name, code);
  return true;
}

void jetstream::purge_stream(const bus::stream_config& stream) {
  jsErrCode code{};
  check(js_PurgeStream(conn_.native().js.get(), stream.name.c_str(), nullptr, &code), "purging stream " + stream.name,
        code);
}

}  // namespace mq
