#include "runtime/settle.hpp"

namespace omnibus::detail {

settle_decision before_handler(const message& msg, std::string_view header_error, std::string_view prefix,
                               std::size_t max_body_bytes) {
  settle_decision d;
  if (!header_error.empty()) {  // nothing to decode: keep its bytes and never see it again
    d.what = settle_decision::action::dead_letter;
    d.reason = "malformed_headers";
    d.error = std::string(header_error);
    return d;
  }
  try {
    d.env = decode(msg, prefix, max_body_bytes);
  } catch (const decode_error& e) {
    return after_decode_error(e);
  }
  return d;
}

settle_decision after_decode_error(const decode_error& e) {
  settle_decision d;
  d.what = e.kind() == decode_failure::newer_version ? settle_decision::action::defer
                                                     : settle_decision::action::dead_letter;
  d.reason = to_string(e.kind());
  d.error = e.what();
  return d;
}

}  // namespace omnibus::detail
