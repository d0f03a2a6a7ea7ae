#pragma once
// Loads entity plugins with Boost.DLL (or in cluster-plugin-host children) and indexes their
// entity types by name.
//
// The registry reads each plugin's descriptors once, at load, into structs of its own
// (copied by the plugin's struct_size into zeroed structs: fields of a newer minor than the
// plugin's read as their defaults), and never walks the plugin's descriptors again.
//
// Plugin files come and go while the runner serves: a file is identified by its path, its
// version by the SHA-256 of its bytes. `update` loads a new or changed file and swaps its
// types in at once (a failed load leaves the old version serving); `remove` unregisters a
// deleted file's types. Every entity type is held by `shared_ptr`: the registry holds the
// current ones, an entity instance holds the type it was created by (entity_host), and each
// type holds its `loaded_plugin`, so an old version's library (or child process) stays until
// the last instance created by it is gone, and is unloaded then (logged).
//
// Shadow copies: with `copy_plugins_to(dir)` set, the registry never opens a plugin file
// itself: it copies it to `dir/<sha256>.so` and loads the copy, so a plugin file overwritten
// in place (`cp` over it) never truncates code that is running. The copy goes when its
// version is unloaded.
//
// Thread: the runner's io_context thread (start-up: the thread that calls `load`).

#include <boost/dll/shared_library.hpp>
#include <filesystem>
#include <functional>
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

struct shadow_file;  // a loaded copy of a plugin file, removed when its last user goes

/// One loaded version of one plugin file, shared by its entity types: when the last of them
/// goes (the registry replaced or removed them and no instance of them is left), its library
/// is closed, its child process ends and its shadow copy is removed.
struct loaded_plugin {
  std::string file;  ///< the plugin file's path: its identity
  std::string name;
  std::string version;  ///< "0.0.0" when the plugin gives none
  std::string sha256;   ///< of the bytes loaded; empty when loaded in place without a hash
  std::vector<std::string> entity_types;
  std::shared_ptr<shadow_file> shadow;  // declared first: removed after the library is closed
  std::shared_ptr<boost::dll::shared_library> library;
  std::shared_ptr<plugin_process> process;
  /// Set by the registry: runs first thing in the destructor (logs, ends the process).
  std::function<void(loaded_plugin&)> on_unloaded;

  loaded_plugin() = default;
  loaded_plugin(const loaded_plugin&) = delete;
  loaded_plugin& operator=(const loaded_plugin&) = delete;
  ~loaded_plugin();
};

struct entity_type : std::enable_shared_from_this<entity_type> {
  /// This runner's copy of the plugin's entity descriptor. Its `rpcs` is NULL: the RPC
  /// descriptors are copied into `rpcs` below.
  cluster_entity_descriptor descriptor{};
  /// Copies of the RPC descriptors, in the plugin's order (the index the plugin expects).
  std::vector<cluster_rpc_descriptor> rpcs;
  /// The version this type came with: keeps its code mapped (or its process running).
  std::shared_ptr<loaded_plugin> origin;
  std::shared_ptr<boost::dll::shared_library> library;
  /// Set when the type runs in a child process: the descriptor's callbacks forward there.
  std::shared_ptr<plugin_process> process;
  std::string plugin_path;
  std::string plugin_name;
  std::string plugin_version;  // "0.0.0" when the plugin gives none
  entity_type_info info;
  /// Set when the registry replaced or removed this type: its instances are passivated as
  /// they go idle, and their next messages run on the registry's current type of that name.
  bool retired = false;

  /// Index of `rpc` in the descriptor, nullopt when the type has no such RPC.
  std::optional<std::uint32_t> rpc_index(std::string_view rpc) const;
  /// Is RPC `rpc_index` (a valid index) persisted?
  bool persisted(std::uint32_t rpc_index) const {
    return (rpcs[rpc_index].flags & CLUSTER_RPC_PERSISTED) != 0;
  }
  /// Is RPC `rpc_index` (a valid index) read-only (CLUSTER_RPC_READ_ONLY)?
  bool read_only(std::uint32_t rpc_index) const {
    return (rpcs[rpc_index].flags & CLUSTER_RPC_READ_ONLY) != 0;
  }
  /// Does RPC `rpc_index` (a valid index) answer with a stream (CLUSTER_RPC_STREAM)?
  bool streams(std::uint32_t rpc_index) const {
    return (rpcs[rpc_index].flags & CLUSTER_RPC_STREAM) != 0;
  }
  /// Does the type have this CLUSTER_ENTITY_* flag (as declared, with the runner's config)?
  bool has_flag(std::uint32_t flag) const { return (info.options.flags & flag) != 0; }

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

/// Bounds of the per-type options: past them a value is a mistake (or garbage), not a choice.
inline constexpr std::int64_t max_entity_mailbox = 1 << 20;
inline constexpr std::int64_t max_entity_idle_ms = std::int64_t{7} * 24 * 3600 * 1000;  // a week
inline constexpr std::int64_t max_entity_concurrency = 1024;

/// The per-type options a plugin declared (or a child process reported), checked: unknown flag
/// bits dropped, a singleton kept alive, values past their bounds refused naming the field.
/// `what` names the type in the message ("entity type 'Counter'").
result<entity_options> check_entity_options(entity_options options, const std::string& what);

class entity_registry {
 public:
  entity_registry();
  ~entity_registry();
  entity_registry(const entity_registry&) = delete;
  entity_registry& operator=(const entity_registry&) = delete;

  /// Loads each path: a plugin file, or a folder whose `*.so` files are loaded in name order.
  /// Returns one message per rejected file ("<file>: <reason>"); the rest stay loaded.
  std::vector<std::string> load(const std::vector<std::string>& paths);

  /// Loads one plugin file, or says why it is refused (the file is then unloaded and
  /// nothing of it is registered). Logs one line per loaded plugin: name, version, file and
  /// entity types. Blocking (a child process is waited for): start-up only.
  result<void> load_file(const std::filesystem::path& file);

  /// The file appeared or changed: loads it (without blocking the loop: a child process is
  /// waited for asynchronously) and swaps its types in, replacing the types of the version
  /// loaded from that file before, if any. Bytes equal to the loaded version's change
  /// nothing. A file that does not load, or declares a type another file provides, is
  /// refused: the version loaded before keeps serving, and `plugins()` lists the refusal.
  /// `done` runs once, on the loop, after the swap (or the refusal).
  void update(const std::filesystem::path& file, std::function<void(result<void>)> done);
  /// The file is gone: its types are unregistered at once (retired); their instances drain.
  /// False when nothing was loaded (or refused) from it.
  bool remove(const std::filesystem::path& file);

  /// Loads copies in `dir` (created) instead of the files themselves; see the file comment.
  result<void> copy_plugins_to(const std::filesystem::path& dir);
  /// Files in `dir` are pushed plugins: plugin_info.file says "push:<name>" for them.
  void set_pushed_dir(std::filesystem::path dir) { pushed_dir_ = std::move(dir); }

  /// Plugins loaded from now on run in child processes (runner.isolation = "process"); their
  /// callbacks are then asynchronous messages on `io`.
  void isolate(asio::io_context& io, isolation_options options);
  bool isolated() const { return isolation_.has_value(); }
  /// Runs when a plugin's process ended: every instance of that process's types is gone.
  std::function<void(const plugin_process* process)> on_instances_lost;
  /// Runs (on the loop) after `update` or `remove` retired types: the entity host moves
  /// their instances on.
  std::function<void()> on_types_retired;
  /// Turns the options a type declares into those it runs with (the runner's [entity.<Type>]
  /// config and defaults), for every type loaded, at start and later; a failure refuses the
  /// plugin file. Unset: the declared options.
  std::function<result<entity_options>(const std::string& type, entity_options declared)>
      configure_type;
  /// Runs (on the loop) whenever what `plugins()` or `catalog()` report changed.
  std::function<void()> on_change;

  const entity_type* find(std::string_view name) const;
  /// The current type of that name, shared (an entity instance keeps its type).
  std::shared_ptr<const entity_type> find_shared(std::string_view name) const;
  std::vector<entity_type_info> catalog() const;
  bool empty() const { return types_.empty(); }
  /// Every plugin file known: its loaded version, a refused newer one, versions still
  /// draining (in that order per file).
  std::vector<plugin_info> plugins() const;
  /// Is a version loaded from `file`?
  bool loaded(const std::filesystem::path& file) const;
  /// The files a version is loaded from.
  std::vector<std::filesystem::path> loaded_files() const;

 private:
  struct candidate;  // a version loaded and checked, not yet registered
  struct file_state {
    std::shared_ptr<loaded_plugin> current;
    std::string refused_sha256;
    std::string refused_error;
    std::vector<std::weak_ptr<loaded_plugin>> draining;
    bool loading = false;  // an update of this file is in progress (a child is starting)
    std::vector<std::function<void(result<void>)>> queued;  // updates asked for meanwhile
    std::uint64_t epoch = 0;  // bumped by `remove`: a load started before is dropped
  };

  /// Hashes and copies the file (shadow copies), or reads its hash only.
  result<candidate> prepare(const std::filesystem::path& file);
  result<void> open_in_process(candidate& c);
  result<void> adopt_process(candidate& c, std::shared_ptr<plugin_process> process);
  /// Registers the candidate's types in place of the file's current ones.
  result<void> commit(candidate c);
  void refuse(const std::filesystem::path& file, const std::string& sha256, const std::string& why);
  void unloaded(loaded_plugin& plugin);
  void retire_process(std::shared_ptr<plugin_process> process);
  std::string shown_file(const std::string& file) const;
  void changed();

  std::map<std::string, std::shared_ptr<entity_type>, std::less<>> types_;
  std::map<std::string, file_state, std::less<>> files_;
  std::optional<std::filesystem::path> shadow_dir_;
  std::map<std::string, std::weak_ptr<shadow_file>> shadows_;  // by sha256
  std::filesystem::path pushed_dir_;
  asio::io_context* io_ = nullptr;
  std::optional<isolation_options> isolation_;
  /// Processes of unloaded versions, until they have exited.
  std::vector<std::shared_ptr<plugin_process>> retiring_;
  /// Lets a version unloaded after the registry is gone know it (tests, shutdown order).
  std::shared_ptr<entity_registry*> self_;
};

}  // namespace cluster::host
