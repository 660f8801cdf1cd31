#pragma once
// A whole worker binary around the listeners of your services: configuration from flags and
// environment variables, SIGINT/SIGTERM, `run`, and every operator command (dead letters,
// parked listeners, consumers, the stream, migrations, stats), and, with --http, Prometheus
// metrics and health endpoints. Your worker's main() is:
//
//   int main(int argc, char** argv) {
//     return omnibus::worker_main(argc, argv, [](omnibus::app& app) {
//       app.make<my_service>(app.bus());  // services add their listeners in their constructors
//     });
//   }
//
// Exit codes: 0 done (a graceful shutdown included), 1 a runtime failure, 2 bad configuration,
// 3 a stuck worker (every slot of a listener past its deadline: let the supervisor restart it).

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "omnibus/error.hpp"
#include "omnibus/event_bus.hpp"
#include "omnibus/export.hpp"
#include "omnibus/nats_connection.hpp"

namespace CLI {
class App;  // CLI11's; include <CLI/CLI.hpp> to add options through worker_program::cli()
}

namespace omnibus {

/// The settings every worker binary takes, as flags or environment variables (--help lists
/// them). Defaults can be changed through worker_program::config() before main().
struct OMNIBUS_API worker_config {
  /// How to reach nats-server (--nats-* flags); the connection is named after the program.
  nats_options nats{.url = "nats://127.0.0.1:4222", .name = "omnibus-worker"};
  std::string database_url;  ///< OMNIBUS_DATABASE_URL; never printed
  /// trace, debug, info, warn, err, critical or off; any other is a config_error.
  std::string log_level = "info";
  bus_options bus;  ///< group, schema and stream (--group, --schema, --stream, ...)
  bool relay = true;  ///< run an outbox relay in `run` (one per schema is active)
  /// run a scheduler in `run` (README "Scheduling"): moves due scheduled events to the outbox
  /// and fires recurring schedules; any number may run (--no-scheduler turns it off)
  bool scheduler = true;
  /// carry out running redrives (bulk dead-letter retries and discards) in `run`
  /// (--no-redrives turns it off)
  bool redrives = true;
  /// text (the default) or json: one JSON object per line (--log-format, OMNIBUS_LOG_FORMAT).
  std::string log_format = "text";
  /// `run` serves /metrics, /healthz and /readyz on this host:port (--http, OMNIBUS_HTTP);
  /// empty: no HTTP endpoint. Give a loopback address unless something else must scrape it.
  std::string http;
  /// The dashboard's and endpoint's token (OMNIBUS_HTTP_TOKEN or --http-token-file; never
  /// printed). Required when `http` is not a loopback address; with it, pages need a login or
  /// `Authorization: Bearer`, and so do /metrics, /healthz and /readyz except from loopback.
  std::string http_token;
  /// The dashboard shows no actions and refuses every POST (--http-read-only).
  bool http_read_only = false;
  /// More origins whose pages may POST to the dashboard, as a reverse proxy serves it
  /// ("https://ops.example.com"; --http-origin).
  std::vector<std::string> http_origins;
  /// Outbox rows older than this with no relay running fail /readyz, show in `stats` and the
  /// metrics, and make `run` warn every minute (--outbox-alert-after, in seconds).
  std::chrono::seconds outbox_alert_after{60};
};

/// A bad setting: worker_main prints it and exits 2. Throw it from a validator or a setup.
class OMNIBUS_API config_error : public error {
 public:
  using error::error;
};

/// What a setup function gets: the bus to construct services on, the configuration, and the
/// command about to run. Lives as long as that command; owns what make() and keep() hold.
class OMNIBUS_API app {
 public:
  /// Made by worker_program for each command. Borrows `bus` and `config`, which outlive it.
  app(event_bus& bus, const worker_config& config, std::string command) noexcept
      : bus_(bus), config_(config), command_(std::move(command)) {}
  app(const app&) = delete;
  app& operator=(const app&) = delete;

  /// The bus: add listeners here (services do it in their constructors). Frozen after setup.
  [[nodiscard]] event_bus& bus() noexcept { return bus_; }
  /// The configuration, as parsed from flags and environment variables and validated.
  [[nodiscard]] const worker_config& config() const noexcept { return config_; }
  /// "run", "dead-letters retry", "consumers list", ... or the name of a command of yours.
  [[nodiscard]] const std::string& command() const noexcept { return command_; }

  /// Constructs a T that lives until the command has finished (services keep references to
  /// the bus, so they must not outlive it, nor die before it stops).
  template <class T, class... Args>
  T& make(Args&&... args) {
    auto owned = std::make_shared<T>(std::forward<Args>(args)...);
    T& ref = *owned;
    owned_.push_back(std::move(owned));
    return ref;
  }
  /// Takes ownership of an object made elsewhere (a factory's unique_ptr, say), as make() does.
  template <class T>
  T& keep(std::unique_ptr<T> object) {
    T& ref = *object;
    owned_.push_back(std::shared_ptr<T>(std::move(object)));
    return ref;
  }

 private:
  event_bus& bus_;
  const worker_config& config_;
  std::string command_;
  std::vector<std::shared_ptr<void>> owned_;  // destroyed in reverse, before the bus
};

/// Constructs the user's services on app.bus(). Called once per command that needs the
/// listeners (run, dead-letters retry, consumers list|prune, and your own commands).
using setup_function = std::function<void(app&)>;

/// A worker binary with room for your own flags and commands. Configure it, then call main().
class OMNIBUS_API worker_program {
 public:
  /// `name` heads --help and error messages, and names the NATS connection and the logger;
  /// `description` follows it in --help.
  explicit worker_program(std::string name = "omnibus-worker",
                          std::string description = "Runs this application's async listeners, and operates the bus.");
  ~worker_program();
  worker_program(const worker_program&) = delete;
  worker_program& operator=(const worker_program&) = delete;

  /// The command line, to add your own flags (`cli().add_option(...)->envname(...)`); parsed by
  /// main(). Your values are set when the setup function and validators run.
  [[nodiscard]] CLI::App& cli();
  /// The `run` command, to add flags that only it takes.
  [[nodiscard]] CLI::App& run_command();
  /// The defaults the flags start from.
  [[nodiscard]] worker_config& config();
  /// Checks your own flags once they are parsed, before anything connects: throw config_error.
  void validate(std::function<void(const worker_config&)> check);
  /// A command of yours: `fn` runs with the services constructed (setup was called), and its
  /// return value is the exit code. Returns the subcommand, to add options to it.
  CLI::App& add_command(const std::string& name, const std::string& description, std::function<int(app&)> fn);

  /// Parses, validates, and runs the command. Returns the exit code; never throws.
  int main(int argc, char** argv, setup_function setup);

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

/// worker_program{}.main(argc, argv, setup): a worker binary in one call.
OMNIBUS_API int worker_main(int argc, char** argv, setup_function setup);

}  // namespace omnibus
