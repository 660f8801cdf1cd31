#include "omnibus/parked_keys.hpp"

#include <stdexcept>

#include <pqxx/pqxx>

#include "core/outbox.hpp"
#include "core/schema.hpp"
#include "omnibus/event_bus.hpp"  // check_schema_name

namespace omnibus {

namespace {

std::string t(std::string_view schema, std::string_view table) { return detail::table_name(schema, table); }

// "{1,3}": a PostgreSQL int array of the partitions in `pairs`, and the epochs likewise.
std::pair<std::string, std::string> arrays(const std::vector<std::pair<int, std::uint64_t>>& pairs) {
  std::string parts = "{", epochs = "{";
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    if (i > 0) {
      parts += ',';
      epochs += ',';
    }
    parts += std::to_string(pairs[i].first);
    epochs += std::to_string(pairs[i].second);
  }
  return {parts + "}", epochs + "}"};
}

void release_in(pqxx::transaction_base& tx, std::string_view schema, std::string_view listener, std::string_view owner,
                const std::vector<std::pair<int, std::uint64_t>>& release) {
  if (release.empty()) return;
  const auto [parts, epochs] = arrays(release);
  tx.exec_params0("WITH r AS (SELECT * FROM unnest($3::int[], $4::bigint[]) AS x(partition, epoch)), "
                  "freed AS (UPDATE " + t(schema, "bus_partition_leases") + " l SET owner = NULL FROM r WHERE "
                  "l.listener = $1 AND l.partition = r.partition AND l.epoch = r.epoch AND l.owner = $2 "
                  "RETURNING l.partition, l.epoch) "
                  "UPDATE " + t(schema, "bus_partition_lease_log") + " g SET released_at = clock_timestamp() FROM freed "
                  "WHERE g.listener = $1 AND g.partition = freed.partition AND g.epoch = freed.epoch",
                  std::string(listener), std::string(owner), parts, epochs);
}

}  // namespace

std::vector<parked_key> list_parked_keys(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                                         std::size_t limit) {
  check_schema_name(schema);
  pqxx::read_transaction tx{conn};
  const auto rows = tx.exec_params(
      "SELECT k.listener, k.key, k.partition, k.first_event_id, coalesce(k.event_name, ''), k.error, k.attempts, "
      "(SELECT count(*) FROM " + t(schema, "bus_parked_events") + " e WHERE e.listener = k.listener AND e.key = k.key), "
      "(extract(epoch FROM k.parked_at) * 1000000)::bigint, coalesce(k.action, '') FROM " +
          t(schema, "bus_parked_keys") + " k WHERE $1 = '' OR k.listener = $1 ORDER BY k.listener, k.parked_at, k.key LIMIT NULLIF($2, 0)",
      std::string(listener), static_cast<std::int64_t>(limit));
  std::vector<parked_key> out;
  for (const auto& r : rows) {
    parked_key k;
    k.listener = r[0].as<std::string>();
    k.key = r[1].as<std::string>();
    k.partition = r[2].as<int>();
    k.first_event_id = r[3].as<std::string>();
    k.event_name = r[4].as<std::string>();
    k.error = r[5].as<std::string>();
    k.attempts = r[6].as<int>();
    k.waiting = r[7].as<std::int64_t>();
    k.parked_at = std::chrono::system_clock::time_point{std::chrono::microseconds{r[8].as<std::int64_t>()}};
    k.action = r[9].as<std::string>();
    out.push_back(std::move(k));
  }
  return out;
}

bool request_parked_key_action(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                               std::string_view key, std::string_view action) {
  check_schema_name(schema);
  if (action != "retry" && action != "skip" && action != "discard") {
    throw std::invalid_argument("a parked key's action is retry, skip or discard, not '" + std::string(action) + "'");
  }
  pqxx::work tx{conn};
  const auto r = tx.exec_params("UPDATE " + t(schema, "bus_parked_keys") +
                                    " SET action = $3, requested_at = now() WHERE listener = $1 AND key = $2",
                                std::string(listener), std::string(key), std::string(action));
  tx.commit();
  return r.affected_rows() > 0;
}

std::vector<partition_lease> list_partition_leases(pqxx::connection_base& conn, std::string_view schema) {
  check_schema_name(schema);
  pqxx::read_transaction tx{conn};
  const auto rows = tx.exec(
      "SELECT l.listener, l.partition, coalesce(l.owner, ''), l.epoch, EXISTS (SELECT 1 FROM " +
      t(schema, "bus_partition_members") + " m WHERE m.listener = l.listener AND m.owner = l.owner AND "
      "m.expires_at > now()) FROM " + t(schema, "bus_partition_leases") + " l ORDER BY l.listener, l.partition");
  std::vector<partition_lease> out;
  for (const auto& r : rows) {
    out.push_back({r[0].as<std::string>(), r[1].as<int>(), r[2].as<std::string>(), r[3].as<std::uint64_t>(),
                   r[4].as<bool>()});
  }
  return out;
}

namespace detail {

lease_round lease_partitions(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                             int partitions, std::string_view owner, std::chrono::milliseconds lease,
                             const std::vector<std::pair<int, std::uint64_t>>& release) {
  pqxx::work tx{conn};
  const std::string l(listener), me(owner);
  const std::string leases = t(schema, "bus_partition_leases"), members = t(schema, "bus_partition_members");
  tx.exec_params0("INSERT INTO " + members + " (listener, owner, expires_at) VALUES ($1, $2, now() + $3 * interval "
                  "'1 millisecond') ON CONFLICT (listener, owner) DO UPDATE SET expires_at = EXCLUDED.expires_at",
                  l, me, static_cast<std::int64_t>(lease.count()));
  // The listener's partitions exist as rows (a first worker, or more partitions than before).
  tx.exec_params0("INSERT INTO " + leases + " (listener, partition) SELECT $1, g FROM generate_series(0, $2 - 1) g "
                  "ON CONFLICT DO NOTHING", l, partitions);
  release_in(tx, schema, listener, owner, release);
  lease_round round;
  round.live = tx.exec_params1("SELECT count(*) FROM " + members + " WHERE listener = $1 AND expires_at > now()", l)[0]
                   .as<int>();
  round.live = std::max(round.live, 1);
  round.share = (partitions + round.live - 1) / round.live;
  const int held = tx.exec_params1("SELECT count(*) FROM " + leases + " WHERE listener = $1 AND owner = $2 AND "
                                   "partition < $3", l, me, partitions)[0].as<int>();
  if (held < round.share) {
    // Free ones, or ones whose owner's membership expired; rows a fenced handler transaction
    // still holds (FOR SHARE) are skipped: their turn comes at a later heartbeat.
    tx.exec_params0(
        "WITH pick AS (SELECT c.partition, c.owner FROM " + leases + " c WHERE c.listener = $1 AND c.partition < $4 "
        "AND (c.owner IS NULL OR NOT EXISTS (SELECT 1 FROM " + members + " m WHERE m.listener = $1 AND "
        "m.owner = c.owner AND m.expires_at > now())) ORDER BY c.partition LIMIT $3 FOR UPDATE SKIP LOCKED), "
        "taken AS (UPDATE " + leases + " u SET owner = $2, epoch = u.epoch + 1, claimed_at = clock_timestamp() "
        "FROM pick WHERE u.listener = $1 AND u.partition = pick.partition "
        "RETURNING u.partition, u.epoch, pick.owner AS previous) "
        "INSERT INTO " + t(schema, "bus_partition_lease_log") + " (listener, partition, epoch, owner, claimed_at, "
        "previous_expired_at) SELECT $1, taken.partition, taken.epoch, $2, clock_timestamp(), (SELECT m.expires_at "
        "FROM " + members + " m WHERE m.listener = $1 AND m.owner = taken.previous) FROM taken",
        l, me, round.share - held, partitions);
  }
  for (const auto& r : tx.exec_params("SELECT partition, epoch FROM " + leases + " WHERE listener = $1 AND owner = $2 "
                                      "AND partition < $3 ORDER BY partition", l, me, partitions)) {
    round.held.emplace_back(r[0].as<int>(), r[1].as<std::uint64_t>());
  }
  // Memberships long expired go (their owners' leases are claimable already).
  tx.exec_params0("DELETE FROM " + members + " WHERE listener = $1 AND expires_at < now() - interval '1 hour'", l);
  tx.commit();
  return round;
}

void leave_partitions(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                      std::string_view owner, const std::vector<std::pair<int, std::uint64_t>>& release) {
  pqxx::work tx{conn};
  release_in(tx, schema, listener, owner, release);
  // Its membership ends now unless it still holds a partition (a handler that did not stop):
  // that one moves when the membership expires, as after a crash.
  tx.exec_params0("DELETE FROM " + t(schema, "bus_partition_members") + " m WHERE m.listener = $1 AND m.owner = $2 "
                  "AND NOT EXISTS (SELECT 1 FROM " + t(schema, "bus_partition_leases") + " l WHERE l.listener = $1 AND "
                  "l.owner = $2)", std::string(listener), std::string(owner));
  tx.commit();
}

bool hold_fence(pqxx::transaction_base& tx, std::string_view schema, std::string_view listener, int partition,
                std::string_view owner, std::uint64_t epoch) {
  return !tx.exec_params("SELECT 1 FROM " + t(schema, "bus_partition_leases") + " WHERE listener = $1 AND partition = "
                         "$2 AND owner = $3 AND epoch = $4 FOR SHARE",
                         std::string(listener), partition, std::string(owner), epoch)
              .empty();
}

bool park_event(pqxx::connection_base& conn, std::string_view schema, std::string_view listener, std::string_view key,
                int partition, std::string_view owner, std::uint64_t epoch, std::string_view event_name,
                const stored_event& ev, std::string_view error) {
  pqxx::work tx{conn};
  if (!hold_fence(tx, schema, listener, partition, owner, epoch)) return false;
  const std::string l(listener), k(key);
  tx.exec_params0("INSERT INTO " + t(schema, "bus_parked_keys") + " (listener, key, partition, first_event_id, "
                  "event_name, error, attempts) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                  l, k, partition, ev.event_id, std::string(event_name), std::string(error), ev.attempts);
  tx.exec_params0("INSERT INTO " + t(schema, "bus_parked_events") + " (listener, key, stream_sequence, event_id, "
                  "subject, headers, body, error, attempts) VALUES ($1, $2, $3, $4, $5, $6, $7, nullif($8, ''), $9) "
                  "ON CONFLICT DO NOTHING",
                  l, k, static_cast<std::int64_t>(ev.stream_sequence), ev.event_id, ev.msg.subject,
                  pqxx::binarystring(detail::join_headers(ev.msg)),
                  pqxx::binarystring(ev.msg.body.data(), ev.msg.body.size()), std::string(error), ev.attempts);
  tx.commit();
  return true;
}

std::vector<std::string> parked_keys_of(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                                        int partition) {
  pqxx::read_transaction tx{conn};
  std::vector<std::string> out;
  for (const auto& r : tx.exec_params("SELECT key FROM " + t(schema, "bus_parked_keys") +
                                      " WHERE listener = $1 AND partition = $2", std::string(listener), partition)) {
    out.push_back(r[0].as<std::string>());
  }
  return out;
}

std::vector<key_request> key_requests(pqxx::connection_base& conn, std::string_view schema, std::string_view listener) {
  pqxx::read_transaction tx{conn};
  std::vector<key_request> out;
  for (const auto& r : tx.exec_params("SELECT key, partition, action FROM " + t(schema, "bus_parked_keys") +
                                      " WHERE listener = $1 AND action IS NOT NULL ORDER BY requested_at, key",
                                      std::string(listener))) {
    out.push_back({r[0].as<std::string>(), r[1].as<int>(), r[2].as<std::string>()});
  }
  return out;
}

std::optional<stored_event> first_parked_event(pqxx::connection_base& conn, std::string_view schema,
                                               std::string_view listener, std::string_view key) {
  pqxx::read_transaction tx{conn};
  const auto rows = tx.exec_params("SELECT stream_sequence, event_id, subject, headers, body, attempts FROM " +
                                       t(schema, "bus_parked_events") +
                                       " WHERE listener = $1 AND key = $2 ORDER BY stream_sequence LIMIT 1",
                                   std::string(listener), std::string(key));
  if (rows.empty()) return std::nullopt;
  stored_event ev;
  ev.stream_sequence = rows[0][0].as<std::uint64_t>();
  ev.event_id = rows[0][1].as<std::string>();
  ev.msg.subject = rows[0][2].as<std::string>();
  const pqxx::binarystring headers(rows[0][3]);
  detail::split_headers(std::string_view(reinterpret_cast<const char*>(headers.data()), headers.size()), ev.msg);
  const pqxx::binarystring body(rows[0][4]);
  ev.msg.body.assign(body.get(), body.size());
  ev.attempts = rows[0][5].as<int>();
  return ev;
}

void drop_parked_event(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                       std::string_view key, std::uint64_t stream_sequence, bool skip) {
  pqxx::work tx{conn};
  tx.exec_params0("DELETE FROM " + t(schema, "bus_parked_events") +
                      " WHERE listener = $1 AND key = $2 AND stream_sequence = $3",
                  std::string(listener), std::string(key), static_cast<std::int64_t>(stream_sequence));
  if (skip) {
    tx.exec_params0("UPDATE " + t(schema, "bus_parked_keys") + " SET action = 'retry' WHERE listener = $1 AND key = $2 "
                    "AND action = 'skip'", std::string(listener), std::string(key));
  }
  tx.commit();
}

bool release_parked_key(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                        std::string_view key) {
  pqxx::work tx{conn};
  const auto r = tx.exec_params("DELETE FROM " + t(schema, "bus_parked_keys") + " k WHERE k.listener = $1 AND k.key = $2 "
                                "AND NOT EXISTS (SELECT 1 FROM " + t(schema, "bus_parked_events") +
                                " e WHERE e.listener = $1 AND e.key = $2)",
                                std::string(listener), std::string(key));
  // Gone already (discarded meanwhile): released too.
  const bool gone = r.affected_rows() > 0 ||
                    tx.exec_params("SELECT 1 FROM " + t(schema, "bus_parked_keys") + " WHERE listener = $1 AND key = $2",
                                   std::string(listener), std::string(key)).empty();
  tx.commit();
  return gone;
}

void repark_key(pqxx::connection_base& conn, std::string_view schema, std::string_view listener, std::string_view key,
                std::uint64_t stream_sequence, std::string_view error, std::string_view done_action) {
  pqxx::work tx{conn};
  const std::string l(listener), k(key);
  tx.exec_params0("UPDATE " + t(schema, "bus_parked_events") + " SET error = $4, attempts = attempts + 1 "
                  "WHERE listener = $1 AND key = $2 AND stream_sequence = $3",
                  l, k, static_cast<std::int64_t>(stream_sequence), std::string(error));
  tx.exec_params0("UPDATE " + t(schema, "bus_parked_keys") + " k SET action = CASE WHEN k.action = $5 THEN NULL ELSE "
                  "k.action END, error = $3, first_event_id = e.event_id, attempts = e.attempts FROM " +
                  t(schema, "bus_parked_events") + " e WHERE k.listener = $1 AND k.key = $2 AND e.listener = $1 AND "
                  "e.key = $2 AND e.stream_sequence = $4",
                  l, k, std::string(error), static_cast<std::int64_t>(stream_sequence), std::string(done_action));
  tx.commit();
}

std::int64_t discard_parked_key(pqxx::connection_base& conn, std::string_view schema, std::string_view listener,
                                std::string_view key) {
  pqxx::work tx{conn};
  const auto r = tx.exec_params("DELETE FROM " + t(schema, "bus_parked_events") + " WHERE listener = $1 AND key = $2",
                                std::string(listener), std::string(key));
  tx.exec_params0("DELETE FROM " + t(schema, "bus_parked_keys") + " WHERE listener = $1 AND key = $2",
                  std::string(listener), std::string(key));
  tx.commit();
  return static_cast<std::int64_t>(r.affected_rows());
}

}  // namespace detail
}  // namespace omnibus
