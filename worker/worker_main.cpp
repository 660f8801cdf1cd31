#include "omnibus/worker_main.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cctype>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <ctime>
#include <exception>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <libpq-fe.h>
#include <pqxx/pqxx>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <sys/stat.h>
#include <unistd.h>

#include "omnibus/bus_state.hpp"
#include "omnibus/dead_letters.hpp"
#include "omnibus/jetstream.hpp"
#include "omnibus/listener_control.hpp"
#include "omnibus/migrations.hpp"
#include "omnibus/nats_error.hpp"
#include "omnibus/operations.hpp"
#include "omnibus/parked_keys.hpp"
#include "omnibus/redrive.hpp"
#include "omnibus/relay.hpp"
#include "omnibus/scheduler.hpp"
#include "omnibus/schedules.hpp"
#include "omnibus/text.hpp"
#include "omnibus/worker.hpp"
#include "connect_timeout.hpp"
#include "http_server.hpp"
#include "dashboard/access.hpp"
#include "dashboard/dashboard.hpp"
#include "dashboard/msgpack_json.hpp"
#include "json_log.hpp"
#include "metrics.hpp"
#include "stats.hpp"

namespace omnibus {
namespace {

constexpr int exit_failure = 1;
constexpr int exit_config = 2;
constexpr int exit_stuck = 3;

std::shared_ptr<spdlog::logger> make_logger(const worker_config& c, const std::string& name) {
  auto lvl = spdlog::level::from_str(c.log_level);
  if (lvl == spdlog::level::off && c.log_level != "off") throw config_error("--log-level: unknown level '" + c.log_level + "'");
  if (c.log_format != "text" && c.log_format != "json") {
    throw config_error("--log-format: '" + c.log_format + "' is neither text nor json");
  }
  std::shared_ptr<spdlog::logger> log;
  if (c.log_format == "json") {
    auto sink = std::make_shared<spdlog::sinks::stderr_sink_mt>();  // no colour codes inside JSON
    sink->set_formatter(detail::make_json_formatter());
    log = std::make_shared<spdlog::logger>(name, std::move(sink));
  } else {
    log = std::make_shared<spdlog::logger>(name, std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  }
  log->set_level(lvl);
  return log;
}

std::string when(std::chrono::system_clock::time_point t) {
  std::time_t tt = std::chrono::system_clock::to_time_t(t);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", std::gmtime(&tt));
  return buf;
}

// SIGINT and SIGTERM become a stop request; blocked in every thread, taken by sigtimedwait.
class signal_stop {
 public:
  signal_stop() {
    sigemptyset(&set_);
    sigaddset(&set_, SIGINT);
    sigaddset(&set_, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set_, nullptr);  // before any other thread starts
    thread_ = std::jthread([this](std::stop_token st) {
      timespec slice{0, 200'000'000};
      while (!st.stop_requested()) {
        if (sigtimedwait(&set_, nullptr, &slice) > 0) {
          source_.request_stop();
          return;
        }
      }
    });
  }
  [[nodiscard]] std::stop_token token() const { return source_.get_token(); }

 private:
  sigset_t set_{};
  std::stop_source source_;
  std::jthread thread_;
};

// Waits `d` unless `stop` is requested first; false when it was.
bool wait_for(const std::stop_token& stop, std::chrono::milliseconds d) {
  std::mutex m;
  std::condition_variable_any cv;
  std::unique_lock lock(m);
  (void)cv.wait_for(lock, stop, d, [] { return false; });
  return !stop.stop_requested();
}

// Dead letters hold what producers sent: every such string goes through omnibus::for_terminal, so
// that escape sequences in a subject, header or error never reach the operator's terminal.
std::string shown(std::string_view s) { return omnibus::for_terminal(s); }

// What the running workers report of one listener: "running in 2 worker(s)", or its states
// that are not running, each with how many workers are in it and the first one's reason.
std::string flow_summary(const std::string& listener, const std::vector<listener_report>& reports) {
  std::size_t workers = 0;
  std::vector<std::pair<std::string, std::vector<const listener_report*>>> states;
  for (const auto& r : reports) {
    if (r.listener != listener) continue;
    ++workers;
    if (r.state == "running") continue;
    auto it = std::find_if(states.begin(), states.end(), [&](const auto& s) { return s.first == r.state; });
    if (it == states.end()) it = states.insert(states.end(), {r.state, {}});
    it->second.push_back(&r);
  }
  if (workers == 0) return "no running worker reports it";
  if (states.empty()) return "running in " + std::to_string(workers) + " worker(s)";
  std::string out;
  for (const auto& [state, in] : states) {
    if (!out.empty()) out += "; ";
    std::string upper = state;
    std::transform(upper.begin(), upper.end(), upper.begin(), [](unsigned char ch) { return std::toupper(ch); });
    out += upper + " in " + std::to_string(in.size()) + " of " + std::to_string(workers) + " worker(s) since " +
           when(in.front()->since) + " UTC";
    if (!in.front()->reason.empty()) out += ": " + shown(in.front()->reason);
  }
  return out;
}

void print_letters(const std::vector<omnibus::dead_letter>& letters) {
  std::printf("%-6s %-20s %-18s %-8s %-17s %-19s %s\n", "id", "listener", "event", "attempts", "reason", "last failed (UTC)", "error");
  for (const auto& dl : letters) {
    std::string err = shown(dl.error);
    if (err.size() > 60) err = err.substr(0, 57) + "...";
    std::printf("%-6lld %-20s %-18s %-8d %-17s %-19s %s\n", static_cast<long long>(dl.id), shown(dl.listener).c_str(),
                dl.event_name.empty() ? "-" : shown(dl.event_name).c_str(), dl.attempts, shown(dl.reason).c_str(),
                when(dl.last_failed_at).c_str(), err.c_str());
  }
  std::printf("%zu dead letter(s)\n", letters.size());
}

void print_letter(const omnibus::dead_letter& dl) {
  std::printf("id:              %lld\nlistener:        %s\nevent:           %s\nevent id:        %s\n"
              "stream sequence: %llu\nreason:          %s\nerror:           %s\nattempts:        %d\n"
              "first failed:    %s UTC\nlast failed:     %s UTC\nsubject:         %s\nheaders:\n",
              static_cast<long long>(dl.id), shown(dl.listener).c_str(), shown(dl.event_name).c_str(),
              shown(dl.event_id).c_str(), static_cast<unsigned long long>(dl.stream_sequence), shown(dl.reason).c_str(),
              shown(dl.error).c_str(), dl.attempts, when(dl.first_failed_at).c_str(), when(dl.last_failed_at).c_str(),
              shown(dl.msg.subject).c_str());
  for (const auto& [k, v] : dl.msg.headers) std::printf("  %s: %s\n", shown(k).c_str(), shown(v).c_str());
  if (!dl.raw_header_block.empty()) {
    std::printf("raw header block (%zu bytes, did not parse):\n  %s\n", dl.raw_header_block.size(),
                shown(dl.raw_header_block).c_str());
  }
  // The body as JSON when it is msgpack (any producer's), then its bytes.
  const auto json = detail::msgpack_to_json(dl.msg.body);
  if (json.decoded) {
    std::printf("body as JSON%s%s:\n%s\n", json.note.empty() ? "" : " (", json.note.empty() ? "" : (shown(json.note) + ")").c_str(),
                shown(json.text).c_str());
  }
  std::printf("body (%zu bytes):", dl.msg.body.size());
  for (std::size_t i = 0; i < dl.msg.body.size(); ++i) {
    std::printf("%s%02x", i % 32 == 0 ? "\n  " : " ", static_cast<unsigned char>(dl.msg.body[i]));
  }
  std::printf("\n");
}

// Who runs this command, for the redrives' audit.
std::string operator_name() {
  for (const char* var : {"OMNIBUS_OPERATOR", "USER", "LOGNAME"}) {
    if (const char* v = std::getenv(var); v != nullptr && *v != '\0') return std::string("cli:") + v;
  }
  return "cli:uid " + std::to_string(::getuid());
}

void print_redrive(const omnibus::redrive_status& r) {
  std::printf("redrive %lld: %s %s, %s at %s by %s; %s (last change by %s): %llu ok, %llu failed, %llu gone, "
              "%llu interrupted, %llu pending of %llu\n",
              static_cast<long long>(r.id), std::string(omnibus::to_string(r.action)).c_str(), shown(r.filter).c_str(),
              r.rate > 0 ? (std::to_string(r.rate) + "/s").c_str() : "unlimited",
              omnibus::to_iso8601(r.created_at).c_str(), shown(r.requested_by).c_str(), r.state.c_str(),
              shown(r.updated_by).c_str(), static_cast<unsigned long long>(r.ok), static_cast<unsigned long long>(r.failed),
              static_cast<unsigned long long>(r.gone), static_cast<unsigned long long>(r.interrupted),
              static_cast<unsigned long long>(r.pending), static_cast<unsigned long long>(r.total));
}

int report(const std::vector<omnibus::retry_outcome>& outcomes) {
  int failed = 0;
  for (const auto& o : outcomes) {
    if (o.ok) {
      std::printf("retried %lld (%s, %s): ok, removed\n", static_cast<long long>(o.id), o.listener.c_str(), o.event_id.c_str());
    } else {
      ++failed;
      std::printf("retried %lld (%s, %s): failed again: %s\n", static_cast<long long>(o.id), o.listener.c_str(),
                  o.event_id.c_str(), o.error.c_str());
    }
  }
  std::printf("%zu retried: %zu succeeded, %d failed\n", outcomes.size(), outcomes.size() - static_cast<std::size_t>(failed), failed);
  return failed == 0 ? 0 : exit_failure;
}

}  // namespace

struct worker_program::impl {
  std::string name;
  CLI::App cli;
  worker_config config;
  long max_age_s = 7 * 24 * 3600;
  long duplicate_window_s = 120;
  std::vector<std::function<void(const worker_config&)>> checks;
  struct user_command {
    CLI::App* sub;
    std::function<int(app&)> fn;
  };
  std::vector<user_command> commands;

  // The operator commands' own state, bound to the parser.
  std::string f_listener, f_event, listener;
  std::int64_t id = 0;
  std::size_t limit = 100;
  bool retry_all = false, retry_confirmed = false, dry_run = false, purge_confirmed = false, prune_confirmed = false;
  // Bulk retries and discards (redrives).
  std::string f_error_like, f_since, f_until;
  std::string http_token_file;
  double redrive_rate = 0;
  bool redrive_background = false;
  CLI::Option* discard_id = nullptr;
  CLI::App *redrives_cmd, *rd_list, *rd_show, *rd_pause, *rd_resume, *rd_cancel, *rd_run;
  std::string replay_from;
  std::uint64_t replay_from_seq = 0;
  bool replay_keep_inbox = false, replay_confirmed = false;
  CLI::App* consumers_replay = nullptr;
  bool stats_json = false;
  std::string pause_reason = "paused by an operator";
  CLI::App *listeners_cmd, *listeners_list, *listeners_pause, *listeners_resume, *listeners_losses;
  bool acknowledge_losses = false, purge_handled = false;
  long outbox_alert_s = 60;
  double stream_check_s = 30;
  double start_wait_s = 30;
  double stats_every_s = 0;
  CLI::App *stats_cmd,
      *run_cmd, *dl_list, *dl_show, *dl_retry, *dl_discard, *parked_list, *parked_retry, *parked_skip,
      *parked_discard, *partitions_cmd,
      *consumers_list, *consumers_prune, *stream_cmd, *stream_info, *stream_purge, *mig_sql, *mig_apply;
  CLI::Option *retry_id;
  std::string parked_key_arg;
  bool discard_confirmed = false;
  std::string sched_due_before, sched_key, sched_id, sched_name, sched_expression, sched_zone = "UTC", sched_from;
  int sched_count = 10;
  CLI::App *schedules_cmd, *sched_list, *sched_show, *sched_cancel, *sched_trigger, *sched_pause, *sched_resume,
      *sched_preview;

  impl(std::string n, const std::string& description) : name(std::move(n)), cli(name + ": " + description +
      "\nEvery option can also be set through the environment variable named in brackets.") {
    config.nats.name = name;
    define();
  }

  void define() {
    worker_config& c = config;
    cli.require_subcommand(1);
    cli.add_option("--nats-url", c.nats.url, "NATS server URL")->envname("OMNIBUS_NATS_URL")->capture_default_str();
    cli.add_option("--nats-user", c.nats.user, "NATS user")->envname("OMNIBUS_NATS_USER");
    cli.add_option("--nats-password", c.nats.password, "NATS password (prefer the environment variable)")
        ->envname("OMNIBUS_NATS_PASSWORD");
    cli.add_option("--nats-token", c.nats.token, "NATS token (prefer the environment variable)")->envname("OMNIBUS_NATS_TOKEN");
    cli.add_option("--nats-creds", c.nats.credentials_file, "NATS .creds file")->envname("OMNIBUS_NATS_CREDS");
    cli.add_flag("--nats-tls", c.nats.tls, "require TLS to nats-server")->envname("OMNIBUS_NATS_TLS");
    cli.add_option("--nats-tls-ca", c.nats.tls_ca_file, "CA file to verify nats-server")->envname("OMNIBUS_NATS_TLS_CA");
    cli.add_option("--nats-tls-cert", c.nats.tls_cert_file, "client certificate file")->envname("OMNIBUS_NATS_TLS_CERT");
    cli.add_option("--nats-tls-key", c.nats.tls_key_file, "client certificate key file")->envname("OMNIBUS_NATS_TLS_KEY");
    cli.add_option("--database-url", c.database_url, "PostgreSQL URL (libpq)")->envname("OMNIBUS_DATABASE_URL");
    cli.add_option("--group", c.bus.group, "application name: consumers are <group>_<listener>")
        ->envname("OMNIBUS_GROUP")->capture_default_str();
    cli.add_option("--schema", c.bus.schema, "PostgreSQL schema of the bus's tables")->envname("OMNIBUS_SCHEMA")->capture_default_str();
    cli.add_option("--stream", c.bus.stream.name, "JetStream stream")->envname("OMNIBUS_STREAM")->capture_default_str();
    cli.add_option("--subject-prefix", c.bus.stream.subject_prefix, "subjects are <prefix>.<event name>")
        ->envname("OMNIBUS_SUBJECT_PREFIX")->capture_default_str();
    cli.add_option("--stream-max-age", max_age_s, "seconds an event is kept")->envname("OMNIBUS_STREAM_MAX_AGE")->capture_default_str();
    cli.add_option("--stream-max-bytes", c.bus.stream.max_bytes, "stream size limit (DiscardNew)")
        ->envname("OMNIBUS_STREAM_MAX_BYTES")->capture_default_str();
    cli.add_option("--stream-max-msgs", c.bus.stream.max_msgs, "stream event count limit (-1: none)")
        ->envname("OMNIBUS_STREAM_MAX_MSGS")->capture_default_str();
    cli.add_option("--stream-replicas", c.bus.stream.replicas, "copies of the stream in a JetStream cluster (1, 3 or 5)")
        ->envname("OMNIBUS_STREAM_REPLICAS")->capture_default_str();
    cli.add_option("--stream-hold-above", c.bus.stream.hold_above,
                   "publishers stop above this fraction of the stream's limits (1: never)")
        ->envname("OMNIBUS_STREAM_HOLD_ABOVE")->capture_default_str();
    cli.add_option("--duplicate-window", duplicate_window_s, "seconds of Nats-Msg-Id dedup")
        ->envname("OMNIBUS_DUPLICATE_WINDOW")->capture_default_str();
    cli.add_option("--log-level", c.log_level, "trace, debug, info, warn, err, critical, off")
        ->envname("OMNIBUS_LOG_LEVEL")->capture_default_str();
    cli.add_option("--log-format", c.log_format, "text, or json: one object per line")
        ->envname("OMNIBUS_LOG_FORMAT")->capture_default_str();

    run_cmd = cli.add_subcommand("run", "Run every async listener until SIGINT or SIGTERM (and a relay)");
    run_cmd->add_flag("!--no-relay", c.relay, "do not run an outbox relay in this process");
    run_cmd->add_flag("!--no-scheduler", c.scheduler, "do not fire scheduled and recurring events in this process");
    run_cmd->add_flag("!--no-redrives", c.redrives, "do not carry out bulk dead-letter retries and discards in this process");
    cli.add_option("--outbox-alert-after", outbox_alert_s,
                   "seconds outbox rows may wait with no relay before readiness fails and run warns")
        ->envname("OMNIBUS_OUTBOX_ALERT_AFTER")->capture_default_str();
    run_cmd->add_option("--stream-check-every", stream_check_s,
                        "seconds between reads of the stream's fill and checks for events that left it unhandled")
        ->envname("OMNIBUS_STREAM_CHECK_EVERY")->capture_default_str();
    run_cmd->add_option("--start-wait", start_wait_s,
                        "seconds to wait at start for PostgreSQL to answer (and the broker to open consumers) before giving up")
        ->envname("OMNIBUS_START_WAIT")->capture_default_str();
    run_cmd->add_option("--http", c.http,
                        "serve the dashboard, /metrics, /healthz and /readyz on host:port, e.g. 127.0.0.1:9464 (an "
                        "address other than loopback needs a token)")
        ->envname("OMNIBUS_HTTP");
    run_cmd->add_option("--http-token-file", http_token_file,
                        "a file holding the dashboard's token (16 bytes or more; or set OMNIBUS_HTTP_TOKEN)")
        ->envname("OMNIBUS_HTTP_TOKEN_FILE");
    run_cmd->add_flag("--http-read-only", c.http_read_only, "the dashboard shows and accepts no action")
        ->envname("OMNIBUS_HTTP_READ_ONLY");
    run_cmd->add_option("--http-origin", c.http_origins,
                        "an origin a reverse proxy serves the dashboard under, e.g. https://ops.example.com (repeatable)")
        ->envname("OMNIBUS_HTTP_ORIGIN");

    stats_cmd = cli.add_subcommand("stats", "Every listener's backlog, dead letters and parking; the outbox, relay and stream");
    stats_cmd->add_flag("--json", stats_json, "one JSON object, for scripts");
    stats_cmd->add_option("--watch", stats_every_s, "refresh every N seconds until SIGINT");

    auto* dl_cmd = cli.add_subcommand("dead-letters", "List, show, retry or discard dead letters");
    dl_cmd->require_subcommand(1);
    dl_list = dl_cmd->add_subcommand("list", "List dead letters, newest first");
    dl_list->add_option("--listener", f_listener, "only this listener's");
    dl_list->add_option("--event", f_event, "only this event name's");
    dl_list->add_option("--limit", limit, "at most this many")->capture_default_str();
    dl_show = dl_cmd->add_subcommand("show", "Show one dead letter, headers and body included");
    dl_show->add_option("id", id, "dead letter id")->required();
    dl_retry = dl_cmd->add_subcommand(
        "retry", "Run dead letters through their own listener alone: one by id, or all that match a filter (a redrive)");
    retry_id = dl_retry->add_option("id", id, "dead letter id");
    dl_discard = dl_cmd->add_subcommand("discard", "Delete dead letters: one by id, or all that match a filter (a redrive)");
    discard_id = dl_discard->add_option("id", id, "dead letter id");
    for (CLI::App* bulk : {dl_retry, dl_discard}) {
      CLI::Option* all = bulk->add_flag("--all", retry_all, "every dead letter matching the filters (or every one, with --yes)");
      CLI::Option* filters[] = {
          bulk->add_option("--listener", f_listener, "only this listener's"),
          bulk->add_option("--event", f_event, "only this event name's"),
          bulk->add_option("--error-like", f_error_like, "only those whose error matches this SQL LIKE pattern ('%timeout%')"),
          bulk->add_option("--since", f_since, "only those that last failed at or after this time (2026-11-30T12:00:00Z)"),
          bulk->add_option("--until", f_until, "only those that last failed before this time"),
          bulk->add_option("--rate", redrive_rate, "dead letters per second (0: as fast as they go)")->capture_default_str(),
          bulk->add_flag("--dry-run", dry_run, "say how many match, and change nothing"),
          bulk->add_flag("--background", redrive_background, "leave it to the workers (omnibus-worker run) and return"),
          bulk->add_flag("--yes", retry_confirmed, "with no filter: confirm every dead letter of every listener"),
      };
      CLI::Option* one = bulk == dl_retry ? retry_id : discard_id;
      one->excludes(all);
      for (CLI::Option* f : filters) one->excludes(f);
    }

    redrives_cmd = dl_cmd->add_subcommand("redrives", "Bulk retries and discards: list, show, pause, resume, cancel, run");
    redrives_cmd->require_subcommand(1);
    rd_list = redrives_cmd->add_subcommand("list", "The newest redrives, with their progress");
    rd_list->add_option("--limit", limit, "at most this many")->capture_default_str();
    rd_show = redrives_cmd->add_subcommand("show", "One redrive: its request, progress and audit");
    rd_pause = redrives_cmd->add_subcommand("pause", "Stop a redrive where it is; resume carries on");
    rd_resume = redrives_cmd->add_subcommand("resume", "Carry a paused redrive on (a worker picks it up)");
    rd_cancel = redrives_cmd->add_subcommand("cancel", "Stop a redrive for good; what it did stays done");
    rd_run = redrives_cmd->add_subcommand("run", "Carry a running redrive on in this process, with progress");
    for (CLI::App* sub : {rd_show, rd_pause, rd_resume, rd_cancel, rd_run}) sub->add_option("id", id, "redrive id")->required();

    listeners_cmd = cli.add_subcommand("listeners", "Pause and resume listeners across every worker");
    listeners_cmd->require_subcommand(1);
    listeners_list = listeners_cmd->add_subcommand("list", "Every listener, running or paused (and why)");
    listeners_pause = listeners_cmd->add_subcommand("pause", "Stop every worker fetching for a listener; its events wait");
    listeners_pause->add_option("listener", listener, "listener name")->required();
    listeners_pause->add_option("--reason", pause_reason, "why, for the other operators")->capture_default_str();
    listeners_resume = listeners_cmd->add_subcommand("resume", "Let every worker fetch for the listener again");
    listeners_resume->add_option("listener", listener, "listener name")->required();
    listeners_losses = listeners_cmd->add_subcommand(
        "losses", "Events that left the stream before their listener handled them (max_age, the stream's limits)");
    listeners_losses->add_option("listener", listener, "only this listener's");
    listeners_losses->add_flag("--acknowledge", acknowledge_losses,
                               "mark them seen (after dealing with them): /readyz stops failing for them");

    auto* parked_cmd = cli.add_subcommand("parked", "Ordered listeners parked at an event, and per-key listeners' parked keys");
    parked_cmd->require_subcommand(1);
    parked_list = parked_cmd->add_subcommand("list", "Show every parked listener and parked key");
    parked_retry = parked_cmd->add_subcommand(
        "retry", "Run the parked event once more (after fixing the cause); with KEY, the key's parked events in order");
    parked_retry->add_option("listener", listener, "listener name")->required();
    parked_retry->add_option("key", parked_key_arg, "a per-key listener's parked key");
    parked_skip = parked_cmd->add_subcommand(
        "skip", "Move past the parked event without handling it; with KEY, drop the key's first and run the rest");
    parked_skip->add_option("listener", listener, "listener name")->required();
    parked_skip->add_option("key", parked_key_arg, "a per-key listener's parked key");
    parked_discard = parked_cmd->add_subcommand("discard", "Drop every parked event of a per-key listener's key");
    parked_discard->add_option("listener", listener, "listener name")->required();
    parked_discard->add_option("key", parked_key_arg, "the parked key")->required();
    parked_discard->add_flag("--yes", discard_confirmed, "confirm (else: what would be dropped, and exit 2)");
    partitions_cmd = cli.add_subcommand("partitions", "Which worker holds each partition of the per-key listeners");

    auto* consumers_cmd = cli.add_subcommand("consumers", "The stream's durable consumers");
    consumers_cmd->require_subcommand(1);
    consumers_list = consumers_cmd->add_subcommand("list", "List consumers and whether a listener owns them");
    consumers_prune = consumers_cmd->add_subcommand("prune", "Delete this group's consumers that no listener owns");
    consumers_prune->add_flag("--dry-run", dry_run, "only say what would be deleted");
    consumers_prune->add_flag("--yes", prune_confirmed, "confirm the deletion (else: what would be deleted, and exit 2)");
    consumers_replay = consumers_cmd->add_subcommand(
        "replay", "Deliver a listener's events again from a time or a stream sequence (rebuild a projection)");
    consumers_replay->add_option("listener", listener, "the async listener")->required();
    auto* from = consumers_replay->add_option("--from", replay_from, "RFC 3339 UTC time, e.g. 2026-11-01T00:00:00Z");
    auto* from_seq = consumers_replay->add_option("--from-seq", replay_from_seq, "stream sequence");
    from->excludes(from_seq);
    from_seq->excludes(from);
    consumers_replay->add_flag("--keep-inbox", replay_keep_inbox,
                               "keep its inbox rows: replay only what it never handled");
    consumers_replay->add_flag("--yes", replay_confirmed, "confirm (else: what it would redeliver, and exit 2)");

    stream_cmd = cli.add_subcommand("stream", "The JetStream stream: how full it is, and making room");
    stream_cmd->require_subcommand(1);
    stream_info = stream_cmd->add_subcommand("info", "Events, bytes, and how full the stream is");
    stream_purge = stream_cmd->add_subcommand("purge", "Delete events from the stream to make room");
    stream_purge->add_flag("--handled", purge_handled,
                           "only the events every consumer has handled: nothing is lost (replays cannot reach them)");
    stream_purge->add_flag("--yes", purge_confirmed, "confirm deleting every event: those no listener has handled are lost");

    schedules_cmd = cli.add_subcommand("schedules", "Scheduled events and recurring (cron) schedules");
    schedules_cmd->require_subcommand(1);
    sched_list = schedules_cmd->add_subcommand("list", "Pending scheduled events (soonest first) and every recurring schedule");
    sched_list->add_option("--due-before", sched_due_before, "only events due before this ISO 8601 time");
    sched_list->add_option("--key", sched_key, "only the event with this unique key");
    sched_list->add_option("--limit", limit, "at most this many scheduled events")->capture_default_str();
    sched_list->add_flag("--json", stats_json, "one JSON object, for scripts");
    sched_show = schedules_cmd->add_subcommand("show", "One pending scheduled event, headers and body included");
    sched_show->add_option("id", sched_id, "the schedule's id (its event's id)")->required();
    sched_cancel = schedules_cmd->add_subcommand("cancel", "Cancel a pending scheduled event");
    sched_cancel->add_option("id", sched_id, "the schedule's id (its event's id)")->required();
    sched_trigger = schedules_cmd->add_subcommand("trigger", "Fire a recurring schedule once, now");
    sched_trigger->add_option("name", sched_name, "the recurring schedule")->required();
    sched_pause = schedules_cmd->add_subcommand("pause", "Stop every worker firing a recurring schedule");
    sched_pause->add_option("name", sched_name, "the recurring schedule")->required();
    sched_resume = schedules_cmd->add_subcommand("resume", "Let the workers fire a paused recurring schedule again");
    sched_resume->add_option("name", sched_name, "the recurring schedule")->required();
    sched_preview = schedules_cmd->add_subcommand(
        "preview", "The next fire times of a cron expression, one ISO 8601 UTC instant per line (no servers needed)");
    sched_preview->add_option("expression", sched_expression, "e.g. \"0 9 * * MON-FRI\" (quote it)")->required();
    sched_preview->add_option("--tz", sched_zone, "IANA time zone, e.g. Europe/Berlin")->capture_default_str();
    sched_preview->add_option("--from", sched_from, "start after this ISO 8601 time (default: now)");
    sched_preview->add_option("--count", sched_count, "how many fire times")->capture_default_str();

    auto* mig_cmd = cli.add_subcommand("migrations", "The bus's database migrations");
    mig_cmd->require_subcommand(1);
    mig_sql = mig_cmd->add_subcommand("sql", "Print every migration as one SQL script (for Flyway, psql, ...)");
    mig_apply = mig_cmd->add_subcommand("apply", "Apply the missing migrations (run also does this)");
  }

  // Checks every setting before anything connects or changes on a server.
  void finish(bool needs_database) {
    worker_config& c = config;
    if (needs_database && c.database_url.empty()) {
      throw config_error("no database: pass --database-url or set OMNIBUS_DATABASE_URL");
    }
    if (max_age_s <= 0 || duplicate_window_s <= 0) throw config_error("--stream-max-age and --duplicate-window must be positive");
    if (c.bus.stream.max_bytes <= 0) throw config_error("--stream-max-bytes must be positive");
    if (c.bus.stream.max_msgs == 0 || c.bus.stream.max_msgs < -1) {
      throw config_error("--stream-max-msgs must be positive, or -1 for no limit");
    }
    if (c.bus.stream.replicas < 1 || c.bus.stream.replicas > 5) throw config_error("--stream-replicas must be 1 to 5");
    if (!(c.bus.stream.hold_above > 0 && c.bus.stream.hold_above <= 1)) {
      throw config_error("--stream-hold-above must be in (0, 1]: a fraction of the stream's limits, e.g. 0.9");
    }
    c.bus.stream.max_age = std::chrono::seconds(max_age_s);
    c.bus.stream.duplicate_window = std::chrono::seconds(duplicate_window_s);
    try {
      check_schema_name(c.bus.schema);
    } catch (const std::invalid_argument& e) {
      throw config_error(e.what());
    }
    (void)make_logger(c, name);  // an unknown level or format is a configuration error, whatever the command
    if (stats_every_s < 0) throw config_error("stats --watch: seconds must be positive");
    if (outbox_alert_s <= 0) throw config_error("--outbox-alert-after must be positive");
    c.outbox_alert_after = std::chrono::seconds(outbox_alert_s);
    if (!(stream_check_s >= 0.05 && stream_check_s <= 86400)) {
      throw config_error("--stream-check-every must be between 0.05 and 86400 seconds");
    }
    if (!(start_wait_s >= 0 && start_wait_s <= 86400)) throw config_error("--start-wait must be between 0 and 86400 seconds");
    if (!c.http.empty()) {
      try {
        detail::check_http_address(c.http);
      } catch (const std::invalid_argument& e) {
        throw config_error(e.what());
      }
      load_http_token(c);
    }
    for (const auto& check : checks) check(c);
  }

  // The token from --http-token-file or OMNIBUS_HTTP_TOKEN; a bind beyond loopback needs one.
  // Messages name where the token comes from, never the token.
  void load_http_token(worker_config& c) {
    if (!http_token_file.empty()) {
      std::FILE* f = std::fopen(http_token_file.c_str(), "rb");
      if (!f) throw config_error("--http-token-file " + http_token_file + ": cannot be read");
      char buf[4096];
      const std::size_t n = std::fread(buf, 1, sizeof buf, f);
      std::fclose(f);
      c.http_token.assign(buf, n);
      while (!c.http_token.empty() && (c.http_token.back() == '\n' || c.http_token.back() == '\r')) c.http_token.pop_back();
      struct stat st{};
      if (::stat(http_token_file.c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
        std::fprintf(stderr, "%s: warning: --http-token-file %s can be read by other users (chmod 600 it)\n",
                     name.c_str(), http_token_file.c_str());
      }
    } else if (const char* env = std::getenv("OMNIBUS_HTTP_TOKEN"); env && *env) {
      c.http_token = env;
    }
    const char* from = http_token_file.empty() ? "OMNIBUS_HTTP_TOKEN" : "--http-token-file";
    if (!c.http_token.empty() && c.http_token.size() < 16) {
      throw config_error(std::string(from) + ": the token must be 16 bytes or more (e.g. openssl rand -hex 32)");
    }
    for (const unsigned char ch : c.http_token) {
      if (ch <= ' ' || ch >= 0x7f) throw config_error(std::string(from) + ": the token must be printable ASCII without spaces");
    }
    if (c.http_token.empty() && !detail::is_loopback_address(c.http)) {
      throw config_error("--http " + c.http + " listens beyond loopback: set OMNIBUS_HTTP_TOKEN or --http-token-file "
                         "(the dashboard can change the bus), or bind 127.0.0.1");
    }
    if (!c.http_origins.empty() && c.http_token.empty()) {
      throw config_error("--http-origin: a dashboard served through a reverse proxy needs a token (OMNIBUS_HTTP_TOKEN or "
                         "--http-token-file; the proxy sends it as Authorization: Bearer)");
    }
    for (const auto& o : c.http_origins) {
      const bool scheme = o.rfind("http://", 0) == 0 || o.rfind("https://", 0) == 0;
      const auto host_at = o.find("://") + 3;
      if (!scheme || o.size() == host_at || o.find('/', host_at) != std::string::npos) {
        throw config_error("--http-origin '" + o + "': expected scheme://host[:port], e.g. https://ops.example.com");
      }
    }
  }

  int run(const setup_function& setup) {
    const worker_config& c = config;
    signal_stop signals;
    auto log = make_logger(c, name);
    // One wait at start, in all: the migration's, then what is left of it for the worker's own.
    const auto start_deadline =
        std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<long>(start_wait_s * 1000));
    // First, so that an application's setup finds the database reachable (the demo migrates
    // its own tables there).
    if (!migrate_when_reachable(signals.token(), start_deadline, *log)) return 0;
    nats_connection nats{c.nats};
    jetstream js{nats};
    event_bus bus{js, c.bus};
    app a{bus, c, "run"};
    setup(a);  // every service registers its listeners here
    std::optional<relay> r;
    if (c.relay) {
      relay_options ro;
      ro.database_url = c.database_url;
      ro.schema = c.bus.schema;
      ro.stream = c.bus.stream;
      r.emplace(js, ro, log);
    } else {
      log->info("run: no relay in this process (--no-relay): another process must run one for schema {}, or outbox "
                "rows are never sent",
                c.bus.schema);
    }
    std::optional<scheduler> sched;
    if (c.scheduler) {
      scheduler_options so;
      so.database_url = c.database_url;
      sched.emplace(bus, so, log);
    }
    std::optional<redrive_runner> redrives;
    if (c.redrives) redrives.emplace(bus, redrive_runner_options{c.database_url}, log);
    worker_options wo;
    wo.database_url = c.database_url;
    wo.stream_check_every = std::chrono::milliseconds(static_cast<long>(stream_check_s * 1000));
    wo.start_wait = std::max(std::chrono::duration_cast<std::chrono::milliseconds>(
                                 start_deadline - std::chrono::steady_clock::now()),
                             std::chrono::milliseconds(0));
    worker w{bus, wo, log};
    std::shared_ptr<detail::worker_metrics> metrics;
    std::optional<detail::access_control> access;
    std::optional<detail::dashboard> board;
    std::optional<detail::http_server> http;
    if (!c.http.empty()) {
      metrics = std::make_shared<detail::worker_metrics>(
          detail::metrics_sources{&bus, &nats, c.database_url, &w.stats(), &w, r ? &r->stats() : nullptr,
                                  c.outbox_alert_after},
          log);
      bus.add_observer(metrics);
      detail::access_config ac{c.http_token, c.http_read_only, detail::is_loopback_address(c.http), c.http_origins};
      ac.cookie_name = "omnibus_session_" + c.http.substr(c.http.rfind(':') + 1);  // one per port
      access.emplace(std::move(ac));
      detail::dashboard_options dopt;
      dopt.database_url = c.database_url;
      dopt.alert_after = c.outbox_alert_after;
      dopt.redrives_here = c.redrives;
      board.emplace(bus, metrics.get(), *access, std::move(dopt), log);
      detail::http_limits limits;
      limits.inline_paths = {"/healthz"};                    // touches nothing: answered at once
      limits.priority_paths = {"/metrics", "/readyz"};       // never queued behind a slow page
      http.emplace(c.http, [&d = *board](const detail::http_request& req) { return d.handle(req); }, log, limits);
      log->info("http: serving the dashboard, /metrics, /healthz and /readyz on port {}{}{}", http->port(),
                c.http_token.empty() ? "" : " (token required)", c.http_read_only ? " (read-only)" : "");
    }
    if (r) r->start();  // active or standby: any worker can be the relay
    if (sched) sched->start();  // every worker's scheduler shares the due rows (SKIP LOCKED)
    if (redrives) redrives->start();  // one process carries each redrive at a time (an advisory lock)
    std::jthread outbox_watch([&](std::stop_token st) { watch_outbox(st, *log); });
    try {
      w.run(signals.token());
    } catch (const worker_stuck& e) {
      log->critical("{}", e.what());
      log->flush();
      std::_Exit(exit_stuck);  // stuck handler threads cannot be joined
    }
    const auto& s = w.stats();
    std::printf("worker: handled=%llu failed=%llu dead_lettered=%llu timed_out=%llu parked=%llu\n",
                static_cast<unsigned long long>(s.handled.load()), static_cast<unsigned long long>(s.failed.load()),
                static_cast<unsigned long long>(s.dead_lettered.load()), static_cast<unsigned long long>(s.timed_out.load()),
                static_cast<unsigned long long>(s.parked.load()));
    std::fflush(stdout);
    return 0;
  }

  // PostgreSQL may come up after the worker (one deploy starting both, a host restarting): the
  // schema is migrated as worker::run() starts, trying again every 500 ms until `deadline`
  // and saying so once. False when a stop was asked for meanwhile; past the deadline, or on an
  // error that waiting cannot mend, it throws what PostgreSQL said.
  bool migrate_when_reachable(const std::stop_token& stop, std::chrono::steady_clock::time_point deadline,
                              spdlog::logger& log) {
    const worker_config& c = config;
    // Each attempt gives up after a few seconds: a host that drops packets would otherwise hold
    // it for the kernel's connect timeout (minutes), past the deadline and deaf to a stop.
    const std::string url = detail::with_connect_timeout(c.database_url);
    for (bool warned = false;;) {
      try {
        pqxx::connection db{url};
        migrate(db, c.bus.schema);
        return true;
      } catch (const std::exception& e) {
        if (!database_may_come_back(e, url) || std::chrono::steady_clock::now() >= deadline) throw;
        if (!warned) {
          // libpq's text can repeat parts of the connection string: not logged.
          log.warn("run: PostgreSQL is unreachable (check --database-url / OMNIBUS_DATABASE_URL); trying again every "
                   "500 ms for up to {} s",
                   std::chrono::duration_cast<std::chrono::seconds>(deadline - std::chrono::steady_clock::now()).count());
        }
        warned = true;
        if (!wait_for(stop, std::chrono::milliseconds(500))) {
          log.info("run: stopped while waiting for PostgreSQL");
          return false;
        }
      }
    }
  }

  // Whether `e` from connecting to `url` can pass by waiting: nothing answers (down, still
  // starting, a host restarting) or the server refuses connections for now (starting up,
  // shutting down), SQLSTATE 57P0x included. libpqxx reports every failed connect alike, so
  // the server is asked (PQping): one that accepts connections turned this one down for good
  // (a wrong password, a missing database), and so does a URL libpq cannot use.
  static bool database_may_come_back(const std::exception& e, const std::string& url) {
    if (const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e)) return sql->sqlstate().rfind("57P0", 0) == 0;
    if (dynamic_cast<const pqxx::broken_connection*>(&e) == nullptr) return false;
    const PGPing ping = PQping(url.c_str());
    return ping == PQPING_NO_RESPONSE || ping == PQPING_REJECT;
  }

  // Warns (every minute at most) while outbox rows wait with no process relaying them: the
  // events were written, and without a relay they never reach the stream.
  void watch_outbox(std::stop_token stop, spdlog::logger& log) {
    const worker_config& c = config;
    const auto every = std::min<std::chrono::milliseconds>(std::chrono::minutes(1), c.outbox_alert_after);
    std::optional<pqxx::connection> db;
    while (wait_for(stop, every)) {
      try {
        if (!db) db.emplace(c.database_url);
        const bus_state st = read_bus_state(*db, c.bus.schema);
        if (st.unrelayed(c.outbox_alert_after)) {
          log.warn("outbox: {} row(s) have waited {} s and no process holds the relay lock of schema {}: the events "
                   "were written and nothing sends them. Run a worker with its relay (run without --no-relay)",
                   st.outbox_rows, st.outbox_oldest_age->count() / 1000, c.bus.schema);
        }
      } catch (const std::exception&) {
        db.reset();  // the worker's own paths report an unreachable database
      }
    }
  }

  int stats(const setup_function& setup) {
    const worker_config& c = config;
    nats_connection nats{c.nats};
    jetstream js{nats};
    event_bus bus{js, c.bus};
    app a{bus, c, "stats"};
    setup(a);  // the listeners, to list every one (even those with nothing waiting)
    pqxx::connection db{c.database_url};
    if (stats_every_s <= 0) {
      const auto v = detail::read_stats(bus, db);
      std::fputs((stats_json ? detail::stats_json(v, c.outbox_alert_after)
                             : detail::stats_text(v, c.outbox_alert_after, ::isatty(1) != 0))
                     .c_str(),
                 stdout);
      return 0;
    }
    signal_stop signals;
    const auto every = std::chrono::milliseconds(static_cast<long long>(stats_every_s * 1000));
    do {
      const auto v = detail::read_stats(bus, db);
      if (stats_json) {
        std::fputs(detail::stats_json(v, c.outbox_alert_after).c_str(), stdout);
      } else {
        std::printf("\033[H\033[2J%s  (every %.1f s; Ctrl-C stops)\n",
                    detail::stats_text(v, c.outbox_alert_after, ::isatty(1) != 0).c_str(), stats_every_s);
      }
      std::fflush(stdout);
    } while (wait_for(signals.token(), every));
    return 0;
  }

  int listeners(const setup_function& setup) {
    const worker_config& c = config;
    event_bus local{c.bus};  // the listeners' names, without a queue
    app a{local, c, "listeners"};
    setup(a);
    pqxx::connection db{c.database_url};
    const auto paused = list_paused_listeners(db, c.bus.schema);
    auto registered = [&](const std::string& name) {
      for (const auto& l : local.async_listeners()) {
        if (l.name == name) return true;
      }
      return false;
    };
    if (listeners_losses->parsed()) return losses(db, local);
    if (listeners_list->parsed()) {
      // Workers not heard from for this long are gone (killed): their rows are leftovers.
      const auto reports = list_listener_reports(db, c.bus.schema, std::chrono::seconds(15));
      const auto lost = list_lost_events(db, c.bus.schema, true);
      for (const auto& l : local.async_listeners()) {
        std::uint64_t n = 0;
        const std::vector<std::string> mine = l.consumer_names();  // a per-key listener's: one per partition
        for (const auto& x : lost) n += std::find(mine.begin(), mine.end(), x.consumer) != mine.end() ? x.events : 0;
        const std::string lost_note =
            n > 0 ? "; LOST " + std::to_string(n) + " event(s) unhandled (listeners losses)" : std::string();
        const paused_listener* p = nullptr;
        for (const auto& x : paused) p = x.listener == l.name ? &x : p;
        if (p != nullptr) {
          std::printf("%-24s PAUSED by hand since %s UTC: %s%s\n", l.name.c_str(), when(p->since).c_str(),
                      shown(p->reason).c_str(), lost_note.c_str());
          continue;
        }
        std::printf("%-24s %s%s\n", l.name.c_str(), flow_summary(l.name, reports).c_str(), lost_note.c_str());
      }
      for (const auto& p : paused) {
        if (!registered(p.listener)) {
          std::printf("%-24s paused, but no listener of this build has that name (renamed?)\n", shown(p.listener).c_str());
        }
      }
      return 0;
    }
    if (!registered(listener)) {
      std::string names;
      for (const auto& l : local.async_listeners()) names += (names.empty() ? "" : ", ") + l.name;
      throw config_error("no listener named '" + shown(listener) + "' in this build; its listeners: " + names);
    }
    if (listeners_pause->parsed()) {
      const bool fresh = pause_listener(db, c.bus.schema, listener, pause_reason);
      std::printf("%s %s: every worker stops fetching it within a second or two; its events wait in the stream\n",
                  fresh ? "paused" : "already paused (reason updated):", listener.c_str());
      return 0;
    }
    if (!resume_listener(db, c.bus.schema, listener)) throw error("listener " + listener + " is not paused");
    std::printf("resumed %s: every worker fetches it again within a second or two\n", listener.c_str());
    return 0;
  }

  // listeners losses [listener] [--acknowledge]
  int losses(pqxx::connection& db, const event_bus& local) {
    const worker_config& c = config;
    // This group's consumers only: another group may share the schema. A per-key listener
    // has one per partition.
    std::vector<std::string> consumers;
    for (const auto& l : local.async_listeners()) {
      if (!listener.empty() && l.name != listener) continue;
      for (std::string& name : l.consumer_names()) consumers.push_back(std::move(name));
    }
    if (!listener.empty() && consumers.empty()) {
      throw config_error("no listener named '" + shown(listener) + "' in this build");
    }
    if (acknowledge_losses) {
      std::size_t n = 0;
      for (const auto& consumer : consumers) n += acknowledge_lost_events(db, c.bus.schema, consumer);
      std::printf("acknowledged %zu loss record(s)%s; they stay listed, and /readyz no longer fails for them\n", n,
                  listener.empty() ? "" : (" of " + listener).c_str());
      return 0;
    }
    std::size_t shown_rows = 0;
    for (const auto& r : list_lost_events(db, c.bus.schema, false)) {
      if (std::find(consumers.begin(), consumers.end(), r.consumer) == consumers.end()) continue;
      ++shown_rows;
      std::printf("%-24s %llu event(s) among stream sequences %llu..%llu, found %s UTC%s\n", shown(r.listener).c_str(),
                  static_cast<unsigned long long>(r.events), static_cast<unsigned long long>(r.first_sequence),
                  static_cast<unsigned long long>(r.last_sequence), when(r.detected_at).c_str(),
                  r.acknowledged_at ? (", acknowledged " + when(*r.acknowledged_at) + " UTC").c_str() : "  UNACKNOWLEDGED");
    }
    if (shown_rows == 0) std::printf("no events left the stream before their listener handled them\n");
    return 0;
  }

  int stream(bool info, const setup_function& setup) {
    const worker_config& c = config;
    if (!info && !purge_confirmed && !purge_handled) {
      throw config_error("stream purge deletes every event in the stream, including those no listener has "
                         "handled yet: add --yes to confirm, or --handled to delete only handled events");
    }
    if (!info && purge_confirmed && purge_handled) throw config_error("stream purge: --handled or --yes, not both");
    nats_connection nats{c.nats};
    jetstream js{nats};
    const auto st = js.state(c.bus.stream);
    const double by_bytes = st->max_bytes > 0 ? 100.0 * static_cast<double>(st->bytes) / static_cast<double>(st->max_bytes) : 0;
    const double by_count =
        st->max_msgs > 0 ? 100.0 * static_cast<double>(st->messages) / static_cast<double>(st->max_msgs) : 0;
    if (info) {
      std::printf("stream %s: %llu event(s), %llu of %lld bytes (%.1f%% full), sequences %llu..%llu\n",
                  c.bus.stream.name.c_str(), static_cast<unsigned long long>(st->messages),
                  static_cast<unsigned long long>(st->bytes), static_cast<long long>(st->max_bytes),
                  std::max(by_bytes, by_count), static_cast<unsigned long long>(st->first_sequence),
                  static_cast<unsigned long long>(st->last_sequence));
      if (st->max_msgs > 0) std::printf("  at most %lld events (%.1f%% used)\n", static_cast<long long>(st->max_msgs), by_count);
      if (st->replicas > 1) {
        std::printf("  %d replicas; led by %s\n", st->replicas, st->leader.empty() ? "(no leader: an election)" : st->leader.c_str());
      }
      std::printf("  publishers stop at %.0f%% (hold_above); `stream purge --handled` makes room without losing events\n",
                  c.bus.stream.hold_above * 100);
      return 0;
    }
    if (purge_handled) {
      // A listener whose consumer is missing (not provisioned yet, mid-replay) has handled
      // nothing the stream can tell: purging now could take its events.
      event_bus local{c.bus};
      app a{local, c, "stream purge"};
      setup(a);
      for (const auto& l : local.async_listeners()) {
        if (!js.info(c.bus.stream, l.consumer_name)) {
          throw error("listener " + l.name + " has no consumer " + l.consumer_name + " on stream " + c.bus.stream.name +
                      " (not provisioned yet, or a replay is recreating it): nothing purged");
        }
      }
      const std::uint64_t below = handled_by_all(js, c.bus.stream);
      js.purge_before(c.bus.stream, below);
      const auto now = js.state(c.bus.stream);
      std::printf("purged stream %s below sequence %llu (every consumer handled all before it): %llu event(s) "
                  "removed, %llu left\n",
                  c.bus.stream.name.c_str(), static_cast<unsigned long long>(below),
                  static_cast<unsigned long long>(st->messages > now->messages ? st->messages - now->messages : 0),
                  static_cast<unsigned long long>(now->messages));
      return 0;
    }
    js.purge_stream(c.bus.stream);
    std::printf("purged stream %s: %llu event(s) removed; outbox relays send their waiting rows now\n",
                c.bus.stream.name.c_str(), static_cast<unsigned long long>(st->messages));
    return 0;
  }

  int consumers(const setup_function& setup) {
    const worker_config& c = config;
    nats_connection nats{c.nats};
    jetstream js{nats};
    event_bus bus{js, c.bus};
    app a{bus, c, consumers_list->parsed() ? "consumers list" : consumers_prune->parsed() ? "consumers prune" : "consumers replay"};
    setup(a);
    if (consumers_replay->parsed()) return replay(bus);
    if (consumers_list->parsed()) {
      std::printf("%-32s %-16s %-8s %-32s %-8s %-11s\n", "consumer", "group", "owned", "filter", "pending", "ack pending");
      for (const auto& s : list_consumers(bus)) {
        std::printf("%-32s %-16s %-8s %-32s %-8llu %-11llu\n", s.info.name.c_str(),
                    s.info.group.empty() ? "?" : s.info.group.c_str(), s.owned ? "yes" : "NO",
                    s.info.filter_subject.c_str(), static_cast<unsigned long long>(s.info.pending),
                    static_cast<unsigned long long>(s.info.ack_pending));
      }
      return 0;
    }
    // Deleting a consumer loses its place in the stream: say what would go, and ask first.
    const bool deleting = prune_confirmed && !dry_run;
    auto pruned = prune_consumers(bus, !deleting);
    for (const auto& n : pruned) std::printf("%s %s\n", deleting ? "deleted" : "would delete", n.c_str());
    std::printf("%zu consumer(s) %s\n", pruned.size(), deleting ? "pruned" : "to prune");
    if (!deleting && !dry_run && !pruned.empty()) {
      throw config_error("consumers prune deletes the consumers listed above with their place in the stream: add "
                         "--yes to confirm");
    }
    return 0;
  }

  int replay(const event_bus& bus) {
    replay_request r;
    r.listener = listener;
    r.keep_inbox = replay_keep_inbox;
    if (!replay_from.empty()) {
      try {
        r.from_time = std::chrono::time_point_cast<std::chrono::system_clock::duration>(parse_time(replay_from));
      } catch (const std::exception&) {
        throw config_error("--from '" + shown(replay_from) + "' is not an RFC 3339 UTC time (2026-11-01T00:00:00Z)");
      }
    } else if (consumers_replay->count("--from-seq") > 0) {
      r.from_sequence = replay_from_seq;
    } else {
      throw config_error("consumers replay needs --from TIME or --from-seq N");
    }
    if (std::none_of(bus.async_listeners().begin(), bus.async_listeners().end(),
                     [&](const async_listener& l) { return l.name == listener; })) {
      std::string names;
      for (const auto& l : bus.async_listeners()) names += (names.empty() ? "" : ", ") + l.name;
      throw config_error("no listener named '" + shown(listener) + "' in this build; its listeners: " + names);
    }
    const replay_plan plan = plan_replay(bus, r);
    std::printf("listener %s: %llu event(s) to deliver again%s\n", listener.c_str(),
                static_cast<unsigned long long>(plan.events),
                r.keep_inbox ? " (its inbox skips those it handled)" : ", its inbox rows from that point deleted");
    if (!replay_confirmed) {
      throw config_error("consumers replay recreates the listener's consumer: add --yes to confirm");
    }
    pqxx::connection db{config.database_url};
    (void)replay_listener(bus, db, r);
    std::printf("replaying %s: its consumer delivers from the requested point, and every worker fetches it again\n",
                listener.c_str());
    return 0;
  }

  // dead-letters retry|discard with a filter: a dry run, or a redrive carried out here (or by
  // the workers, with --background).
  int redrive(pqxx::connection_base& db, redrive_action action, const setup_function& setup) {
    const worker_config& c = config;
    dead_letter_filter f;
    f.listener = f_listener;
    f.event_name = f_event;
    f.error_like = f_error_like;
    try {
      if (!f_since.empty()) f.since = parse_iso8601(f_since);
      if (!f_until.empty()) f.until = parse_iso8601(f_until);
    } catch (const std::invalid_argument& e) {
      throw config_error(std::string("--since/--until: ") + e.what());
    }
    if (!std::isfinite(redrive_rate) || redrive_rate < 0 || (redrive_rate > 0 && redrive_rate < 0.001) || redrive_rate > 1e6) {
      throw config_error("--rate must be 0 (no limit) or from 0.001 to 1000000 per second");
    }
    const std::string verb{to_string(action)};
    const bool unfiltered = f.listener.empty() && f.event_name.empty() && f.error_like.empty() && !f.since && !f.until;
    if (!retry_all && unfiltered) {
      throw config_error("dead-letters " + verb + ": give an id, a filter (--listener, --event, --error-like, --since, "
                         "--until), or --all");
    }
    const std::uint64_t matching = count_dead_letters(db, c.bus.schema, f);
    if (dry_run) {
      std::printf("dry run: this would %s %llu dead letter(s) (%s)%s\n", verb.c_str(), static_cast<unsigned long long>(matching),
                  f.describe().c_str(),
                  redrive_rate > 0 ? (" at " + std::to_string(redrive_rate) + " per second").c_str() : "");
      return 0;
    }
    if (unfiltered && !retry_confirmed) {
      throw config_error("dead-letters " + verb + " --all with no filter takes every dead letter of every listener (" +
                         std::to_string(matching) + " now): add --yes to confirm, or narrow it");
    }
    redrive_request request;
    request.filter = f;
    request.action = action;
    request.rate = redrive_rate;
    request.requested_by = operator_name();
    const redrive_status started = start_redrive(db, c.bus.schema, request);
    std::printf("redrive %lld: %s %llu dead letter(s) (%s)\n", static_cast<long long>(started.id), verb.c_str(),
                static_cast<unsigned long long>(started.total), started.filter.c_str());
    if (redrive_background) {
      std::printf("left to the workers: follow it with dead-letters redrives show %lld\n", static_cast<long long>(started.id));
      return 0;
    }
    return carry_out(db, started.id, setup);
  }

  // Runs redrive `id` here until it is done, paused or cancelled (or SIGINT: it stays running
  // for the workers to carry on), printing its progress. While another process (a worker) runs
  // it, follows that one's progress, and takes over should it stop.
  int carry_out(pqxx::connection_base& db, std::int64_t redrive_id, const setup_function& setup) {
    const worker_config& c = config;
    signal_stop signals;
    event_bus local{c.bus};  // the listeners, without a queue: retries run here, alone
    app a{local, c, "dead-letters redrive"};
    setup(a);
    auto last = std::chrono::steady_clock::now();
    auto show = [&](const redrive_status& s, const char* where) {
      if (std::chrono::steady_clock::now() - last < std::chrono::seconds(1)) return;
      last = std::chrono::steady_clock::now();
      std::printf("redrive %lld: %llu of %llu done%s\n", static_cast<long long>(s.id),
                  static_cast<unsigned long long>(s.total - s.pending), static_cast<unsigned long long>(s.total), where);
      std::fflush(stdout);
    };
    redrive_status end;
    for (;;) {
      end = run_redrive(local, db, redrive_id, signals.token(), [&](const redrive_status& s) { show(s, ""); });
      if (end.state != "running" || !end.busy || signals.token().stop_requested()) break;
      show(end, " (by another process)");
      if (!wait_for(signals.token(), std::chrono::seconds(1))) break;
    }
    print_redrive(end);
    if (end.state == "running" && end.skipped > 0) {
      std::printf("%llu dead letter(s) wait for a process with their listener, or one retrying it by hand to finish\n",
                  static_cast<unsigned long long>(end.skipped));
    } else if (end.state == "running" && end.pending > 0) {
      std::printf("stopped here; it stays running: a worker (or dead-letters redrives run %lld) carries it on\n",
                  static_cast<long long>(end.id));
    }
    return end.failed == 0 && end.interrupted == 0 ? 0 : exit_failure;
  }

  int database_command(const setup_function& setup) {
    const worker_config& c = config;
    pqxx::connection db{c.database_url};
    if (mig_apply->parsed()) {
      std::printf("schema %s is at version %d\n", c.bus.schema.c_str(), migrate(db, c.bus.schema));
      return 0;
    }
    if (dl_list->parsed()) {
      print_letters(list_dead_letters(db, c.bus.schema, f_listener, f_event, limit));
      return 0;
    }
    if (dl_show->parsed()) {
      auto dl = find_dead_letter(db, c.bus.schema, id);
      if (!dl) throw error("no dead letter " + std::to_string(id));
      print_letter(*dl);
      return 0;
    }
    const bool bulk_retry = dl_retry->parsed() && retry_id->count() == 0;
    const bool bulk_discard = dl_discard->parsed() && discard_id->count() == 0;
    if (bulk_retry || bulk_discard) return redrive(db, bulk_retry ? redrive_action::retry : redrive_action::discard, setup);
    if (dl_discard->parsed()) {
      if (!discard_dead_letter(db, c.bus.schema, id)) throw error("no dead letter " + std::to_string(id));
      std::printf("discarded dead letter %lld\n", static_cast<long long>(id));
      return 0;
    }
    if (dl_retry->parsed()) {
      event_bus local{c.bus};  // the listeners, without a queue: retries run here, alone
      app a{local, c, "dead-letters retry"};
      setup(a);
      return report({retry_dead_letter(local, db, id)});
    }
    if (rd_list->parsed()) {
      const auto all = list_redrives(db, c.bus.schema, limit);
      for (const auto& r : all) print_redrive(r);
      std::printf("%zu redrive(s)\n", all.size());
      return 0;
    }
    if (rd_show->parsed()) {
      const auto r = find_redrive(db, c.bus.schema, id);
      if (!r) throw error("no redrive " + std::to_string(id));
      print_redrive(*r);
      return 0;
    }
    if (rd_pause->parsed() || rd_resume->parsed() || rd_cancel->parsed()) {
      const char* state = rd_pause->parsed() ? "paused" : rd_resume->parsed() ? "running" : "cancelled";
      print_redrive(set_redrive_state(db, c.bus.schema, id, state, operator_name()));
      return 0;
    }
    if (rd_run->parsed()) return carry_out(db, id, setup);
    if (partitions_cmd->parsed()) {
      const auto leases = list_partition_leases(db, c.bus.schema);
      for (const auto& l : leases) {
        std::printf("%s partition %d: %s\n", l.listener.c_str(), l.partition,
                    l.owner.empty() ? "free"
                                    : (shown(l.owner) + " epoch " + std::to_string(l.epoch) + (l.live ? " (live)" : " (expired)"))
                                          .c_str());
      }
      std::printf("%zu partition(s)\n", leases.size());
      return 0;
    }
    if (parked_list->parsed()) {
      auto all = list_parked(db, c.bus.schema);
      for (const auto& p : all) {
        std::printf("%s: parked at %s %s (stream sequence %llu) after %d attempt(s): %s%s\n", p.listener.c_str(),
                    shown(p.event_name).c_str(), shown(p.event_id).c_str(), static_cast<unsigned long long>(p.stream_sequence),
                    p.attempts, shown(p.error).c_str(), p.action.empty() ? "" : (" [" + p.action + " requested]").c_str());
      }
      const auto keys = list_parked_keys(db, c.bus.schema);
      for (const auto& k : keys) {
        std::printf("%s key %s (partition %d): parked at %s %s after %d attempt(s): %s; %lld event(s) wait%s\n",
                    k.listener.c_str(), shown(k.key).c_str(), k.partition, shown(k.event_name).c_str(),
                    shown(k.first_event_id).c_str(), k.attempts, shown(k.error).c_str(), static_cast<long long>(k.waiting),
                    k.action.empty() ? "" : (" [" + k.action + " requested]").c_str());
      }
      std::printf("%zu parked listener(s), %zu parked key(s)\n", all.size(), keys.size());
      return 0;
    }
    if (!parked_key_arg.empty() || parked_discard->parsed()) {  // a per-key listener's key
      const std::string action = parked_retry->parsed() ? "retry" : parked_skip->parsed() ? "skip" : "discard";
      const auto keys = list_parked_keys(db, c.bus.schema, listener);
      const auto it = std::find_if(keys.begin(), keys.end(), [&](const parked_key& k) { return k.key == parked_key_arg; });
      if (it == keys.end()) throw error("listener " + listener + " has no parked key " + shown(parked_key_arg));
      if (action == "discard" && !discard_confirmed) {
        std::printf("would drop the %lld parked event(s) of key %s of %s and release the key; add --yes to do it\n",
                    static_cast<long long>(it->waiting), shown(parked_key_arg).c_str(), listener.c_str());
        return 2;
      }
      if (!request_parked_key_action(db, c.bus.schema, listener, parked_key_arg, action)) {
        throw error("listener " + listener + " has no parked key " + shown(parked_key_arg));
      }
      std::printf("%s requested for key %s of %s (%lld event(s)): the worker holding partition %d carries it out within "
                  "a heartbeat\n", action.c_str(), shown(parked_key_arg).c_str(), listener.c_str(),
                  static_cast<long long>(it->waiting), it->partition);
      return 0;
    }
    // parked retry / skip
    const std::string action = parked_retry->parsed() ? "retry" : "skip";
    if (!request_parked_action(db, c.bus.schema, listener, action)) throw error("listener " + listener + " is not parked");
    std::printf("%s requested for %s: a worker acts on it within its parked poll\n", action.c_str(), listener.c_str());
    return 0;
  }

  // schedules preview EXPR [--tz ZONE] [--from TIME] [--count N]
  int preview() {
    if (sched_count < 1 || sched_count > 100000) throw config_error("schedules preview --count must be 1 to 100000");
    std::optional<cron> expr;
    try {
      expr.emplace(sched_expression, sched_zone);
    } catch (const cron_error& e) {
      throw config_error(e.what());
    }
    std::chrono::system_clock::time_point t = std::chrono::system_clock::now();
    if (!sched_from.empty()) {
      try {
        t = parse_iso8601(sched_from);
      } catch (const std::invalid_argument& e) {
        throw config_error(std::string("--from: ") + e.what());
      }
    }
    for (int i = 0; i < sched_count; ++i) {
      const auto next = expr->next(t);
      if (!next) break;
      std::printf("%s\n", to_iso8601(*next).c_str());
      t = *next;
    }
    return 0;
  }

  int schedules(const setup_function& setup) {
    const worker_config& c = config;
    event_bus local{c.bus};  // the recurring schedules of this build, without a queue
    app a{local, c, "schedules"};
    setup(a);
    pqxx::connection db{c.database_url};
    const auto parse_id = [&] {
      try {
        return event_id::parse(sched_id);
      } catch (const std::exception&) {
        throw config_error("'" + shown(sched_id) + "' is not a schedule id (a UUID, as schedules list shows)");
      }
    };
    if (sched_show->parsed()) {
      const auto e = find_scheduled(db, c.bus.schema, parse_id());
      if (!e) throw error("no pending scheduled event " + sched_id + " (it fired, was cancelled, or never existed)");
      std::printf("id:          %s\nevent:       %s\ndue:         %s\nscheduled:   %s\nunique key:  %s\nsubject:     %s\n"
                  "headers:\n",
                  e->id.to_string().c_str(), shown(e->event_name).c_str(), to_iso8601(e->due_at).c_str(),
                  to_iso8601(e->created_at).c_str(), e->unique_key.empty() ? "-" : shown(e->unique_key).c_str(),
                  shown(e->subject).c_str());
      std::string_view h = e->headers;
      while (!h.empty()) {
        const auto end = h.find("\r\n");
        std::printf("  %s\n", shown(h.substr(0, end)).c_str());
        h = end == std::string_view::npos ? std::string_view{} : h.substr(end + 2);
      }
      std::printf("body (%zu bytes):", e->body.size());
      for (std::size_t i = 0; i < e->body.size(); ++i) {
        std::printf("%s%02x", i % 32 == 0 ? "\n  " : " ", static_cast<unsigned char>(e->body[i]));
      }
      std::printf("\n");
      return 0;
    }
    if (sched_cancel->parsed()) {
      if (!local.cancel(db, parse_id())) {
        throw error("no pending scheduled event " + sched_id + " (it fired, was cancelled, or never existed)");
      }
      std::printf("cancelled %s: it will not fire\n", sched_id.c_str());
      return 0;
    }
    if (sched_trigger->parsed()) {
      event_id id;
      spdlog::default_logger()->set_level(spdlog::level::err);  // its "no relay here" warning: said below, plainly
      try {
        id = trigger_recurring(db, local, sched_name);
      } catch (const std::invalid_argument& e) {
        throw config_error(e.what());
      }
      std::printf("triggered %s: event %s is in the outbox; %s\n", sched_name.c_str(), id.to_string().c_str(),
                  read_bus_state(db, c.bus.schema).relay_active
                      ? "the active relay publishes it"
                      : "no worker holds the relay lock now: it is published when one runs");
      return 0;
    }
    if (sched_pause->parsed() || sched_resume->parsed()) {
      const bool pause = sched_pause->parsed();
      if (!set_recurring_paused(db, c.bus.schema, sched_name, pause)) {
        throw error("no recurring schedule " + shown(sched_name) + " is registered in schema " + c.bus.schema +
                    " (a worker registers its schedules when it starts)");
      }
      std::printf("%s %s: every worker obeys within a second%s\n", pause ? "paused" : "resumed", sched_name.c_str(),
                  pause ? "" : "; its missed policy decides what it fires for the paused time");
      return 0;
    }
    // list
    scheduled_filter f;
    f.limit = limit;
    f.unique_key = sched_key;
    if (!sched_due_before.empty()) {
      try {
        f.due_before = parse_iso8601(sched_due_before);
      } catch (const std::invalid_argument& e) {
        throw config_error(std::string("--due-before: ") + e.what());
      }
    }
    const auto events = list_scheduled(db, c.bus.schema, f);
    const auto counts = count_scheduled(db, c.bus.schema);
    const auto recurring = list_recurring(db, c.bus.schema);
    const auto opt_time = [](const std::optional<std::chrono::system_clock::time_point>& t) {
      return t ? to_iso8601(*t) : std::string();
    };
    const auto in_build = [&](const std::string& name) {
      for (const auto& r : local.schedules()) {
        if (r.name == name) return true;
      }
      return false;
    };
    if (stats_json) {
      std::string out = "{\"pending\":" + std::to_string(counts.pending) + ",\"due\":" + std::to_string(counts.due) +
                        ",\"scheduled\":[";
      for (std::size_t i = 0; i < events.size(); ++i) {
        const auto& e = events[i];
        out += (i ? "," : "") + std::string("{\"id\":\"") + e.id.to_string() + "\",\"event\":" +
               detail::json_quote(e.event_name) + ",\"due_at\":\"" + to_iso8601(e.due_at) + "\",\"created_at\":\"" +
               to_iso8601(e.created_at) + "\",\"unique_key\":" + detail::json_quote(e.unique_key) + "}";
      }
      out += "],\"recurring\":[";
      for (std::size_t i = 0; i < recurring.size(); ++i) {
        const auto& r = recurring[i];
        out += (i ? "," : "") + std::string("{\"name\":") + detail::json_quote(r.name) + ",\"expression\":" +
               detail::json_quote(r.expression) + ",\"zone\":" + detail::json_quote(r.zone) + ",\"event\":" +
               detail::json_quote(r.event_name) + ",\"paused\":" + (r.paused ? "true" : "false") +
               ",\"next_fire_at\":" + detail::json_quote(opt_time(r.next_fire_at)) + ",\"last_fired_at\":" +
               detail::json_quote(opt_time(r.last_fired_at)) + ",\"last_result\":" + detail::json_quote(r.last_result) +
               ",\"registered\":" + (in_build(r.name) ? "true" : "false") + "}";
      }
      out += "]}\n";
      std::fputs(out.c_str(), stdout);
      return 0;
    }
    std::printf("%llu scheduled event(s) pending, %llu of them due now%s\n",
                static_cast<unsigned long long>(counts.pending), static_cast<unsigned long long>(counts.due),
                counts.due > 0 ? " (a worker's scheduler moves them to the outbox)" : "");
    if (!events.empty()) {
      std::printf("%-36s %-24s %-27s %s\n", "id", "event", "due (UTC)", "unique key");
      for (const auto& e : events) {
        std::printf("%-36s %-24s %-27s %s\n", e.id.to_string().c_str(), shown(e.event_name).c_str(),
                    to_iso8601(e.due_at).c_str(), e.unique_key.empty() ? "-" : shown(e.unique_key).c_str());
      }
      if (events.size() == limit) std::printf("(the first %zu; --limit shows more)\n", limit);
    }
    std::printf("%zu recurring schedule(s)\n", recurring.size());
    for (const auto& r : recurring) {
      std::printf("%-24s \"%s\" %s%s\n  next %s, last fired %s: %s%s\n", shown(r.name).c_str(), shown(r.expression).c_str(),
                  shown(r.zone).c_str(), r.paused ? "  PAUSED" : "",
                  r.next_fire_at ? to_iso8601(*r.next_fire_at).c_str() : "never",
                  r.last_fired_at ? to_iso8601(*r.last_fired_at).c_str() : "never",
                  r.last_result.empty() ? "-" : shown(r.last_result).c_str(),
                  in_build(r.name) ? "" : "  (not registered by this build: renamed or removed?)");
    }
    return 0;
  }

  int user_command(const user_command& u, const setup_function& setup) {
    const worker_config& c = config;
    nats_connection nats{c.nats};
    jetstream js{nats};
    event_bus bus{js, c.bus};
    app a{bus, c, u.sub->get_name()};
    setup(a);
    return u.fn(a);
  }

  int dispatch(const setup_function& setup) {
    if (mig_sql->parsed()) {
      try {
        check_schema_name(config.bus.schema);
      } catch (const std::invalid_argument& e) {
        throw config_error(e.what());
      }
      std::fputs(migrations_sql(config.bus.schema).c_str(), stdout);
      return 0;
    }
    if (sched_preview->parsed()) return preview();
    const bool needs_database = !stream_cmd->parsed() && !consumers_list->parsed() && !consumers_prune->parsed();
    bool user = false;
    for (const auto& u : commands) user = user || u.sub->parsed();
    finish(needs_database && !user);
    if (run_cmd->parsed()) return run(setup);
    if (stats_cmd->parsed()) return stats(setup);
    if (listeners_cmd->parsed()) return listeners(setup);
    if (schedules_cmd->parsed()) return schedules(setup);
    if (stream_info->parsed() || stream_purge->parsed()) return stream(stream_info->parsed(), setup);
    if (consumers_list->parsed() || consumers_prune->parsed() || consumers_replay->parsed()) return consumers(setup);
    for (const auto& u : commands) {
      if (u.sub->parsed()) return user_command(u, setup);
    }
    return database_command(setup);
  }
};

worker_program::worker_program(std::string name, std::string description)
    : impl_(std::make_unique<impl>(std::move(name), description)) {}
worker_program::~worker_program() = default;

CLI::App& worker_program::cli() { return impl_->cli; }
CLI::App& worker_program::run_command() { return *impl_->run_cmd; }
worker_config& worker_program::config() { return impl_->config; }
void worker_program::validate(std::function<void(const worker_config&)> check) { impl_->checks.push_back(std::move(check)); }

CLI::App& worker_program::add_command(const std::string& name, const std::string& description,
                                      std::function<int(app&)> fn) {
  CLI::App* sub = impl_->cli.add_subcommand(name, description);
  impl_->commands.push_back({sub, std::move(fn)});
  return *sub;
}

int worker_program::main(int argc, char** argv, setup_function setup) {
  try {
    impl_->cli.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return impl_->cli.exit(e);
  }
  const char* name = impl_->name.c_str();
  try {
    return impl_->dispatch(setup);
  } catch (const config_error& e) {
    std::fprintf(stderr, "%s: %s\n", name, e.what());
    return exit_config;
  } catch (const pqxx::broken_connection&) {
    // libpq's text can repeat parts of the connection string; say what failed without it.
    std::fprintf(stderr, "%s: cannot connect to PostgreSQL (check --database-url / OMNIBUS_DATABASE_URL)\n", name);
    return exit_failure;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", name, e.what());
    return exit_failure;
  }
}

int worker_main(int argc, char** argv, setup_function setup) { return worker_program{}.main(argc, argv, std::move(setup)); }

}  // namespace omnibus
