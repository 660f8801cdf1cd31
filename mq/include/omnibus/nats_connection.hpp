#pragma once
// One NATS connection per process: NATS.c connections are thread-safe, so share this one.

#include <chrono>
#include <memory>
#include <string>

#include "omnibus/export.hpp"

namespace omnibus {

/// How to reach nats-server. Defaults suit a service: reconnect forever, short connect timeout.
struct OMNIBUS_API nats_options {
  std::string url = "nats://127.0.0.1:4222";   ///< comma-separated for a cluster
  std::string name = "omnibus";                 ///< shown by the server's connz
  std::chrono::milliseconds connect_timeout{2000};  ///< how long one connect attempt may take
  std::chrono::milliseconds reconnect_wait{250};    ///< pause between reconnect attempts to one server
  int max_reconnects = -1;                      ///< -1: keep trying forever
  // Credentials: never logged, never put in an error message.
  std::string user{};              ///< with `password`; a URL's user:password works too
  std::string password{};          ///< with `user`
  std::string token{};             ///< server --auth token
  std::string credentials_file{};  ///< a .creds file (user JWT and NKey seed)
  // TLS: on when `tls` is set or any file below is given.
  bool tls = false;             ///< require TLS (also on when tls_ca_file or tls_cert_file is set)
  std::string tls_ca_file{};    ///< CA to verify the server with (default: the system's)
  std::string tls_cert_file{};  ///< client certificate, for servers that verify clients
  std::string tls_key_file{};   ///< its private key
};

/// An open NATS connection with reconnect enabled. Owns the natsConnection; movable, not
/// copyable; thread-safe. Throws omnibus::nats_error when the server cannot be reached.
class OMNIBUS_API nats_connection {
 public:
  /// Connects (each attempt waits up to connect_timeout) and opens a JetStream context. Throws
  /// omnibus::nats_error for a bad option, an unreadable credentials or TLS file, or no server.
  explicit nats_connection(const nats_options& options);
  ~nats_connection();
  /// Takes over the connection; the moved-from object may only be destroyed or assigned to.
  nats_connection(nats_connection&&) noexcept;
  /// Closes this connection (nothing may still borrow it) and takes over the other one.
  nats_connection& operator=(nats_connection&&) noexcept;

  /// Whether the connection is up now (NATS.c reconnects by itself after a loss).
  [[nodiscard]] bool connected() const noexcept;
  /// The server's URL as NATS.c reports it, with any user:password removed.
  [[nodiscard]] std::string connected_url() const;
  /// Round trip to the server: every publish before it has been received. Throws omnibus::nats_error.
  void flush(std::chrono::milliseconds timeout) const;

  struct impl;  ///< private to mq (see mq/nats.hpp)

 private:
  friend class jetstream;  // the only user of the NATS.c handles inside
  [[nodiscard]] impl& native() const noexcept { return *impl_; }
  std::unique_ptr<impl> impl_;
};

}  // namespace omnibus
