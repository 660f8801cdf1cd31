#include "omnibus/operations.hpp"

#include <algorithm>

#include <pqxx/pqxx>

#include "omnibus/dead_letters.hpp"
#include "omnibus/envelope.hpp"
#include "core/context_access.hpp"
#include "pg/store.hpp"

namespace omnibus {
namespace {

class borrowed_connection final : public connection_source {
 public:
  explicit borrowed_connection(pqxx::connection_base& c) : conn_(c) {}
  pqxx::connection_base& connection() override { return conn_; }

 private:
  pqxx::connection_base& conn_;
};

queue& queue_of(const event_bus& bus) {
  if (bus.target() == nullptr) throw std::logic_error("bus: this operation needs a bus with a queue");
  return *bus.target();
}

}  // namespace

retry_outcome retry_dead_letter(const event_bus& bus, pqxx::connection_base& conn, std::int64_t id) {
  const std::string& schema = bus.options().schema;
  auto dl = find_dead_letter(conn, schema, id);
  if (!dl) throw error("no dead letter " + std::to_string(id) + " in schema " + schema);
  retry_outcome out{id, dl->listener, dl->event_id, false, {}};
  const auto& listeners = bus.async_listeners();
  auto it = std::find_if(listeners.begin(), listeners.end(), [&](const async_listener& l) { return l.name == dl->listener; });
  if (it == listeners.end()) {
    out.error = "no listener named " + dl->listener + " is registered in this build";
    return out;
  }
  try {
    // The stored subject is "<prefix>.<event name>": take the prefix the event was sent under,
    // so a retry never depends on the operator repeating --subject-prefix.
    std::string prefix = bus.options().stream.subject_prefix;
    const std::string suffix = "." + dl->event_name;
    if (!dl->event_name.empty() && dl->msg.subject.size() > suffix.size() &&
        dl->msg.subject.compare(dl->msg.subject.size() - suffix.size(), suffix.size(), suffix) == 0) {
      prefix = dl->msg.subject.substr(0, dl->msg.subject.size() - suffix.size());
    }
    envelope env = decode(dl->msg, prefix, bus.options().max_body_bytes);
    context ctx;
    ctx.meta() = env.meta;
    detail::context_access::set_event_id(ctx, env.id);
    borrowed_connection db{conn};
    detail::context_access::set_connection_source(ctx, &db);
    if (it->options.inbox) {
      // As the worker runs it: the inbox row, the handler's writes and its outbox rows commit
      // together, and an event already recorded is not run again.
      pqxx::work tx{conn};
      if (detail::claim_inbox(tx, schema, it->name, env.id.to_string())) {
        detail::context_access::set_transaction(ctx, &tx);
        it->handler(ctx, env);
        tx.commit();
      }
    } else {
      it->handler(ctx, env);
    }
    out.ok = true;
  } catch (const std::exception& e) {
    out.error = e.what();
  }
  if (out.ok) {
    discard_dead_letter(conn, schema, id);
  } else {
    dead_letter again = *dl;
    again.error = out.error;
    again.attempts = dl->attempts + 1;
    write_dead_letter(conn, schema, again);
  }
  return out;
}

std::vector<retry_outcome> retry_dead_letters(const event_bus& bus, pqxx::connection_base& conn,
                                              std::string_view listener, std::string_view event_name) {
  auto letters = list_dead_letters(conn, bus.options().schema, listener, event_name, 100000);
  std::reverse(letters.begin(), letters.end());  // oldest first
  std::vector<retry_outcome> out;
  out.reserve(letters.size());
  for (const dead_letter& dl : letters) out.push_back(retry_dead_letter(bus, conn, dl.id));
  return out;
}

std::vector<consumer_status> list_consumers(const event_bus& bus) {
  std::vector<consumer_status> out;
  for (consumer_info& c : queue_of(bus).consumers(bus.options().stream)) {
    const bool owned = std::any_of(bus.async_listeners().begin(), bus.async_listeners().end(),
                                   [&](const async_listener& l) { return l.consumer_name == c.name; });
    out.push_back({std::move(c), owned});
  }
  return out;
}

std::vector<std::string> prune_consumers(const event_bus& bus, bool dry_run) {
  std::vector<std::string> pruned;
  for (const consumer_status& c : list_consumers(bus)) {
    // Only what provisioning marked as this group's: a name prefix cannot tell group "shop"
    // from "shop_eu", and a consumer made by anything else is never ours to delete.
    if (c.owned || c.info.group != bus.options().group) continue;
    if (!dry_run) (void)queue_of(bus).delete_consumer(bus.options().stream, c.info.name);
    pruned.push_back(c.info.name);
  }
  return pruned;
}

}  // namespace omnibus
