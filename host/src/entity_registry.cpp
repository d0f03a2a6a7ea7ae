#include "cluster/host/entity_registry.hpp"

#include <dlfcn.h>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <set>

#include "cluster/cron.hpp"
#include "cluster/security/digest.hpp"

namespace cluster::host {

namespace {

// A refused plugin is an invalid request to load it; no wire reply carries this code.
constexpr errc refused = errc::invalid_request;

// Bounds that tell a garbage descriptor from a real one before the runner walks it.
constexpr std::uint32_t max_entity_types = 1024;
constexpr std::uint32_t max_rpcs_per_type = 1024;
constexpr std::size_t max_name_bytes = 255;
constexpr std::uint32_t known_entity_flags = CLUSTER_ENTITY_STATEFUL | CLUSTER_ENTITY_KEEP_ALIVE |
                                             CLUSTER_ENTITY_SINGLETON | CLUSTER_ENTITY_CRON;

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

}  // namespace

result<entity_options> check_entity_options(entity_options options, const std::string& what) {
  // Bits of a newer minor mean nothing to this runner (the ABI's rule for flags).
  options.flags &= known_entity_flags;
  if ((options.flags & CLUSTER_ENTITY_SINGLETON) != 0 && (options.flags & CLUSTER_ENTITY_CRON) != 0)
    return failure{refused, what + " is declared both a singleton and a cron job"};
  // A singleton lives as long as its shard is served here.
  if ((options.flags & CLUSTER_ENTITY_SINGLETON) != 0) options.flags |= CLUSTER_ENTITY_KEEP_ALIVE;
  if (options.mailbox_capacity > max_entity_mailbox)
    return failure{refused, what + "'s mailbox_capacity " +
                                std::to_string(options.mailbox_capacity) + " is above " +
                                std::to_string(max_entity_mailbox)};
  if (options.max_idle_ms < 0 || options.max_idle_ms > max_entity_idle_ms)
    return failure{refused, what + "'s max_idle_ms " + std::to_string(options.max_idle_ms) +
                                " is outside 0.." + std::to_string(max_entity_idle_ms)};
  if (options.concurrency > max_entity_concurrency)
    return failure{refused, what + "'s concurrency " + std::to_string(options.concurrency) +
                                " is above " + std::to_string(max_entity_concurrency)};
  if (options.cron_missed > CLUSTER_CRON_RUN_MISSED_ONCE)
    return failure{refused, what + "'s cron_missed " + std::to_string(options.cron_missed) +
                                " is not a CLUSTER_CRON_* policy"};
  return options;
}

namespace {

struct plugin_contents {
  std::string name;
  std::string version;
  std::vector<entity_type> types;
};

/// The runner runs singletons and cron jobs through their RPC 0 itself: a type it could not
/// run so is refused, naming it.
result<void> check_job(const entity_type_info& info) {
  if ((info.options.flags & CLUSTER_ENTITY_SINGLETON) != 0 && info.rpcs.empty())
    return failure{refused, "singleton '" + info.name + "' has no RPC 0 (its run)"};
  if ((info.options.flags & CLUSTER_ENTITY_CRON) == 0) return success();
  const std::string what = "cron job '" + info.name + "'";
  if (info.rpcs.empty()) return failure{refused, what + " has no RPC 0 (its tick)"};
  if (!info.rpcs[0].persisted)
    return failure{refused, what + ": its RPC 0 ('" + info.rpcs[0].name + "') is not persisted"};
  try {
    (void)cron_schedule::parse(info.options.cron_schedule);
  } catch (const std::invalid_argument& e) {
    return failure{refused, what + ": " + e.what()};
  }
  return success();
}

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
  BOOST_OUTCOME_TRY(schedule, read_text(d.cron_schedule, what + "'s cron schedule"));
  entity_options declared;
  declared.flags = d.flags;
  declared.mailbox_capacity = d.mailbox_capacity;
  declared.max_idle_ms = d.max_idle_ms;
  declared.concurrency = d.concurrency;
  declared.cron_missed = d.cron_missed;
  declared.cron_schedule = std::move(schedule);
  BOOST_OUTCOME_TRY(options, check_entity_options(std::move(declared), what));
  type.info.name = std::move(name);
  type.info.group = group.empty() ? "default" : std::move(group);
  type.info.options = std::move(options);
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
    if (type.persisted(r) && type.streams(r))
      return failure{refused, "RPC " + rpc_name + " of " + type.info.name +
                                  " is both persisted and streaming"};
    type.info.rpcs.push_back(
        rpc_info{std::move(rpc_name), type.persisted(r), type.read_only(r), type.streams(r)});
  }
  BOOST_OUTCOME_TRYV(check_job(type.info));
  // The runner reads its copies from now on, never the plugin's table or text.
  type.descriptor.rpcs = nullptr;
  type.descriptor.cron_schedule = nullptr;
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

/// A loaded copy of a plugin file (runner.plugin_cache_dir/loaded/<sha256>.so): removed when
/// the last version loaded from it is unloaded.
struct shadow_file {
  std::filesystem::path path;
  explicit shadow_file(std::filesystem::path p) : path(std::move(p)) {}
  shadow_file(const shadow_file&) = delete;
  shadow_file& operator=(const shadow_file&) = delete;
  ~shadow_file() {
    std::error_code ignored;
    std::filesystem::remove(path, ignored);
  }
};

loaded_plugin::~loaded_plugin() {
  if (on_unloaded) on_unloaded(*this);
}

struct entity_registry::candidate {
  std::filesystem::path file;       // the plugin file (its identity)
  std::filesystem::path load_path;  // what is opened: the shadow copy, or the file itself
  std::string sha256;
  std::shared_ptr<shadow_file> shadow;
  std::shared_ptr<boost::dll::shared_library> library;
  std::shared_ptr<plugin_process> process;
  std::string name;
  std::string version;
  std::vector<entity_type> types;
};

std::optional<std::uint32_t> entity_type::rpc_index(std::string_view rpc) const {
  for (std::uint32_t i = 0; i < info.rpcs.size(); ++i)
    if (rpc == info.rpcs[i].name) return i;
  return std::nullopt;
}

entity_registry::entity_registry() : self_(std::make_shared<entity_registry*>(this)) {}

entity_registry::~entity_registry() {
  // Versions unloaded from here on (the types below, instances an entity host still holds)
  // end their processes themselves, blocking: there is no loop to wait on any more.
  *self_ = nullptr;
  types_.clear();
  files_.clear();
  retiring_.clear();
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
        if (entry.is_regular_file() && entry.path().extension() == ".so" &&
            entry.path().filename().string().front() != '.')
          files.push_back(entry.path());
      std::sort(files.begin(), files.end());
      for (const auto& file : files) try_load(file);
    } else {
      try_load(path);
    }
  }
  return errors;
}

result<void> entity_registry::copy_plugins_to(const std::filesystem::path& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return failure{refused, "cannot create " + dir.string() + ": " + ec.message()};
  shadow_dir_ = dir;
  return success();
}

result<entity_registry::candidate> entity_registry::prepare(const std::filesystem::path& file) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(file, ec)) return failure{refused, "no such file"};
  candidate c;
  c.file = file;
  if (!shadow_dir_) {
    BOOST_OUTCOME_TRY(sha, security::sha256_file(file));
    c.sha256 = std::move(sha);
    c.load_path = file;
    return c;
  }
  // Hash the copy, not the file: what is loaded is exactly what was hashed, even when the
  // file is being replaced meanwhile.
  static std::uint64_t copies = 0;
  const auto incoming = *shadow_dir_ / (".incoming-" + std::to_string(::getpid()) + "-" +
                                        std::to_string(++copies) + ".tmp");
  std::filesystem::copy_file(file, incoming, std::filesystem::copy_options::overwrite_existing, ec);
  if (ec) {
    std::filesystem::remove(incoming, ec);
    return failure{refused, "cannot copy it to " + shadow_dir_->string() + ": " + ec.message()};
  }
  auto sha = security::sha256_file(incoming);
  if (!sha) {
    std::filesystem::remove(incoming, ec);
    return sha.error();
  }
  c.sha256 = std::move(sha).value();
  if (auto known = shadows_.find(c.sha256); known != shadows_.end()) {
    if (auto shadow = known->second.lock()) {
      // These bytes are loaded already (another file, or a version still draining).
      std::filesystem::remove(incoming, ec);
      c.shadow = std::move(shadow);
      c.load_path = c.shadow->path;
      return c;
    }
  }
  const auto target = *shadow_dir_ / (c.sha256 + ".so");
  std::filesystem::rename(incoming, target, ec);
  if (ec) {
    std::filesystem::remove(incoming, ec);
    return failure{refused, "cannot rename its copy to " + target.string() + ": " + ec.message()};
  }
  c.shadow = std::make_shared<shadow_file>(target);
  shadows_[c.sha256] = c.shadow;
  c.load_path = target;
  return c;
}

result<void> entity_registry::load_file(const std::filesystem::path& file) {
  auto outcome = [&]() -> result<void> {
    BOOST_OUTCOME_TRY(c, prepare(file));
    if (auto it = files_.find(file.string());
        it != files_.end() && it->second.current && it->second.current->sha256 == c.sha256)
      return success();  // these bytes are loaded from this file already
    if (isolated()) {
      BOOST_OUTCOME_TRY(
          process, plugin_process::start(*io_, c.load_path, *isolation_, file.filename().string()));
      BOOST_OUTCOME_TRY(adopt_process(c, std::move(process)));
    } else {
      BOOST_OUTCOME_TRY(open_in_process(c));
    }
    return commit(std::move(c));
  }();
  if (!outcome) {
    auto& state = files_[file.string()];
    state.refused_error = outcome.error().message;
    state.refused_sha256.clear();
    if (auto sha = security::sha256_file(file)) state.refused_sha256 = sha.value();
    changed();
  }
  return outcome;
}

void entity_registry::update(const std::filesystem::path& file,
                             std::function<void(result<void>)> done) {
  const std::string key = file.string();
  auto& state = files_[key];
  if (state.loading) {
    // One load per file at a time; this one looks at the file again once that one is done.
    state.queued.push_back(std::move(done));
    return;
  }
  auto finish = [this, key, file](result<void> outcome, std::function<void(result<void>)> answer,
                                  const std::string& sha256) {
    auto it = files_.find(key);
    if (it == files_.end()) return;  // the registry was cleared
    it->second.loading = false;
    auto queued = std::move(it->second.queued);
    it->second.queued.clear();
    if (!outcome) refuse(file, sha256, outcome.error().message);
    if (answer) answer(outcome);
    if (!queued.empty())
      update(file, [queued = std::move(queued)](result<void> again) {
        for (const auto& d : queued)
          if (d) d(again);
      });
  };
  auto prepared = prepare(file);
  if (!prepared) {
    finish(prepared.error(), std::move(done), {});
    return;
  }
  auto c = std::move(prepared).value();
  if (state.current && state.current->sha256 == c.sha256) {
    // The bytes loaded already (back to them after a refused version): nothing to load.
    if (!state.refused_error.empty()) {
      state.refused_error.clear();
      state.refused_sha256.clear();
      spdlog::info("plugin file {} holds version {} again", key, state.current->version);
      changed();
    }
    finish(success(), std::move(done), c.sha256);
    return;
  }
  if (!isolated()) {
    const std::string sha = c.sha256;
    auto opened = open_in_process(c);
    finish(opened ? commit(std::move(c)) : opened, std::move(done), sha);
    return;
  }
  state.loading = true;
  const std::uint64_t epoch = state.epoch;
  const std::string sha = c.sha256;
  const auto load_path = c.load_path;  // `c` moves into the handler below
  plugin_process::launch(
      *io_, load_path, *isolation_, file.filename().string(),
      [this, alive = std::weak_ptr<entity_registry*>(self_), key, epoch, sha, finish,
       c = std::make_shared<candidate>(std::move(c)),
       done = std::move(done)](result<std::shared_ptr<plugin_process>> started) mutable {
        if (auto self = alive.lock(); !self || *self == nullptr) return;
        auto it = files_.find(key);
        if (it == files_.end()) return;
        if (it->second.epoch != epoch) {
          // The file was removed while its new version was starting: nothing to swap in.
          it->second.loading = false;
          auto queued = std::move(it->second.queued);
          it->second.queued.clear();
          if (started) retire_process(std::move(started).value());
          if (done) done(failure{refused, "the file was removed while it was loading"});
          if (!queued.empty())
            update(std::filesystem::path(key), [queued = std::move(queued)](result<void> again) {
              for (const auto& d : queued)
                if (d) d(again);
            });
          return;
        }
        if (!started) {
          finish(started.error(), std::move(done), sha);
          return;
        }
        auto adopted = adopt_process(*c, std::move(started).value());
        finish(adopted ? commit(std::move(*c)) : adopted, std::move(done), sha);
      });
}

bool entity_registry::remove(const std::filesystem::path& file) {
  auto it = files_.find(file.string());
  if (it == files_.end()) return false;
  auto& state = it->second;
  ++state.epoch;
  const bool had_refusal = !state.refused_error.empty();
  state.refused_error.clear();
  state.refused_sha256.clear();
  auto old = std::move(state.current);
  state.current.reset();
  if (!old) {
    if (state.draining.empty() && !state.loading) files_.erase(it);
    if (had_refusal) changed();
    return had_refusal;
  }
  state.draining.push_back(old);
  std::vector<std::shared_ptr<entity_type>> retired;
  for (const auto& name : old->entity_types) {
    auto type = types_.find(name);
    if (type == types_.end() || type->second->origin != old) continue;
    type->second->retired = true;
    retired.push_back(std::move(type->second));
    types_.erase(type);
  }
  spdlog::info("removed plugin {} {} ({}): {} unregistered; draining", old->name, old->version,
               file.string(), fmt::join(old->entity_types, ", "));
  old.reset();
  retired.clear();  // unloads it at once when no instance holds a type of it
  if (on_types_retired) on_types_retired();
  changed();
  return true;
}

result<void> entity_registry::open_in_process(candidate& c) {
  auto library = std::make_shared<boost::dll::shared_library>();
  boost::dll::fs::error_code ec;
  // RTLD_NOW: a missing symbol refuses the file here, not the first request that needs it.
  library->load(c.load_path.string(),
                boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local, ec);
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
  c.name = std::move(plugin.name);
  c.version = std::move(plugin.version);
  c.types = std::move(plugin.types);
  c.library = std::move(library);
  for (auto& type : c.types) type.library = c.library;
  return success();
}

result<void> entity_registry::adopt_process(candidate& c, std::shared_ptr<plugin_process> process) {
  const auto& catalog = process->catalog();
  if (catalog.types.empty()) return failure{refused, "declares no entity types"};
  c.types.clear();
  for (std::size_t i = 0; i < catalog.types.size(); ++i) {
    entity_type type;
    type.descriptor = process->descriptor(i);
    type.rpcs = process->rpc_descriptors(i);
    type.info = catalog.types[i];
    BOOST_OUTCOME_TRY(
        options, check_entity_options(type.info.options, "entity type '" + type.info.name + "'"));
    type.info.options = std::move(options);
    type.process = process;
    c.types.push_back(std::move(type));
  }
  c.name = catalog.plugin_name.empty() ? catalog.types.front().name : catalog.plugin_name;
  c.version = catalog.plugin_version.empty() ? "0.0.0" : catalog.plugin_version;
  process->on_instances_lost = [alive = std::weak_ptr<entity_registry*>(self_),
                                raw = process.get()](const std::vector<std::string>&) {
    auto self = alive.lock();
    if (self && *self != nullptr && (*self)->on_instances_lost) (*self)->on_instances_lost(raw);
  };
  c.process = std::move(process);
  return success();
}

result<void> entity_registry::commit(candidate c) {
  const std::string key = c.file.string();
  auto& state = files_[key];
  const std::shared_ptr<loaded_plugin> old = state.current;
  if (configure_type)
    for (auto& type : c.types) {
      BOOST_OUTCOME_TRY(options, configure_type(type.info.name, type.info.options));
      type.info.options = std::move(options);
    }
  // Refuse the whole file on a duplicate, so a plugin is never half registered.
  for (const auto& type : c.types)
    if (auto it = types_.find(type.info.name);
        it != types_.end() && (!old || it->second->origin != old))
      return failure{refused, "entity type '" + type.info.name + "' is already provided by " +
                                  it->second->plugin_path};
  auto plugin = std::make_shared<loaded_plugin>();
  plugin->file = key;
  plugin->name = c.name;
  plugin->version = c.version;
  plugin->sha256 = c.sha256;
  plugin->shadow = std::move(c.shadow);
  plugin->library = std::move(c.library);
  plugin->process = std::move(c.process);
  plugin->on_unloaded = [alive = std::weak_ptr<entity_registry*>(self_)](loaded_plugin& p) {
    if (auto self = alive.lock(); self && *self != nullptr) (*self)->unloaded(p);
  };
  for (const auto& type : c.types) plugin->entity_types.push_back(type.info.name);

  std::vector<std::shared_ptr<entity_type>> retired;
  if (old) {
    for (const auto& name : old->entity_types) {
      auto it = types_.find(name);
      if (it == types_.end() || it->second->origin != old) continue;
      it->second->retired = true;
      retired.push_back(std::move(it->second));
      types_.erase(it);
    }
    state.draining.push_back(old);
  }
  for (auto& type : c.types) {
    type.origin = plugin;
    type.plugin_path = key;
    type.plugin_name = plugin->name;
    type.plugin_version = plugin->version;
    std::string name = type.info.name;
    types_.emplace(std::move(name), std::make_shared<entity_type>(std::move(type)));
  }
  state.current = plugin;
  state.refused_error.clear();
  state.refused_sha256.clear();
  const std::string names = fmt::format("{}", fmt::join(plugin->entity_types, ", "));
  if (old) {
    spdlog::info("swapped plugin {} ({}): version {} replaces {}: {}; the old version drains",
                 plugin->name, key, plugin->version, old->version, names);
  } else {
    spdlog::info("loaded plugin {} {} from {}: {}", plugin->name, plugin->version, key, names);
  }
  retired.clear();  // unloads the old version at once when no instance holds a type of it
  if (old && on_types_retired) on_types_retired();
  changed();
  return success();
}

void entity_registry::refuse(const std::filesystem::path& file, const std::string& sha256,
                             const std::string& why) {
  auto& state = files_[file.string()];
  state.refused_error = why;
  state.refused_sha256 = sha256;
  if (state.current)
    spdlog::error("refused plugin {}: {}; version {} keeps serving", file.string(), why,
                  state.current->version);
  else
    spdlog::error("refused plugin {}: {}", file.string(), why);
  changed();
}

void entity_registry::unloaded(loaded_plugin& plugin) {
  spdlog::info("unloaded plugin {} {} ({}): no instance of it is left", plugin.name, plugin.version,
               plugin.file);
  if (plugin.process) retire_process(std::move(plugin.process));
  if (auto it = files_.find(plugin.file); it != files_.end()) {
    auto& state = it->second;
    std::erase_if(state.draining, [](const auto& weak) { return weak.expired(); });
    if (!state.current && state.draining.empty() && state.refused_error.empty() && !state.loading)
      files_.erase(it);
  }
  changed();
}

void entity_registry::retire_process(std::shared_ptr<plugin_process> process) {
  // Its child ends once it has read what was sent to it (the last destructors); kept here
  // until it has exited.
  retiring_.push_back(process);
  process->retire([alive = std::weak_ptr<entity_registry*>(self_), raw = process.get()] {
    auto self = alive.lock();
    if (!self || *self == nullptr) return;
    std::erase_if((*self)->retiring_, [raw](const auto& p) { return p.get() == raw; });
  });
}

void entity_registry::changed() {
  if (on_change) on_change();
}

void entity_registry::isolate(asio::io_context& io, isolation_options options) {
  io_ = &io;
  isolation_ = std::move(options);
}

const entity_type* entity_registry::find(std::string_view name) const {
  auto it = types_.find(name);
  return it == types_.end() ? nullptr : it->second.get();
}

std::shared_ptr<const entity_type> entity_registry::find_shared(std::string_view name) const {
  auto it = types_.find(name);
  return it == types_.end() ? nullptr : it->second;
}

std::vector<entity_type_info> entity_registry::catalog() const {
  std::vector<entity_type_info> out;
  for (const auto& [name, type] : types_) out.push_back(type->info);
  return out;
}

std::string entity_registry::shown_file(const std::string& file) const {
  const std::filesystem::path path(file);
  if (!pushed_dir_.empty() && path.parent_path() == pushed_dir_)
    return "push:" + path.stem().string();
  return file;
}

std::vector<plugin_info> entity_registry::plugins() const {
  std::vector<plugin_info> out;
  const auto describe = [&](const loaded_plugin& p, const char* state) {
    plugin_info info;
    info.name = p.name;
    info.version = p.version;
    info.sha256 = p.sha256;
    info.file = shown_file(p.file);
    info.state = state;
    info.entity_types = p.entity_types;
    return info;
  };
  for (const auto& [file, state] : files_) {
    if (state.current) out.push_back(describe(*state.current, "loaded"));
    if (!state.refused_error.empty()) {
      plugin_info info;
      info.name = std::filesystem::path(file).stem().string();
      info.version = "";
      info.sha256 = state.refused_sha256;
      info.file = shown_file(file);
      info.state = "failed";
      info.error = state.refused_error;
      out.push_back(std::move(info));
    }
    for (const auto& weak : state.draining)
      if (auto p = weak.lock()) out.push_back(describe(*p, "draining"));
  }
  return out;
}

bool entity_registry::loaded(const std::filesystem::path& file) const {
  auto it = files_.find(file.string());
  return it != files_.end() && it->second.current != nullptr;
}

std::vector<std::filesystem::path> entity_registry::loaded_files() const {
  std::vector<std::filesystem::path> out;
  for (const auto& [file, state] : files_)
    if (state.current) out.emplace_back(file);
  return out;
}

}  // namespace cluster::host
