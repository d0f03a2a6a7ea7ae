#include "cluster/host/entity_registry.hpp"

#include <dlfcn.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <set>

namespace cluster::host {

namespace {

// A refused plugin is an invalid request to load it; no wire reply carries this code.
constexpr errc refused = errc::invalid_request;

// Bounds that tell a garbage descriptor from a real one before the runner walks it.
constexpr std::uint32_t max_entity_types = 1024;
constexpr std::uint32_t max_rpcs_per_type = 1024;
constexpr std::size_t max_name_bytes = 255;

std::string abi_text(std::uint32_t major, std::uint32_t minor) {
  return std::to_string(major) + "." + std::to_string(minor);
}

/// Copies the `writer_size` bytes a plugin wrote into a zeroed T: fields the plugin's minor
/// did not have read as zero, their default. The caller has refused writer sizes above
/// sizeof(T) (a newer minor, or garbage).
template <class T>
T read_struct(const void* source, std::uint32_t writer_size) {
  T copy{};
  std::memcpy(&copy, source, std::min<std::size_t>(writer_size, sizeof(T)));
  return copy;
}

failure too_large(const std::string& what, std::uint32_t writer_size, std::size_t own_size) {
  return failure{refused, what + " claims " + std::to_string(writer_size) +
                              " bytes, more than ABI " +
                              abi_text(CLUSTER_ABI_MAJOR, CLUSTER_ABI_MINOR) + " defines (" +
                              std::to_string(own_size) + "): not a descriptor of this ABI"};
}

/// A name the plugin gives: empty when absent, refused when longer than any real name.
result<std::string> read_text(const char* text, const std::string& what) {
  if (text == nullptr) return std::string();
  const std::size_t length = strnlen(text, max_name_bytes + 1);
  if (length > max_name_bytes)
    return failure{refused, what + " is longer than " + std::to_string(max_name_bytes) + " bytes"};
  return std::string(text, length);
}

struct plugin_contents {
  std::string name;
  std::string version;
  std::vector<entity_type> types;
};

result<entity_type> read_entity(const cluster_entity_descriptor* source, std::uint32_t index) {
  const std::string where = "entity descriptor " + std::to_string(index);
  if (source == nullptr) return failure{refused, where + " is NULL"};
  if (source->struct_size > sizeof(cluster_entity_descriptor))
    return too_large(where, source->struct_size, sizeof(cluster_entity_descriptor));
  entity_type type;
  type.descriptor = read_struct<cluster_entity_descriptor>(source, source->struct_size);
  const auto& d = type.descriptor;
  BOOST_OUTCOME_TRY(name, read_text(d.name, where + "'s name"));
  if (name.empty())
    return failure{refused, "entity type " + std::to_string(index) + " has no name"};
  const std::string what = "entity type '" + name + "'";
  if (d.create == nullptr || d.destroy == nullptr || d.handle == nullptr)
    return failure{refused, what + " lacks create, destroy or handle"};
  BOOST_OUTCOME_TRY(group, read_text(d.shard_group, what + "'s shard group"));
  if (d.rpc_count > max_rpcs_per_type)
    return failure{refused, what + " declares " + std::to_string(d.rpc_count) + " RPCs (at most " +
                                std::to_string(max_rpcs_per_type) + ")"};
  if (d.rpc_count > 0 && d.rpcs == nullptr) return failure{refused, what + " has no RPC table"};
  type.info.name = std::move(name);
  type.info.group = group.empty() ? "default" : std::move(group);
  std::set<std::string, std::less<>> rpc_names;
  for (std::uint32_t r = 0; r < d.rpc_count; ++r) {
    const cluster_rpc_descriptor* rpc = d.rpcs[r];
    const std::string rpc_where = what + "'s RPC descriptor " + std::to_string(r);
    if (rpc == nullptr) return failure{refused, rpc_where + " is NULL"};
    if (rpc->struct_size > sizeof(cluster_rpc_descriptor))
      return too_large(rpc_where, rpc->struct_size, sizeof(cluster_rpc_descriptor));
    type.rpcs.push_back(read_struct<cluster_rpc_descriptor>(rpc, rpc->struct_size));
    BOOST_OUTCOME_TRY(rpc_name, read_text(type.rpcs.back().name, rpc_where + "'s name"));
    if (rpc_name.empty()) return failure{refused, what + " has an RPC without a name"};
    if (rpc_names.count(rpc_name) > 0)
      return failure{refused, what + " declares RPC '" + rpc_name + "' twice"};
    rpc_names.insert(rpc_name);
    type.info.rpcs.push_back(rpc_info{std::move(rpc_name), type.persisted(r)});
  }
  // The runner reads its copies from now on, never the plugin's table.
  type.descriptor.rpcs = nullptr;
  return type;
}

result<plugin_contents> read_plugin(const cluster_plugin_descriptor* source) {
  // abi_major, abi_minor and struct_size begin the descriptor of every major version.
  if (source->abi_major != CLUSTER_ABI_MAJOR)
    return failure{refused, "ABI major version " + std::to_string(source->abi_major) +
                                " (this runner speaks " + std::to_string(CLUSTER_ABI_MAJOR) +
                                "): rebuild the plugin against this SDK"};
  if (source->abi_minor > CLUSTER_ABI_MINOR)
    return failure{refused, "ABI version " + abi_text(source->abi_major, source->abi_minor) +
                                " is newer than this runner's " +
                                abi_text(CLUSTER_ABI_MAJOR, CLUSTER_ABI_MINOR)};
  constexpr std::uint32_t fixed_prefix = offsetof(cluster_plugin_descriptor, entity_count);
  if (source->struct_size < fixed_prefix)
    return failure{refused, "descriptor claims " + std::to_string(source->struct_size) +
                                " bytes, fewer than any ABI " + std::to_string(CLUSTER_ABI_MAJOR) +
                                " descriptor"};
  if (source->struct_size > sizeof(cluster_plugin_descriptor))
    return too_large("descriptor", source->struct_size, sizeof(cluster_plugin_descriptor));
  const auto d = read_struct<cluster_plugin_descriptor>(source, source->struct_size);
  if (d.entity_count == 0 || d.entities == nullptr)
    return failure{refused, "declares no entity types"};
  if (d.entity_count > max_entity_types)
    return failure{refused, "declares " + std::to_string(d.entity_count) +
                                " entity types (at most " + std::to_string(max_entity_types) + ")"};
  plugin_contents contents;
  BOOST_OUTCOME_TRY(name, read_text(d.plugin_name, "plugin name"));
  BOOST_OUTCOME_TRY(version, read_text(d.plugin_version, "plugin version"));
  contents.version = version.empty() ? "0.0.0" : std::move(version);
  for (std::uint32_t i = 0; i < d.entity_count; ++i) {
    BOOST_OUTCOME_TRY(type, read_entity(d.entities[i], i));
    for (const auto& earlier : contents.types)
      if (earlier.info.name == type.info.name)
        return failure{refused, "declares entity type '" + type.info.name + "' twice"};
    if (name.empty() && i == 0) name = type.info.name;
    contents.types.push_back(std::move(type));
  }
  contents.name = std::move(name);
  return contents;
}

}  // namespace

std::optional<std::uint32_t> entity_type::rpc_index(std::string_view rpc) const {
  for (std::uint32_t i = 0; i < info.rpcs.size(); ++i)
    if (rpc == info.rpcs[i].name) return i;
  return std::nullopt;
}

std::vector<std::string> entity_registry::load(const std::vector<std::string>& paths) {
  std::vector<std::string> errors;
  const auto try_load = [&](const std::filesystem::path& file) {
    if (auto loaded = load_file(file); !loaded)
      errors.push_back(file.string() + ": " + loaded.error().message);
  };
  for (const auto& path : paths) {
    std::error_code ec;
    if (std::filesystem::is_directory(path, ec)) {
      std::vector<std::filesystem::path> files;
      for (const auto& entry : std::filesystem::directory_iterator(path, ec))
        if (entry.is_regular_file() && entry.path().extension() == ".so")
          files.push_back(entry.path());
      std::sort(files.begin(), files.end());
      for (const auto& file : files) try_load(file);
    } else {
      try_load(path);
    }
  }
  return errors;
}

result<void> entity_registry::load_file(const std::filesystem::path& file) {
  std::error_code exists_ec;
  if (!std::filesystem::exists(file, exists_ec)) return failure{refused, "no such file"};
  if (isolated()) return load_isolated(file);
  auto library = std::make_shared<boost::dll::shared_library>();
  boost::dll::fs::error_code ec;
  // RTLD_NOW: a missing symbol refuses the file here, not the first request that needs it.
  library->load(file.string(), boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local,
                ec);
  if (ec) {
    const char* detail = dlerror();
    return failure{refused,
                   "not a loadable plugin (" + (detail ? std::string(detail) : ec.message()) + ")"};
  }
  if (!library->has(CLUSTER_PLUGIN_ENTRY_SYMBOL))
    return failure{refused,
                   std::string("missing the entry symbol '") + CLUSTER_PLUGIN_ENTRY_SYMBOL + "'"};
  const auto entry = library->get<const cluster_plugin_descriptor*(const cluster_load_context*)>(
      CLUSTER_PLUGIN_ENTRY_SYMBOL);

  std::array<char, 512> reason{};
  cluster_load_context load{};
  load.struct_size = sizeof(cluster_load_context);
  load.host_abi_major = CLUSTER_ABI_MAJOR;
  load.host_abi_minor = CLUSTER_ABI_MINOR;
  load.error = reason.data();
  load.error_size = reason.size();
  const cluster_plugin_descriptor* descriptor = nullptr;
  try {
    // The SDK's entry catches everything; a hand-written one might not.
    descriptor = entry(&load);
  } catch (const std::exception& e) {
    return failure{refused, std::string("entry threw: ") + e.what()};
  } catch (...) {
    return failure{refused, "entry threw an unknown exception"};
  }
  if (descriptor == nullptr) {
    reason.back() = '\0';
    return failure{refused, reason[0] != '\0' ? std::string("entry failed: ") + reason.data()
                                              : std::string("entry returned no descriptor")};
  }
  BOOST_OUTCOME_TRY(plugin, read_plugin(descriptor));
  for (auto& type : plugin.types) type.library = library;
  return add_plugin(file, std::move(plugin.types), plugin.name, plugin.version);
}

result<void> entity_registry::add_plugin(const std::filesystem::path& file,
                                         std::vector<entity_type> types, const std::string& name,
                                         const std::string& version) {
  // Refuse the whole file on a duplicate, so a plugin is never half registered.
  for (const auto& type : types)
    if (auto it = types_.find(type.info.name); it != types_.end())
      return failure{refused, "entity type '" + type.info.name + "' is already provided by " +
                                  it->second.plugin_path};
  std::string names;
  for (auto& type : types) {
    names += (names.empty() ? "" : ", ") + type.info.name;
    type.plugin_path = file.string();
    type.plugin_name = name;
    type.plugin_version = version;
    std::string key = type.info.name;
    types_.emplace(std::move(key), std::move(type));
  }
  spdlog::info("loaded plugin {} {} from {}: {}", name, version, file.string(), names);
  return success();
}

void entity_registry::isolate(asio::io_context& io, isolation_options options) {
  io_ = &io;
  isolation_ = std::move(options);
}

result<void> entity_registry::load_isolated(const std::filesystem::path& file) {
  BOOST_OUTCOME_TRY(process, plugin_process::start(*io_, file, isolation_));
  const auto& catalog = process->catalog();
  if (catalog.types.empty()) return failure{refused, "declares no entity types"};
  std::vector<entity_type> types;
  for (std::size_t i = 0; i < catalog.types.size(); ++i) {
    entity_type type;
    type.descriptor = process->descriptor(i);
    type.rpcs = process->rpc_descriptors(i);
    type.info = catalog.types[i];
    type.process = process;
    types.push_back(std::move(type));
  }
  BOOST_OUTCOME_TRY(
      add_plugin(file, std::move(types),
                 catalog.plugin_name.empty() ? catalog.types.front().name : catalog.plugin_name,
                 catalog.plugin_version.empty() ? "0.0.0" : catalog.plugin_version));
  process->on_instances_lost = [this](const std::vector<std::string>& lost) {
    if (on_instances_lost) on_instances_lost(lost);
  };
  processes_.push_back(std::move(process));
  return success();
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
