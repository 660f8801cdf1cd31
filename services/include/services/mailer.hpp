#pragma once

#include "omnibus/fwd.hpp"
#include "services/shop_options.hpp"

namespace services {

/// Records a welcome email for every new user and a confirmation for every order (async
/// listeners "welcome_email" and "confirmation_email"). Idempotent on the event id.
class mailer {
 public:
  mailer(omnibus::event_bus& bus, const shop_options& options);
};

}  // namespace services
