#include "core/failpoint.hpp"

#include <atomic>
#include <charconv>
#include <cstdio>
#include <cstdlib>
#include <string>

#include <unistd.h>

namespace omnibus::detail {
namespace {

struct armed_point {
  std::string name;
  long at = 1;
  std::atomic<long> hits{0};
  armed_point() {
    const char* v = std::getenv("OMNIBUS_FAILPOINT");
    if (v == nullptr) return;
    std::string_view spec{v};
    auto sep = spec.find('@');
    name = std::string(spec.substr(0, sep));
    if (sep != std::string_view::npos) {
      auto n = spec.substr(sep + 1);
      std::from_chars(n.data(), n.data() + n.size(), at);
    }
  }
};

}  // namespace

void failpoint(std::string_view name) noexcept {
  static armed_point armed;
  if (armed.name.empty() || armed.name != name) return;
  if (armed.hits.fetch_add(1) + 1 == armed.at) {
    std::fprintf(stderr, "omnibus: failpoint %s reached: exiting\n", armed.name.c_str());
    ::_exit(failpoint_exit_code);
  }
}

}  // namespace omnibus::detail
