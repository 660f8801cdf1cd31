#pragma once
// The root of every failure the bus core reports. Contract violations (registering after
// freeze, a duplicate event name) are std::logic_error instead: they are bugs, not outcomes.

#include <stdexcept>
#include <string>

namespace bus {

/// Root of all runtime failures thrown by the bus core; catch this to catch them all.
class error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace bus
