// cluster-plugin-describe FILE: loads one plugin file with the runners' own loading code, in
// this short-lived process, and prints what it declares as one line of JSON:
//   {"name":..., "version":..., "abi_major":N, "abi_minor":N, "entity_types":[...]}
// or {"error": "why the runners would refuse it"} with exit status 1. `clusterctl plugin
// push` runs it so that clusterctl itself never loads plugin code. Exit status 2: bad usage.
#include <spdlog/spdlog.h>

#include <boost/dll/shared_library.hpp>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cluster/host/entity_registry.hpp"

int main(int argc, char** argv) {
  using cluster::host::entity_registry;
  if (argc != 2) {
    std::cerr << "usage: cluster-plugin-describe FILE\n";
    return 2;
  }
  // stdout carries the answer only.
  spdlog::set_level(spdlog::level::off);
  const std::string file = argv[1];
  auto refuse = [](const std::string& why) {
    std::cout << nlohmann::json{{"error", why}}.dump() << "\n";
    return 1;
  };
  entity_registry registry;
  if (auto loaded = registry.load_file(file); !loaded) return refuse(loaded.error().message);
  const auto catalog = registry.catalog();
  if (catalog.empty()) return refuse("declares no entity types");
  const auto* first = registry.find(catalog.front().name);
  // The registry keeps the plugin's name and version but not its ABI: ask the entry again
  // (the library is loaded already, and the entry returns the same descriptor every time).
  boost::dll::fs::error_code ec;
  boost::dll::shared_library library(file, boost::dll::load_mode::rtld_now, ec);
  if (ec || !library.has(CLUSTER_PLUGIN_ENTRY_SYMBOL)) return refuse("cannot reopen the library");
  const auto entry = library.get<const cluster_plugin_descriptor*(const cluster_load_context*)>(
      CLUSTER_PLUGIN_ENTRY_SYMBOL);
  char reason[512] = {};
  cluster_load_context load{};
  load.struct_size = sizeof(cluster_load_context);
  load.host_abi_major = CLUSTER_ABI_MAJOR;
  load.host_abi_minor = CLUSTER_ABI_MINOR;
  load.error = reason;
  load.error_size = sizeof reason;
  const cluster_plugin_descriptor* descriptor = entry(&load);
  if (descriptor == nullptr)
    return refuse(std::string("the entry failed the second time: ") + reason);
  nlohmann::json types = nlohmann::json::array();
  for (const auto& type : catalog) types.push_back(type.name);
  std::cout << nlohmann::json{{"name", first->plugin_name},
                              {"version", first->plugin_version},
                              {"abi_major", descriptor->abi_major},
                              {"abi_minor", descriptor->abi_minor},
                              {"entity_types", types}}
                   .dump()
            << "\n";
  return 0;
}
