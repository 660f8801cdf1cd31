#include "omnibus/memory_queue.hpp"

#include <algorithm>
#include <stdexcept>

#include "omnibus/envelope.hpp"

namespace omnibus {
namespace {

event_id id_of(const message& msg) {
  const std::string* id = msg.header(header::msg_id);
  if (id == nullptr) return {};
  try {
    return event_id::parse(*id);
  } catch (const error&) {
    return {};  // a foreign id: the error message still names the subject
  }
}

}  // namespace

class memory_queue::memory_delivery final : public delivery {
 public:
  memory_delivery(memory_queue& q, std::string consumer, std::uint64_t seq, std::uint64_t count, message msg)
      : q_(q), consumer_(std::move(consumer)), seq_(seq), count_(count), msg_(std::move(msg)) {}
  const message& msg() const noexcept override { return msg_; }
  std::uint64_t delivery_count() const noexcept override { return count_; }
  std::uint64_t stream_sequence() const noexcept override { return seq_; }
  void ack() override { q_.settle(consumer_, seq_, std::nullopt); }
  void term() override { q_.settle(consumer_, seq_, std::nullopt); }
  void nak(std::chrono::milliseconds delay) override { q_.settle(consumer_, seq_, delay); }
  void in_progress() override {
    std::lock_guard lock(q_.mutex_);
    auto d = q_.durables_.find(consumer_);
    if (d == q_.durables_.end()) return;
    if (auto it = d->second.in_flight.find(seq_); it != d->second.in_flight.end()) {
      it->second.redeliver_at = clock::now() + d->second.cfg.ack_wait;
    }
  }

 private:
  memory_queue& q_;  // outlives every delivery it hands out
  std::string consumer_;
  std::uint64_t seq_;
  std::uint64_t count_;
  message msg_;
};

class memory_queue::memory_consumer final : public consumer {
 public:
  memory_consumer(memory_queue& q, std::string name) : q_(q), name_(std::move(name)) {}
  std::vector<std::unique_ptr<delivery>> fetch(std::size_t max, std::chrono::milliseconds timeout) override {
    const auto deadline = clock::now() + timeout;
    std::unique_lock lock(q_.mutex_);
    for (;;) {
      auto got = q_.take(name_, max);
      if (!got.empty() || clock::now() >= deadline) return got;
      // Wake for a publish or a settlement, or when the earliest redelivery falls due.
      auto wake = deadline;
      if (auto d = q_.durables_.find(name_); d != q_.durables_.end()) {
        for (const auto& [seq, o] : d->second.in_flight) wake = std::min(wake, o.redeliver_at);
      }
      q_.changed_.wait_until(lock, wake);
    }
  }

 private:
  memory_queue& q_;
  std::string name_;
};

memory_queue::~memory_queue() = default;

const stream_config& memory_queue::stream_locked() const {
  if (!stream_) throw error("memory_queue: provision() the stream first");
  return *stream_;
}

bool memory_queue::matches(const durable& d, const std::string& subject) const {
  const std::string& f = d.cfg.filter_subject;
  if (f.empty() || f == subject) return true;
  if (f.size() >= 2 && f.compare(f.size() - 2, 2, ".*") == 0) {  // one more token, whatever it is
    const std::string_view base(f.data(), f.size() - 1);
    return subject.size() > base.size() && subject.compare(0, base.size(), base) == 0 &&
           subject.find('.', base.size()) == std::string::npos;
  }
  return f.size() >= 2 && f.compare(f.size() - 2, 2, ".>") == 0 && subject.size() > f.size() - 1 &&
         subject.compare(0, f.size() - 1, f, 0, f.size() - 1) == 0;
}

void memory_queue::provision(const stream_config& stream, std::span<const consumer_config> consumers) {
  std::lock_guard lock(mutex_);
  if (stream_ && (stream_->name != stream.name || stream_->subject_prefix != stream.subject_prefix)) {
    throw error("memory_queue holds stream " + stream_->name + " (" + stream_->subject_prefix +
                ".>); it cannot also be " + stream.name);
  }
  stream_ = stream;
  for (const consumer_config& c : consumers) {
    auto it = durables_.find(c.name);
    if (it != durables_.end()) {
      if (it->second.cfg.filter_subject != c.filter_subject) {
        throw error("consumer " + c.name + " filters " + it->second.cfg.filter_subject + ", not " +
                    c.filter_subject + ": a listener's event cannot change under the same name");
      }
      it->second.cfg.ack_wait = c.ack_wait;
      it->second.cfg.max_ack_pending = c.max_ack_pending;
      continue;
    }
    durable d{c, log_.size() + 1, {}};
    if (c.start_time) {
      auto first = std::find_if(log_.begin(), log_.end(), [&](const stored& s) { return s.at >= *c.start_time; });
      d.next_seq = static_cast<std::uint64_t>(first - log_.begin()) + 1;
    }
    durables_.emplace(c.name, std::move(d));
  }
}

publish_ack memory_queue::publish_locked(const message& msg) {
  const stream_config& s = stream_locked();
  const std::string prefix = s.subject_prefix + ".";
  if (msg.subject.compare(0, prefix.size(), prefix) != 0) {
    throw publish_error(publish_error::outcome::not_sent, id_of(msg), "no stream takes subject " + msg.subject);
  }
  const auto now = clock::now();
  std::erase_if(recent_ids_, [&](const auto& kv) { return now - kv.second > s.duplicate_window; });
  const std::string* id = msg.header(header::msg_id);
  if (id != nullptr) {
    if (auto it = recent_ids_.find(*id); it != recent_ids_.end()) {
      // JetStream answers a duplicate with the sequence of the first copy; so do we.
      for (std::size_t i = log_.size(); i-- > 0;) {
        const std::string* other = log_[i].msg.header(header::msg_id);
        if (other != nullptr && *other == *id) return {i + 1, true};
      }
    }
  }
  const auto size = static_cast<std::int64_t>(msg.body.size() + msg.subject.size());
  if (size > s.max_msg_size) {
    throw publish_error(publish_error::outcome::not_sent, id_of(msg), "message on " + msg.subject + " is over max_msg_size");
  }
  if (bytes_ + size > s.max_bytes) {
    throw publish_error(publish_error::outcome::not_sent, id_of(msg), "stream " + s.name + " is full (DiscardNew)");
  }
  bytes_ += size;
  log_.push_back({msg, std::chrono::system_clock::now()});
  if (id != nullptr) recent_ids_.emplace(*id, now);
  return {log_.size(), false};
}

publish_ack memory_queue::publish(const message& msg, std::chrono::milliseconds) {
  publish_ack ack;
  {
    std::lock_guard lock(mutex_);
    ack = publish_locked(msg);
  }
  changed_.notify_all();
  return ack;
}

std::vector<batch_result> memory_queue::publish_batch(std::span<const message> msgs, std::chrono::milliseconds) {
  std::vector<batch_result> out(msgs.size());
  {
    std::lock_guard lock(mutex_);
    for (std::size_t i = 0; i < msgs.size(); ++i) {
      try {
        out[i].ack = publish_locked(msgs[i]);
      } catch (const publish_error& e) {
        out[i].failure = e.result();
        out[i].error = e.what();
      }
    }
  }
  changed_.notify_all();
  return out;
}

std::unique_ptr<consumer> memory_queue::open_consumer(const stream_config&, const std::string& name) {
  std::lock_guard lock(mutex_);
  if (!durables_.contains(name)) throw error("memory_queue: no consumer named " + name + "; provision() it first");
  return std::make_unique<memory_consumer>(*this, name);
}

std::vector<std::unique_ptr<delivery>> memory_queue::take(const std::string& name, std::size_t max) {
  std::vector<std::unique_ptr<delivery>> out;
  auto it = durables_.find(name);
  if (it == durables_.end()) throw error("memory_queue: consumer " + name + " was deleted");
  durable& d = it->second;
  const auto now = clock::now();
  for (auto& [seq, o] : d.in_flight) {  // redeliveries first, in stream order
    if (out.size() >= max) return out;
    if (o.redeliver_at > now) continue;
    ++o.count;
    o.redeliver_at = now + d.cfg.ack_wait;
    out.push_back(std::make_unique<memory_delivery>(*this, name, seq, o.count, log_[seq - 1].msg));
  }
  while (out.size() < max && d.next_seq <= log_.size() &&
         static_cast<std::int64_t>(d.in_flight.size()) < d.cfg.max_ack_pending) {
    const std::uint64_t seq = d.next_seq++;
    if (!matches(d, log_[seq - 1].msg.subject)) continue;
    d.in_flight[seq] = {1, now + d.cfg.ack_wait};
    out.push_back(std::make_unique<memory_delivery>(*this, name, seq, 1, log_[seq - 1].msg));
  }
  return out;
}

void memory_queue::settle(const std::string& name, std::uint64_t seq, std::optional<clock::duration> redeliver_in) {
  {
    std::lock_guard lock(mutex_);
    auto d = durables_.find(name);
    if (d == durables_.end()) return;
    auto it = d->second.in_flight.find(seq);
    if (it == d->second.in_flight.end()) return;  // settled already
    if (redeliver_in) {
      it->second.redeliver_at = clock::now() + *redeliver_in;
    } else {
      d->second.in_flight.erase(it);
    }
  }
  changed_.notify_all();
}

consumer_info memory_queue::info_locked(const durable& d) const {
  consumer_info info;
  info.name = d.cfg.name;
  info.filter_subject = d.cfg.filter_subject;
  for (std::uint64_t seq = d.next_seq; seq <= log_.size(); ++seq) {
    if (matches(d, log_[seq - 1].msg.subject)) ++info.pending;
  }
  info.ack_pending = d.in_flight.size();
  for (const auto& [seq, o] : d.in_flight) {
    if (o.count > 1) ++info.redelivered;
  }
  return info;
}

std::optional<consumer_info> memory_queue::info(const stream_config&, const std::string& name) {
  std::lock_guard lock(mutex_);
  auto it = durables_.find(name);
  if (it == durables_.end()) return std::nullopt;
  return info_locked(it->second);
}

std::vector<consumer_info> memory_queue::consumers(const stream_config&) {
  std::lock_guard lock(mutex_);
  std::vector<consumer_info> out;
  for (const auto& [name, d] : durables_) out.push_back(info_locked(d));
  return out;
}

bool memory_queue::delete_consumer(const stream_config&, const std::string& name) {
  std::lock_guard lock(mutex_);
  return durables_.erase(name) > 0;
}

std::vector<message> memory_queue::messages() const {
  std::lock_guard lock(mutex_);
  std::vector<message> out;
  out.reserve(log_.size());
  for (const stored& s : log_) out.push_back(s.msg);
  return out;
}

}  // namespace omnibus
