// A plugin as one built against an older 2.x minor looks to this runner, written by hand:
// each struct_size stops before the newest fields (the plugin's version, the entity's
// type_data), and the bytes past it hold garbage a runner must not read. The runner must
// load it and use the defaults: version "0.0.0", type_data NULL.
#include <cluster/plugin_abi.h>

#include <cstddef>
#include <cstdint>

namespace {

char garbage[] = "past struct_size: a runner that reads this is reading beyond the writer's struct";
int instance_marker = 0;

void* create(void* type_data, const cluster_call_context*) {
  return type_data == nullptr ? &instance_marker : nullptr;
}

void destroy(void*, void*) {}

// Ping answers {} when the runner handed back the default type_data (NULL), and an
// application error naming what it got otherwise.
void handle(void* type_data, void*, std::uint32_t rpc_index, const std::uint8_t*, std::size_t,
            const cluster_call_context* ctx, cluster_reply_fn reply, void* reply_ctx) {
  if (type_data != nullptr) {
    reply(reply_ctx, CLUSTER_STATUS_APPLICATION_ERROR, "TypeDataNotDefaulted",
          static_cast<const char*>(type_data), nullptr, 0);
    return;
  }
  if (rpc_index != 0 || ctx == nullptr || ctx->entity_id == nullptr) {
    reply(reply_ctx, CLUSTER_STATUS_DEFECT, "Defect", "unexpected call", nullptr, 0);
    return;
  }
  static const std::uint8_t empty_map = 0x80;
  reply(reply_ctx, CLUSTER_STATUS_OK, nullptr, nullptr, &empty_map, 1);
}

const cluster_rpc_descriptor ping = {sizeof(cluster_rpc_descriptor), 0, "Ping"};
const cluster_rpc_descriptor* const rpcs[] = {&ping};

const cluster_entity_descriptor entity = {
    offsetof(cluster_entity_descriptor, type_data),  // written before type_data existed
    1,
    "Elder",
    nullptr,
    rpcs,
    &create,
    &destroy,
    &handle,
    garbage};
const cluster_entity_descriptor* const entities[] = {&entity};

const cluster_plugin_descriptor plugin = {
    CLUSTER_ABI_MAJOR,
    0,
    offsetof(cluster_plugin_descriptor, plugin_version),  // written before plugin_version
    1,
    "elder",
    entities,
    garbage};

}  // namespace

extern "C" __attribute__((visibility("default"))) const cluster_plugin_descriptor*
cluster_plugin_entry(const cluster_load_context*) {
  return &plugin;
}
