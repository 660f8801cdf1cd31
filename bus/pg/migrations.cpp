#include "omnibus/migrations.hpp"

#include <array>
#include <stdexcept>

#include <pqxx/pqxx>

#include "omnibus/error.hpp"
#include "omnibus/event_bus.hpp"
#include "core/schema.hpp"

namespace omnibus {
namespace {

struct migration {
  int version;
  const char* description;
  const char* sql;  // "{s}" stands for the schema
};

// Append only: a released migration never changes.
constexpr std::array migrations{
    migration{1, "outbox",
              "CREATE TABLE {s}.bus_outbox (\n"
              "  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- insertion order, never the UUID's clock\n"
              "  event_id uuid NOT NULL,\n"
              "  subject text NOT NULL,\n"
              "  headers text NOT NULL,  -- 'Name: value' lines joined by CR LF, as in a NATS header block\n"
              "  body bytea NOT NULL,\n"
              "  created_at timestamptz NOT NULL DEFAULT now()\n"
              ");\n"},
    migration{2, "dead letters and failure history",
              "CREATE TABLE {s}.bus_dead_letters (\n"
              "  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n"
              "  listener text NOT NULL,\n"
              "  event_id text NOT NULL,  -- Nats-Msg-Id as received; 'seq:<n>' for a message without one\n"
              "  event_name text,         -- the Omnibus-Event header, when there was one\n"
              "  subject text NOT NULL,\n"
              "  headers text NOT NULL,\n"
              "  body bytea NOT NULL,\n"
              "  reason text NOT NULL,    -- handler_failed, permanent, malformed_body, name_mismatch, ...\n"
              "  error text NOT NULL,\n"
              "  attempts int NOT NULL,\n"
              "  first_failed_at timestamptz NOT NULL,\n"
              "  last_failed_at timestamptz NOT NULL,\n"
              "  stream_sequence bigint,\n"
              "  UNIQUE (listener, event_id)\n"
              ");\n"
              "CREATE TABLE {s}.bus_failures (  -- events whose listener failed and will be retried\n"
              "  listener text NOT NULL,\n"
              "  event_id text NOT NULL,\n"
              "  failures int NOT NULL DEFAULT 1,\n"
              "  first_failed_at timestamptz NOT NULL DEFAULT now(),\n"
              "  last_failed_at timestamptz NOT NULL DEFAULT now(),\n"
              "  last_error text NOT NULL,\n"
              "  PRIMARY KEY (listener, event_id)\n"
              ");\n"},
    migration{3, "parked ordered listeners",
              "CREATE TABLE {s}.bus_parked (  -- an ordered listener stopped at an event that ran out of attempts\n"
              "  listener text PRIMARY KEY,\n"
              "  event_id text NOT NULL,\n"
              "  event_name text,\n"
              "  stream_sequence bigint,\n"
              "  error text NOT NULL,\n"
              "  attempts int NOT NULL,\n"
              "  parked_at timestamptz NOT NULL DEFAULT now(),\n"
              "  action text CHECK (action IN ('retry', 'skip'))  -- requested by an operator; NULL: stay parked\n"
              ");\n"},
    migration{4, "inbox",
              "CREATE TABLE {s}.bus_inbox (  -- events an inbox listener has handled, committed with its effects\n"
              "  listener text NOT NULL,\n"
              "  event_id uuid NOT NULL,\n"
              "  handled_at timestamptz NOT NULL DEFAULT now(),  -- the database's clock: pruning uses it\n"
              "  PRIMARY KEY (listener, event_id)\n"
              ");\n"
              "CREATE INDEX bus_inbox_handled_at ON {s}.bus_inbox (handled_at);\n"},
    migration{5, "dead letters keep the exact bytes producers sent",
              "-- Headers are bytes from producers: text refuses invalid UTF-8 and NUL, bytea does not.\n"
              "ALTER TABLE {s}.bus_dead_letters ALTER COLUMN headers TYPE bytea USING convert_to(headers, 'UTF8');\n"
              "-- The header block as stored in the stream, for a message whose header block did not parse.\n"
              "ALTER TABLE {s}.bus_dead_letters ADD COLUMN raw_headers bytea;\n"},
    migration{6, "listeners paused by an operator",
              "CREATE TABLE {s}.bus_paused (  -- a paused listener fetches nothing; its events wait in the stream\n"
              "  listener text PRIMARY KEY,\n"
              "  reason text NOT NULL,\n"
              "  paused_at timestamptz NOT NULL DEFAULT now()\n"
              ");\n"},
    migration{7, "flow control: shared rate limits, and what each worker reports of its listeners",
              "CREATE TABLE {s}.bus_rate_limits (  -- a token bucket per rate-limited listener, shared by its workers\n"
              "  listener text PRIMARY KEY,\n"
              "  tokens double precision NOT NULL,\n"
              "  refreshed_at timestamptz NOT NULL,\n"
              "  last_taken int NOT NULL DEFAULT 0  -- what the last draw took, for its RETURNING\n"
              ");\n"
              "CREATE TABLE {s}.bus_listener_states (  -- rewritten by each running worker every control poll\n"
              "  listener text NOT NULL,\n"
              "  worker text NOT NULL,  -- host:pid\n"
              "  state text NOT NULL,\n"
              "  reason text NOT NULL DEFAULT '',\n"
              "  since timestamptz NOT NULL,\n"
              "  reported_at timestamptz NOT NULL DEFAULT now(),\n"
              "  PRIMARY KEY (listener, worker)\n"
              ");\n"},
    migration{8, "events that left the stream before their listener handled them",
              "CREATE TABLE {s}.bus_stream_marks (  -- each listener's position, as a worker last checked it\n"
              "  consumer text PRIMARY KEY,\n"
              "  listener text NOT NULL,\n"
              "  consumer_created timestamptz,  -- the consumer these counts belong to: a replay makes a new one\n"
              "  lowest_unhandled bigint NOT NULL,  -- stream sequence; everything of the listener below it was handled\n"
              "  pending bigint NOT NULL,  -- the listener's events not yet delivered, up to last_sequence\n"
              "  deliveries bigint NOT NULL,  -- the consumer's deliveries so far\n"
              "  last_sequence bigint NOT NULL,  -- the stream's last sequence when checked\n"
              "  checks bigint NOT NULL DEFAULT 0,  -- bumped by every check: a check stores only over the row it read\n"
              "  checked_at timestamptz NOT NULL\n"
              ");\n"
              "CREATE TABLE {s}.bus_lost_events (  -- a listener's events that the stream dropped (max_age, limits)\n"
              "  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n"
              "  consumer text NOT NULL,\n"
              "  listener text NOT NULL,\n"
              "  first_sequence bigint NOT NULL,  -- the stream sequences they were among\n"
              "  last_sequence bigint NOT NULL,\n"
              "  events bigint NOT NULL,  -- how many of the listener's events\n"
              "  detected_at timestamptz NOT NULL DEFAULT now(),\n"
              "  acknowledged_at timestamptz  -- by an operator (listeners losses --acknowledge)\n"
              ");\n"},
    migration{9, "scheduled and recurring events",
              "CREATE TABLE {s}.bus_scheduled (  -- events to publish later: moved to the outbox when due\n"
              "  id uuid PRIMARY KEY,  -- the event's id (Nats-Msg-Id), which is also the schedule's id\n"
              "  due_at timestamptz NOT NULL,\n"
              "  event_name text NOT NULL,\n"
              "  subject text NOT NULL,\n"
              "  headers text NOT NULL,  -- as in bus_outbox\n"
              "  body bytea NOT NULL,\n"
              "  unique_key text UNIQUE,  -- at most one pending event per key; NULL: none\n"
              "  created_at timestamptz NOT NULL DEFAULT now()\n"
              ");\n"
              "CREATE INDEX bus_scheduled_due ON {s}.bus_scheduled (due_at);\n"
              "CREATE TABLE {s}.bus_recurring (  -- each recurring (cron) schedule a worker registered\n"
              "  name text PRIMARY KEY,\n"
              "  expression text NOT NULL,\n"
              "  zone text NOT NULL,\n"
              "  event_name text NOT NULL,\n"
              "  next_fire_at timestamptz,  -- the first occurrence not yet fired (or skipped)\n"
              "  last_occurrence timestamptz,  -- the last occurrence fired\n"
              "  last_fired_at timestamptz,  -- when it was fired (or triggered by hand)\n"
              "  last_event_id uuid,\n"
              "  last_result text,  -- 'fired', 'triggered', 'skipped N missed', or the error\n"
              "  paused boolean NOT NULL DEFAULT false,  -- by an operator: every worker obeys\n"
              "  updated_at timestamptz NOT NULL DEFAULT now()\n"
              ");\n"
              "CREATE TABLE {s}.bus_recurring_fired (  -- one row per fired occurrence: the once-only guard\n"
              "  name text NOT NULL,\n"
              "  occurrence timestamptz NOT NULL,  -- a manual trigger's is the time it was asked for\n"
              "  event_id uuid NOT NULL,\n"
              "  manual boolean NOT NULL DEFAULT false,\n"
              "  fired_at timestamptz NOT NULL DEFAULT now(),\n"
              "  PRIMARY KEY (name, occurrence)\n"
              ");\n"
              "CREATE INDEX bus_recurring_fired_at ON {s}.bus_recurring_fired (fired_at);\n"},
    migration{10, "bulk retries and discards of dead letters (redrives), and their audit",
              "CREATE TABLE {s}.bus_redrives (  -- one per bulk retry or discard: the audit of who did what\n"
              "  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n"
              "  action text NOT NULL CHECK (action IN ('retry', 'discard')),\n"
              "  filter text NOT NULL,  -- the filter as given, for people\n"
              "  rate double precision NOT NULL,  -- dead letters per second; 0: as fast as they go\n"
              "  requested_by text NOT NULL,\n"
              "  state text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'paused', 'cancelled', 'done')),\n"
              "  total bigint NOT NULL,  -- the dead letters matched when it was asked for: the snapshot\n"
              "  created_at timestamptz NOT NULL DEFAULT now(),\n"
              "  updated_at timestamptz NOT NULL DEFAULT now(),\n"
              "  updated_by text NOT NULL,  -- who asked for the last state change\n"
              "  finished_at timestamptz\n"
              ");\n"
              "CREATE TABLE {s}.bus_redrive_items (  -- the snapshot: each dead letter once, and what became of it\n"
              "  redrive_id bigint NOT NULL REFERENCES {s}.bus_redrives (id) ON DELETE CASCADE,\n"
              "  dead_letter_id bigint NOT NULL,\n"
              "  state text NOT NULL DEFAULT 'pending'\n"
              "    CHECK (state IN ('pending', 'started', 'ok', 'failed', 'gone', 'interrupted')),\n"
              "  error text,\n"
              "  done_at timestamptz,\n"
              "  PRIMARY KEY (redrive_id, dead_letter_id)\n"
              ");\n"
              "CREATE INDEX bus_redrive_items_pending ON {s}.bus_redrive_items (redrive_id, dead_letter_id)\n"
              "  WHERE state IN ('pending', 'started');\n"
              "CREATE INDEX bus_dead_letters_last_failed ON {s}.bus_dead_letters (last_failed_at);\n"},
    migration{11, "dead letters listed by listener or event name, newest first (the dashboard's pages)",
              "CREATE INDEX bus_dead_letters_listener_id ON {s}.bus_dead_letters (listener, id);\n"
              "CREATE INDEX bus_dead_letters_event_id_order ON {s}.bus_dead_letters (event_name, id);\n"},
    migration{12, "each listener's handler calls per minute, summed over the workers (the dashboard's rates)",
              "CREATE TABLE {s}.bus_listener_minutes (\n"
              "  listener text NOT NULL,\n"
              "  minute timestamptz NOT NULL,\n"
              "  handled bigint NOT NULL,\n"
              "  failed bigint NOT NULL,\n"
              "  PRIMARY KEY (listener, minute)\n"
              ");\n"},
    migration{13, "per-key ordering: partition leases, their audit, parked keys and their events",
              "CREATE TABLE {s}.bus_partition_leases (  -- which worker reads each partition of a per-key listener\n"
              "  listener text NOT NULL,\n"
              "  partition int NOT NULL,\n"
              "  owner text,  -- host:pid; NULL: free\n"
              "  epoch bigint NOT NULL DEFAULT 0,  -- bumped at each claim\n"
              "  claimed_at timestamptz,\n"
              "  PRIMARY KEY (listener, partition)\n"
              ");\n"
              "CREATE TABLE {s}.bus_partition_members (  -- workers alive for a listener: renewed every heartbeat\n"
              "  listener text NOT NULL,\n"
              "  owner text NOT NULL,\n"
              "  expires_at timestamptz NOT NULL,\n"
              "  PRIMARY KEY (listener, owner)\n"
              ");\n"
              "CREATE TABLE {s}.bus_partition_lease_log (  -- every claim, for audits: epochs never overlap in time\n"
              "  listener text NOT NULL,\n"
              "  partition int NOT NULL,\n"
              "  epoch bigint NOT NULL,\n"
              "  owner text NOT NULL,\n"
              "  claimed_at timestamptz NOT NULL,\n"
              "  released_at timestamptz,  -- handed back; NULL: its owner died or still holds it\n"
              "  previous_expired_at timestamptz,  -- the previous owner's membership end, when it was claimed\n"
              "  PRIMARY KEY (listener, partition, epoch)\n"
              ");\n"
              "CREATE TABLE {s}.bus_parked_keys (  -- a per-key listener's keys parked at an exhausted event\n"
              "  listener text NOT NULL,\n"
              "  key text NOT NULL,\n"
              "  partition int NOT NULL,\n"
              "  first_event_id text NOT NULL,\n"
              "  event_name text,\n"
              "  error text NOT NULL,\n"
              "  attempts int NOT NULL DEFAULT 0,\n"
              "  parked_at timestamptz NOT NULL DEFAULT now(),\n"
              "  action text CHECK (action IN ('retry', 'skip', 'discard')),  -- an operator's request; NULL: stay\n"
              "  requested_at timestamptz,\n"
              "  PRIMARY KEY (listener, key)\n"
              ");\n"
              "CREATE TABLE {s}.bus_parked_events (  -- the events of a parked key, in stream order\n"
              "  listener text NOT NULL,\n"
              "  key text NOT NULL,\n"
              "  stream_sequence bigint NOT NULL,\n"
              "  event_id text NOT NULL,\n"
              "  subject text NOT NULL,\n"
              "  headers bytea NOT NULL,\n"
              "  body bytea NOT NULL,\n"
              "  error text,  -- set on the event that failed\n"
              "  attempts int NOT NULL DEFAULT 0,\n"
              "  parked_at timestamptz NOT NULL DEFAULT now(),\n"
              "  PRIMARY KEY (listener, key, stream_sequence)\n"
              ");\n"},
};

const char* version_table_sql =
    "CREATE TABLE IF NOT EXISTS {s}.bus_schema_version (\n"
    "  version int PRIMARY KEY,\n"
    "  description text NOT NULL,\n"
    "  applied_at timestamptz NOT NULL DEFAULT now()\n"
    ");\n";

int read_version(pqxx::transaction_base& tx, std::string_view schema) {
  auto r = tx.exec_params1(
      "SELECT CASE WHEN to_regclass($1) IS NULL THEN 0 ELSE 1 END", detail::table_name(schema, "bus_schema_version"));
  if (r[0].as<int>() == 0) return 0;
  return tx.exec1(detail::with_schema("SELECT coalesce(max(version), 0) FROM {s}.bus_schema_version", schema))[0].as<int>();
}

}  // namespace

int latest_schema_version() noexcept { return migrations.back().version; }

int schema_version(pqxx::connection_base& conn, std::string_view schema) {
  check_schema_name(schema);
  pqxx::read_transaction tx{conn};
  return read_version(tx, schema);
}

int migrate(pqxx::connection_base& conn, std::string_view schema) {
  check_schema_name(schema);
  pqxx::work tx{conn};
  // Taken before anything is created: concurrent CREATE SCHEMA IF NOT EXISTS would race.
  tx.exec_params("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", "omnibus:migrate:" + std::string(schema));
  const int current = read_version(tx, schema);
  if (current > latest_schema_version()) {
    throw error("schema " + std::string(schema) + " is at version " + std::to_string(current) +
                ", newer than this build of Omnibus knows (" + std::to_string(latest_schema_version()) +
                "): upgrade Omnibus before starting this process");
  }
  tx.exec0(detail::with_schema("CREATE SCHEMA IF NOT EXISTS {s}", schema));
  tx.exec0(detail::with_schema(version_table_sql, schema));
  for (const migration& m : migrations) {
    if (m.version <= current) continue;
    tx.exec0(detail::with_schema(m.sql, schema));
    tx.exec_params0(detail::with_schema("INSERT INTO {s}.bus_schema_version (version, description) VALUES ($1, $2)", schema),
                    m.version, m.description);
  }
  tx.commit();
  return latest_schema_version();
}

std::string migrations_sql(std::string_view schema) {
  check_schema_name(schema);
  std::string out = "-- Omnibus schema, version " + std::to_string(latest_schema_version()) + ", schema " +
                    std::string(schema) + ".\n-- Generated by omnibus; apply in one transaction.\nBEGIN;\n";
  out += detail::with_schema("CREATE SCHEMA IF NOT EXISTS {s};\n", schema);
  out += detail::with_schema(version_table_sql, schema);
  for (const migration& m : migrations) {
    out += "\n-- version " + std::to_string(m.version) + ": " + m.description + "\n";
    // Guarded, so the script can run against a schema that already has some versions.
    out += "DO $omnibus$ BEGIN\n  IF NOT EXISTS (SELECT 1 FROM " + detail::with_schema("{s}", schema) +
           ".bus_schema_version WHERE version = " + std::to_string(m.version) + ") THEN\n";
    std::string body = detail::with_schema(m.sql, schema);
    out += "    EXECUTE $sql$" + body + "$sql$;\n";
    std::string quoted;  // a description is prose: its apostrophes doubled for the SQL literal
    for (const char c : std::string_view(m.description)) quoted += c == '\'' ? std::string("''") : std::string(1, c);
    out += "    INSERT INTO " + detail::with_schema("{s}", schema) + ".bus_schema_version (version, description) VALUES (" +
           std::to_string(m.version) + ", '" + quoted + "');\n  END IF;\nEND $omnibus$;\n";
  }
  out += "COMMIT;\n";
  return out;
}

}  // namespace omnibus
