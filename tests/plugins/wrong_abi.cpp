// Claims ABI major 999: the runner must refuse it before touching anything else.
#include <cluster/plugin_abi.h>

extern "C" __attribute__((visibility("default"))) const cluster_plugin_descriptor*
cluster_plugin_entry(const cluster_load_context*) {
  static const cluster_plugin_descriptor descriptor = {
      999, 0, sizeof(cluster_plugin_descriptor), 0, "wrong-abi", nullptr, nullptr};
  return &descriptor;
}
