#pragma once
// A child process for tests that need a crash, a kill -9, or a second process.

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include "support/wait.hpp"

extern char** environ;

namespace test_env {

class child_process {
 public:
  /// Starts `argv` with this process's environment plus `extra_env` ("NAME=value"), which
  /// replaces an inherited variable of the same name.
  /// Its stdout and stderr go to a file, read back by output().
  child_process(std::vector<std::string> argv, std::vector<std::string> extra_env = {})
      : out_path_("/tmp/omnibus-child-" + std::to_string(::getpid()) + "-" + std::to_string(next_id()) + ".log") {
    std::vector<std::string> env;
    auto overridden = [&](std::string_view inherited) {
      for (const auto& e : extra_env) {
        const auto eq = e.find('=');
        if (inherited.substr(0, eq + 1) == std::string_view(e).substr(0, eq + 1)) return true;
      }
      return false;
    };
    for (char** e = environ; *e != nullptr; ++e) {
      if (!overridden(*e)) env.emplace_back(*e);
    }
    for (auto& e : extra_env) env.push_back(std::move(e));
    std::vector<char*> cargv, cenv;
    for (auto& a : argv) cargv.push_back(a.data());
    cargv.push_back(nullptr);
    for (auto& e : env) cenv.push_back(e.data());
    cenv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, out_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    int rc = posix_spawn(&pid_, cargv[0], &fa, nullptr, cargv.data(), cenv.data());
    posix_spawn_file_actions_destroy(&fa);
    REQUIRE(rc == 0);
  }
  ~child_process() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      int st = 0;
      ::waitpid(pid_, &st, 0);
    }
    std::remove(out_path_.c_str());
  }
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  void signal(int sig) { REQUIRE(::kill(pid_, sig) == 0); }

  /// Waits for the exit, up to `within`; returns the exit code (128+n for signal n), or -1.
  int wait(std::chrono::milliseconds within) {
    if (exited_) return code_;
    bool done = eventually([&] {
      int st = 0;
      pid_t r = ::waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        exited_ = true;
        code_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      }
      return exited_;
    }, within);
    return done ? code_ : -1;
  }

  [[nodiscard]] std::string output() const {
    std::ifstream in(out_path_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

 private:
  static int next_id() {
    static int id = 0;
    return id++;
  }
  std::string out_path_;
  pid_t pid_ = -1;
  bool exited_ = false;
  int code_ = -1;
};

/// The path of a helper binary that meson passes in the environment variable `var`.
inline std::string tool_path(const char* var) {
  const char* v = std::getenv(var);
  if (v == nullptr) FAIL(var << " is not set (meson test sets it)");
  return v;
}

}  // namespace test_env
