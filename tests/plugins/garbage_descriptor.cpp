// Returns a descriptor of the right version whose size is nonsense, as a plugin that
// returns a pointer to the wrong thing would: the runner must refuse it, not walk it.
#include <cluster/plugin_abi.h>

extern "C" __attribute__((visibility("default"))) const cluster_plugin_descriptor*
cluster_plugin_entry(const cluster_load_context*) {
  static const cluster_plugin_descriptor descriptor = {
      CLUSTER_ABI_MAJOR, CLUSTER_ABI_MINOR, 4096, 0xffffffffu, nullptr, nullptr, nullptr};
  return &descriptor;
}
