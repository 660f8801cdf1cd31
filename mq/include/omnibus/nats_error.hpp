#pragma once
// Every NATS.c failure surfaces as omnibus::nats_error, carrying what NATS.c said.

#include <string>

#include "omnibus/error.hpp"
#include "omnibus/export.hpp"

namespace omnibus {

/// A failed NATS.c call: the natsStatus, the JetStream error code (0 when the server sent
/// none) and NATS.c's last error text, all folded into what(). Never contains credentials.
class OMNIBUS_API nats_error : public error {
 public:
  /// `what`: the whole message, free of credentials; `status`: the natsStatus; `js_code`: the
  /// JetStream error code, or 0.
  nats_error(const std::string& what, int status, int js_code) : error(what), status_(status), js_code_(js_code) {}

  /// The natsStatus value (NATS_OK is never thrown).
  [[nodiscard]] int status() const noexcept { return status_; }
  /// The server's JetStream error code (e.g. 10058 stream name in use), or 0.
  [[nodiscard]] int js_code() const noexcept { return js_code_; }

 private:
  int status_;
  int js_code_;
};

}  // namespace omnibus
