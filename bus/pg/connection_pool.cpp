#include "pg/connection_pool.hpp"

#include <cstdint>

#include <pqxx/pqxx>

#include "omnibus/error.hpp"
#include "pg/store.hpp"

namespace omnibus {

struct connection_pool::slot {
  slot(const std::string& url, std::uint64_t gen) : conn(url), generation(gen) {}
  pqxx::connection conn;
  std::uint64_t generation;  // the pool's generation when it was opened
};

pqxx::connection_base& connection_pool::lease::operator*() const noexcept { return conn_->conn; }

connection_pool::connection_pool(std::string url, std::size_t size) : url_(std::move(url)), size_(size) {
  if (size_ == 0) throw std::invalid_argument("connection_pool needs a size of at least 1");
}

connection_pool::~connection_pool() = default;

connection_pool::lease::lease(connection_pool& pool, std::unique_ptr<slot> conn) noexcept
    : pool_(&pool), conn_(std::move(conn)) {}

connection_pool::lease::lease(lease&& other) noexcept
    : pool_(other.pool_), conn_(std::move(other.conn_)), discard_(other.discard_) {
  other.pool_ = nullptr;
}

connection_pool::lease::~lease() {
  if (pool_ != nullptr) pool_->give_back(std::move(conn_), discard_);
}

connection_pool::lease connection_pool::acquire(std::chrono::milliseconds timeout) {
  std::unique_ptr<slot> conn;
  {
    std::unique_lock lock(mutex_);
    if (!freed_.wait_for(lock, timeout, [&] { return leased_ < size_; })) {
      throw error("no free database connection within " + std::to_string(timeout.count()) + " ms (pool of " +
                  std::to_string(size_) + ")");
    }
    ++leased_;
    if (!idle_.empty()) {
      conn = std::move(idle_.back());
      idle_.pop_back();
    }
  }
  if (conn && !conn->conn.is_open()) conn.reset();
  if (!conn) {
    std::uint64_t gen = 0;
    {
      std::lock_guard lock(mutex_);
      gen = generation_;
    }
    try {
      conn = std::make_unique<slot>(url_, gen);
    } catch (const std::exception&) {
      give_back(nullptr, true);
      // libpq's message can repeat the connection string; ours does not.
      throw detail::store_unavailable("cannot connect to PostgreSQL (check the database URL; is the server up?)");
    }
  }
  return lease(*this, std::move(conn));
}

void connection_pool::give_back(std::unique_ptr<slot> conn, bool discard) noexcept {
  {
    std::lock_guard lock(mutex_);
    --leased_;
    if (conn && !conn->conn.is_open()) {
      // A connection broke: the server restarted or the network failed, and every connection
      // opened before most likely broke with it, unnoticed until its next use: the idle ones,
      // and those leased now (dropped when they come back). Open fresh ones instead.
      ++generation_;
      idle_.clear();
    } else if (conn && !discard && conn->generation == generation_) {
      idle_.push_back(std::move(conn));
    }
  }
  freed_.notify_one();
}

}  // namespace omnibus
