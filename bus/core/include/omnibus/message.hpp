#pragma once
// A message as the broker carries it: subject, headers, body. Broker-agnostic.

#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "omnibus/export.hpp"

namespace omnibus {

/// One message on the wire (see the README's "Wire format"). A plain value.
struct OMNIBUS_API message {
  std::string subject;                                        ///< "<prefix>.<event name>" for an Omnibus event
  std::vector<std::pair<std::string, std::string>> headers;  ///< in order; names as sent
  std::string body;                                           ///< the event's msgpack map

  /// The first value of header `name` (exact, case-sensitive match), or nullptr.
  [[nodiscard]] const std::string* header(std::string_view name) const noexcept {
    for (const auto& [k, v] : headers) {
      if (k == name) return &v;
    }
    return nullptr;
  }
};

}  // namespace omnibus
