#pragma once
// Loads entity plugins with Boost.DLL and indexes their entity types by name.
//
// A plugin stays loaded while any entity type (and so any entity instance) from it is
// registered: each type holds a shared reference to its library. Load-time only; the
// registry is read-only once the runner serves requests.

#include <boost/dll/shared_library.hpp>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cluster/plugin_abi.h"
#include "cluster/protocol/messages.hpp"

namespace cluster::host {

struct entity_type {
  const cluster_entity_descriptor* descriptor = nullptr;
  std::shared_ptr<boost::dll::shared_library> library;  // keeps the code mapped
  std::string plugin_path;
  entity_type_info info;

  /// Index of `rpc` in the descriptor, nullopt when the type has no such RPC.
  std::optional<std::uint32_t> rpc_index(std::string_view rpc) const;
};

class entity_registry {
 public:
  /// Loads each path: a plugin file, or a folder whose `*.so` files are loaded in name order.
  /// Returns one message per rejected file ("<file>: <reason>"); the rest stay loaded.
  std::vector<std::string> load(const std::vector<std::string>& paths);

  /// Loads one plugin file; the reason when it is refused.
  std::optional<std::string> load_file(const std::filesystem::path& file);

  const entity_type* find(std::string_view name) const;
  std::vector<entity_type_info> catalog() const;
  bool empty() const { return types_.empty(); }

 private:
  std::map<std::string, entity_type, std::less<>> types_;
};

}  // namespace cluster::host
