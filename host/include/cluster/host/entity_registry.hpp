#pragma once
// Loads entity plugins with Boost.DLL and indexes their entity types by name.
//
// The registry reads each plugin's descriptors once, at load, into structs of its own
// (copied by the plugin's struct_size into zeroed structs: fields of a newer minor than the
// plugin's read as their defaults), and never walks the plugin's descriptors again.
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

#include "cluster/host/plugin_process.hpp"
#include "cluster/plugin_abi.h"
#include "cluster/protocol/messages.hpp"
#include "cluster/protocol/result.hpp"

namespace cluster::host {

struct entity_type {
  /// This runner's copy of the plugin's entity descriptor. Its `rpcs` is NULL: the RPC
  /// descriptors are copied into `rpcs` below.
  cluster_entity_descriptor descriptor{};
  /// Copies of the RPC descriptors, in the plugin's order (the index the plugin expects).
  std::vector<cluster_rpc_descriptor> rpcs;
  std::shared_ptr<boost::dll::shared_library> library;  // keeps the code mapped
  /// Set when the type runs in a child process: the descriptor's callbacks forward there.
  std::shared_ptr<plugin_process> process;
  std::string plugin_path;
  std::string plugin_name;
  std::string plugin_version;  // "0.0.0" when the plugin gives none
  entity_type_info info;

  /// Index of `rpc` in the descriptor, nullopt when the type has no such RPC.
  std::optional<std::uint32_t> rpc_index(std::string_view rpc) const;
  /// Is RPC `rpc_index` (a valid index) persisted?
  bool persisted(std::uint32_t rpc_index) const {
    return (rpcs[rpc_index].flags & CLUSTER_RPC_PERSISTED) != 0;
  }

  /// The plugin's callbacks, each handed the type's own `type_data`.
  void* create(const cluster_call_context* ctx) const {
    return descriptor.create(descriptor.type_data, ctx);
  }
  void destroy(void* instance) const { descriptor.destroy(descriptor.type_data, instance); }
  void handle(void* instance, std::uint32_t rpc_index, const std::uint8_t* payload,
              std::size_t size, const cluster_call_context* ctx, cluster_reply_fn reply,
              void* reply_ctx) const {
    descriptor.handle(descriptor.type_data, instance, rpc_index, payload, size, ctx, reply,
                      reply_ctx);
  }
};

class entity_registry {
 public:
  /// Loads each path: a plugin file, or a folder whose `*.so` files are loaded in name order.
  /// Returns one message per rejected file ("<file>: <reason>"); the rest stay loaded.
  std::vector<std::string> load(const std::vector<std::string>& paths);

  /// Loads one plugin file, or says why it is refused (the file is then unloaded and
  /// nothing of it is registered). Logs one line per loaded plugin: name, version, file and
  /// entity types.
  result<void> load_file(const std::filesystem::path& file);

  /// Plugins loaded from now on run in child processes (runner.isolation = "process"); their
  /// callbacks are then asynchronous messages on `io`.
  void isolate(asio::io_context& io, isolation_options options);
  bool isolated() const { return io_ != nullptr; }
  /// Runs when a plugin's process ended: every instance of these types is gone.
  std::function<void(const std::vector<std::string>& entity_types)> on_instances_lost;
  /// The plugins' processes (isolation "process"), one per plugin file.
  const std::vector<std::shared_ptr<plugin_process>>& processes() const { return processes_; }

  const entity_type* find(std::string_view name) const;
  std::vector<entity_type_info> catalog() const;
  bool empty() const { return types_.empty(); }

 private:
  result<void> load_isolated(const std::filesystem::path& file);
  result<void> add_plugin(const std::filesystem::path& file, std::vector<entity_type> types,
                          const std::string& name, const std::string& version);

  std::map<std::string, entity_type, std::less<>> types_;
  asio::io_context* io_ = nullptr;
  isolation_options isolation_;
  std::vector<std::shared_ptr<plugin_process>> processes_;
};

}  // namespace cluster::host
