#include "core/scheduled.hpp"

#include <cstdio>
#include <stdexcept>

#include <pqxx/pqxx>

#include "omnibus/envelope.hpp"
#include "omnibus/error.hpp"
#include "omnibus/schedule.hpp"
#include "core/outbox.hpp"
#include "core/schema.hpp"

namespace omnibus::detail {

std::string scheduler_channel(std::string_view schema) { return notify_channel(schema, "_scheduler"); }

long long epoch_micros(std::chrono::system_clock::time_point t) noexcept {
  // Rounded up: a due time stored a fraction of a microsecond before the one asked for would
  // fire that much early.
  return std::chrono::ceil<std::chrono::microseconds>(t.time_since_epoch()).count();
}

std::string scheduled_insert(pqxx::transaction_base& tx, std::string_view schema, const message& msg,
                             std::string_view event_name, const due_time& due, std::string_view unique_key) {
  const std::string* id = msg.header(header::msg_id);
  if (id == nullptr) throw error("a scheduled message needs a " + std::string(header::msg_id) + " header");
  // The due time: a time point, or an interval from the database's clock (clock_timestamp(),
  // not now(): a long transaction must not make its delays shorter).
  const std::string due_sql = due.at ? "timestamptz 'epoch' + $5::bigint * interval '1 microsecond'"
                                     : "clock_timestamp() + $5::bigint * interval '1 millisecond'";
  const long long due_value = due.at ? epoch_micros(*due.at) : static_cast<long long>(due.after.count());
  const std::string insert =
      with_schema("WITH row AS (INSERT INTO {s}.bus_scheduled (id, due_at, event_name, subject, headers, body, unique_key) "
                  "VALUES ($1::uuid, " + due_sql + ", $2, $3, $4, $6, nullif($7, '')) "
                  "ON CONFLICT (unique_key) DO NOTHING RETURNING id, due_at) "
                  "SELECT id::text, pg_notify($8, floor(extract(epoch FROM due_at) * 1000)::bigint::text) FROM row",
                  schema);
  // A pending row with the key wins; it may fire (and free the key) between our INSERT and
  // our SELECT, so try again a few times.
  for (int attempt = 0; attempt < 5; ++attempt) {
    const pqxx::result r = tx.exec_params(insert, *id, std::string(event_name), msg.subject, join_headers(msg), due_value,
                                          pqxx::binarystring(msg.body.data(), msg.body.size()), std::string(unique_key),
                                          scheduler_channel(schema));
    if (!r.empty()) return r[0][0].as<std::string>();
    const pqxx::result existing = tx.exec_params(
        with_schema("SELECT id::text FROM {s}.bus_scheduled WHERE unique_key = $1", schema), std::string(unique_key));
    if (!existing.empty()) return existing[0][0].as<std::string>();
  }
  throw error("scheduling with unique key '" + std::string(unique_key) +
              "': the key's pending event kept firing or being cancelled between five tries; try again");
}

bool scheduled_cancel(pqxx::transaction_base& tx, std::string_view schema, std::string_view id) {
  return tx.exec_params(with_schema("DELETE FROM {s}.bus_scheduled WHERE id = $1::uuid", schema), std::string(id))
             .affected_rows() > 0;
}

bool scheduled_move(pqxx::transaction_base& tx, std::string_view schema, std::string_view id,
                    std::chrono::system_clock::time_point when) {
  const pqxx::result r = tx.exec_params(
      with_schema("WITH row AS (UPDATE {s}.bus_scheduled SET due_at = timestamptz 'epoch' + $2::bigint * interval "
                  "'1 microsecond' WHERE id = $1::uuid RETURNING due_at) "
                  "SELECT pg_notify($3, floor(extract(epoch FROM due_at) * 1000)::bigint::text) FROM row",
                  schema),
      std::string(id), epoch_micros(when), scheduler_channel(schema));
  return !r.empty();
}

}  // namespace omnibus::detail

namespace omnibus {

std::string to_iso8601(std::chrono::system_clock::time_point t) {
  using namespace std::chrono;
  const auto us = time_point_cast<microseconds>(t);
  const auto day = floor<days>(us);
  const year_month_day ymd{day};
  const hh_mm_ss hms{us - day};
  char buf[48];
  int n = std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02d:%02d:%02d", static_cast<int>(ymd.year()),
                        static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                        static_cast<int>(hms.hours().count()), static_cast<int>(hms.minutes().count()),
                        static_cast<int>(hms.seconds().count()));
  if (const auto frac = hms.subseconds().count(); frac != 0) {
    n += std::snprintf(buf + n, sizeof buf - static_cast<std::size_t>(n), ".%06lld", static_cast<long long>(frac));
  }
  return std::string(buf, static_cast<std::size_t>(n)) + "Z";
}

std::chrono::system_clock::time_point parse_iso8601(std::string_view text) {
  using namespace std::chrono;
  const auto bad = [&](const std::string& why) {
    return std::invalid_argument("time \"" + std::string(text) + "\": " + why +
                                 " (expected an ISO 8601 instant such as 2026-11-29T09:00:00Z or 2026-11-29T10:00+01:00)");
  };
  std::size_t pos = 0;
  const auto number = [&](std::size_t digits, const char* what) {
    int v = 0;
    for (std::size_t i = 0; i < digits; ++i, ++pos) {
      if (pos >= text.size() || text[pos] < '0' || text[pos] > '9') throw bad(std::string("bad ") + what);
      v = v * 10 + (text[pos] - '0');
    }
    return v;
  };
  const auto expect = [&](char c, const char* what) {
    if (pos >= text.size() || text[pos] != c) throw bad(std::string("expected ") + what);
    ++pos;
  };
  const int y = number(4, "year");
  expect('-', "'-' after the year");
  const int mo = number(2, "month");
  expect('-', "'-' after the month");
  const int d = number(2, "day");
  if (pos >= text.size() || (text[pos] != 'T' && text[pos] != 't' && text[pos] != ' ')) throw bad("expected 'T' after the date");
  ++pos;
  const int h = number(2, "hour");
  expect(':', "':' after the hour");
  const int mi = number(2, "minute");
  int s = 0;
  microseconds frac{0};
  if (pos < text.size() && text[pos] == ':') {
    ++pos;
    s = number(2, "second");
    if (pos < text.size() && (text[pos] == '.' || text[pos] == ',')) {
      ++pos;
      long long scale = 100000;
      const std::size_t start = pos;
      while (pos < text.size() && text[pos] >= '0' && text[pos] <= '9') {
        frac += microseconds((text[pos] - '0') * scale);
        scale /= 10;
        ++pos;
      }
      if (pos == start) throw bad("bad fraction of a second");
    }
  }
  minutes offset{0};
  if (pos < text.size() && (text[pos] == 'Z' || text[pos] == 'z')) {
    ++pos;
  } else if (pos < text.size() && (text[pos] == '+' || text[pos] == '-')) {
    const int sign = text[pos] == '-' ? -1 : 1;
    ++pos;
    const int oh = number(2, "offset hours");
    expect(':', "':' in the offset");
    const int om = number(2, "offset minutes");
    if (oh > 23 || om > 59) throw bad("offset out of range");
    offset = minutes(sign * (oh * 60 + om));
  } else {
    throw bad("no time zone: end with Z (UTC) or an offset such as +01:00");
  }
  if (pos != text.size()) throw bad("unexpected text after the time");
  const year_month_day ymd{year(y), month(static_cast<unsigned>(mo)), day(static_cast<unsigned>(d))};
  if (!ymd.ok()) throw bad("no such date");
  if (h > 23 || mi > 59 || s > 59) throw bad("time of day out of range");
  return sys_days(ymd) + hours(h) + minutes(mi) + seconds(s) + frac - offset;
}

}  // namespace omnibus
