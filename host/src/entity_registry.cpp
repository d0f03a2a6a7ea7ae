#include "cluster/host/entity_registry.hpp"

#include <dlfcn.h>

#include <algorithm>
#include <set>

namespace cluster::host {

namespace {

std::optional<std::string> validate(const cluster_plugin_descriptor* plugin) {
  if (plugin == nullptr) return "entry returned no descriptor";
  if (plugin->abi_major != CLUSTER_ABI_MAJOR)
    return "ABI major version " + std::to_string(plugin->abi_major) + " (this runner speaks " +
           std::to_string(CLUSTER_ABI_MAJOR) + ")";
  if (plugin->abi_minor > CLUSTER_ABI_MINOR)
    return "ABI version " + std::to_string(plugin->abi_major) + "." +
           std::to_string(plugin->abi_minor) + " is newer than this runner's " +
           std::to_string(CLUSTER_ABI_MAJOR) + "." + std::to_string(CLUSTER_ABI_MINOR);
  if (plugin->struct_size < sizeof(cluster_plugin_descriptor))
    return "descriptor is smaller than ABI " + std::to_string(CLUSTER_ABI_MAJOR) + " requires";
  if (plugin->entity_count == 0 || plugin->entities == nullptr) return "declares no entity types";
  for (std::uint32_t i = 0; i < plugin->entity_count; ++i) {
    const auto& e = plugin->entities[i];
    if (e.struct_size < sizeof(cluster_entity_descriptor))
      return "entity descriptor " + std::to_string(i) + " is too small";
    if (e.name == nullptr || *e.name == '\0')
      return "entity type " + std::to_string(i) + " has no name";
    if (e.create == nullptr || e.destroy == nullptr || e.handle == nullptr)
      return std::string("entity type '") + e.name + "' lacks create, destroy or handle";
    if (e.rpc_count > 0 && e.rpcs == nullptr)
      return std::string("entity type '") + e.name + "' has no RPC table";
    std::set<std::string> rpc_names;
    for (std::uint32_t r = 0; r < e.rpc_count; ++r) {
      if (e.rpcs[r].name == nullptr || *e.rpcs[r].name == '\0')
        return std::string("entity type '") + e.name + "' has an RPC without a name";
      if (!rpc_names.insert(e.rpcs[r].name).second)
        return std::string("entity type '") + e.name + "' declares RPC '" + e.rpcs[r].name +
               "' twice";
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::uint32_t> entity_type::rpc_index(std::string_view rpc) const {
  for (std::uint32_t i = 0; i < descriptor->rpc_count; ++i)
    if (rpc == descriptor->rpcs[i].name) return i;
  return std::nullopt;
}

std::vector<std::string> entity_registry::load(const std::vector<std::string>& paths) {
  std::vector<std::string> errors;
  for (const auto& path : paths) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) {
      std::vector<std::filesystem::path> files;
      for (const auto& entry : std::filesystem::directory_iterator(path, ec))
        if (entry.is_regular_file() && entry.path().extension() == ".so")
          files.push_back(entry.path());
      std::sort(files.begin(), files.end());
      for (const auto& file : files)
        if (auto error = load_file(file)) errors.push_back(file.string() + ": " + *error);
    } else if (auto error = load_file(path)) {
      errors.push_back(path + ": " + *error);
    }
  }
  return errors;
}

std::optional<std::string> entity_registry::load_file(const std::filesystem::path& file) {
  std::error_code exists_ec;
  if (!std::filesystem::exists(file, exists_ec)) return "no such file";
  auto library = std::make_shared<boost::dll::shared_library>();
  boost::dll::fs::error_code ec;
  library->load(file.string(), boost::dll::load_mode::rtld_lazy | boost::dll::load_mode::rtld_local,
                ec);
  if (ec) {
    const char* detail = dlerror();
    return "not a loadable plugin (" + (detail ? std::string(detail) : ec.message()) + ")";
  }
  if (!library->has(CLUSTER_PLUGIN_ENTRY_SYMBOL))
    return std::string("missing the entry symbol '") + CLUSTER_PLUGIN_ENTRY_SYMBOL + "'";
  const auto entry = library->get<const cluster_plugin_descriptor*()>(CLUSTER_PLUGIN_ENTRY_SYMBOL);
  const cluster_plugin_descriptor* plugin = entry();
  if (auto error = validate(plugin)) return *error;
  // Refuse the whole file on a duplicate, so a plugin is never half registered.
  for (std::uint32_t i = 0; i < plugin->entity_count; ++i) {
    const std::string name = plugin->entities[i].name;
    if (auto it = types_.find(name); it != types_.end())
      return "entity type '" + name + "' is already provided by " + it->second.plugin_path;
    for (std::uint32_t j = 0; j < i; ++j)
      if (name == plugin->entities[j].name) return "declares entity type '" + name + "' twice";
  }
  for (std::uint32_t i = 0; i < plugin->entity_count; ++i) {
    const auto& descriptor = plugin->entities[i];
    entity_type type;
    type.descriptor = &descriptor;
    type.library = library;
    type.plugin_path = file.string();
    type.info.name = descriptor.name;
    type.info.group =
        (descriptor.shard_group && *descriptor.shard_group) ? descriptor.shard_group : "default";
    for (std::uint32_t r = 0; r < descriptor.rpc_count; ++r)
      type.info.rpcs.push_back(rpc_info{descriptor.rpcs[r].name,
                                        (descriptor.rpcs[r].flags & CLUSTER_RPC_PERSISTED) != 0});
    types_.emplace(type.info.name, std::move(type));
  }
  return std::nullopt;
}

const entity_type* entity_registry::find(std::string_view name) const {
  auto it = types_.find(name);
  return it == types_.end() ? nullptr : &it->second;
}

std::vector<entity_type_info> entity_registry::catalog() const {
  std::vector<entity_type_info> out;
  for (const auto& [name, type] : types_) out.push_back(type.info);
  return out;
}

}  // namespace cluster::host
