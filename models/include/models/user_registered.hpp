#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "omnibus/event.hpp"

namespace models {

/// A user signed up. Published in the registration transaction.
struct user_registered {
  static constexpr std::string_view name = "user.registered";
  static constexpr int version = 1;
  std::int64_t user_id = 0;
  std::string email;
  OMNIBUS_FIELDS(user_id, email);
};

}  // namespace models
