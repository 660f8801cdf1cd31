#pragma once
// A child process with its stdout and stderr in a file: started with posix_spawn, signalled,
// waited for with a deadline, its output read back. No test framework: the demo
// (worker/demo.cpp) starts its workers with it too; tests use child_process (child_process.hpp).

#include <chrono>
#include <csignal>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

extern char** environ;

namespace test_env {

class process {
 public:
  /// Starts `argv` with this process's environment plus `extra_env` ("NAME=value", replacing
  /// an inherited variable of the same name); its output goes to `out_path`. Throws
  /// std::runtime_error when it cannot be started.
  process(std::vector<std::string> argv, std::vector<std::string> extra_env, std::string out_path)
      : out_path_(std::move(out_path)) {
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
    const int rc = posix_spawn(&pid_, cargv[0], &fa, nullptr, cargv.data(), cenv.data());
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) throw std::runtime_error("cannot start " + argv.front() + ": " + std::to_string(rc));
  }
  /// Kills (SIGKILL) a process still running.
  ~process() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      int st = 0;
      ::waitpid(pid_, &st, 0);
    }
  }
  process(const process&) = delete;
  process& operator=(const process&) = delete;

  /// Sends `sig`; false when the process is gone.
  bool signal(int sig) { return !exited_ && ::kill(pid_, sig) == 0; }

  /// Whether it is still running (reaps it if it ended).
  [[nodiscard]] bool alive() { return !reap(); }

  /// Waits for the exit, up to `within`; returns the exit code (128+n for signal n), or -1.
  int wait(std::chrono::milliseconds within) {
    const auto deadline = std::chrono::steady_clock::now() + within;
    while (!reap()) {
      if (std::chrono::steady_clock::now() >= deadline) return -1;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));  // poll interval, bounded by the deadline
    }
    return code_;
  }

  /// Its stdout and stderr so far.
  [[nodiscard]] std::string output() const {
    std::ifstream in(out_path_);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }
  /// Where its output goes.
  [[nodiscard]] const std::string& output_path() const noexcept { return out_path_; }

 private:
  bool reap() {
    if (exited_) return true;
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) {
      exited_ = true;
      code_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    }
    return exited_;
  }

  std::string out_path_;
  pid_t pid_ = -1;
  bool exited_ = false;
  int code_ = -1;
};

}  // namespace test_env
