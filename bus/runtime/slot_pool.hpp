#pragma once

// The worker's handler slots: a fixed set of threads fed from one queue.
//
// Handlers are blocking calls, so a slot is a thread. What matters for throughput is how many of
// those threads wake per message: a post per message to a pool wakes an idle thread per message
// (a futex wake and two context switches), which made a no-op drain latency-bound. Here a batch
// goes into the queue with one wake, and a thread that takes an item wakes one more only while
// items are still queued and no other wake is under way. Slow handlers still fan out to every
// thread (each woken thread wakes the next while work waits); fast ones are drained by the few
// threads already awake.

#include <cstddef>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

namespace omnibus::detail {

template <class T>
class slot_pool {
 public:
  slot_pool(std::size_t threads, std::function<void(T&)> run) : run_(std::move(run)) {
    threads_.reserve(threads);
    for (std::size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { serve(); });
  }
  ~slot_pool() { join(); }
  slot_pool(const slot_pool&) = delete;
  slot_pool& operator=(const slot_pool&) = delete;

  /// Queues `items` (moved from) for the slots.
  void push(std::vector<T>& items) {
    if (items.empty()) return;
    std::lock_guard lock(mutex_);
    for (T& item : items) queue_.push_back(std::move(item));
    wake_one_locked();
  }

  /// Takes what is queued and not started, and lets each thread end after what it runs now
  /// (a shutdown: the caller returns them). Nothing may be pushed after this.
  [[nodiscard]] std::vector<T> take_queued() {
    std::vector<T> out;
    {
      std::lock_guard lock(mutex_);
      out.reserve(queue_.size());
      for (T& item : queue_) out.push_back(std::move(item));
      queue_.clear();
      stopping_ = true;
    }
    ready_.notify_all();
    return out;
  }

  /// Runs what is queued, then ends the threads and waits for them. Idempotent.
  void join() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    ready_.notify_all();
    for (std::thread& t : threads_) {
      if (t.joinable()) t.join();
    }
  }

 private:
  void wake_one_locked() {
    if (idle_ > 0 && !waking_) {
      waking_ = true;
      ready_.notify_one();
    }
  }

  void serve() {
    std::unique_lock lock(mutex_);
    for (;;) {
      while (queue_.empty() && !stopping_) {
        ++idle_;
        ready_.wait(lock);
        --idle_;
        waking_ = false;  // this thread is awake: another may be woken
      }
      if (queue_.empty()) return;  // stopping, and nothing left to run
      T item = std::move(queue_.front());
      queue_.pop_front();
      if (!queue_.empty()) wake_one_locked();
      lock.unlock();
      run_(item);
      item = T{};  // released before the lock is taken again
      lock.lock();
    }
  }

  std::function<void(T&)> run_;
  std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<T> queue_;
  std::size_t idle_ = 0;  // threads waiting for work
  bool waking_ = false;   // a wake was sent and its thread has not woken yet
  bool stopping_ = false;
  std::vector<std::thread> threads_;  // last: started after everything they read
};

}  // namespace omnibus::detail
