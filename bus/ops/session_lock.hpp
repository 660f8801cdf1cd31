#pragma once
// A PostgreSQL session advisory lock, taken if free and released when this goes. Private to bus/.

#include <string>

#include <pqxx/pqxx>

namespace omnibus::detail {

class session_lock {
 public:
  /// Tries to take the lock named `key` on `conn`'s session.
  session_lock(pqxx::connection_base& conn, std::string key) : conn_(conn), key_(std::move(key)) {
    pqxx::nontransaction tx{conn_};
    held_ = tx.exec_params1("SELECT pg_try_advisory_lock(hashtextextended($1, 0))", key_)[0].as<bool>();
  }
  ~session_lock() {
    if (!held_) return;
    try {
      pqxx::nontransaction tx{conn_};
      tx.exec_params("SELECT pg_advisory_unlock(hashtextextended($1, 0))", key_);
    } catch (const std::exception&) {  // a broken connection has dropped the lock with its session
    }
  }
  session_lock(const session_lock&) = delete;
  session_lock& operator=(const session_lock&) = delete;

  [[nodiscard]] bool held() const noexcept { return held_; }

 private:
  pqxx::connection_base& conn_;
  std::string key_;
  bool held_ = false;
};

}  // namespace omnibus::detail
