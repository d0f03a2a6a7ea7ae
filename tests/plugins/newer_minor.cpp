// Built against a newer minor ABI than the runner knows: must be refused.
#include <cluster/plugin_abi.h>

extern "C" __attribute__((visibility("default"))) const cluster_plugin_descriptor*
cluster_plugin_entry(const cluster_load_context*) {
  static const cluster_plugin_descriptor descriptor = {CLUSTER_ABI_MAJOR,
                                                       CLUSTER_ABI_MINOR + 1,
                                                       sizeof(cluster_plugin_descriptor),
                                                       0,
                                                       "newer-minor",
                                                       nullptr,
                                                       nullptr};
  return &descriptor;
}
