/* The binary contract between the runner and entity plugins (ABI 2.2).
 *
 * Only C types cross this boundary: integers, `const char*`, byte views of MessagePack
 * payloads, function pointers and opaque handles. Whoever allocates frees. Plugin
 * authors use the C++ wrapper in <cluster/sdk.hpp>; the runner includes only this file.
 *
 * How the ABI grows (the full rules are in sdk/README.md):
 * - The runner accepts a plugin whose abi_major equals its own and whose abi_minor is not
 *   newer than its own.
 * - Every struct a plugin writes starts with `struct_size` (the writer's sizeof). The
 *   runner copies each one into a zeroed struct of its own by that size, so a field the
 *   plugin's minor did not have reads as zero, which always means "the default".
 * - Arrays are arrays of pointers, so each element carries its own struct_size.
 * - A minor only appends fields at the end of a struct. No struct has implicit padding
 *   (checked below), so an appended field never lands in bytes an older writer left
 *   uninitialized.
 * - The entry symbol's signature, the first three fields of cluster_plugin_descriptor and
 *   the layout of cluster_load_context never change, not even in a new major: they are
 *   what every runner reads before it knows the plugin's version.
 */
#ifndef CLUSTER_PLUGIN_ABI_H
#define CLUSTER_PLUGIN_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CLUSTER_ABI_MAJOR 2
#define CLUSTER_ABI_MINOR 2
/** Name of the one symbol every plugin exports (a cluster_plugin_entry_fn). */
#define CLUSTER_PLUGIN_ENTRY_SYMBOL "cluster_plugin_entry"

/** Outcome of a handler or of a call to another entity. */
typedef enum cluster_status {
  CLUSTER_STATUS_OK = 0,
  CLUSTER_STATUS_APPLICATION_ERROR = 1, /**< typed error: tag + message */
  CLUSTER_STATUS_BAD_PAYLOAD = 2,       /**< request bytes did not decode */
  CLUSTER_STATUS_DEFECT = 3,            /**< unexpected exception in the handler */
  CLUSTER_STATUS_CALL_FAILED = 4,       /**< a call to another entity failed in the cluster */
  /** (2.2) The handler stopped because its request was cancelled (`cancelled`); the runner
   *  answers the caller Cancelled, or DeadlineExceeded when the deadline cancelled it. */
  CLUSTER_STATUS_CANCELLED = 5
} cluster_status;

/** RPC flags. Bits a runner does not know are ignored. */
#define CLUSTER_RPC_PERSISTED 1u
/** (2.1) The RPC does not change its entity's state: it may run beside other read-only calls
 *  of the same entity (up to the type's `concurrency`), and the runner stores no state after
 *  it (a `set_state` inside it is refused as a Defect). */
#define CLUSTER_RPC_READ_ONLY 2u
/** (2.2) The RPC answers with a stream of items (`stream_write`) before its reply. Streaming
 *  RPCs are volatile: a plugin declaring one persisted is refused at load. */
#define CLUSTER_RPC_STREAM 4u

/** (2.1) Entity type flags (cluster_entity_descriptor.flags). */
/** The runner loads the entity's stored state before `create` (cluster_call_context.state)
 *  and stores what handlers give `set_state`: with the reply of a persisted RPC in one
 *  transaction, before the reply of a volatile one. */
#define CLUSTER_ENTITY_STATEFUL 1u
/** Never passivated while its shard is served here; after a shard move, the new owner
 *  activates it again without waiting for a message. */
#define CLUSTER_ENTITY_KEEP_ALIVE 2u
/** One instance in the whole cluster, entity id "singleton", kept alive. RPC 0 is its run:
 *  the runner calls it once per activation with an empty map and expects it to return only
 *  when `stop_requested` says so (or on failure: it is run again after a backoff). */
#define CLUSTER_ENTITY_SINGLETON 4u
/** A cron job, entity id "cron": `cron_schedule` says when it runs. RPC 0 (persisted) runs one
 *  tick; its request is the map {"scheduled_ms": <int>, "fired_ms": <int>}. */
#define CLUSTER_ENTITY_CRON 8u

/** (2.1) What a cron job does about ticks missed while no runner served it. */
#define CLUSTER_CRON_SKIP_MISSED 0u     /**< the next tick after now runs; missed ones never */
#define CLUSTER_CRON_RUN_MISSED_ONCE 1u /**< one run for all missed ticks, at once, then on time \
                                         */

/** (2.1) `set_state` flags. */
#define CLUSTER_STATE_CLEAR 1u /**< delete the stored state (`data` is ignored) */

/** One RPC of an entity type. */
typedef struct cluster_rpc_descriptor {
  uint32_t struct_size;
  uint32_t flags; /**< CLUSTER_RPC_* bits; 0: volatile */
  const char* name;
} cluster_rpc_descriptor;

/** Completion of a handler: called exactly once, on the runner's thread.
 *  `data` is the MessagePack reply (ok) or empty; `error_tag` and `message` describe a
 *  failure (NULL when ok). The runner copies what it needs before returning. */
typedef void (*cluster_reply_fn)(void* reply_ctx, int32_t status, const char* error_tag,
                                 const char* message, const uint8_t* data, size_t size);

/** Completion of a call to another entity; same conventions as cluster_reply_fn.
 *  For CLUSTER_STATUS_CALL_FAILED, `error_tag` is the cluster error's name. */
typedef cluster_reply_fn cluster_call_done_fn;

/** Services the runner offers to a plugin. The runner's struct is never older than the
 *  plugin's minor, so a plugin may use every field its header declares. */
typedef struct cluster_host_api {
  uint32_t struct_size;
  uint32_t reserved; /**< 0 */
  /** level: 0 debug, 1 info, 2 warn, 3 error. */
  void (*log)(void* host_ctx, int32_t level, const char* message);
  /** Calls another entity without blocking the runner; `done` runs exactly once later,
   *  on the runner's thread, never inside this call. Inside `create` the call is refused
   *  (`done` gets CLUSTER_STATUS_CALL_FAILED): the entity does not exist yet. */
  void (*call)(void* host_ctx, const char* entity_type, const char* entity_id, const char* rpc,
               const uint8_t* payload, size_t size, const char* primary_key,
               cluster_call_done_fn done, void* user);
  /** Unix time in milliseconds. */
  int64_t (*now_ms)(void* host_ctx);
  /** Runs `fire(user)` after `delay_ms` on the runner's thread, never inside this call.
   *  (2.1) Fires early, at once, when the entity is asked to stop (`stop_requested`). */
  void (*sleep)(void* host_ctx, int64_t delay_ms, void (*fire)(void* user), void* user);
  /** (2.1) Stateful types, inside a handler before its reply: the entity's new state
   *  (MessagePack bytes, copied), stored with this handler's reply; the last call wins.
   *  `CLUSTER_STATE_CLEAR` in `flags` deletes the stored state instead. */
  void (*set_state)(void* host_ctx, const uint8_t* data, size_t size, uint32_t flags);
  /** (2.1) Nonzero once the runner asked this entity to stop: its shard is moving or the
   *  runner is stopping. A singleton's run returns then. */
  int32_t (*stop_requested)(void* host_ctx);
  /** (2.2) Streaming RPCs, inside the handler before its reply: hands one item (MessagePack
   *  bytes, copied) to the caller. `ready(user)` runs once, later, on the runner's thread,
   *  never inside this call, when the caller's credit let the item go, or at once when the
   *  request is cancelled (check `cancelled`): write the next item only after it. Outside a
   *  streaming RPC the item is refused: `ready` runs and the request ends with a Defect. */
  void (*stream_write)(void* host_ctx, const uint8_t* data, size_t size, void (*ready)(void* user),
                       void* user);
  /** (2.2) Nonzero once the handler's request is cancelled: its caller interrupted it or went
   *  away, or its deadline passed. From then on its sleeps fire at once and its calls to other
   *  entities complete at once with CLUSTER_STATUS_CALL_FAILED, tag "Cancelled". */
  int32_t (*cancelled)(void* host_ctx);
  /** (2.2) Like `call`, fire and forget: the request is sent with `discard` and `done` (may be
   *  NULL) runs once, later, with CLUSTER_STATUS_OK and no data once the callee accepted it
   *  (a persisted RPC: once stored), or with the failure. The handler's outcome is not sent. */
  void (*send)(void* host_ctx, const char* entity_type, const char* entity_id, const char* rpc,
               const uint8_t* payload, size_t size, const char* primary_key,
               cluster_call_done_fn done, void* user);
} cluster_host_api;

/** What `create` or a handler knows about its entity. Valid until `create` returns or
 *  until the handler's reply is sent. `rpc` is "" inside `create`. */
typedef struct cluster_call_context {
  uint32_t struct_size;
  int32_t shard;
  const char* entity_type;
  const char* entity_id;
  const char* shard_group;
  const char* rpc;
  const cluster_host_api* api;
  void* host_ctx;
  /** (2.1) Inside `create` of a stateful type: the stored state (MessagePack), or NULL and 0
   *  when none is stored. NULL and 0 elsewhere. */
  const uint8_t* state;
  size_t state_size;
  /** (2.1) The epoch of this runner's lock on the entity's shard: it grows every time the
   *  lock changes hands, so an external system that remembers the highest token it saw can
   *  refuse writes from an owner that lost the shard. 0 when the store has no locks. */
  int64_t fencing_token;
} cluster_call_context;

/** One entity type. Every callback gets the type's `type_data` back. */
typedef struct cluster_entity_descriptor {
  uint32_t struct_size;
  uint32_t rpc_count;
  const char* name;
  const char* shard_group; /**< NULL or "" means "default" */
  /** `rpc_count` pointers; an RPC is named in calls by its index in this array. */
  const cluster_rpc_descriptor* const* rpcs;
  /** Activates one entity; returns an opaque instance or NULL (activation failed). */
  void* (*create)(void* type_data, const cluster_call_context* ctx);
  void (*destroy)(void* type_data, void* instance);
  /** Runs one RPC; must eventually call `reply` exactly once (possibly after returning). */
  void (*handle)(void* type_data, void* instance, uint32_t rpc_index, const uint8_t* payload,
                 size_t size, const cluster_call_context* ctx, cluster_reply_fn reply,
                 void* reply_ctx);
  /** The plugin's own pointer for this type, handed back to every callback (may be NULL). */
  void* type_data;
  /* (2.1) Options of the type; 0 means the runner's default ([runner] and [entity.<Type>]
   * in its config override both). */
  uint32_t flags;            /**< CLUSTER_ENTITY_* bits */
  uint32_t mailbox_capacity; /**< queued messages per entity */
  int64_t max_idle_ms;       /**< passivated after this long without a message */
  uint32_t concurrency;      /**< read-only calls of one entity that may run at once (0, 1: one) */
  uint32_t cron_missed;      /**< CLUSTER_CRON_* (cron jobs) */
  /** Cron jobs: "[sec] min hour day-of-month month day-of-week", UTC (5 or 6 fields). */
  const char* cron_schedule;
} cluster_entity_descriptor;

/** What the entry returns. It and everything it points to stay valid and unchanged while
 *  the library is loaded. */
typedef struct cluster_plugin_descriptor {
  /* These three fields begin the descriptor of every major version. */
  uint32_t abi_major;
  uint32_t abi_minor;
  uint32_t struct_size;
  uint32_t entity_count;
  const char* plugin_name;
  /** `entity_count` pointers. */
  const cluster_entity_descriptor* const* entities;
  /** The plugin's own version, shown by the runner; NULL or "" means "0.0.0". */
  const char* plugin_version;
} cluster_plugin_descriptor;

/** What the runner hands the entry. Same layout in every major version. */
typedef struct cluster_load_context {
  uint32_t struct_size;
  uint32_t host_abi_major;
  uint32_t host_abi_minor;
  uint32_t reserved; /**< 0 */
  /** When the entry fails it returns NULL and writes a NUL-terminated reason here
   *  (at most `error_size` bytes, truncated); the runner owns the buffer. */
  char* error;
  size_t error_size;
} cluster_load_context;

/** The entry: called once per load, on the runner's start-up thread. Returns the plugin's
 *  descriptor, or NULL after writing the reason into `load->error`. Must not throw. */
typedef const cluster_plugin_descriptor* (*cluster_plugin_entry_fn)(
    const cluster_load_context* load);

/* No implicit padding anywhere: a field a minor appends must start past every byte an
 * older writer's struct_size covers. */
#ifdef __cplusplus
#define CLUSTER_ABI_ENDS_AT(type, last)                                    \
  static_assert(sizeof(type) == offsetof(type, last) + sizeof(type::last), \
                #type " has implicit padding")
#else
#define CLUSTER_ABI_ENDS_AT(type, last)                                           \
  _Static_assert(sizeof(type) == offsetof(type, last) + sizeof(((type*)0)->last), \
                 #type " has implicit padding")
#endif
CLUSTER_ABI_ENDS_AT(cluster_rpc_descriptor, name);
CLUSTER_ABI_ENDS_AT(cluster_host_api, send);
CLUSTER_ABI_ENDS_AT(cluster_call_context, fencing_token);
CLUSTER_ABI_ENDS_AT(cluster_entity_descriptor, cron_schedule);
CLUSTER_ABI_ENDS_AT(cluster_plugin_descriptor, plugin_version);
CLUSTER_ABI_ENDS_AT(cluster_load_context, error_size);
#undef CLUSTER_ABI_ENDS_AT

#ifdef __cplusplus
}
#endif

#endif /* CLUSTER_PLUGIN_ABI_H */
