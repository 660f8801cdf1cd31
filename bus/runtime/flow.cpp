#include "runtime/flow.hpp"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "omnibus/text.hpp"

namespace omnibus::detail {

const char* to_string(flow_state s) noexcept {
  switch (s) {
    case flow_state::running: return "running";
    case flow_state::paused: return "paused";
    case flow_state::outage: return "outage";
    case flow_state::breaker_open: return "breaker_open";
    case flow_state::breaker_half_open: return "breaker_half_open";
    case flow_state::rate_limited: return "rate_limited";
  }
  return "running";
}

namespace {

long long seconds_of(std::chrono::milliseconds d) { return static_cast<long long>((d.count() + 999) / 1000); }

}  // namespace

flow_gate::flow_gate(std::string listener, const listener_options& options, std::shared_ptr<spdlog::logger> log)
    : listener_(std::move(listener)), policy_(options.breaker), log_(std::move(log)) {
  shown_.since = std::chrono::system_clock::now();
}

flow_gate::allowance flow_gate::may_take(int free, clock::time_point now) {
  std::lock_guard lock(mutex_);
  constexpr std::chrono::milliseconds idle{50};  // re-asked this often while nothing may be fetched
  if (paused_ || outage_ || free <= 0) return {0, false, idle};
  if (breaker_ == breaker::open) {
    if (now < open_until_) {
      return {0, false, std::min(idle, std::chrono::ceil<std::chrono::milliseconds>(open_until_ - now))};
    }
    breaker_ = breaker::half_open;
    log_->warn("listener {}: circuit breaker half-open after its {} s cool-down: one trial event goes through",
               listener_, seconds_of(policy_.cool_down));
    settle_state();
  }
  if (breaker_ == breaker::half_open) {
    if (trial_out_) return {0, false, idle};
    trial_out_ = true;
    return {1, true, {}};
  }
  return {free, false, {}};
}

void flow_gate::trial_unused() {
  std::lock_guard lock(mutex_);
  trial_out_ = false;
}

void flow_gate::set_paused(bool paused, const std::string& reason) {
  std::lock_guard lock(mutex_);
  if (paused == paused_) return;
  paused_ = paused;
  pause_reason_ = reason;
  if (paused) {
    log_->warn("listener {}: paused by an operator ({}); it fetches nothing and its events wait in the stream",
               listener_, to_text(reason));
  } else {
    log_->info("listener {}: resumed by an operator", listener_);
  }
  settle_state();
}

bool flow_gate::paused() const {
  std::lock_guard lock(mutex_);
  return paused_;
}

bool flow_gate::holds_back() const {
  std::lock_guard lock(mutex_);
  return paused_ || breaker_ != breaker::closed;
}

bool flow_gate::enter_outage(const std::string& reason, clock::time_point started) {
  std::lock_guard lock(mutex_);
  if (outage_ || started < outage_ended_) return false;
  outage_ = true;
  outage_reason_ = reason;
  outage_began_ = clock::now();
  log_->warn("listener {}: paused by an outage ({}); it fetches nothing, and its events in flight are tried again "
             "with backoff without spending attempts",
             listener_, to_text(reason));
  settle_state();
  return true;
}

void flow_gate::leave_outage(clock::time_point started) {
  std::lock_guard lock(mutex_);
  if (!outage_ || started < outage_began_) return;
  outage_ = false;
  outage_ended_ = clock::now();
  const auto lasted = std::chrono::duration_cast<std::chrono::milliseconds>(outage_ended_ - outage_began_);
  log_->info("listener {}: resumed after an outage of {:.1f} s", listener_, static_cast<double>(lasted.count()) / 1000);
  settle_state();
}

void flow_gate::end_outage() {
  std::lock_guard lock(mutex_);
  if (!outage_) return;
  outage_ = false;
  outage_ended_ = clock::now();
  log_->info("listener {}: outage ended with its held event (past its deadline); fetching again", listener_);
  settle_state();
}

void flow_gate::on_result(bool failed, bool trial, const std::string& error, clock::time_point now) {
  if (!policy_.enabled) return;
  std::lock_guard lock(mutex_);
  if (trial) {
    trial_out_ = false;
    if (breaker_ != breaker::half_open) return;
    if (failed) {
      breaker_ = breaker::open;
      open_until_ = now + policy_.cool_down;
      breaker_reason_ = "trial failed: " + error;
      log_->error("listener {}: circuit breaker open again: its trial failed ({}); next trial in {} s", listener_,
                  to_text(error), seconds_of(policy_.cool_down));
    } else {
      breaker_ = breaker::closed;
      failures_.clear();
      log_->info("listener {}: circuit breaker closed: its trial succeeded", listener_);
    }
    settle_state();
    return;
  }
  if (!failed || breaker_ != breaker::closed) return;
  failures_.push_back(now);
  while (!failures_.empty() && now - failures_.front() > policy_.window) failures_.pop_front();
  if (failures_.size() < static_cast<std::size_t>(policy_.failures)) return;
  failures_.clear();
  breaker_ = breaker::open;
  open_until_ = now + policy_.cool_down;
  breaker_reason_ = std::to_string(policy_.failures) + " failures within " + std::to_string(seconds_of(policy_.window)) +
                    " s; the last: " + error;
  log_->error("listener {}: circuit breaker open after {}; it fetches nothing for {} s, then tries one event",
              listener_, to_text(breaker_reason_), seconds_of(policy_.cool_down));
  settle_state();
}

void flow_gate::set_rate_limited(bool limited) {
  std::lock_guard lock(mutex_);
  if (limited == rate_limited_) return;
  rate_limited_ = limited;
  settle_state();
}

flow_state flow_gate::current() const {
  if (paused_) return flow_state::paused;
  if (outage_) return flow_state::outage;
  if (breaker_ == breaker::open) return flow_state::breaker_open;
  if (breaker_ == breaker::half_open) return flow_state::breaker_half_open;
  if (rate_limited_) return flow_state::rate_limited;
  return flow_state::running;
}

void flow_gate::settle_state() {
  const flow_state now = current();
  if (now == shown_.state) return;
  shown_.state = now;
  shown_.since = std::chrono::system_clock::now();
  switch (now) {
    case flow_state::paused: shown_.reason = pause_reason_; break;
    case flow_state::outage: shown_.reason = outage_reason_; break;
    case flow_state::breaker_open: shown_.reason = breaker_reason_; break;
    case flow_state::breaker_half_open: shown_.reason = "one trial event goes through"; break;
    case flow_state::rate_limited: shown_.reason = "waiting for the shared rate limit's tokens"; break;
    case flow_state::running: shown_.reason.clear(); break;
  }
}

flow_report flow_gate::report() const {
  std::lock_guard lock(mutex_);
  return shown_;
}

}  // namespace omnibus::detail
