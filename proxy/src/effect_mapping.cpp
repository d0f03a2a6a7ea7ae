#include "cluster/proxy/effect_mapping.hpp"

namespace cluster::proxy {

using nlohmann::json;

namespace {

std::optional<effect_target> split_at_dot(std::string_view text) {
  const auto dot = text.find('.');
  if (dot == std::string_view::npos || dot == 0 || dot + 1 == text.size()) return std::nullopt;
  return effect_target{std::string(text.substr(0, dot)), std::string(text.substr(dot + 1))};
}

// Without overrides or the Discard form: `Type.Rpc` of a known type, else the one type with
// an RPC of that name.
result<effect_target> find_target(const std::string& tag, const assignment_snapshot& snapshot) {
  if (auto split = split_at_dot(tag); split) {
    if (const auto* type = snapshot.find_entity_type(split->entity_type)) {
      if (type->find_rpc(split->rpc)) return std::move(*split);
      return failure{errc::unknown_rpc, "Unknown request tag: " + tag + " (entity type " +
                                            type->name + " has no RPC " + split->rpc + ")"};
    }
  }
  std::optional<effect_target> found;
  std::string owners;
  for (const auto& type : snapshot.entity_types) {
    if (!type.find_rpc(tag)) continue;
    if (found) {
      owners += owners.empty() ? found->entity_type + ", " + type.name : ", " + type.name;
      continue;
    }
    found = effect_target{type.name, tag};
  }
  if (!owners.empty())
    return failure{errc::unknown_rpc,
                   "Unknown request tag: " + tag + " is an RPC of several entity types (" + owners +
                       "): prefix it (\"Type." + tag + "\") or map it in [proxy.effect_rpcs]"};
  if (!found)
    return failure{errc::unknown_rpc, "Unknown request tag: " + tag +
                                          " (no entity type has that RPC, and it is not "
                                          "\"Type.Rpc\" of a known type)"};
  return std::move(*found);
}

json address_json(const effect_address& address) {
  return json{{"shardId", {{"group", address.group}, {"id", address.shard}}},
              {"entityType", address.entity_type},
              {"entityId", address.entity_id}};
}

json fail(json error) {
  return json{{"_tag", "Failure"}, {"cause", {{"_tag", "Fail"}, {"error", std::move(error)}}}};
}

// MessagePack strings need not be UTF-8; JSON text must be: invalid bytes are replaced
// when the message is written, so nothing is refused for its text.
json decoded_payload(const bytes& payload) {
  if (payload.empty()) return nullptr;
  auto value = json::from_msgpack(payload, true, false);
  return value.is_discarded() ? json() : value;
}

}  // namespace

result<effect_tags> effect_tags::make(const std::map<std::string, std::string>& overrides) {
  effect_tags tags;
  for (const auto& [tag, target] : overrides) {
    auto split = split_at_dot(target);
    if (!split)
      return failure{errc::invalid_request, "proxy.effect_rpcs." + tag +
                                                ": expected \"Type.Rpc\", got \"" + target + "\""};
    tags.overrides_.emplace(tag, std::move(*split));
  }
  return tags;
}

result<effect_target> effect_tags::resolve(const std::string& tag,
                                           const assignment_snapshot& snapshot) {
  if (auto it = overrides_.find(tag); it != overrides_.end()) return it->second;
  if (snapshot.entity_types.empty())
    return failure{errc::no_runner,
                   "the cluster has no entity types yet (no runner registered, or the proxy has "
                   "not heard from the manager): retry"};
  if (resolved_version_ != snapshot.version) {
    resolved_.clear();
    resolved_version_ = snapshot.version;
  }
  if (auto it = resolved_.find(tag); it != resolved_.end()) return it->second;
  auto found = find_target(tag, snapshot);
  if (!found) {
    // @effect/cluster 0.60+ adds `<Rpc>Discard` to every RPC: the same call, not waited for.
    constexpr std::string_view suffix = "Discard";
    if (tag.size() > suffix.size() &&
        tag.compare(tag.size() - suffix.size(), suffix.size(), suffix) == 0) {
      if (auto base = find_target(tag.substr(0, tag.size() - suffix.size()), snapshot)) {
        base.value().discard = true;
        found = std::move(base);
      }
    }
  }
  if (!found) return std::move(found).error();
  // Bounded by what clients ask for and the snapshot knows: resolutions of names that
  // exist only.
  resolved_.emplace(tag, found.value());
  return found;
}

json effect_die(std::string_view name, std::string_view message) {
  return json{{"_tag", "Failure"},
              {"cause", {{"_tag", "Die"}, {"defect", {{"name", name}, {"message", message}}}}}};
}

json effect_interrupt() {
  return json{{"_tag", "Failure"},
              {"cause", {{"_tag", "Interrupt"}, {"fiberId", {{"_tag", "None"}}}}}};
}

json effect_exit(const reply_msg& reply, const effect_address& address, bool void_success) {
  switch (reply.code) {
    case errc::ok:
      // A stream's success is void (no value, as Effect's own server writes it): its items
      // went as chunks.
      if (void_success) return json{{"_tag", "Success"}};
      return json{{"_tag", "Success"}, {"value", decoded_payload(reply.payload)}};
    case errc::application_error: {
      json error = json::object();
      if (auto details = decoded_payload(reply.payload); details.is_object()) error = details;
      error["_tag"] = reply.error;
      if (!error.contains("message")) error["message"] = reply.message;
      return fail(std::move(error));
    }
    case errc::mailbox_full:
      return fail(json{{"_tag", "MailboxFull"}, {"address", address_json(address)}});
    case errc::not_owner:
    case errc::no_runner:
    case errc::unavailable:
    case errc::shutting_down:
      return fail(json{{"_tag", "EntityNotManagedByRunner"}, {"address", address_json(address)}});
    case errc::storage_error:
      return fail(json{{"_tag", "PersistenceError"},
                       {"cause", {{"name", "StorageError"}, {"message", reply.message}}}});
    case errc::cancelled:
      return effect_interrupt();
    default:
      return effect_die(reply.error.empty() ? to_string(reply.code) : std::string_view(reply.error),
                        reply.message);
  }
}

}  // namespace cluster::proxy
