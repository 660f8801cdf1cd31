#pragma once
// The one place that includes NATS.c. Private to mq/.

#include <memory>
#include <string_view>

#include <nats/nats.h>

#include "omnibus/nats_connection.hpp"

namespace omnibus::detail {

template <auto Destroy>
struct c_deleter {
  template <class T>
  void operator()(T* p) const noexcept { Destroy(p); }
};

using options_ptr = std::unique_ptr<natsOptions, c_deleter<natsOptions_Destroy>>;
using connection_ptr = std::unique_ptr<natsConnection, c_deleter<natsConnection_Destroy>>;
using js_ptr = std::unique_ptr<jsCtx, c_deleter<jsCtx_Destroy>>;
using msg_ptr = std::unique_ptr<natsMsg, c_deleter<natsMsg_Destroy>>;
using subscription_ptr = std::unique_ptr<natsSubscription, c_deleter<natsSubscription_Destroy>>;

/// Throws omnibus::nats_error unless s is NATS_OK. `what` names the operation (and its subject); the
/// error also carries the JetStream code and NATS.c's thread-local last error text.
void check(natsStatus s, std::string_view what, jsErrCode js_code = static_cast<jsErrCode>(0));

}  // namespace omnibus::detail

namespace omnibus {

struct nats_connection::impl {
  detail::connection_ptr conn;  // acquired first, destroyed last
  detail::js_ptr js;
};

}  // namespace omnibus
