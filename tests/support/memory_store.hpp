#pragma once
// An in-memory worker store for unit tests of the worker runtime: what pg_store keeps in
// PostgreSQL (failure history, dead letters, parked listeners, the inbox), in maps, with
// switches that make it unavailable or make it refuse dead letters for good.

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "pg/store.hpp"

namespace test_env {

struct store_state {
  mutable std::mutex mutex;
  int migrations = 0;
  std::map<std::pair<std::string, std::string>, int> failures;  // (listener, event id) -> failures
  std::vector<omnibus::dead_letter> letters;
  std::map<std::string, omnibus::parked_event> parked;
  std::set<std::pair<std::string, std::string>> inbox;  // committed (listener, event id)
  std::set<std::string> paused;                         // listeners an operator paused
  std::map<std::string, int> tokens;                    // rate-limit tokens left per listener
  std::map<std::string, int> drawn;                     // rate-limit tokens drawn per listener
  std::vector<omnibus::listener_report> reports;        // what the worker last reported
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> calls;  // listener -> (handled, failed) reported in all
  bool unavailable = false;      // every call throws, as when PostgreSQL is down
  bool refuse_letters = false;   // write_dead_letter throws row_refused
  bool commit_in_doubt = false;  // inbox commits throw commit_in_doubt (and do commit)

  template <class F>
  auto locked(F&& f) const {
    std::lock_guard lock(mutex);
    return f();
  }
  [[nodiscard]] std::size_t letter_count() const {
    return locked([&] { return letters.size(); });
  }
};

class memory_store final : public omnibus::detail::store {
  // Runs f under the lock, as one statement against a database that may be down.
  template <class F>
  auto with(F&& f) {
    std::lock_guard lock(s_->mutex);
    if (s_->unavailable) throw omnibus::detail::store_unavailable("memory_store: unavailable");
    return f();
  }

 public:
  explicit memory_store(std::shared_ptr<store_state> s) : s_(std::move(s)) {}

  void migrate() override { with([&] { ++s_->migrations; }); }

  std::unique_ptr<omnibus::detail::job_session> open_session() override { return std::make_unique<session>(s_); }

  void record_failure(std::string_view listener, std::string_view event_id, std::string_view) override {
    with([&] { ++s_->failures[{std::string(listener), std::string(event_id)}]; });
  }
  void clear_failure(std::string_view listener, std::string_view event_id) override {
    with([&] { s_->failures.erase({std::string(listener), std::string(event_id)}); });
  }
  void write_dead_letter(const omnibus::dead_letter& dl) override {
    with([&] {
      if (s_->refuse_letters) throw omnibus::detail::row_refused("memory_store: refused");
      s_->failures.erase({dl.listener, dl.event_id});
      s_->letters.push_back(dl);
    });
  }
  void park(const omnibus::parked_event& p) override {
    with([&] {
      auto copy = p;
      copy.action.clear();
      s_->parked[p.listener] = copy;
    });
  }
  std::optional<omnibus::parked_event> find_parked(std::string_view listener) override {
    return with([&]() -> std::optional<omnibus::parked_event> {
      auto it = s_->parked.find(std::string(listener));
      if (it == s_->parked.end()) return std::nullopt;
      return it->second;
    });
  }
  void unpark(std::string_view listener) override { with([&] { s_->parked.erase(std::string(listener)); }); }
  std::vector<omnibus::paused_listener> paused_listeners() override {
    return with([&] {
      std::vector<omnibus::paused_listener> out;
      for (const auto& name : s_->paused) out.push_back({name, "paused by a test", {}});
      return out;
    });
  }
  // A bucket the test fills by hand (tokens[listener]); one that was never filled is unlimited.
  int take_tokens(std::string_view listener, double, int, int want) override {
    return with([&] {
      auto it = s_->tokens.find(std::string(listener));
      const int got = it == s_->tokens.end() ? want : std::min(want, it->second);
      if (it != s_->tokens.end()) it->second -= got;
      s_->drawn[std::string(listener)] += got;
      return got;
    });
  }
  void report_states(std::string_view, const std::vector<omnibus::listener_report>& reports) override {
    with([&] {
      s_->reports = reports;
      for (const auto& r : reports) {
        s_->calls[r.listener].first += r.handled;
        s_->calls[r.listener].second += r.failed;
      }
    });
  }
  void forget_states(std::string_view) override {
    with([&] { s_->reports.clear(); });
  }
  std::optional<omnibus::detail::mark_check> check_mark(
      std::string_view, std::chrono::milliseconds,
      const std::function<omnibus::detail::mark_check(const std::optional<omnibus::detail::stream_mark>&)>&) override {
    return std::nullopt;  // the memory queue drops nothing
  }
  std::size_t prune_inbox(std::chrono::seconds) override { return with([] { return std::size_t{0}; }); }

 private:
  class session final : public omnibus::detail::job_session {
   public:
    explicit session(std::shared_ptr<store_state> s) : s_(std::move(s)) {}
    omnibus::connection_source* connections() noexcept override { return nullptr; }
    bool claim(std::string_view listener, std::string_view event_id, std::chrono::milliseconds) override {
      std::lock_guard lock(s_->mutex);
      if (s_->unavailable) throw omnibus::detail::store_unavailable("memory_store: unavailable");
      claimed_ = {std::string(listener), std::string(event_id)};
      return !s_->inbox.contains(*claimed_);
    }
    pqxx::transaction_base* transaction() noexcept override { return nullptr; }
    void commit() override {
      std::lock_guard lock(s_->mutex);
      if (claimed_) s_->inbox.insert(*claimed_);
      if (s_->commit_in_doubt) throw omnibus::detail::commit_in_doubt("memory_store: connection lost during COMMIT");
    }

   private:
    std::shared_ptr<store_state> s_;
    std::optional<std::pair<std::string, std::string>> claimed_;
  };

  std::shared_ptr<store_state> s_;
};

}  // namespace test_env
