/* The binary contract between the runner and entity plugins.
 *
 * Only C types cross this boundary: integers, `const char*`, byte views of MessagePack
 * payloads, function pointers and opaque handles. Whoever allocates frees. Plugin
 * authors use the C++ wrapper in <cluster/sdk.hpp>; the runner includes only this file.
 *
 * Versioning: the runner accepts a plugin whose abi_major equals its own and whose
 * abi_minor is not newer than its own. Structs only grow at the end; `struct_size`
 * tells the reader how much of a struct the writer knew.
 */
#ifndef CLUSTER_PLUGIN_ABI_H
#define CLUSTER_PLUGIN_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define CLUSTER_ABI_MAJOR 1
#define CLUSTER_ABI_MINOR 0
/** Name of the one symbol every plugin exports. */
#define CLUSTER_PLUGIN_ENTRY_SYMBOL "cluster_plugin_entry"

/** Outcome of a handler or of a call to another entity. */
typedef enum cluster_status {
  CLUSTER_STATUS_OK = 0,
  CLUSTER_STATUS_APPLICATION_ERROR = 1, /**< typed error: tag + message */
  CLUSTER_STATUS_BAD_PAYLOAD = 2,       /**< request bytes did not decode */
  CLUSTER_STATUS_DEFECT = 3,            /**< unexpected exception in the handler */
  CLUSTER_STATUS_CALL_FAILED = 4        /**< a call to another entity failed in the cluster */
} cluster_status;

/** RPC flags. */
#define CLUSTER_RPC_PERSISTED 1u

typedef struct cluster_rpc_descriptor {
  const char* name;
  uint32_t flags;
} cluster_rpc_descriptor;

/** Completion of a handler: called exactly once, on the runner's thread.
 *  `data` is the MessagePack reply (ok) or empty; `error_tag` and `message` describe a
 *  failure (NULL when ok). The runner copies what it needs before returning. */
typedef void (*cluster_reply_fn)(void* reply_ctx, int32_t status, const char* error_tag,
                                 const char* message, const uint8_t* data, size_t size);

/** Completion of a call to another entity; same conventions as cluster_reply_fn.
 *  For CLUSTER_STATUS_CALL_FAILED, `error_tag` is the cluster error's name. */
typedef cluster_reply_fn cluster_call_done_fn;

/** Services the runner offers to a handler for the duration of one request. */
typedef struct cluster_host_api {
  uint32_t struct_size;
  /** level: 0 debug, 1 info, 2 warn, 3 error. */
  void (*log)(void* host_ctx, int32_t level, const char* message);
  /** Calls another entity without blocking the runner; `done` runs exactly once later,
   *  on the runner's thread, never inside this call. */
  void (*call)(void* host_ctx, const char* entity_type, const char* entity_id, const char* rpc,
               const uint8_t* payload, size_t size, const char* primary_key,
               cluster_call_done_fn done, void* user);
  /** Unix time in milliseconds. */
  int64_t (*now_ms)(void* host_ctx);
  /** Runs `fire(user)` after `delay_ms` on the runner's thread, never inside this call. */
  void (*sleep)(void* host_ctx, int64_t delay_ms, void (*fire)(void* user), void* user);
} cluster_host_api;

/** What a handler knows about the entity it runs for. Valid until the reply is sent. */
typedef struct cluster_call_context {
  uint32_t struct_size;
  const char* entity_type;
  const char* entity_id;
  const char* shard_group;
  int32_t shard;
  const char* rpc;
  const cluster_host_api* api;
  void* host_ctx;
} cluster_call_context;

typedef struct cluster_entity_descriptor {
  uint32_t struct_size;
  const char* name;
  const char* shard_group; /**< NULL or "" means "default" */
  const cluster_rpc_descriptor* rpcs;
  uint32_t rpc_count;
  /** Activates one entity; returns an opaque instance or NULL (activation failed). */
  void* (*create)(const cluster_call_context* ctx);
  void (*destroy)(void* instance);
  /** Runs one RPC; must eventually call `reply` exactly once (possibly after returning). */
  void (*handle)(void* instance, uint32_t rpc_index, const uint8_t* payload, size_t size,
                 const cluster_call_context* ctx, cluster_reply_fn reply, void* reply_ctx);
} cluster_entity_descriptor;

typedef struct cluster_plugin_descriptor {
  uint32_t abi_major;
  uint32_t abi_minor;
  uint32_t struct_size;
  const char* plugin_name;
  const cluster_entity_descriptor* entities;
  uint32_t entity_count;
} cluster_plugin_descriptor;

typedef const cluster_plugin_descriptor* (*cluster_plugin_entry_fn)(void);

#ifdef __cplusplus
}
#endif

#endif /* CLUSTER_PLUGIN_ABI_H */
