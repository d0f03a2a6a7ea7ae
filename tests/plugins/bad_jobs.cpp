// A singleton or cron job the runner cannot run, written against the C ABI (the SDK refuses
// these itself): BAD_JOB 1, a cron job whose schedule does not parse; 2, a cron job whose
// RPC 0 is volatile; 3, a singleton without RPCs.
#include <cluster/plugin_abi.h>

namespace {

void* create(void*, const cluster_call_context*) { return nullptr; }
void destroy(void*, void*) {}
void handle(void*, void*, uint32_t, const uint8_t*, size_t, const cluster_call_context*,
            cluster_reply_fn reply, void* reply_ctx) {
  reply(reply_ctx, CLUSTER_STATUS_OK, nullptr, nullptr, nullptr, 0);
}

const cluster_rpc_descriptor tick = {sizeof(cluster_rpc_descriptor),
                                     BAD_JOB == 2 ? 0u : CLUSTER_RPC_PERSISTED, "tick"};
const cluster_rpc_descriptor* const rpcs[] = {&tick};

cluster_entity_descriptor job() {
  cluster_entity_descriptor d{};
  d.struct_size = sizeof d;
  d.rpc_count = BAD_JOB == 3 ? 0 : 1;
  d.name = BAD_JOB == 3 ? "Lonely" : "Report";
  d.rpcs = rpcs;
  d.create = &create;
  d.destroy = &destroy;
  d.handle = &handle;
  d.flags = BAD_JOB == 3 ? CLUSTER_ENTITY_SINGLETON : CLUSTER_ENTITY_CRON;
  d.cron_schedule = BAD_JOB == 1 ? "61 * * * * *" : "* * * * * *";
  return d;
}

}  // namespace

extern "C" __attribute__((visibility("default"))) const cluster_plugin_descriptor*
cluster_plugin_entry(const cluster_load_context*) {
  static const cluster_entity_descriptor entity = job();
  static const cluster_entity_descriptor* const entities[] = {&entity};
  static const cluster_plugin_descriptor descriptor = {CLUSTER_ABI_MAJOR,
                                                       CLUSTER_ABI_MINOR,
                                                       sizeof(cluster_plugin_descriptor),
                                                       1,
                                                       "bad-job",
                                                       entities,
                                                       "0.0.0"};
  return &descriptor;
}
