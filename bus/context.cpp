#include "bus/context.hpp"

#include <stdexcept>

namespace bus {

const std::string* metadata::value(std::string_view key) const noexcept {
  for (const auto& [k, v] : values) {
    if (k == key) return &v;
  }
  return nullptr;
}

pqxx::transaction_base& context::tx() const {
  if (tx_ == nullptr) throw std::logic_error("bus::context has no transaction: construct it with one");
  return *tx_;
}

pqxx::connection_base& context::db() const {
  if (db_ == nullptr) throw std::logic_error("bus::context::db() is for handlers run by the worker");
  return db_->connection();
}

}  // namespace bus
