#pragma once

#include <cstdint>
#include <string>

#include "omnibus/fwd.hpp"
#include "services/shop_options.hpp"

namespace services {

/// Registers users; publishes user.registered in the registration's transaction.
class users {
 public:
  users(omnibus::event_bus& bus, const shop_options& options);
  /// Inserts the user through ctx's transaction and publishes user.registered. Returns its id.
  std::int64_t register_user(omnibus::context& ctx, const std::string& email);

 private:
  omnibus::event_bus& bus_;  // outlives the service
  shop_options options_;
};

}  // namespace services
