// A hand-written entry that fails without saying why: the runner must refuse the file.
#include <cluster/plugin_abi.h>

extern "C" __attribute__((visibility("default"))) const cluster_plugin_descriptor*
cluster_plugin_entry(const cluster_load_context*) {
  return nullptr;
}
