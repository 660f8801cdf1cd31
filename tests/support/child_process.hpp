#pragma once
// A child process for tests that need a crash, a kill -9, or a second process.

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <unistd.h>

#include <catch2/catch.hpp>

#include "support/process.hpp"
#include "support/wait.hpp"

namespace test_env {

/// A process (support/process.hpp) whose output file is removed with it, for tests.
class child_process {
 public:
  /// Starts `argv` with this process's environment plus `extra_env` ("NAME=value"), which
  /// replaces an inherited variable of the same name.
  /// Its stdout and stderr go to a file, read back by output().
  child_process(std::vector<std::string> argv, std::vector<std::string> extra_env = {})
      : p_(start(std::move(argv), std::move(extra_env))) {}
  ~child_process() {
    const std::string path = p_->output_path();
    p_.reset();
    std::remove(path.c_str());
  }
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  void signal(int sig) { REQUIRE(p_->signal(sig)); }

  /// Waits for the exit, up to `within`; returns the exit code (128+n for signal n), or -1.
  int wait(std::chrono::milliseconds within) { return p_->wait(within); }

  [[nodiscard]] std::string output() const { return p_->output(); }

 private:
  static int next_id() {
    static int id = 0;
    return id++;
  }
  static std::unique_ptr<process> start(std::vector<std::string> argv, std::vector<std::string> extra_env) {
    const std::string path = "/tmp/omnibus-child-" + std::to_string(::getpid()) + "-" + std::to_string(next_id()) + ".log";
    try {
      return std::make_unique<process>(std::move(argv), std::move(extra_env), path);
    } catch (const std::exception& e) {
      FAIL(e.what());
    }
    return nullptr;
  }
  std::unique_ptr<process> p_;
};

/// The path of a helper binary that meson passes in the environment variable `var`.
inline std::string tool_path(const char* var) {
  const char* v = std::getenv(var);
  if (v == nullptr) FAIL(var << " is not set (meson test sets it)");
  return v;
}

}  // namespace test_env
