#include "services/users.hpp"

#include <pqxx/pqxx>

#include "models/user_registered.hpp"
#include "omnibus/event_bus.hpp"

namespace services {

users::users(omnibus::event_bus& bus, const shop_options& options) : bus_(bus), options_(options) {}

std::int64_t users::register_user(omnibus::context& ctx, const std::string& email) {
  const auto id = ctx.tx()
                      .exec_params1("INSERT INTO " + table(options_, "users") + " (email) VALUES ($1) RETURNING id", email)[0]
                      .as<std::int64_t>();
  bus_.publish(ctx, models::user_registered{id, email});
  return id;
}

}  // namespace services
