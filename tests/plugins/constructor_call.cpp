// Hand-written: `create` calls another entity through the host API, which no SDK entity can
// do (a constructor cannot co_await). The runner must refuse the call without crashing, and
// later, never inside `call`. `Report` answers what `create` saw as an application error
// whose tag is the status and whose message is "<tag>: <message>" of the refused call.
#include <cluster/plugin_abi.h>

#include <cstdint>
#include <string>

namespace {

struct observed {
  bool done_inside_call = false;
  bool done = false;
  std::string text;
};
observed seen;
bool in_call = false;
int instance_marker = 0;

void call_done(void*, std::int32_t status, const char* tag, const char* message,
               const std::uint8_t*, std::size_t) {
  seen.done = true;
  seen.done_inside_call = in_call;
  seen.text = std::to_string(status) + " " + (tag ? tag : "") + ": " + (message ? message : "");
}

void* create(void*, const cluster_call_context* ctx) {
  static const std::uint8_t empty_map = 0x80;
  in_call = true;
  ctx->api->call(ctx->host_ctx, "Probe", "elsewhere", "Echo", &empty_map, 1, nullptr, &call_done,
                 nullptr);
  in_call = false;
  return &instance_marker;
}

void destroy(void*, void*) {}

void handle(void*, void*, std::uint32_t, const std::uint8_t*, std::size_t,
            const cluster_call_context*, cluster_reply_fn reply, void* reply_ctx) {
  const std::string tag = !seen.done ? "NotYet" : seen.done_inside_call ? "InsideCall" : "Later";
  reply(reply_ctx, CLUSTER_STATUS_APPLICATION_ERROR, tag.c_str(), seen.text.c_str(), nullptr, 0);
}

const cluster_rpc_descriptor report = {sizeof(cluster_rpc_descriptor), 0, "Report"};
const cluster_rpc_descriptor* const rpcs[] = {&report};
const cluster_entity_descriptor entity = {sizeof(cluster_entity_descriptor),
                                          1,
                                          "EagerCaller",
                                          nullptr,
                                          rpcs,
                                          &create,
                                          &destroy,
                                          &handle,
                                          nullptr};
const cluster_entity_descriptor* const entities[] = {&entity};
const cluster_plugin_descriptor plugin = {CLUSTER_ABI_MAJOR,
                                          CLUSTER_ABI_MINOR,
                                          sizeof(cluster_plugin_descriptor),
                                          1,
                                          "eager-caller",
                                          entities,
                                          "0.1.0"};

}  // namespace

extern "C" __attribute__((visibility("default"))) const cluster_plugin_descriptor*
cluster_plugin_entry(const cluster_load_context*) {
  return &plugin;
}
