#pragma once
// A fixed-size pool of PostgreSQL connections for the worker's handler slots: a pqxx
// connection belongs to one thread at a time, so each handler call leases one.

#include <chrono>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "omnibus/fwd.hpp"

namespace omnibus {

/// Thread-safe. Connections are opened lazily, and one that broke is replaced on its next lease.
class connection_pool {
 public:
  /// At most `size` connections at once to `url` (libpq). `url` is never logged or put in an
  /// error message. Connects to nothing yet. Throws std::invalid_argument for a size of 0.
  connection_pool(std::string url, std::size_t size);
  ~connection_pool();
  connection_pool(const connection_pool&) = delete;
  connection_pool& operator=(const connection_pool&) = delete;

  struct slot;  ///< one pqxx::connection (private)

  /// One connection, for one thread, until the lease ends. Movable.
  class lease {
   public:
    /// Takes over `other`'s connection; `other` then gives nothing back and must not be used.
    lease(lease&& other) noexcept;
    lease& operator=(lease&&) = delete;
    ~lease();  ///< gives the connection back to the pool, or drops it after discard() or if it broke
    /// The leased connection, for the leasing thread only and only while the lease lives.
    [[nodiscard]] pqxx::connection_base& operator*() const noexcept;
    /// The leased connection's members, as operator*().
    [[nodiscard]] pqxx::connection_base* operator->() const noexcept { return &**this; }
    /// Drop the connection instead of returning it (after a failure that may have broken it).
    void discard() noexcept { discard_ = true; }

   private:
    friend class connection_pool;
    lease(connection_pool& pool, std::unique_ptr<slot> conn) noexcept;
    connection_pool* pool_;
    std::unique_ptr<slot> conn_;
    bool discard_ = false;
  };

  /// Waits up to `timeout` for a free connection. Throws omnibus::error on timeout or when
  /// PostgreSQL cannot be reached (without the URL in the message).
  [[nodiscard]] lease acquire(std::chrono::milliseconds timeout);

 private:
  void give_back(std::unique_ptr<slot> conn, bool discard) noexcept;

  std::string url_;
  std::size_t size_;
  std::mutex mutex_;
  std::condition_variable freed_;
  std::vector<std::unique_ptr<slot>> idle_;
  std::size_t leased_ = 0;
  std::uint64_t generation_ = 0;  // bumped when a connection breaks: older ones are not reused
};

}  // namespace omnibus
