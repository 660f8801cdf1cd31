#pragma once
// What the worker does with a delivery, decided from its bytes alone: run the listener, or
// dead-letter it with a reason, or give it back for later (a newer version). Pure functions,
// so that the fuzz tree drives the same decisions the worker makes. Private to bus/.

#include <cstddef>
#include <string>
#include <string_view>

#include "omnibus/envelope.hpp"

namespace omnibus::detail {

struct settle_decision {
  enum class action {
    run,          ///< hand env to the listener
    dead_letter,  ///< write a dead letter with reason and error, then term
    defer,        ///< nak with newer_version_delay: a newer build will read it
  };
  action what = action::run;
  std::string reason;  ///< dead_letter: malformed_headers, or a decode_failure name
  std::string error;   ///< dead_letter and defer: why, for the log and the dead letter
  envelope env;        ///< run: the decoded envelope
};

/// The decision before the listener runs: a header block that did not parse (header_error
/// not empty) or an envelope that does not decode is dead-lettered; anything else runs.
[[nodiscard]] settle_decision before_handler(const message& msg, std::string_view header_error,
                                             std::string_view prefix, std::size_t max_body_bytes);

/// The decision for a decode_error out of the listener's typed decode: defer a newer version,
/// dead-letter everything else.
[[nodiscard]] settle_decision after_decode_error(const decode_error& e);

}  // namespace omnibus::detail
