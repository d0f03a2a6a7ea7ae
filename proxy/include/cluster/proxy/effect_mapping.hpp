#pragma once
// What an @effect/rpc request means to the cluster and what its outcome means to the Effect
// client: `EntityProxy.toRpcGroup` tags to (entity type, RPC), and replies to `Exit`s in
// the encodings `Schema.Exit` and `@effect/cluster`'s error schemas decode.
//
// The error table (docs/effect-rpc.md):
//   Ok                                   → Success(value)
//   ApplicationError (app_error)         → Fail({ _tag: <tag>, message, ...details })
//   MailboxFull                          → Fail(MailboxFull { address })
//   NotOwner, NoRunner, Unavailable,
//   ShuttingDown                         → Fail(EntityNotManagedByRunner { address })
//   StorageError                         → Fail(PersistenceError { cause })
//   Cancelled                            → Interrupt
//   everything else                      → Die({ name: <code's name>, message })
//
// Used by the proxy's Effect listener; no I/O.

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>

#include "cluster/protocol/messages.hpp"

namespace cluster::proxy {

struct effect_target {
  std::string entity_type;
  std::string rpc;
  /// `<Rpc>Discard` (the fire-and-forget twin @effect/cluster 0.60+ adds to each RPC):
  /// acknowledged once accepted, with a void success.
  bool discard = false;
};

/// Tag → (type, RPC): `[proxy.effect_rpcs]` first, then `Type.Rpc` (split at the first
/// dot), then the one entity type of the snapshot with an RPC of that name; an RPC name
/// `<Rpc>Discard` that no type declares is `<Rpc>` sent with discard. Resolutions are kept
/// until the snapshot's version changes.
class effect_tags {
 public:
  /// `overrides`: tag → "Type.Rpc"; a value without a dot is a failure naming the tag.
  static result<effect_tags> make(const std::map<std::string, std::string>& overrides);

  /// UnknownRpc for a tag that names nothing (or several types: the text says which);
  /// NoRunner while the snapshot knows no entity type at all.
  result<effect_target> resolve(const std::string& tag, const assignment_snapshot& snapshot);

 private:
  std::map<std::string, effect_target, std::less<>> overrides_;
  std::map<std::string, effect_target, std::less<>> resolved_;
  std::uint64_t resolved_version_ = 0;
};

/// Where an entity lives, as the cluster error schemas name it (EntityAddress).
struct effect_address {
  std::string group;
  std::int32_t shard = 0;
  std::string entity_type;
  std::string entity_id;
};

/// `Exit` (encoded) of a reply. `void_success`: the RPC streamed or was discarded, so its
/// success carries no value.
nlohmann::json effect_exit(const reply_msg& reply, const effect_address& address,
                           bool void_success = false);
/// `Exit.die({ name, message })`, decoded by the client as an Error with that name.
nlohmann::json effect_die(std::string_view name, std::string_view message);
nlohmann::json effect_interrupt();

}  // namespace cluster::proxy
