#include "dashboard/dashboard.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <map>
#include <mutex>
#include <optional>
#include <initializer_list>
#include <limits>
#include <set>
#include <stdexcept>
#include <string_view>
#include <vector>

#include <pqxx/pqxx>
#include <spdlog/spdlog.h>

#include "omnibus/dead_letters.hpp"
#include "omnibus/listener_control.hpp"
#include "omnibus/parked_keys.hpp"
#include "omnibus/redrive.hpp"
#include "omnibus/schedule.hpp"
#include "omnibus/schedules.hpp"
#include "connect_timeout.hpp"
#include "dashboard/assets.hpp"
#include "dashboard/html.hpp"
#include "dashboard/msgpack_json.hpp"
#include "metrics.hpp"
#include "stats.hpp"

namespace omnibus::detail {

namespace {

using sys_clock = std::chrono::system_clock;

constexpr const char* html_type = "text/html; charset=utf-8";
constexpr std::size_t max_filter_text = 200;
constexpr std::size_t default_page = 50;
constexpr std::size_t max_page = 200;

// A request the page cannot serve as asked: 400 with `why` shown (escaped) to the user.
struct bad_request : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};
// Something named in the path does not exist: 404.
struct not_found : std::invalid_argument {
  using std::invalid_argument::invalid_argument;
};

http_reply text_reply(int status, std::string body) {
  return {status, "text/plain; charset=utf-8", std::move(body) + "\n", {}};
}

http_reply redirect(std::string location) {
  http_reply r{303, "text/plain; charset=utf-8", "see " + location + "\n", {}};
  r.headers.emplace_back("Location", std::move(location));
  return r;
}

std::string when(sys_clock::time_point t) {
  const std::time_t tt = sys_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
  return buf;
}

std::string age(std::chrono::milliseconds d) {
  const auto s = d.count() / 1000;
  if (s < 1) return std::to_string(d.count()) + " ms";
  if (s < 120) return std::to_string(s) + " s";
  if (s < 7200) return std::to_string(s / 60) + " min";
  if (s < 172800) return std::to_string(s / 3600) + " h";
  return std::to_string(s / 86400) + " d";
}

// The query or form, validated: each name at most once, known names only.
class params {
 public:
  explicit params(std::string_view encoded) {
    auto parsed = parse_query(encoded);
    if (!parsed) throw bad_request("the query is malformed: a bad %-escape, bytes that are not UTF-8, or too many parameters");
    for (auto& p : *parsed) {
      if (!values_.emplace(p.name, p.value).second) throw bad_request("parameter '" + p.name + "' is given twice");
    }
  }
  // Refuses a parameter the page does not take: a misspelled filter must not widen a bulk action.
  void only(std::initializer_list<std::string_view> names) const {
    for (const auto& [name, value] : values_) {
      if (std::find(names.begin(), names.end(), name) == names.end()) {
        throw bad_request("unknown parameter '" + name + "'");
      }
    }
  }
  [[nodiscard]] std::string text(const std::string& name, std::size_t max = max_filter_text) const {
    const auto it = values_.find(name);
    if (it == values_.end()) return {};
    if (it->second.size() > max) {
      throw bad_request("parameter '" + name + "' is longer than " + std::to_string(max) + " bytes");
    }
    return it->second;
  }
  [[nodiscard]] std::optional<std::int64_t> integer(const std::string& name, std::int64_t lo, std::int64_t hi) const {
    const std::string v = text(name, 20);
    if (v.empty()) return std::nullopt;
    std::int64_t out = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    if (ec != std::errc() || end != v.data() + v.size() || out < lo || out > hi) {
      throw bad_request("parameter '" + name + "' must be a whole number from " + std::to_string(lo) + " to " +
                        std::to_string(hi));
    }
    return out;
  }
  [[nodiscard]] std::optional<double> number(const std::string& name) const {
    const std::string v = text(name, 32);
    if (v.empty()) return std::nullopt;
    double out = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), out);
    if (ec != std::errc() || end != v.data() + v.size() || !std::isfinite(out)) {
      throw bad_request("parameter '" + name + "' must be a number");
    }
    return out;
  }
  // An instant: ISO 8601, or a browser's datetime-local ("2026-11-30T12:00"), read as UTC.
  [[nodiscard]] std::optional<sys_clock::time_point> instant(const std::string& name) const {
    std::string v = text(name, 64);
    if (v.empty()) return std::nullopt;
    const bool zoned = v.back() == 'Z' || v.back() == 'z' ||
                       (v.size() > 16 && v.find_first_of("+-", 16) != std::string::npos);
    if (!zoned) v += 'Z';
    try {
      return parse_iso8601(v);
    } catch (const std::invalid_argument& e) {
      throw bad_request("parameter '" + name + "': " + e.what());
    }
  }

 private:
  std::map<std::string, std::string> values_;
};

dead_letter_filter filter_from(const params& p) {
  dead_letter_filter f;
  f.listener = p.text("listener");
  f.event_name = p.text("event");
  // "error contains": the text as typed (LIKE's \\, % and _ escaped), unless it holds a % of
  // its own, then it is a LIKE pattern.
  const std::string error = p.text("error");
  if (!error.empty() && error.find('%') != std::string::npos) {
    f.error_like = error;
  } else if (!error.empty()) {
    f.error_like = "%";
    for (const char c : error) {
      if (c == '\\' || c == '%' || c == '_') f.error_like += '\\';
      f.error_like += c;
    }
    f.error_like += '%';
  }
  f.since = p.instant("since");
  f.until = p.instant("until");
  return f;
}

// The filter as a query string, to carry it from page to page.
std::string filter_query(const params& p) {
  std::string q;
  for (const char* name : {"listener", "event", "error", "since", "until"}) {
    const std::string v = p.text(name);
    if (v.empty()) continue;
    q += q.empty() ? "" : "&";
    q += name;
    q += '=';
    q += url_encode(v);
  }
  return q;
}

// A path segment: percent-decoded, not empty.
std::string segment(std::string_view encoded) {
  auto v = url_decode(encoded, false);
  if (!v || v->empty() || v->size() > 200) throw bad_request("a name in the path is malformed");
  return *v;
}

// "/parked/<listener>/keys/<action>": a parked key's action; the key goes in the form (or the
// query), since a key may hold what a path may not (a backslash, a "." or ".." segment).
std::string parked_key_path(std::string_view listener, std::string_view action) {
  return "/parked/" + url_encode(listener) + "/keys/" + std::string(action);
}

std::int64_t id_segment(std::string_view s) {
  std::int64_t id = 0;
  const auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), id);
  if (ec != std::errc() || end != s.data() + s.size() || id < 1 || s.size() > 18) throw bad_request("not an id: expected a number");
  return id;
}

std::vector<std::string_view> split_path(std::string_view path) {
  std::vector<std::string_view> out;
  path.remove_prefix(1);
  while (!path.empty()) {
    const auto slash = path.find('/');
    out.push_back(path.substr(0, slash));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return out;
}

// A few connections, reused by the handler threads; a broken one is dropped, not returned.
class connection_pool {
 public:
  explicit connection_pool(std::string url) : url_(std::move(url)) {}

  class lease {
   public:
    lease(connection_pool& p, std::unique_ptr<pqxx::connection> c) : pool_(p), conn_(std::move(c)) {}
    ~lease() {
      if (conn_ && conn_->is_open()) pool_.give_back(std::move(conn_));
    }
    lease(const lease&) = delete;
    lease& operator=(const lease&) = delete;
    pqxx::connection& operator*() { return *conn_; }
    void drop() { conn_.reset(); }

   private:
    connection_pool& pool_;
    std::unique_ptr<pqxx::connection> conn_;
  };

  lease take() {
    {
      std::lock_guard lock(mutex_);
      if (!idle_.empty()) {
        auto c = std::move(idle_.back());
        idle_.pop_back();
        return {*this, std::move(c)};
      }
    }
    auto c = std::make_unique<pqxx::connection>(with_connect_timeout(url_));
    pqxx::nontransaction(*c).exec0("SET statement_timeout = '5s'");  // a page never waits long
    return {*this, std::move(c)};
  }

 private:
  void give_back(std::unique_ptr<pqxx::connection> c) {
    std::lock_guard lock(mutex_);
    if (idle_.size() < 4) idle_.push_back(std::move(c));
  }

  std::string url_;
  std::mutex mutex_;
  std::vector<std::unique_ptr<pqxx::connection>> idle_;
};

}  // namespace

struct dashboard::impl {
  impl(event_bus& b, worker_metrics* m, access_control& a, dashboard_options o, std::shared_ptr<spdlog::logger> l)
      : bus(b), metrics(m), access(a), options(std::move(o)), log(std::move(l)), pool(options.database_url) {}

  event_bus& bus;
  worker_metrics* metrics;
  access_control& access;
  dashboard_options options;
  std::shared_ptr<spdlog::logger> log;
  connection_pool pool;

  std::mutex overview_mutex;  // one refresh at a time; the others wait and share it
  std::optional<stats_view> overview;
  std::vector<std::string> overview_workers;
  std::vector<listener_minute> overview_minutes;  // the last hour, every worker's calls summed
  std::chrono::steady_clock::time_point overview_at{};
  std::string overview_error;

  [[nodiscard]] const std::string& schema() const { return bus.options().schema; }
  [[nodiscard]] bool actions() const { return !access.config().read_only; }

  void csrf_field(html& h) const {
    h.raw("<input type=\"hidden\" name=\"csrf\" value=\"").attr(access.csrf_token()).raw("\">");
  }

  // A one-button form that POSTs to `action` (already encoded), with `fields` as hidden inputs.
  void button(html& h, const std::string& action, std::string_view label, bool danger = false,
              std::initializer_list<std::pair<std::string_view, std::string_view>> fields = {}) const {
    if (!actions()) return;
    h.raw("<form class=\"inline\" method=\"post\" action=\"").attr(action).raw("\">");
    csrf_field(h);
    for (const auto& [name, value] : fields) {
      h.raw("<input type=\"hidden\" name=\"").attr(name).raw("\" value=\"").attr(value).raw("\">");
    }
    h.raw("<button type=\"submit\"");
    if (danger) h.raw(" class=\"danger\"");
    h.raw(">").text(label).raw("</button></form>");
  }

  http_reply page(std::string_view title, std::string_view nav, const html& body, int status = 200,
                  std::string_view refresh_ms = {}) const {
    html h;
    h.raw("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
          "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
          "<title>")
        .text(title)
        .raw(" · Omnibus</title><link rel=\"stylesheet\" href=\"/assets/style.css\">"
             "<link rel=\"icon\" href=\"/assets/favicon.svg\">"
             "<script src=\"/assets/app.js\" defer></script></head><body><header><a class=\"brand\" href=\"/\">Omnibus</a>"
             "<span class=\"schema\">schema ")
        .text(schema())
        .raw("</span><nav>");
    const std::pair<const char*, const char*> links[] = {{"/", "Overview"},
                                                         {"/dead-letters", "Dead letters"},
                                                         {"/redrives", "Redrives"},
                                                         {"/parked", "Parked"},
                                                         {"/schedules", "Schedules"}};
    for (const auto& [href, label] : links) {
      h.raw("<a href=\"").attr(href).raw("\"");
      if (nav == label) h.raw(" class=\"active\"");
      h.raw(">").text(label).raw("</a>");
    }
    h.raw("</nav>");
    if (access.config().read_only) h.raw("<span class=\"badge\">read-only</span>");
    if (!access.config().token.empty() && nav != "") {  // signed in (or Bearer): a way out
      h.raw("<form class=\"inline logout\" method=\"post\" action=\"/logout\">");
      csrf_field(h);
      h.raw("<button type=\"submit\">sign out</button></form>");
    }
    h.raw("</header><main id=\"main\"");
    if (!refresh_ms.empty()) h.raw(" data-refresh=\"").attr(refresh_ms).raw("\"");
    h.raw(">");
    std::string out = std::move(h).str();
    out += body.view();  // built the same way: already escaped
    out += "</main></body></html>\n";
    return {status, html_type, std::move(out), {}};
  }

  http_reply error_page(int status, std::string_view what) const {
    html b;
    b.raw("<h1>").number(status).raw("</h1><p class=\"error\">").text(what).raw("</p>");
    return page("Error", "", b, status);
  }

  // ---------------------------------------------------------------- overview

  void refresh_overview() {
    auto conn = pool.take();
    try {
      stats_view v = read_stats(bus, *conn);
      std::set<std::string> workers;
      for (const auto& r : list_listener_reports(*conn, schema(), std::chrono::seconds(15))) workers.insert(r.worker);
      overview_minutes = list_listener_minutes(*conn, schema(), 61);
      overview = std::move(v);
      overview_workers.assign(workers.begin(), workers.end());
      overview_error.clear();
    } catch (const pqxx::broken_connection&) {
      conn.drop();
      throw;
    }
  }

  http_reply overview_page() {
    std::unique_lock lock(overview_mutex);
    const auto now = std::chrono::steady_clock::now();
    if (!overview || now - overview_at >= options.overview_cache) {
      try {
        refresh_overview();
        overview_at = now;
      } catch (const std::exception& e) {
        overview_error = e.what();
        if (overview) overview_at = now;  // the last good numbers serve until the next try
      }
    }
    if (!overview) return error_page(503, "cannot read the bus's state: " + overview_error);
    const stats_view& v = *overview;
    html b;
    if (!overview_error.empty()) {
      b.raw("<p class=\"warn\">Showing older numbers: the last refresh failed: ").text(overview_error).raw("</p>");
    }
    b.raw("<h1>Overview</h1><section class=\"cards\">");
    auto card = [&](std::string_view label, const std::string& value, bool bad = false) {
      b.raw("<div class=\"card");
      if (bad) b.raw(" bad");
      b.raw("\"><div class=\"label\">").text(label).raw("</div><div class=\"value\">").text(value).raw("</div></div>");
    };
    card("outbox backlog", format_count(v.db.outbox_rows), v.db.unrelayed(options.alert_after));
    card("oldest outbox row", v.db.outbox_oldest_age ? age(*v.db.outbox_oldest_age) : "none");
    card("relay", v.db.relay_active ? v.db.relay_holder : "none running", !v.db.relay_active);
    std::uint64_t dead = 0;
    for (const auto& [l, n] : v.db.dead_letters) dead += n;
    card("dead letters", format_count(dead), dead > 0);
    card("scheduled", format_count(v.db.scheduled_pending));
    if (v.stream) {
      const auto& st = *v.stream;
      std::string fill = format_count(st.messages) + " events";
      if (st.max_bytes > 0) {
        char pct[32];
        std::snprintf(pct, sizeof pct, ", %.1f %% full", 100.0 * static_cast<double>(st.bytes) / static_cast<double>(st.max_bytes));
        fill += pct;
      }
      card("stream " + v.stream_name, fill);
    }
    card("workers", std::to_string(overview_workers.size()));
    b.raw("</section><h2>Listeners</h2><table class=\"grid\"><thead><tr><th>listener</th><th>pending</th>"
          "<th>ack pending</th><th>redelivered</th><th>oldest waiting</th><th>handled/min</th><th>failed/min</th>"
          "<th>last hour</th><th>dead letters</th><th>state</th><th>workers</th><th></th></tr></thead><tbody>");
    for (const auto& l : v.listeners) {
      b.raw("<tr data-listener=\"").attr(l.name).raw("\"><td>").text(l.name).raw("</td><td class=\"num\">")
          .text(format_count(l.pending)).raw("</td><td class=\"num\">").text(format_count(l.ack_pending))
          .raw("</td><td class=\"num\">").text(format_count(l.redelivered)).raw("</td><td>")
          .text(l.oldest_unacked_age ? age(*l.oldest_unacked_age) : "—").raw("</td>");
      rates(b, l.name);
      b.raw("<td class=\"num\">");
      if (l.dead_letters > 0) {
        b.raw("<a href=\"/dead-letters?listener=").attr(url_encode(l.name)).raw("\">")
            .text(format_count(l.dead_letters)).raw("</a>");
      } else {
        b.raw("0");
      }
      b.raw("</td><td>");
      if (!l.consumer_found) b.raw("<span class=\"tag bad\">no consumer</span> ");
      if (l.paused) b.raw("<span class=\"tag warn\">paused</span> ");
      if (l.parked) b.raw("<a class=\"tag bad\" href=\"/parked\">parked</a> ");
      if (l.parked_keys > 0) {  // a per-key listener goes on with its other keys
        b.raw("<a class=\"tag warn\" href=\"/parked#keys\">")
            .text(format_count(l.parked_keys) + (l.parked_keys == 1 ? " key parked" : " keys parked")).raw("</a> ");
      }
      for (const auto& f : l.flow) b.raw("<span class=\"tag warn\">").text(f).raw("</span> ");
      if (l.consumer_found && !l.paused && !l.parked && l.flow.empty()) b.raw("<span class=\"tag ok\">running</span>");
      b.raw("</td><td class=\"num\">").number(static_cast<std::int64_t>(l.workers)).raw("</td><td>");
      const std::string base = "/listeners/" + url_encode(l.name);
      if (l.paused) {
        button(b, base + "/resume", "resume");
      } else {
        button(b, base + "/pause", "pause");
      }
      b.raw("</td></tr>");
    }
    b.raw("</tbody></table>");
    if (!overview_workers.empty()) {
      b.raw("<h2>Workers</h2><ul class=\"workers\">");
      for (const auto& w : overview_workers) b.raw("<li>").text(w).raw("</li>");
      b.raw("</ul>");
    }
    return page("Overview", "Overview", b, 200, "5000");
  }

  // The listener's calls in the last full minute, and a sparkline of the last hour (handled
  // in blue, failed in red), summed over every worker. Inline SVG: no script, no style attribute.
  void rates(html& b, const std::string& listener) const {
    std::array<std::uint64_t, 60> handled{}, failed{};  // [59]: the minute before this one
    for (const auto& m : overview_minutes) {
      if (m.listener != listener) continue;
      const int ago = m.minutes_ago;  // by the database's clock, which keyed the rows
      if (ago < 1 || ago > 60) continue;  // the current minute is still filling
      handled[static_cast<std::size_t>(60 - ago)] = m.handled;
      failed[static_cast<std::size_t>(60 - ago)] = m.failed;
    }
    b.raw("<td class=\"num\">").text(format_count(handled[59])).raw("</td><td class=\"num\">")
        .text(format_count(failed[59])).raw("</td><td>");
    const std::uint64_t top = std::max(*std::max_element(handled.begin(), handled.end()),
                                       *std::max_element(failed.begin(), failed.end()));
    if (top == 0) {
      b.raw("<span class=\"note\">—</span></td>");
      return;
    }
    auto points = [&](const std::array<std::uint64_t, 60>& v) {
      std::string out;
      for (std::size_t i = 0; i < v.size(); ++i) {
        const double y = 22.0 - 20.0 * static_cast<double>(v[i]) / static_cast<double>(top);
        char buf[32];
        std::snprintf(buf, sizeof buf, "%s%zu,%.1f", i == 0 ? "" : " ", i * 2, y);
        out += buf;
      }
      return out;
    };
    b.raw("<svg class=\"spark\" viewBox=\"0 0 120 24\" width=\"120\" height=\"24\" role=\"img\"><title>")
        .text("last hour: up to " + format_count(top) + " calls a minute").raw("</title><polyline fill=\"none\" "
        "stroke=\"#1d4ed8\" stroke-width=\"1.5\" points=\"").attr(points(handled)).raw("\"/>");
    if (*std::max_element(failed.begin(), failed.end()) > 0) {
      b.raw("<polyline fill=\"none\" stroke=\"#b91c1c\" stroke-width=\"1.5\" points=\"").attr(points(failed)).raw("\"/>");
    }
    b.raw("</svg></td>");
  }

  // ---------------------------------------------------------------- dead letters

  void filter_form(html& b, const params& p) const {
    b.raw("<form class=\"filters\" method=\"get\" action=\"/dead-letters\">");
    const std::pair<const char*, const char*> fields[] = {
        {"listener", "listener"}, {"event", "event name"}, {"error", "error contains"}};
    for (const auto& [name, label] : fields) {
      b.raw("<label>").text(label).raw(" <input name=\"").attr(name).raw("\" value=\"").attr(p.text(name))
          .raw("\" maxlength=\"200\"></label>");
    }
    for (const char* name : {"since", "until"}) {
      b.raw("<label>").text(name).raw(" (UTC) <input type=\"datetime-local\" step=\"1\" name=\"").attr(name)
          .raw("\" value=\"").attr(p.text(name, 64)).raw("\"></label>");
    }
    b.raw("<button type=\"submit\">Filter</button> <a href=\"/dead-letters\">clear</a></form>");
  }

  http_reply dead_letters_page(const params& p) {
    p.only({"listener", "event", "error", "since", "until", "limit", "before"});
    const dead_letter_filter f = filter_from(p);
    const auto limit = static_cast<std::size_t>(p.integer("limit", 1, max_page).value_or(default_page));
    const auto before = p.integer("before", 1, std::numeric_limits<std::int64_t>::max());
    auto conn = pool.take();
    const dead_letter_page rows = list_dead_letter_page(*conn, schema(), f, before, limit);
    html b;
    b.raw("<h1>Dead letters</h1>");
    filter_form(b, p);
    const std::string q = filter_query(p);
    b.raw("<p class=\"summary\">").text(f.describe());
    if (actions()) {
      const std::string more = q.empty() ? std::string() : "&" + q;
      b.raw(" · <a class=\"action\" href=\"/dead-letters/bulk?action=retry").attr(more)
          .raw("\">retry all matching…</a> · <a class=\"action danger\" href=\"/dead-letters/bulk?action=discard")
          .attr(more).raw("\">discard all matching…</a>");
    }
    b.raw("</p><table class=\"grid\" id=\"dead-letters\"><thead><tr><th>id</th><th>listener</th><th>event</th>"
          "<th>error</th><th>attempts</th><th>last failed (UTC)</th></tr></thead><tbody>");
    for (const auto& d : rows.rows) {
      b.raw("<tr><td><a href=\"/dead-letters/").number(d.id).raw("\">").number(d.id).raw("</a></td><td>").text(d.listener)
          .raw("</td><td>").text(d.event_name).raw("</td><td class=\"error\">").text(d.error).raw("</td><td class=\"num\">")
          .number(d.attempts).raw("</td><td>").text(when(d.last_failed_at)).raw("</td></tr>");
    }
    if (rows.rows.empty()) b.raw("<tr><td colspan=\"6\" class=\"empty\">No dead letter matches.</td></tr>");
    b.raw("</tbody></table><p class=\"pager\">");
    if (before) {
      std::string newest = q;
      if (limit != default_page) newest += (newest.empty() ? "limit=" : "&limit=") + std::to_string(limit);
      b.raw("<a href=\"/dead-letters").attr(newest.empty() ? std::string() : "?" + newest).raw("\">newest</a> ");
    }
    if (rows.more) {
      b.raw("<a rel=\"next\" href=\"/dead-letters?").attr(q.empty() ? std::string() : q + "&").raw("before=")
          .number(rows.rows.back().id);
      if (limit != default_page) b.raw("&amp;limit=").number(static_cast<std::int64_t>(limit));
      b.raw("\">older →</a>");
    }
    b.raw("</p>");
    return page("Dead letters", "Dead letters", b);
  }

  http_reply dead_letter_page_for(std::int64_t id) {
    auto conn = pool.take();
    const auto d = find_dead_letter(*conn, schema(), id);
    if (!d) throw not_found("no dead letter " + std::to_string(id) + " (retried or discarded already?)");
    html b;
    b.raw("<h1>Dead letter ").number(d->id).raw("</h1><div class=\"actions\">");
    const std::string base = "/dead-letters/" + std::to_string(d->id);
    button(b, base + "/retry", "retry");
    button(b, base + "/discard", "discard", true);
    b.raw("</div><table class=\"fields\">");
    auto row = [&](std::string_view k, const std::string& v) {
      b.raw("<tr><th>").text(k).raw("</th><td>").text(v).raw("</td></tr>");
    };
    row("listener", d->listener);
    row("event", d->event_name);
    row("event id", d->event_id);
    row("subject", d->msg.subject);
    row("reason", d->reason);
    row("attempts", std::to_string(d->attempts));
    row("first failed (UTC)", when(d->first_failed_at));
    row("last failed (UTC)", when(d->last_failed_at));
    row("stream sequence", d->stream_sequence ? std::to_string(d->stream_sequence) : "not known");
    b.raw("</table><h2>Error</h2><pre class=\"error\" id=\"error\">").text(d->error).raw("</pre><h2>Headers</h2><table class=\"fields\" id=\"headers\">");
    for (const auto& [k, v] : d->msg.headers) b.raw("<tr><th>").text(k).raw("</th><td>").text(v).raw("</td></tr>");
    b.raw("</table>");
    if (!d->raw_header_block.empty()) {
      b.raw("<h2>Raw header block (did not parse)</h2><pre>").text(d->raw_header_block).raw("</pre>");
    }
    const auto body = msgpack_to_json(d->msg.body);
    if (body.decoded) {
      b.raw("<h2>Body <span class=\"note\">(msgpack, shown as JSON)</span></h2>");
    } else {
      b.raw("<h2>Body <span class=\"note\">(bytes in hex)</span></h2>");
    }
    if (!body.note.empty()) b.raw("<p class=\"note\">").text(body.note).raw("</p>");
    b.raw("<pre class=\"body\" id=\"body\">").text(body.text).raw("</pre>");
    return page("Dead letter " + std::to_string(d->id), "Dead letters", b);
  }

  http_reply bulk_page(const params& p) {
    const std::string action = p.text("action", 16);
    if (action != "retry" && action != "discard") throw bad_request("action must be retry or discard");
    p.only({"action", "listener", "event", "error", "since", "until", "rate"});
    if (!actions()) return error_page(403, "this dashboard is read-only (--http-read-only)");
    const dead_letter_filter f = filter_from(p);
    const double rate = p.number("rate").value_or(0);
    auto conn = pool.take();
    const std::uint64_t n = count_dead_letters(*conn, schema(), f);
    html b;
    b.raw("<h1>").text(action == "retry" ? "Retry dead letters" : "Discard dead letters").raw("</h1>");
    b.raw("<p class=\"dry-run\" id=\"dry-run\">This will ").text(action).raw(" <strong>").text(format_count(n))
        .raw("</strong> dead letter").text(n == 1 ? "" : "s").raw(" (").text(f.describe())
        .raw("). The set is taken when you start: dead letters that arrive later are not included.</p>");
    if (n == 0) {
      b.raw("<p><a href=\"/dead-letters\">back</a></p>");
      return page("Bulk " + action, "Dead letters", b);
    }
    b.raw("<form method=\"post\" action=\"/redrives\" class=\"bulk\">");
    csrf_field(b);
    b.raw("<input type=\"hidden\" name=\"action\" value=\"").attr(action).raw("\">");
    for (const char* name : {"listener", "event", "error", "since", "until"}) {
      const std::string v = p.text(name);
      if (v.empty()) continue;
      b.raw("<input type=\"hidden\" name=\"").attr(name).raw("\" value=\"").attr(v).raw("\">");
    }
    const bool unfiltered = f.listener.empty() && f.event_name.empty() && f.error_like.empty() && !f.since && !f.until;
    if (unfiltered) b.raw("<input type=\"hidden\" name=\"all\" value=\"1\">");
    b.raw("<label>rate (dead letters per second, 0: no limit) <input name=\"rate\" inputmode=\"decimal\" value=\"")
        .attr(rate > 0 ? std::to_string(rate) : std::string("0")).raw("\"></label> ");
    b.raw("<input type=\"hidden\" name=\"expected\" value=\"").number(static_cast<std::int64_t>(n)).raw("\">");
    b.raw("<button type=\"submit\" id=\"confirm\"");
    if (action == "discard") b.raw(" class=\"danger\"");
    b.raw(">").text(action == "retry" ? "Start retrying " + format_count(n) : "Discard " + format_count(n))
        .raw("</button> <a href=\"/dead-letters\">cancel</a></form>");
    if (!options.redrives_here) {
      b.raw("<p class=\"note\">This worker runs no redrives (--no-redrives): another worker's runner carries it out.</p>");
    }
    return page("Bulk " + action, "Dead letters", b);
  }

  // ---------------------------------------------------------------- redrives

  void redrive_row(html& b, const redrive_status& s) const {
    const std::uint64_t done = s.ok + s.failed + s.gone + s.interrupted;
    b.raw("<tr data-state=\"").attr(s.state).raw("\"><td><a href=\"/redrives/").number(s.id).raw("\">").number(s.id)
        .raw("</a></td><td>").text(std::string(to_string(s.action))).raw("</td><td>").text(s.filter).raw("</td><td>")
        .text(s.state).raw("</td><td><progress max=\"").number(static_cast<std::int64_t>(std::max<std::uint64_t>(s.total, 1)))
        .raw("\" value=\"").number(static_cast<std::int64_t>(done)).raw("\"></progress> <span class=\"progress\">")
        .text(format_count(done) + " / " + format_count(s.total)).raw("</span></td><td class=\"num\">")
        .text(format_count(s.ok)).raw("</td><td class=\"num\">").text(format_count(s.failed)).raw("</td><td>")
        .text(s.rate > 0 ? std::to_string(static_cast<long long>(std::llround(s.rate))) + "/s" : "no limit")
        .raw("</td><td>").text(s.requested_by).raw("</td><td>").text(when(s.created_at)).raw("</td></tr>");
  }

  static constexpr char redrive_head[] =
      "<table class=\"grid\"><thead><tr><th>id</th><th>action</th><th>filter</th><th>state</th><th>progress</th>"
      "<th>ok</th><th>failed</th><th>rate</th><th>by</th><th>started (UTC)</th></tr></thead><tbody>";

  http_reply redrives_page(const params& p) {
    p.only({"limit"});
    const auto limit = static_cast<std::size_t>(p.integer("limit", 1, 100).value_or(20));
    auto conn = pool.take();
    const auto all = list_redrives(*conn, schema(), limit);
    html b;
    b.raw("<h1>Redrives</h1><p class=\"summary\">Bulk retries and discards, newest first: who asked, which "
          "dead letters, and what became of them.</p>");
    b.raw(redrive_head);
    bool active = false;
    for (const auto& s : all) {
      redrive_row(b, s);
      active = active || s.state == "running";
    }
    if (all.empty()) b.raw("<tr><td colspan=\"10\" class=\"empty\">None yet.</td></tr>");
    b.raw("</tbody></table>");
    return page("Redrives", "Redrives", b, 200, active ? "1000" : "");
  }

  http_reply redrive_page(std::int64_t id) {
    auto conn = pool.take();
    const auto s = find_redrive(*conn, schema(), id);
    if (!s) throw not_found("no redrive " + std::to_string(id));
    html b;
    b.raw("<h1>Redrive ").number(s->id).raw("</h1>").raw(redrive_head);
    redrive_row(b, *s);
    b.raw("</tbody></table><p id=\"redrive-state\" data-state=\"").attr(s->state).raw("\">")
        .text(s->state + ": " + format_count(s->ok) + " ok, " + format_count(s->failed) + " failed, " +
              format_count(s->gone) + " gone, " + format_count(s->interrupted) + " interrupted, " +
              format_count(s->pending) + " pending of " + format_count(s->total))
        .raw("</p><div class=\"actions\">");
    const std::string base = "/redrives/" + std::to_string(s->id);
    if (s->state == "running") button(b, base + "/pause", "pause");
    if (s->state == "paused") button(b, base + "/resume", "resume");
    if (s->state == "running" || s->state == "paused") button(b, base + "/cancel", "cancel", true);
    b.raw("</div>");
    if (!s->updated_by.empty() && s->updated_by != s->requested_by) {
      b.raw("<p class=\"note\">last changed by ").text(s->updated_by).raw("</p>");
    }
    return page("Redrive " + std::to_string(s->id), "Redrives", b, 200, s->state == "running" ? "1000" : "");
  }

  // ---------------------------------------------------------------- parked, schedules

  // How many parked keys the page lists; `parked list` shows them all.
  static constexpr std::size_t max_parked_keys_shown = 500;

  http_reply parked_page() {
    auto conn = pool.take();
    const auto all = list_parked(*conn, schema());
    const auto keys = list_parked_keys(*conn, schema(), {}, max_parked_keys_shown + 1);
    const auto leases = list_partition_leases(*conn, schema());
    html b;
    b.raw("<h1>Parked</h1><h2>Ordered listeners</h2><p class=\"summary\">An ordered listener stops at an event that "
          "used up its attempts; nothing behind it runs until it is retried (after a fix) or skipped.</p>"
          "<table class=\"grid\" id=\"parked-listeners\"><thead><tr><th>listener</th><th>event</th><th>event id</th>"
          "<th>sequence</th><th>attempts</th><th>error</th><th>requested</th><th></th></tr></thead><tbody>");
    for (const auto& p : all) {
      b.raw("<tr><td>").text(p.listener).raw("</td><td>").text(p.event_name).raw("</td><td>").text(p.event_id)
          .raw("</td><td class=\"num\">").number(static_cast<std::int64_t>(p.stream_sequence)).raw("</td><td class=\"num\">")
          .number(p.attempts).raw("</td><td class=\"error\">").text(p.error).raw("</td><td>").text(p.action).raw("</td><td>");
      const std::string base = "/parked/" + url_encode(p.listener);
      button(b, base + "/retry", "retry");
      button(b, base + "/skip", "skip", true);
      b.raw("</td></tr>");
    }
    if (all.empty()) b.raw("<tr><td colspan=\"8\" class=\"empty\">No listener is parked.</td></tr>");
    b.raw("</tbody></table>");

    b.raw("<h2 id=\"keys\">Parked keys</h2><p class=\"summary\">A per-key listener parks a key whose event used up its "
          "attempts: that event and every later one of the key wait, in stream order, while the other keys go on. "
          "Retry runs them again in order; skip drops the failed one and runs the rest; discard drops them all. The "
          "worker holding the key's partition carries the request out within a second or so.</p>"
          "<table class=\"grid\" id=\"parked-keys\"><thead><tr><th>listener</th><th>key</th><th>partition</th>"
          "<th>event</th><th>first event id</th><th>attempts</th><th>error</th><th>waiting</th><th>parked (UTC)</th>"
          "<th>requested</th><th></th></tr></thead><tbody>");
    for (std::size_t i = 0; i < keys.size() && i < max_parked_keys_shown; ++i) {
      const parked_key& k = keys[i];
      b.raw("<tr><td>").text(k.listener).raw("</td><td class=\"key\">").text(k.key).raw("</td><td class=\"num\">")
          .number(k.partition).raw("</td><td>").text(k.event_name).raw("</td><td>").text(k.first_event_id)
          .raw("</td><td class=\"num\">").number(k.attempts).raw("</td><td class=\"error\">").text(k.error)
          .raw("</td><td class=\"num\">").text(format_count(static_cast<std::uint64_t>(k.waiting))).raw("</td><td>")
          .text(when(k.parked_at)).raw("</td><td>").text(k.action).raw("</td><td>");
      button(b, parked_key_path(k.listener, "retry"), "retry", false, {{"key", k.key}});
      button(b, parked_key_path(k.listener, "skip"), "skip", true, {{"key", k.key}});
      if (actions()) {
        b.raw("<a class=\"action danger\" href=\"").attr(parked_key_path(k.listener, "discard") + "?key=" + url_encode(k.key))
            .raw("\">discard…</a>");
      }
      b.raw("</td></tr>");
    }
    if (keys.empty()) b.raw("<tr><td colspan=\"11\" class=\"empty\">No key is parked.</td></tr>");
    b.raw("</tbody></table>");
    if (keys.size() > max_parked_keys_shown) {
      b.raw("<p class=\"note\">More keys are parked than the ").number(static_cast<std::int64_t>(max_parked_keys_shown))
          .raw(" shown: <code>omnibus-worker parked list</code> lists them all.</p>");
    }

    // Who holds each per-key listener's partitions, summed per worker.
    b.raw("<h2 id=\"partitions\">Partitions</h2><table class=\"grid\" id=\"partition-leases\"><thead><tr>"
          "<th>listener</th><th>partitions</th><th>held by (live)</th><th>free or expired</th></tr></thead><tbody>");
    for (std::size_t i = 0; i < leases.size();) {
      const std::string& listener = leases[i].listener;
      std::map<std::string, int> held;
      int total = 0, unheld = 0;
      for (; i < leases.size() && leases[i].listener == listener; ++i) {
        ++total;
        if (leases[i].owner.empty() || !leases[i].live) {
          ++unheld;
        } else {
          ++held[leases[i].owner];
        }
      }
      std::string owners;
      for (const auto& [owner, n] : held) owners += (owners.empty() ? "" : ", ") + owner + " (" + std::to_string(n) + ")";
      b.raw("<tr><td>").text(listener).raw("</td><td class=\"num\">").number(total).raw("</td><td>")
          .text(owners.empty() ? "—" : owners).raw("</td><td class=\"num\">").number(unheld).raw("</td></tr>");
    }
    if (leases.empty()) b.raw("<tr><td colspan=\"4\" class=\"empty\">No per-key listener has run yet.</td></tr>");
    b.raw("</tbody></table>");
    return page("Parked", "Parked", b);
  }

  // The confirmation before a parked key's events are dropped: what will go, then one button.
  http_reply discard_key_page(const std::string& listener, const params& q) {
    q.only({"key"});
    if (!actions()) return error_page(403, "this dashboard is read-only (--http-read-only)");
    const std::string key = q.text("key", max_key_bytes);
    if (key.empty()) throw bad_request("which key? the page takes ?key=");
    auto conn = pool.take();
    const auto keys = list_parked_keys(*conn, schema(), listener);
    const auto k = std::find_if(keys.begin(), keys.end(), [&](const parked_key& p) { return p.key == key; });
    if (k == keys.end()) throw not_found("key " + key + " of " + listener + " is not parked");
    html b;
    b.raw("<h1>Discard a parked key</h1><p class=\"warn\" id=\"discard-key\">This will drop the <strong>")
        .text(format_count(static_cast<std::uint64_t>(k->waiting))).raw("</strong> parked event(s) of key <strong>")
        .text(key).raw("</strong> of ").text(listener)
        .raw(", the failed one included: no handler runs them. The key's later events run as they arrive.</p>"
             "<div class=\"actions\">");
    button(b, parked_key_path(listener, "discard"), "discard", true, {{"key", key}});
    b.raw(" <a href=\"/parked#keys\">back</a></div>");
    return page("Discard key", "Parked", b);
  }

  http_reply schedules_page(const params& p) {
    p.only({"limit"});
    const auto limit = static_cast<std::size_t>(p.integer("limit", 1, max_page).value_or(default_page));
    auto conn = pool.take();
    const auto counts = count_scheduled(*conn, schema());
    scheduled_filter sf;
    sf.limit = limit;
    const auto pending = list_scheduled(*conn, schema(), sf);
    const auto recurring = list_recurring(*conn, schema());
    html b;
    b.raw("<h1>Schedules</h1><h2>Recurring</h2><table class=\"grid\" id=\"recurring\"><thead><tr><th>name</th>"
          "<th>cron</th><th>zone</th><th>event</th><th>next (UTC)</th><th>last fired (UTC)</th><th>last result</th>"
          "<th>state</th><th></th></tr></thead><tbody>");
    for (const auto& r : recurring) {
      b.raw("<tr><td>").text(r.name).raw("</td><td><code>").text(r.expression).raw("</code></td><td>").text(r.zone)
          .raw("</td><td>").text(r.event_name).raw("</td><td>").text(r.next_fire_at ? when(*r.next_fire_at) : "never")
          .raw("</td><td>").text(r.last_fired_at ? when(*r.last_fired_at) : "—").raw("</td><td>").text(r.last_result)
          .raw("</td><td>");
      if (r.paused) {
        b.raw("<span class=\"tag warn\">paused</span>");
      } else {
        b.raw("<span class=\"tag ok\">active</span>");
      }
      b.raw("</td><td>");
      const std::string base = "/recurring/" + url_encode(r.name);
      button(b, base + "/trigger", "trigger now");
      button(b, base + (r.paused ? "/resume" : "/pause"), r.paused ? "resume" : "pause");
      b.raw("</td></tr>");
    }
    if (recurring.empty()) b.raw("<tr><td colspan=\"9\" class=\"empty\">No recurring schedule is registered.</td></tr>");
    b.raw("</tbody></table><h2>Scheduled events</h2><p class=\"summary\">").text(format_count(counts.pending))
        .raw(" pending, ").text(format_count(counts.due)).raw(" due now; the soonest ").number(static_cast<std::int64_t>(limit))
        .raw(" shown.</p><table class=\"grid\" id=\"scheduled\"><thead><tr><th>id</th><th>event</th><th>due (UTC)</th>"
             "<th>unique key</th><th>created (UTC)</th><th></th></tr></thead><tbody>");
    for (const auto& s : pending) {
      b.raw("<tr><td><code>").text(s.id.to_string()).raw("</code></td><td>").text(s.event_name).raw("</td><td>")
          .text(when(s.due_at)).raw("</td><td>").text(s.unique_key).raw("</td><td>").text(when(s.created_at)).raw("</td><td>");
      button(b, "/schedules/" + s.id.to_string() + "/cancel", "cancel", true);
      b.raw("</td></tr>");
    }
    if (pending.empty()) b.raw("<tr><td colspan=\"6\" class=\"empty\">Nothing is scheduled.</td></tr>");
    b.raw("</tbody></table>");
    return page("Schedules", "Schedules", b);
  }

  http_reply login_page(int status, bool failed) const {
    html b;
    b.raw("<h1>Sign in</h1>");
    if (failed) b.raw("<p class=\"error\">That token is not this worker's.</p>");
    b.raw("<form method=\"post\" action=\"/login\" class=\"login\"><label>token <input type=\"password\" name=\"token\" "
          "autocomplete=\"current-password\" autofocus></label> <button type=\"submit\">Sign in</button></form>"
          "<p class=\"note\">The token is the worker's OMNIBUS_HTTP_TOKEN (or --http-token-file).</p>");
    return page("Sign in", "", b, status);
  }

  // ---------------------------------------------------------------- actions

  http_reply post(const params& form, const std::vector<std::string_view>& parts) {
    const std::string by = "dashboard";
    auto conn = pool.take();
    const std::size_t n = parts.size();
    if (n == 3 && parts[0] == "dead-letters") {
      const std::int64_t id = id_segment(parts[1]);
      if (parts[2] != "retry" && parts[2] != "discard") throw not_found("no such action");
      redrive_request req;
      req.filter.ids = {id};
      req.action = parts[2] == "retry" ? redrive_action::retry : redrive_action::discard;
      req.requested_by = by;
      const redrive_status s = start_redrive(*conn, schema(), req);
      if (s.total == 0) throw not_found("dead letter " + std::to_string(id) + " is gone, or another redrive has it");
      return redirect("/redrives/" + std::to_string(s.id));
    }
    if (n == 1 && parts[0] == "redrives") {
      form.only({"csrf", "action", "listener", "event", "error", "since", "until", "all", "rate", "expected"});
      redrive_request req;
      const std::string action = form.text("action", 16);
      if (action != "retry" && action != "discard") throw bad_request("action must be retry or discard");
      req.action = action == "retry" ? redrive_action::retry : redrive_action::discard;
      req.filter = filter_from(form);
      const bool unfiltered = req.filter.listener.empty() && req.filter.event_name.empty() &&
                              req.filter.error_like.empty() && !req.filter.since && !req.filter.until;
      if (unfiltered && form.text("all", 1) != "1") {
        throw bad_request("no filter given: confirm every dead letter on the dry-run page");
      }
      req.rate = form.number("rate").value_or(0);
      req.requested_by = by;
      // The dry run said how many; when that changed meanwhile, show it again rather than act
      // on a set the operator did not see.
      if (const auto expected = form.integer("expected", 0, std::numeric_limits<std::int64_t>::max())) {
        const std::uint64_t now_matching = count_dead_letters(*conn, schema(), req.filter);
        if (now_matching != static_cast<std::uint64_t>(*expected)) {
          html b;
          b.raw("<h1>The count changed</h1><p class=\"warn\" id=\"changed\">The dry run showed ")
              .text(format_count(static_cast<std::uint64_t>(*expected))).raw("; ").text(format_count(now_matching))
              .raw(" match now. Nothing was started.</p><p><a href=\"/dead-letters/bulk?action=").attr(action)
              .attr(filter_query(form).empty() ? std::string() : "&" + filter_query(form))
              .raw("&amp;rate=").attr(form.text("rate", 32)).raw("\">See the dry run again</a></p>");
          return page("Count changed", "Dead letters", b, 409);
        }
      }
      try {
        const redrive_status s = start_redrive(*conn, schema(), req);
        return redirect("/redrives/" + std::to_string(s.id));
      } catch (const std::invalid_argument& e) {
        throw bad_request(e.what());
      }
    }
    if (n == 3 && parts[0] == "redrives") {
      const std::int64_t id = id_segment(parts[1]);
      const std::string_view verb = parts[2];
      const char* state = verb == "pause" ? "paused" : verb == "resume" ? "running" : verb == "cancel" ? "cancelled" : nullptr;
      if (!state) throw not_found("no such action");
      try {
        (void)set_redrive_state(*conn, schema(), id, state, by);
      } catch (const omnibus::error& e) {
        return error_page(409, e.what());
      }
      return redirect("/redrives/" + std::to_string(id));
    }
    if (n == 4 && parts[0] == "parked" && parts[2] == "keys") {
      const std::string listener = segment(parts[1]);
      const std::string_view verb = parts[3];
      if (verb != "retry" && verb != "skip" && verb != "discard") throw not_found("no such action");
      const std::string key = form.text("key", max_key_bytes);
      if (key.empty()) throw bad_request("which key? the form needs key");
      if (!request_parked_key_action(*conn, schema(), listener, key, verb)) {
        return error_page(409, "key " + key + " of " + listener + " is not parked");
      }
      return redirect("/parked#keys");
    }
    if (n == 3 && parts[0] == "parked") {
      const std::string listener = segment(parts[1]);
      if (parts[2] != "retry" && parts[2] != "skip") throw not_found("no such action");
      if (!request_parked_action(*conn, schema(), listener, parts[2])) {
        return error_page(409, "listener " + listener + " is not parked");
      }
      return redirect("/parked");
    }
    if (n == 3 && parts[0] == "listeners") {
      const std::string listener = segment(parts[1]);
      if (parts[2] == "pause") {
        std::string reason = form.text("reason");
        (void)pause_listener(*conn, schema(), listener, reason.empty() ? "paused from the dashboard" : reason);
      } else if (parts[2] == "resume") {
        (void)resume_listener(*conn, schema(), listener);
      } else {
        throw not_found("no such action");
      }
      std::lock_guard lock(overview_mutex);
      overview_at = {};  // the next overview shows it
      return redirect("/");
    }
    if (n == 3 && parts[0] == "schedules" && parts[2] == "cancel") {
      event_id id;
      try {
        id = event_id::parse(parts[1]);
      } catch (const std::exception&) {
        throw bad_request("not a scheduled event's id");
      }
      if (!bus.cancel(*conn, id)) return error_page(409, "that event has fired, was cancelled, or never existed");
      return redirect("/schedules");
    }
    if (n == 3 && parts[0] == "recurring") {
      const std::string name = segment(parts[1]);
      if (parts[2] == "trigger") {
        try {
          (void)trigger_recurring(*conn, bus, name);
        } catch (const std::invalid_argument& e) {
          return error_page(409, e.what());
        }
      } else if (parts[2] == "pause" || parts[2] == "resume") {
        if (!set_recurring_paused(*conn, schema(), name, parts[2] == "pause")) {
          return error_page(409, "no worker has registered recurring schedule " + name);
        }
      } else {
        throw not_found("no such action");
      }
      return redirect("/schedules");
    }
    throw not_found("no such action");
  }

  // ---------------------------------------------------------------- routing

  http_reply route(const http_request& r) {
    if (access_control::is_probe(r.path) && metrics) {
      if (r.method == "POST") return method_not_allowed();
      if (r.path == "/metrics") return {200, "text/plain; version=0.0.4; charset=utf-8", metrics->scrape(), {}};
      if (r.path == "/healthz") return text_reply(200, "ok");
      auto [ready, body] = metrics->readiness();
      return {ready ? 200 : 503, "application/json", std::move(body), {}};
    }
    if (r.path.rfind("/assets/", 0) == 0) {
      if (r.method == "POST") return method_not_allowed();
      const auto a = find_asset(std::string_view(r.path).substr(8));
      if (!a) return text_reply(404, "no such asset");
      http_reply out{200, std::string(a->content_type), std::string(a->bytes), {}};
      return out;
    }
    const auto parts = split_path(r.path);
    if (r.method == "POST") {
      const params form(r.body);
      if (r.path == "/login") {
        const std::string session = access.login(form.text("token", 4096));
        if (session.empty()) return login_page(401, true);
        http_reply out = redirect("/");
        out.headers.emplace_back("Set-Cookie", access.config().cookie_name + "=" + session + "; HttpOnly; SameSite=Strict; Path=/" +
                                                   std::string(access.config().origins.empty() ||
                                                                       access.config().origins.front().rfind("https:", 0) != 0
                                                                   ? ""
                                                                   : "; Secure"));
        return out;
      }
      if (r.path == "/logout") {
        access.logout(r.cookie);
        http_reply out = redirect("/login");
        out.headers.emplace_back("Set-Cookie", access.config().cookie_name + "=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0");
        return out;
      }
      return post(form, parts);
    }
    const params q(r.query);
    if (parts.empty()) return overview_page();
    if (parts.size() == 1 && parts[0] == "login") return login_page(200, false);
    if (parts.size() == 2 && parts[0] == "api" && parts[1] == "stats") {
      auto conn = pool.take();
      return {200, "application/json", stats_json(read_stats(bus, *conn), options.alert_after), {}};
    }
    if (parts[0] == "dead-letters") {
      if (parts.size() == 1) return dead_letters_page(q);
      if (parts.size() == 2 && parts[1] == "bulk") return bulk_page(q);
      if (parts.size() == 2) return dead_letter_page_for(id_segment(parts[1]));
    }
    if (parts[0] == "redrives") {
      if (parts.size() == 1) return redrives_page(q);
      if (parts.size() == 2) return redrive_page(id_segment(parts[1]));
    }
    if (parts.size() == 1 && parts[0] == "parked") return parked_page();
    if (parts.size() == 4 && parts[0] == "parked" && parts[2] == "keys" && parts[3] == "discard") {
      return discard_key_page(segment(parts[1]), q);
    }
    if (parts.size() == 1 && parts[0] == "schedules") return schedules_page(q);
    throw not_found("no such page: try / for the overview");
  }

  static http_reply method_not_allowed() {
    http_reply out = text_reply(405, "only GET and HEAD here");
    out.headers.emplace_back("Allow", "GET, HEAD");
    return out;
  }

  http_reply handle(const http_request& r) {
    if (r.method == "POST" && !access_control::is_probe(r.path) &&
        r.content_type.rfind("application/x-www-form-urlencoded", 0) != 0) {
      return text_reply(415, "actions take a form (application/x-www-form-urlencoded)");
    }
    std::string csrf;
    if (r.method == "POST" && r.content_type.rfind("application/x-www-form-urlencoded", 0) == 0) {
      if (auto form = parse_query(r.body)) {
        for (const auto& p : *form) {
          if (p.name == "csrf") csrf = p.value;
        }
      }
    }
    switch (access.decide(r, csrf)) {
      case access_verdict::allow:
        break;
      case access_verdict::unauthorized: {
        if (access_control::is_probe(r.path) || r.method != "GET") {
          http_reply out = text_reply(401, "a token is needed: Authorization: Bearer <OMNIBUS_HTTP_TOKEN>");
          out.headers.emplace_back("WWW-Authenticate", "Bearer");
          return out;
        }
        return login_page(401, false);
      }
      case access_verdict::forbidden:
        return error_page(403, access.config().read_only && r.path != "/login"
                                   ? "this dashboard is read-only (--http-read-only)"
                                   : "refused: the form did not come from this dashboard (CSRF token or Origin)");
      case access_verdict::misdirected:
        return text_reply(421, "this endpoint answers to 127.0.0.1, localhost or [::1] (or --http-origin's host)");
    }
    try {
      return route(r);
    } catch (const bad_request& e) {
      return error_page(400, e.what());
    } catch (const not_found& e) {
      return error_page(404, e.what());
    } catch (const pqxx::broken_connection& e) {
      log->warn("dashboard: {} {}: the database is unreachable: {}", r.method, r.path, e.what());
      return error_page(503, "the database is unreachable; the page will work again when it is back");
    } catch (const pqxx::sql_error& e) {
      log->warn("dashboard: {} {}: {}", r.method, r.path, e.what());
      return error_page(503, "the database refused the query (see the worker's log)");
    }
  }
};

dashboard::dashboard(event_bus& bus, worker_metrics* metrics, access_control& access, dashboard_options options,
                     std::shared_ptr<spdlog::logger> log)
    : impl_(std::make_unique<impl>(bus, metrics, access, std::move(options), std::move(log))) {}

dashboard::~dashboard() = default;

http_reply dashboard::handle(const http_request& r) { return impl_->handle(r); }

}  // namespace omnibus::detail
