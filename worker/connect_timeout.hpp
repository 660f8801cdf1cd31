#pragma once
// The worker's own reads of PostgreSQL for pages and probes must give up, not hang: a database
// that drops packets would otherwise hold a thread for minutes (statement_timeout only starts
// once connected). Internal to the worker library.

#include <string>

namespace omnibus::detail {

/// `url` with connect_timeout=5 added, unless it names one (URI or key=value form).
inline std::string with_connect_timeout(const std::string& url) {
  if (url.find("connect_timeout") != std::string::npos) return url;
  if (url.rfind("postgres://", 0) == 0 || url.rfind("postgresql://", 0) == 0) {
    return url + (url.find('?') == std::string::npos ? "?" : "&") + "connect_timeout=5";
  }
  return url + " connect_timeout=5";
}

}  // namespace omnibus::detail
