// libFuzzer target for the whole consume path short of the network: one message's raw bytes
// in (subject, header block, body), the worker's settle decision out. The header block goes
// through the wire parser, the result through the same decisions the worker makes, the typed
// decode included. Every input must end in a decision: run (and decode), dead-letter with a
// known reason, or defer; the error texts must be storable (UTF-8) and harmless on a terminal.
//
// Input: 2 bytes subject length, 2 bytes header block length (big-endian), then the subject,
// the header block and the body. Build and run: scripts/fuzz (a clang tree, build-fuzz).

#include <cstddef>
#include <cstdint>
#include <set>
#include <string>
#include <string_view>

#include "omnibus/envelope.hpp"
#include "omnibus/error.hpp"
#include "omnibus/text.hpp"
#include "fuzz_event.hpp"
#include "runtime/settle.hpp"
#include "wire.hpp"

namespace {

std::size_t length_at(std::string_view in, std::size_t at) {
  return (static_cast<std::size_t>(static_cast<unsigned char>(in[at])) << 8) | static_cast<unsigned char>(in[at + 1]);
}

void check_text(const std::string& error) {
  if (!omnibus::is_utf8(omnibus::to_text(error))) __builtin_trap();
  for (char c : omnibus::for_terminal(error)) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7F) __builtin_trap();  // no ESC, no CR: nothing a terminal would act on
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view in{reinterpret_cast<const char*>(data), size};
  if (in.size() < 4) return 0;
  const std::size_t subject_size = length_at(in, 0);
  const std::size_t block_size = length_at(in, 2);
  in.remove_prefix(4);
  if (subject_size + block_size > in.size()) return 0;
  omnibus::message msg;
  msg.subject = std::string(in.substr(0, subject_size));
  const std::string_view block = in.substr(subject_size, block_size);
  msg.body = std::string(in.substr(subject_size + block_size));

  std::string header_error;
  if (!block.empty()) {
    try {
      msg.headers = omnibus::detail::parse_header_block(block).headers;
    } catch (const omnibus::detail::header_block_error& e) {
      header_error = std::string("the header block does not parse: ") + e.what();
    }
  }
  using action = omnibus::detail::settle_decision::action;
  omnibus::detail::settle_decision d = omnibus::detail::before_handler(msg, header_error, "fz", 64 * 1024);
  if (d.what == action::run) {
    try {
      (void)omnibus::decode_event<fuzz_event>(d.env);
    } catch (const omnibus::decode_error& e) {
      d = omnibus::detail::after_decode_error(e);
    }
  }
  static const std::set<std::string> reasons{"malformed_headers", "missing_header", "bad_header", "too_many_headers",
                                             "name_mismatch", "oversized", "malformed_body", "wrong_type"};
  switch (d.what) {
    case action::run: break;
    case action::defer:
      if (d.reason != "newer_version") __builtin_trap();
      break;
    case action::dead_letter:
      if (!reasons.contains(d.reason)) __builtin_trap();
      check_text(d.error);
      break;
  }
  return 0;
}
