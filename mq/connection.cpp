#include "omnibus/nats_connection.hpp"

#include <string>
#include <vector>

#include "omnibus/nats_error.hpp"
#include "nats.hpp"

namespace omnibus::detail {

void check(natsStatus s, std::string_view what, jsErrCode js_code) {
  if (s == NATS_OK) return;
  std::string text(what);
  text += ": ";
  text += natsStatus_GetText(s);
  if (js_code != 0) text += " (JetStream error " + std::to_string(static_cast<int>(js_code)) + ")";
  if (const char* last = nats_GetLastError(nullptr); last != nullptr && *last != '\0') {
    text += ": ";
    text += last;
  }
  throw nats_error(std::move(text), static_cast<int>(s), static_cast<int>(js_code));
}

}  // namespace omnibus::detail

namespace omnibus {

nats_connection::nats_connection(const nats_options& o) : impl_(std::make_unique<impl>()) {
  natsOptions* raw_opts = nullptr;
  detail::check(natsOptions_Create(&raw_opts), "creating NATS options");
  detail::options_ptr opts{raw_opts};
  // One URL, or several separated by commas (a cluster's nodes): NATS.c connects to one of them
  // and reconnects to another when it goes away.
  std::vector<std::string> urls;
  for (std::size_t from = 0; from <= o.url.size();) {
    std::size_t comma = o.url.find(',', from);
    if (comma == std::string::npos) comma = o.url.size();
    std::string one = o.url.substr(from, comma - from);
    one.erase(0, one.find_first_not_of(" \t"));
    one.erase(one.find_last_not_of(" \t") + 1);
    if (!one.empty()) urls.push_back(std::move(one));
    from = comma + 1;
  }
  if (urls.size() > 1) {
    std::vector<const char*> list;
    for (const auto& u : urls) list.push_back(u.c_str());
    detail::check(natsOptions_SetURL(opts.get(), nullptr), "setting the NATS URL");
    detail::check(natsOptions_SetServers(opts.get(), list.data(), static_cast<int>(list.size())), "setting NATS servers");
  } else {
    detail::check(natsOptions_SetServers(opts.get(), nullptr, 0), "setting NATS servers");
    detail::check(natsOptions_SetURL(opts.get(), urls.empty() ? o.url.c_str() : urls.front().c_str()), "setting the NATS URL");
  }
  detail::check(natsOptions_SetName(opts.get(), o.name.c_str()), "setting the connection name");
  detail::check(natsOptions_SetTimeout(opts.get(), o.connect_timeout.count()), "setting the connect timeout");
  detail::check(natsOptions_SetAllowReconnect(opts.get(), true), "enabling reconnect");
  detail::check(natsOptions_SetMaxReconnect(opts.get(), o.max_reconnects), "setting max reconnects");
  detail::check(natsOptions_SetReconnectWait(opts.get(), o.reconnect_wait.count()), "setting the reconnect wait");
  // Publishes made while reconnecting are buffered and may still land: callers treat a
  // timed-out publish as "outcome unknown", never as "not sent".
  detail::check(natsOptions_SetRetryOnFailedConnect(opts.get(), false, nullptr, nullptr), "setting connect retry");

  if (!o.user.empty() || !o.password.empty()) {
    detail::check(natsOptions_SetUserInfo(opts.get(), o.user.c_str(), o.password.c_str()), "setting the NATS user");
  }
  if (!o.token.empty()) detail::check(natsOptions_SetToken(opts.get(), o.token.c_str()), "setting the NATS token");
  if (!o.credentials_file.empty()) {
    detail::check(natsOptions_SetUserCredentialsFromFiles(opts.get(), o.credentials_file.c_str(), nullptr),
                  "loading the NATS credentials file " + o.credentials_file);
  }
  if (o.tls || !o.tls_ca_file.empty() || !o.tls_cert_file.empty()) {
    detail::check(natsOptions_SetSecure(opts.get(), true), "enabling TLS");
    if (!o.tls_ca_file.empty()) {
      detail::check(natsOptions_LoadCATrustedCertificates(opts.get(), o.tls_ca_file.c_str()),
                    "loading the TLS CA " + o.tls_ca_file);
    }
    if (!o.tls_cert_file.empty()) {
      detail::check(natsOptions_LoadCertificatesChain(opts.get(), o.tls_cert_file.c_str(), o.tls_key_file.c_str()),
                    "loading the TLS client certificate " + o.tls_cert_file);
    }
  }

  natsConnection* raw_conn = nullptr;
  natsStatus s = natsConnection_Connect(&raw_conn, opts.get());
  detail::connection_ptr conn{raw_conn};
  if (s != NATS_OK) {
    detail::check(s, "connecting to nats-server (is it running? scripts/nats start)");
  }
  impl_->conn = std::move(conn);

  jsCtx* raw_js = nullptr;
  detail::check(natsConnection_JetStream(&raw_js, impl_->conn.get(), nullptr), "creating the JetStream context");
  impl_->js.reset(raw_js);
}

nats_connection::~nats_connection() = default;
nats_connection::nats_connection(nats_connection&&) noexcept = default;
nats_connection& nats_connection::operator=(nats_connection&&) noexcept = default;

bool nats_connection::connected() const noexcept {
  return impl_ && natsConnection_Status(impl_->conn.get()) == NATS_CONN_STATUS_CONNECTED;
}

std::string nats_connection::connected_url() const {
  char buf[512] = {};
  detail::check(natsConnection_GetConnectedUrl(impl_->conn.get(), buf, sizeof buf), "reading the connected URL");
  std::string url = buf;
  // Never hand out credentials that came in the URL.
  if (auto scheme = url.find("://"), at = url.rfind('@'); scheme != std::string::npos && at != std::string::npos && at > scheme) {
    url.erase(scheme + 3, at - scheme - 2);
  }
  return url;
}

void nats_connection::flush(std::chrono::milliseconds timeout) const {
  detail::check(natsConnection_FlushTimeout(impl_->conn.get(), timeout.count()), "flushing the NATS connection");
}

}  // namespace omnibus
