#pragma once

#include "omnibus/fwd.hpp"
#include "services/shop_options.hpp"

namespace services {

/// Records a welcome email for every new user, a confirmation for every order and a review
/// request for every order (async listeners "welcome_email", "confirmation_email" and
/// "review_email"), and sends the sales report when its recurring schedule "sales_report" fires
/// ("report_email"). Idempotent on the event id.
class mailer {
 public:
  mailer(omnibus::event_bus& bus, const shop_options& options);
};

}  // namespace services
