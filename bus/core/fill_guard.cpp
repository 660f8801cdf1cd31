#include "core/fill_guard.hpp"

#include <cstdio>
#include <utility>
#include <vector>

namespace omnibus::detail {

std::size_t stored_size(const message& m) noexcept {
  // nats-server's file store: a 22-byte record head and an 8-byte hash around subject, header
  // block ("NATS/1.0\r\n", "name: value\r\n" each, "\r\n") and body.
  std::size_t n = 30 + m.subject.size() + m.body.size();
  if (!m.headers.empty()) {
    n += 12;
    for (const auto& [k, v] : m.headers) n += k.size() + v.size() + 4;
  }
  return n;
}

fill_guard::fill_guard(queue& q, stream_config stream, std::chrono::milliseconds refresh, std::chrono::milliseconds reread)
    : queue_(q), stream_(std::move(stream)), refresh_(refresh), reread_(reread), off_(stream_.hold_above >= 1.0) {}

void fill_guard::read(clock::time_point now) {
  read_at_ = now;
  try {
    seen_ = queue_.state(stream_);
    unreadable_.clear();
    if (!seen_) off_ = true;  // this queue has no limits (memory_queue)
  } catch (const std::exception& e) {
    seen_.reset();
    unreadable_ = e.what();
  }
  added_bytes_ = 0;
  added_msgs_ = 0;
}

std::size_t fill_guard::fits(std::span<const std::size_t> sizes) const {
  if (!seen_) return sizes.size();
  const double line = stream_.hold_above;
  const bool by_bytes = seen_->max_bytes > 0;
  const bool by_msgs = seen_->max_msgs > 0;
  const double byte_line = line * static_cast<double>(seen_->max_bytes);
  const double msg_line = line * static_cast<double>(seen_->max_msgs);
  const bool empty = seen_->messages + added_msgs_ == 0;
  double bytes = static_cast<double>(seen_->bytes + added_bytes_);
  double count = static_cast<double>(seen_->messages + added_msgs_);
  std::size_t n = 0;
  for (const std::size_t size : sizes) {
    bytes += static_cast<double>(size);
    count += 1;
    // An empty stream takes one event whatever its size: the line must never hold for good.
    if ((by_bytes && bytes > byte_line) || (by_msgs && count > msg_line)) {
      if (!(empty && n == 0)) break;
    }
    ++n;
  }
  return n;
}

fill_guard::verdict fill_guard::admit(std::span<const message> msgs) {
  std::vector<std::size_t> sizes;
  sizes.reserve(msgs.size());
  for (const message& m : msgs) sizes.push_back(stored_size(m));
  return admit_sizes(sizes);
}

fill_guard::verdict fill_guard::admit_sizes(std::span<const std::size_t> msgs) {
  std::lock_guard lock(mutex_);
  if (off_ || msgs.empty()) return {msgs.size(), {}};
  const auto now = clock::now();
  if (now - read_at_ >= refresh_) read(now);
  std::size_t n = fits(msgs);
  if (n < msgs.size() && now - read_at_ >= reread_) {  // perhaps old events left, or the estimate was high
    read(now);
    n = fits(msgs);
  }
  for (std::size_t i = 0; i < n; ++i) added_bytes_ += msgs[i];
  added_msgs_ += n;
  holding_ = n < msgs.size();
  if (!holding_) return {n, {}};
  // What the stream holds by the last read, and what this process sent since.
  const stream_state& s = *seen_;
  const auto bytes = static_cast<double>(s.bytes + added_bytes_);
  const auto count = static_cast<double>(s.messages + added_msgs_);
  char fill[160];
  if (s.max_bytes > 0 && (s.max_msgs <= 0 || bytes / static_cast<double>(s.max_bytes) >= count / static_cast<double>(s.max_msgs))) {
    std::snprintf(fill, sizeof fill, "%.0f of %lld bytes (%.1f%%)", bytes, static_cast<long long>(s.max_bytes),
                  100.0 * bytes / static_cast<double>(s.max_bytes));
  } else {
    std::snprintf(fill, sizeof fill, "%.0f of %lld events (%.1f%%)", count, static_cast<long long>(s.max_msgs),
                  100.0 * count / static_cast<double>(s.max_msgs));
  }
  return {n, "stream " + stream_.name + " is nearly full: " + fill + ", and an event of " +
                 std::to_string(msgs[n]) + " bytes would pass the line; publishers stop at " +
                 std::to_string(static_cast<int>(stream_.hold_above * 100 + 0.5)) +
                 "% (stream_config::hold_above), where nats-server 2.9 may drop the oldest events "
                 "(nats-io/nats-server#4771). Room comes back as events pass max_age, or when an operator "
                 "purges the stream"};
}

bool fill_guard::holding() const {
  std::lock_guard lock(mutex_);
  return holding_;
}

bool fill_guard::holding_fresh() const {
  std::lock_guard lock(mutex_);
  return holding_ && clock::now() - read_at_ < reread_;
}

std::string fill_guard::unreadable() const {
  std::lock_guard lock(mutex_);
  return unreadable_;
}

}  // namespace omnibus::detail
