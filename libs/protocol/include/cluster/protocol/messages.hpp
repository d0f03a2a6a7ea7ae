#pragma once
// The one wire protocol of every cluster-sst process (docs/protocol.md is its spec).
//
// A frame is a 4-byte big-endian body length followed by a MessagePack body
// `[kind, id, fields]`: `kind` a message_kind, `id` the request id that the reply
// repeats (0 for pushes), `fields` a map with the kind's named fields.
//
// Each struct lists its fields once, in CLUSTER_WIRE_FIELDS (wire_fields.hpp): that list is
// the map's keys, the decoder and operator==. A field left out of it is not sent: the
// round-trip tests in tests/common/codec_test.cpp catch that.

#include <cstdint>
#include <msgpack.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cluster/protocol/errc.hpp"
#include "cluster/protocol/result.hpp"
#include "cluster/protocol/wire_fields.hpp"

// Before the structs: their decoders convert errc values.
MSGPACK_ADD_ENUM(cluster::errc);

namespace cluster {

// 2: hello carries credentials and the handshake ends with `auth` (docs/security.md).
inline constexpr std::uint32_t protocol_version = 2;
inline constexpr std::size_t frame_header_size = 4;

enum class message_kind : std::uint32_t {
  hello = 1,      ///< first message of a client: version and who it is
  hello_ack = 2,  ///< server's answer to hello
  request = 3,    ///< entity RPC call
  reply = 4,      ///< answer to any request-like kind, same id
  ping = 5,       ///< liveness probe, answered by pong with the same id
  pong = 6,
  register_runner = 7,        ///< runner → manager: join the cluster
  unregister_runner = 8,      ///< runner → manager: leaving, move my shards now
  subscribe_assignments = 9,  ///< ask the manager to push assignment snapshots
  assignments = 10,           ///< manager → subscriber push (id 0): an assignment_snapshot
  get_status = 11,            ///< ask the manager for an assignment_snapshot in the reply payload
  interrupt = 12,             ///< caller no longer waits for request `id` (best effort)
  list_dead_letters = 13,     ///< ask the manager for dead letters (a dead_letters_msg payload)
  replay_dead_letter = 14,    ///< manager: run dead letter `id` again, attempts from 0
  drop_dead_letter = 15,      ///< manager: forget dead letter `id`, keep its error reply
  auth = 16,                  ///< client's proof of its key, after hello_ack (answered by reply)
  stream_chunk = 17,          ///< callee → caller: items of a streaming reply (request `id`)
  stream_ack = 18,            ///< caller → callee: credit for more items of stream `id`
  // 19 is kept for stream flow control.
  push_plugin = 20,    ///< admin → manager: one chunk of a plugin file to store cluster-wide
  list_plugins = 21,   ///< → manager: the stored plugins (a plugins_msg payload)
  remove_plugin = 22,  ///< admin → manager: forget a stored plugin, every runner unloads it
  fetch_plugin = 23,   ///< runner → manager: one chunk of a stored plugin's bytes
};
/// One past the highest kind: the size of per-kind tables (permissions).
inline constexpr std::uint32_t message_kind_count = 24;

using bytes = std::vector<std::uint8_t>;

struct hello_msg {
  std::uint32_t protocol_version = cluster::protocol_version;
  std::string role;  ///< "manager", "runner", "proxy", "client" or "admin"
  std::string name;
  bytes key;    ///< the caller's Ed25519 public key (empty: no authentication)
  bytes nonce;  ///< 32 fresh random bytes the server's signature must cover
  CLUSTER_WIRE_FIELDS(hello_msg, protocol_version, role, name, key, nonce);
};

struct hello_ack_msg {
  std::uint32_t protocol_version = cluster::protocol_version;
  std::string name;
  std::string role;  ///< the server's role
  bytes key;         ///< the server's Ed25519 public key (empty: no authentication)
  bytes nonce;       ///< 32 fresh random bytes the client's signature must cover
  bytes signature;   ///< the server's signature of the handshake transcript
  CLUSTER_WIRE_FIELDS(hello_ack_msg, protocol_version, name, role, key, nonce, signature);
};

/// The client's signature of the handshake transcript (kind auth, after hello_ack).
struct auth_msg {
  bytes signature;
  CLUSTER_WIRE_FIELDS(auth_msg, signature);
};

struct request_msg {
  std::string entity_type;
  std::string entity_id;
  std::string rpc;
  bytes payload;           ///< MessagePack encoding of the RPC's request
  bool persisted = false;  ///< informational: the runner decides from the RPC's declaration
  std::optional<std::string> primary_key;
  std::optional<std::int64_t> deliver_at_ms;  ///< unix ms; persisted RPCs only
  std::uint32_t timeout_ms = 0;               ///< 0: the receiver's default
  /// Acknowledge once accepted (persisted: once stored) with an empty Ok; no outcome is sent.
  bool discard = false;
  /// Streaming RPCs: items the caller accepts before its first stream_ack (0: the default).
  std::uint32_t credit = 0;
  /// W3C trace context of the call (`00-<trace id>-<parent span id>-<flags>`); empty when the
  /// caller has none, and then not on the wire. Each hop that records a span sends its own
  /// span id on.
  std::string traceparent;
  CLUSTER_WIRE_FIELDS_OMIT_EMPTY(request_msg, (traceparent), entity_type, entity_id, rpc, payload,
                                 persisted, primary_key, deliver_at_ms, timeout_ms, discard,
                                 credit);
};

/// The credit of a streaming request that gives none (request_msg::credit == 0).
inline constexpr std::uint32_t default_stream_credit = 32;
/// The most credit a caller may hold out: a larger credit or sum of acks is InvalidRequest.
inline constexpr std::uint32_t max_stream_credit = 65536;

/// Kind stream_chunk: the next items of the streaming reply to request `id`, in order. Each
/// item is the MessagePack encoding of one element; never more than the credit granted.
struct stream_chunk_msg {
  std::vector<bytes> items;
  CLUSTER_WIRE_FIELDS(stream_chunk_msg, items);
};

/// Kind stream_ack: the caller of stream `id` accepts `credit` more items.
struct stream_ack_msg {
  std::uint32_t credit = 0;
  CLUSTER_WIRE_FIELDS(stream_ack_msg, credit);
};

/// The error details (`reply.payload`) of a Defect whose attempt was cut short: the
/// plugin's process crashed, was killed past runner.handler_timeout_ms or over its memory
/// limit. MessagePack {"cut_short": true}. A persisted message answered so is retried (up to
/// storage.max_attempts) rather than stored as processed; callers see a plain Defect.
inline const bytes& cut_short_details() {
  static const bytes details = {0x81, 0xa9, 'c', 'u', 't', '_', 's', 'h', 'o', 'r', 't', 0xc3};
  return details;
}

struct reply_msg {
  errc code = errc::ok;
  std::string error;    ///< application error tag, or the code's name
  std::string message;  ///< human-readable detail
  bytes payload;        ///< MessagePack reply (ok) or error details
  CLUSTER_WIRE_FIELDS(reply_msg, code, error, message, payload);

  bool ok() const { return code == errc::ok; }
  static reply_msg success(bytes payload_bytes) {
    reply_msg r;
    r.payload = std::move(payload_bytes);
    return r;
  }
  static reply_msg failure(errc failure_code, std::string detail) {
    reply_msg r;
    r.code = failure_code;
    r.error = std::string(to_string(failure_code));
    r.message = std::move(detail);
    return r;
  }
  /// The reply that reports `why` to a caller.
  static reply_msg failure(cluster::failure why) {
    return failure(why.code, std::move(why.message));
  }
  /// A Defect for an attempt cut short by the plugin's process (see cut_short_details).
  static reply_msg crashed(std::string detail) {
    reply_msg r = failure(errc::defect, std::move(detail));
    r.payload = cut_short_details();
    return r;
  }
  bool attempt_cut_short() const { return code == errc::defect && payload == cut_short_details(); }
};

struct rpc_info {
  std::string name;
  bool persisted = false;
  bool read_only = false;  ///< CLUSTER_RPC_READ_ONLY: changes no state, may run concurrently
  bool stream = false;     ///< CLUSTER_RPC_STREAM: the reply is a stream of items
  CLUSTER_WIRE_FIELDS(rpc_info, name, persisted, read_only, stream);
};

/// How a runner runs an entity type: what the plugin declares, with the runner's
/// [entity.<Type>] config applied. 0 means the runner's default.
struct entity_options {
  std::uint32_t flags = 0;  ///< CLUSTER_ENTITY_* bits (stateful, keep-alive, singleton, cron)
  std::uint32_t mailbox_capacity = 0;
  std::int64_t max_idle_ms = 0;
  std::uint32_t concurrency = 0;
  std::string cron_schedule;      ///< cron jobs: their schedule ("" otherwise)
  std::uint32_t cron_missed = 0;  ///< CLUSTER_CRON_*
  CLUSTER_WIRE_FIELDS(entity_options, flags, mailbox_capacity, max_idle_ms, concurrency,
                      cron_schedule, cron_missed);
};

struct entity_type_info {
  std::string name;
  std::string group;
  std::vector<rpc_info> rpcs;
  entity_options options;
  CLUSTER_WIRE_FIELDS(entity_type_info, name, group, rpcs, options);

  const rpc_info* find_rpc(std::string_view rpc) const {
    for (const auto& r : rpcs)
      if (r.name == rpc) return &r;
    return nullptr;
  }
};

/// One plugin file as a runner holds it: what it loaded, or why it could not.
struct plugin_info {
  std::string name;     ///< the plugin's own name (cluster::plugin("greeter"))
  std::string version;  ///< the plugin's own version, "0.0.0" when it gives none
  std::string sha256;   ///< lowercase hex of the file's bytes as loaded
  std::string file;     ///< where the runner found it (a watched folder, or "push:<name>")
  /// "loaded" (serving), "failed" (this file was refused: `error` says why; an older
  /// version of the same file, if any, keeps serving and is listed as "loaded"),
  /// "draining" (removed or replaced: finishing the requests it was running).
  std::string state;
  std::string error;
  std::vector<std::string> entity_types;
  CLUSTER_WIRE_FIELDS(plugin_info, name, version, sha256, file, state, error, entity_types);
};

struct register_runner_msg {
  std::string name;
  std::string address;  ///< host:port other processes connect to
  std::vector<std::string> groups;
  std::string version;
  std::vector<entity_type_info> entity_types;
  /// Random hex chosen at the runner's start: its storage sessions carry it, so the manager
  /// can end them when it declares the runner dead. Empty from older runners (not fenced).
  std::string incarnation;
  /// The plugin files it holds (loaded, failed, draining). A runner sends register_runner
  /// again on the same connection whenever its plugins change; the manager then replaces
  /// what it knew of that runner (its shards stay where they are unless the change moves them).
  std::vector<plugin_info> plugins;
  /// host:port of its admin HTTP endpoint (/metrics, /healthz, /readyz); empty when it has
  /// none. The manager's dashboard reads the runners' metrics there.
  std::string admin_address;
  CLUSTER_WIRE_FIELDS(register_runner_msg, name, address, groups, version, entity_types,
                      incarnation, plugins, admin_address);
};

struct unregister_runner_msg {
  std::string address;
  CLUSTER_WIRE_FIELDS(unregister_runner_msg, address);
};

/// A message without fields: an empty map on the wire.
struct empty_msg {
  static constexpr std::size_t wire_field_count = 0;
  template <class Packer>
  void msgpack_pack(Packer& packer) const {
    packer.pack_map(0);
  }
  void msgpack_unpack(const msgpack::object& object) {
    if (object.type != msgpack::type::MAP) throw msgpack::type_error();
  }
  friend bool operator==(const empty_msg&, const empty_msg&) = default;
};

struct shard_group_assignment {
  std::string group;
  std::uint32_t shards = 0;
  std::vector<std::string> owners;  ///< owners[i]: address of shard i + 1's runner, "" if none
  CLUSTER_WIRE_FIELDS(shard_group_assignment, group, shards, owners);
};

struct runner_info {
  std::string name;
  std::string address;
  std::vector<std::string> groups;
  std::string version;
  bool healthy = true;
  std::uint32_t shards = 0;
  std::vector<plugin_info> plugins;  ///< as the runner last registered them
  std::string admin_address;         ///< its admin HTTP endpoint, empty when it has none
  CLUSTER_WIRE_FIELDS(runner_info, name, address, groups, version, healthy, shards, plugins,
                      admin_address);
};

/// A plugin stored in the cluster by `clusterctl plugin push` (its bytes are kept apart).
struct stored_plugin {
  std::string name;  ///< unique: a push with the same name replaces the stored plugin
  std::string version;
  std::string sha256;  ///< lowercase hex of the bytes; runners check it before loading
  std::uint32_t abi_major = 0;
  std::uint32_t abi_minor = 0;
  std::uint64_t size_bytes = 0;
  std::vector<std::string> entity_types;
  std::int64_t pushed_at_ms = 0;  ///< unix ms, set by the manager
  CLUSTER_WIRE_FIELDS(stored_plugin, name, version, sha256, abi_major, abi_minor, size_bytes,
                      entity_types, pushed_at_ms);
};

/// The manager's view of the cluster: pushed on every change and answered to get_status.
struct assignment_snapshot {
  std::uint64_t version = 0;
  std::string storage;  ///< "memory" or "postgres"
  std::vector<shard_group_assignment> groups;
  std::vector<entity_type_info> entity_types;
  std::vector<runner_info> runners;
  /// Plugins stored in the cluster (clusterctl plugin push), without their bytes: every
  /// runner fetches (fetch_plugin), verifies and loads each one it does not hold yet.
  std::vector<stored_plugin> pushed_plugins;
  CLUSTER_WIRE_FIELDS(assignment_snapshot, version, storage, groups, entity_types, runners,
                      pushed_plugins);

  const shard_group_assignment* find_group(std::string_view name) const {
    for (const auto& g : groups)
      if (g.group == name) return &g;
    return nullptr;
  }
  const entity_type_info* find_entity_type(std::string_view name) const {
    for (const auto& t : entity_types)
      if (t.name == name) return &t;
    return nullptr;
  }
};

/// A persisted message that is not run again: its attempts were cut short
/// storage.max_attempts times. Its error reply is stored (callers with its primary key get it).
struct dead_letter_info {
  std::int64_t id = 0;  ///< the message's id
  std::string shard_group;
  std::int32_t shard = 0;
  std::string entity_type;
  std::string entity_id;
  std::string rpc;
  std::string primary_key;
  std::int32_t attempts = 0;
  std::string last_failure;
  std::int64_t dead_at_ms = 0;  ///< unix ms
  CLUSTER_WIRE_FIELDS(dead_letter_info, id, shard_group, shard, entity_type, entity_id, rpc,
                      primary_key, attempts, last_failure, dead_at_ms);
};

struct list_dead_letters_msg {
  std::uint32_t limit = 1000;  ///< oldest first, at most this many
  CLUSTER_WIRE_FIELDS(list_dead_letters_msg, limit);
};

/// The reply payload of list_dead_letters.
struct dead_letters_msg {
  std::vector<dead_letter_info> dead_letters;
  CLUSTER_WIRE_FIELDS(dead_letters_msg, dead_letters);
};

/// The dead letter that replay_dead_letter and drop_dead_letter act on.
struct dead_letter_ref_msg {
  std::int64_t id = 0;
  CLUSTER_WIRE_FIELDS(dead_letter_ref_msg, id);
};

/// One chunk of a plugin upload (admin → manager). Chunks go in order, each answered before
/// the next is sent; the manager keeps one upload per connection. The last chunk
/// (offset + chunk.size() == size_bytes) is checked against `plugin.sha256` and stored; its
/// reply payload is the stored_plugin.
struct push_plugin_msg {
  stored_plugin plugin;  ///< metadata, the same in every chunk (pushed_at_ms is ignored)
  std::uint64_t offset = 0;
  bytes chunk;  ///< at most push_plugin_chunk_bytes
  CLUSTER_WIRE_FIELDS(push_plugin_msg, plugin, offset, chunk);
};
inline constexpr std::size_t push_plugin_chunk_bytes = 1024 * 1024;

/// The reply payload of list_plugins.
struct plugins_msg {
  std::vector<stored_plugin> plugins;
  CLUSTER_WIRE_FIELDS(plugins_msg, plugins);
};

struct remove_plugin_msg {
  std::string name;
  CLUSTER_WIRE_FIELDS(remove_plugin_msg, name);
};

/// Asks for bytes [offset, offset + max_bytes) of the stored plugin with this hash.
struct fetch_plugin_msg {
  std::string sha256;
  std::uint64_t offset = 0;
  std::uint32_t max_bytes = push_plugin_chunk_bytes;
  CLUSTER_WIRE_FIELDS(fetch_plugin_msg, sha256, offset, max_bytes);
};

/// The reply payload of fetch_plugin.
struct plugin_chunk_msg {
  std::uint64_t size_bytes = 0;  ///< the whole file
  bytes chunk;
  CLUSTER_WIRE_FIELDS(plugin_chunk_msg, size_bytes, chunk);
};

}  // namespace cluster
