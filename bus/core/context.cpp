#include "omnibus/context.hpp"

#include <stdexcept>

namespace omnibus {

const std::string* metadata::value(std::string_view key) const noexcept {
  for (const auto& [k, v] : values) {
    if (k == key) return &v;
  }
  return nullptr;
}

pqxx::transaction_base& context::tx() const {
  if (tx_ == nullptr) throw std::logic_error("omnibus::context has no transaction: construct it with one");
  return *tx_;
}

pqxx::connection_base& context::db() const {
  if (db_ == nullptr) throw std::logic_error("omnibus::context::db() is for handlers run by the worker");
  return db_->connection();
}

}  // namespace omnibus
