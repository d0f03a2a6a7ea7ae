#include "cluster/host/runner.hpp"

#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <set>

#include "cluster/process/ecs_metadata.hpp"
#include "cluster/protocol/shard.hpp"
#include "cluster/storage-pg/stores.hpp"
#include "cluster/storage/manager_store.hpp"
#include "cluster/trace/trace.hpp"

namespace cluster::host {

namespace {
std::string random_incarnation() {
  std::random_device seed;
  std::mt19937_64 random((static_cast<std::uint64_t>(seed()) << 32) ^ seed());
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(random()));
  return text;
}
}  // namespace

std::vector<config_section> runner_config::sections() {
  std::vector<config_section> sections;
  common.declare(sections);
  common.declare_storage(sections);
  sections.emplace_back("runner");
  common.declare_admin(sections.back());
  sections.back()
      .key("name", &name)
      .key("host", &host)
      .key("port", &port)
      .key("advertise_host", &advertise_host)
      .key("manager", &manager)
      .key("plugins", &plugins)
      .key("groups", &groups)
      .key("mailbox_capacity", &mailbox_capacity)
      .key("passivate_after_ms", &passivate_after)
      .key("request_timeout_ms", &request_timeout)
      .key("shutdown_timeout_ms", &shutdown_timeout)
      .key("isolation", &isolation)
      .key("handler_timeout_ms", &handler_timeout)
      .key("plugin_memory_limit_mb", &plugin_memory_limit_mb)
      .key("plugin_host", &plugin_host)
      .key("plugin_cache_dir", &plugin_cache_dir)
      .key("watch_plugins", &watch_plugins)
      .key("stall_fence_ms", &stall_fence)
      .key("state_save", &state_save);
  // Each table's section lives as long as the loader can write through it.
  auto tables = std::make_shared<std::map<std::string, config_section>>();
  sections.emplace_back("entity");
  sections.back().tables(
      {"max_idle_ms", "mailbox_capacity", "concurrency", "keep_alive"},
      [this, tables](const std::string& type_name) -> config_section& {
        const std::string key = entity_config_key(type_name);
        auto& entry = entity[key];
        auto& section =
            tables->insert_or_assign(key, config_section("entity." + type_name)).first->second;
        section.key("max_idle_ms", &entry.max_idle_ms)
            .key("mailbox_capacity", &entry.mailbox_capacity)
            .key("concurrency", &entry.concurrency)
            .key("keep_alive", &entry.keep_alive);
        return section;
      });
  return sections;
}

std::string entity_config_key(std::string_view name) {
  std::string key(name);
  for (auto& c : key)
    c = c == '.' || c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return key;
}

result<entity_options> effective_options(const std::string& type, entity_options declared,
                                         const runner_config& config) {
  entity_options options = std::move(declared);
  if (auto it = config.entity.find(entity_config_key(type)); it != config.entity.end()) {
    const auto& o = it->second;
    const std::string where = "[entity." + type + "]";
    const auto bounded = [&](const std::optional<std::int64_t>& value, const char* key,
                             std::int64_t low, std::int64_t high) -> result<void> {
      if (value && (*value < low || *value > high))
        return failure{errc::invalid_request, where + " " + key + " = " + std::to_string(*value) +
                                                  " is outside [" + std::to_string(low) + ", " +
                                                  std::to_string(high) + "]"};
      return success();
    };
    BOOST_OUTCOME_TRYV(bounded(o.max_idle_ms, "max_idle_ms", 1, max_entity_idle_ms));
    BOOST_OUTCOME_TRYV(bounded(o.mailbox_capacity, "mailbox_capacity", 1, max_entity_mailbox));
    BOOST_OUTCOME_TRYV(bounded(o.concurrency, "concurrency", 1, max_entity_concurrency));
    if (o.max_idle_ms) options.max_idle_ms = *o.max_idle_ms;
    if (o.mailbox_capacity)
      options.mailbox_capacity = static_cast<std::uint32_t>(*o.mailbox_capacity);
    if (o.concurrency) options.concurrency = static_cast<std::uint32_t>(*o.concurrency);
    if (o.keep_alive) {
      if (*o.keep_alive) {
        options.flags |= CLUSTER_ENTITY_KEEP_ALIVE;
      } else if ((options.flags & CLUSTER_ENTITY_SINGLETON) != 0) {
        return failure{errc::invalid_request, where + " keep_alive = false: " + type +
                                                  " is a singleton, always kept alive"};
      } else {
        options.flags &= ~CLUSTER_ENTITY_KEEP_ALIVE;
      }
    }
  }
  if (options.mailbox_capacity == 0) options.mailbox_capacity = config.mailbox_capacity;
  if (options.max_idle_ms == 0) options.max_idle_ms = config.passivate_after.count();
  if (options.concurrency == 0) options.concurrency = 1;
  return options;
}

namespace {

/// A discarded request's callback: the first answer (its acceptance, or what refused it)
/// goes to `done`; what comes after (the handler's outcome) is only logged, at debug level.
entity_host::reply_callback accept_discarded(entity_host::reply_callback done, std::string what) {
  auto answered = std::make_shared<bool>(false);
  return [done = std::move(done), what = std::move(what), answered](reply_msg&& reply) mutable {
    if (!std::exchange(*answered, true)) {
      done(std::move(reply));
      return;
    }
    if (!reply.ok())
      spdlog::debug("discarded {} ended with {}: {}", what, reply.error, reply.message);
  };
}

// docs/security.md "Permissions": proxies and other runners (entity-to-entity calls) call
// entities; the manager only probes.
std::shared_ptr<const permissions> runner_permissions() {
  auto allowed =
      std::make_shared<permissions>(mask_of(role::proxy, role::runner, role::admin, role::manager));
  const role_mask callers = mask_of(role::proxy, role::runner, role::admin);
  allowed->allow(message_kind::request, callers)
      .allow(message_kind::interrupt, callers)
      .allow(message_kind::stream_ack, callers);
  return allowed;
}

}  // namespace

runner::runner(asio::io_context& io, runner_config config)
    : io_(io),
      config_(std::move(config)),
      server_(
          io,
          server_options{config_.host,
                         config_.port,
                         config_.common.max_connections,
                         config_.common.limits(),
                         {"runner", "proxy"},
                         runner_permissions()},
          [this](const connection_ptr& conn, envelope&& env) { on_message(conn, std::move(env)); }),
      router_(io, router_options{config_.name, "runner", config_.common.limits()}),
      work_(io.get_executor()),
      drain_timer_(io),
      incarnation_(random_incarnation()),
      stall_timer_(io),
      deadline_timer_(io) {
  server_.on_disconnect = [this](const connection_ptr& conn) { caller_gone(conn); };
}

runner::~runner() = default;

runner::owned_folder::~owned_folder() {
  if (path.empty()) return;
  std::error_code ignored;
  std::filesystem::remove_all(path, ignored);
}

namespace {

/// Removes the temp plugin folders of runners that died without removing theirs (kill -9):
/// `cluster-runner-<pid>-*` whose process is gone.
void remove_dead_runners_folders(const std::filesystem::path& temp) {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator(temp, ec)) {
    const std::string name = entry.path().filename().string();
    constexpr std::string_view prefix = "cluster-runner-";
    if (name.rfind(prefix, 0) != 0) continue;
    char* end = nullptr;
    const long pid = std::strtol(name.c_str() + prefix.size(), &end, 10);
    if (pid <= 0 || end == nullptr || *end != '-') continue;
    if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) continue;  // alive, or not ours
    std::error_code ignored;
    std::filesystem::remove_all(entry.path(), ignored);
  }
}

}  // namespace

void runner::load_plugins() {
  if (config_.plugin_cache_dir.empty()) {
    const auto temp = std::filesystem::temp_directory_path();
    remove_dead_runners_folders(temp);
    std::string pattern =
        (temp / ("cluster-runner-" + std::to_string(::getpid()) + "-XXXXXX")).string();
    if (::mkdtemp(pattern.data()) == nullptr)
      throw std::runtime_error(
          "runner.plugin_cache_dir is empty and no temp folder could be made in " + temp.string() +
          ": " + std::strerror(errno));
    cache_dir_ = pattern;
    temp_cache_dir_.path = cache_dir_;
  } else {
    cache_dir_ = config_.plugin_cache_dir;
  }
  std::error_code ec;
  std::filesystem::create_directories(pushed_plugins_dir(), ec);
  if (ec)
    throw config_error("runner.plugin_cache_dir: cannot create " + pushed_plugins_dir().string() +
                       ": " + ec.message());
  if (auto shadows = registry_.copy_plugins_to(cache_dir_ / "loaded"); !shadows)
    throw config_error("runner.plugin_cache_dir: " + shadows.error().message);
  registry_.set_pushed_dir(pushed_plugins_dir());

  std::vector<std::string> paths = config_.plugins;
  paths.push_back(pushed_plugins_dir().string());
  if (config_.watch_plugins) {
    // Watching starts before the first load: a file that lands in between is not missed
    // (loading it again is a no-op when its bytes are the ones loaded).
    watcher_ = std::make_unique<plugin_watcher>(
        io_, config_.plugin_quiet, [this](const std::filesystem::path& file, bool present) {
          plugin_file_settled(file, present);
        });
    watcher_->on_overflow = [this] {
      for (const auto& file : registry_.loaded_files())
        if (!std::filesystem::exists(file)) plugin_file_settled(file, false);
      for (const auto& file : watcher_->scan()) plugin_file_settled(file, true);
    };
    for (const auto& path : paths) {
      std::error_code dir_ec;
      const std::filesystem::path entry(path);
      auto watched = std::filesystem::is_directory(entry, dir_ec)
                         ? watcher_->watch(entry)
                         : watcher_->watch(entry.parent_path().empty() ? "." : entry.parent_path(),
                                           entry.filename().string());
      if (!watched) spdlog::warn("runner.plugins: {}", watched.error().message);
    }
  }
  for (const auto& error : registry_.load(paths)) spdlog::error("refused plugin {}", error);
}

void runner::plugin_file_settled(const std::filesystem::path& file, bool present) {
  if (stopping_) return;
  if (!present) {
    if (!registry_.remove(file))
      spdlog::info("plugin file {} removed (nothing was loaded from it)", file.string());
    return;
  }
  spdlog::info("plugin file {} changed: loading it", file.string());
  // The registry logs the outcome; a refused file leaves the version before it serving.
  registry_.update(file, [](result<void>) {});
}

register_runner_msg runner::registration() {
  register_runner_msg registration;
  registration.name = config_.name;
  registration.address = address_;
  registration.version = "0.1.0";
  registration.incarnation = incarnation_;
  registration.entity_types = registry_.catalog();
  registration.plugins = registry_.plugins();
  registration.admin_address = admin_address_;
  std::set<std::string> groups(config_.groups.begin(), config_.groups.end());
  if (groups.empty())
    for (const auto& type : registration.entity_types) groups.insert(type.group);
  if (!groups.empty()) registered_groups_.assign(groups.begin(), groups.end());
  // Every type removed: the groups stay (a runner serves at least one); its types come back
  // with the next plugin file.
  registration.groups = registered_groups_;
  return registration;
}

void runner::remember_kept(const entity_type& type, const std::string& id, std::int32_t shard) {
  // Singletons and cron jobs are known from the catalog: they need no row.
  if (!type.has_flag(CLUSTER_ENTITY_KEEP_ALIVE) || type.has_flag(CLUSTER_ENTITY_SINGLETON) ||
      type.has_flag(CLUSTER_ENTITY_CRON))
    return;
  const std::string key = type.info.name + "/" + id;
  if (!kept_remembered_.insert(key).second) return;  // written once per runner
  persisted_->store().remember_kept(
      type.info.group, shard, kept_entity{type.info.name, id}, [this, key](result<void> done) {
        if (done) return;
        // The next activation tries again; until then a move may leave it inactive.
        kept_remembered_.erase(key);
        spdlog::warn("could not remember kept-alive entity {}: {}", key, done.error().message);
      });
}

void runner::activate_kept(const std::string& group, std::int32_t shard) {
  persisted_->store().kept_entities(
      group, shard, [this, group, shard](result<std::vector<kept_entity>> kept) {
        if (!kept) {
          spdlog::warn("kept-alive entities of shard {} of group '{}' not read: {}", shard, group,
                       kept.error().message);
          return;
        }
        for (const auto& entity : kept.value()) {
          const entity_type* type = registry_.find(entity.entity_type);
          if (type == nullptr || !type->has_flag(CLUSTER_ENTITY_KEEP_ALIVE) ||
              type->info.group != group)
            continue;  // its type is gone, or no longer kept alive
          // Still ours? The answer came later than the shard's serving.
          if (!persisted_->holds(group, shard)) return;
          if (auto active = entities_->activate_now(entity_address{type, entity.entity_id, shard});
              !active)
            spdlog::warn("kept-alive entity {}/{} not activated: {}", entity.entity_type,
                         entity.entity_id, active.error().message);
        }
      });
}

void runner::registration_changed() {
  if (!manager_ || registration_posted_ || stopping_) return;
  registration_posted_ = true;
  asio::post(io_, [this] {
    registration_posted_ = false;
    if (stopping_ || !manager_) return;
    manager_->update_registration(registration());
  });
}

void runner::start() {
  if (config_.isolation == "process") {
    isolation_options isolation;
    isolation.plugin_host = config_.plugin_host.empty()
                                ? (std::filesystem::read_symlink("/proc/self/exe").parent_path() /
                                   "cluster-plugin-host")
                                      .string()
                                : config_.plugin_host;
    isolation.handler_timeout = config_.handler_timeout;
    isolation.memory_limit_mb = config_.plugin_memory_limit_mb;
    isolation.limits = config_.common.limits().decode;
    isolation.stale_after = config_.stall_fence;
    isolation.log_format = config_.common.log_format;
    registry_.isolate(io_, std::move(isolation));
  } else if (config_.isolation != "none") {
    throw config_error("runner.isolation: expected \"none\" or \"process\", got '" +
                       config_.isolation + "'");
  }
  if (config_.state_save != "reply" && config_.state_save != "passivation")
    throw config_error("runner.state_save: expected \"reply\" or \"passivation\", got '" +
                       config_.state_save + "'");
  for (const auto& [key, overrides] : config_.entity)
    if (auto checked = effective_options(key, {}, config_); !checked)
      throw config_error(checked.error().message);
  registry_.configure_type = [this](const std::string& type, entity_options declared) {
    return effective_options(type, std::move(declared), config_);
  };
  load_plugins();
  if (registry_.empty() && config_.groups.empty())
    throw std::runtime_error(
        "no entity type loaded from runner.plugins; nothing to serve (set runner.groups to "
        "start without plugins and serve pushed ones)");
  for (const auto& type : registry_.catalog()) {
    std::string rpcs;
    for (const auto& r : type.rpcs)
      rpcs += (rpcs.empty() ? "" : ", ") + r.name + (r.persisted ? " (persisted)" : "") +
              (r.read_only ? " (read-only)" : "");
    const auto& o = type.options;
    spdlog::info("entity type {} in group '{}': {}; mailbox {}, idle {} ms, concurrency {}{}",
                 type.name, type.group, rpcs, o.mailbox_capacity, o.max_idle_ms, o.concurrency,
                 (o.flags & CLUSTER_ENTITY_KEEP_ALIVE) != 0 ? ", kept alive" : "");
  }

  entities_ = std::make_unique<entity_host>(
      io_,
      entity_host_options{config_.mailbox_capacity, config_.passivate_after,
                          registry_.isolated() ? milliseconds(0) : config_.handler_timeout,
                          config_.common.storage.max_state_bytes, config_.state_save == "reply"},
      [this](request_msg request, entity_host::reply_callback done) {
        asio::co_spawn(
            io_,
            [this, request = std::move(request),
             done = std::move(done)]() mutable -> awaitable<void> {
              auto route =
                  router_.route(std::move(request), steady_clock::now() + config_.request_timeout);
              auto reply = co_await std::move(route);
              done(std::move(reply));
            },
            asio::detached);
      });
  registry_.on_instances_lost = [this](const plugin_process* process) {
    entities_->instances_lost(process);
  };
  entities_->resolve_type = [this](std::string_view name) { return registry_.find_shared(name); };
  registry_.on_types_retired = [this] { entities_->retire_types(); };
  registry_.on_change = [this] { registration_changed(); };
  // The manager ends the sessions of this incarnation if it declares the runner dead.
  config_.common.storage.application_name = runner_session_name(incarnation_);
  entities_->may_run = [this](const std::string&, std::int32_t) { return !check_fenced(); };
  persisted_ =
      std::make_unique<persisted_messages>(io_, make_message_store(io_, config_.common.storage),
                                           *entities_, registry_, config_.common.storage);
  persisted_->in_flight = &work_;
  entities_->fencing_token = [this](const std::string& group, std::int32_t shard) {
    return persisted_->store().lock_epoch(group, shard);
  };
  entities_->on_activated = [this](const entity_type& type, const std::string& id,
                                   std::int32_t shard) { remember_kept(type, id, shard); };
  jobs_ = std::make_unique<host::jobs>(
      io_, *entities_, *persisted_, persisted_->store(), registry_,
      [this](const std::string& group) -> std::int32_t {
        const auto it = shards_per_group_.find(group);
        return it == shards_per_group_.end() ? 0 : static_cast<std::int32_t>(it->second);
      });
  jobs_->in_flight = &work_;
  persisted_->on_shard_serving = [this](const std::string& group, std::int32_t shard) {
    if (jobs_) jobs_->shard_serving(group, shard);
    activate_kept(group, shard);
  };
  persisted_->start();
  router_.is_local = [this](const std::string& owner) { return owner == address_; };
  router_.deliver_locally = [this](request_msg request,
                                   steady_clock::time_point deadline) -> awaitable<reply_msg> {
    return asio::async_initiate<decltype(use_awaitable), void(reply_msg)>(
        [this, request = std::move(request), deadline](auto handler) mutable {
          auto shared = std::make_shared<decltype(handler)>(std::move(handler));
          serve(std::move(request), deadline,
                [shared, hold = work_.hold()](reply_msg&& reply) mutable {
                  (*shared)(std::move(reply));
                  hold.release();
                });
        },
        use_awaitable);
  };

  server_.listen();
  std::string advertised = config_.advertise_host;
  if (const char* metadata = std::getenv("ECS_CONTAINER_METADATA_URI_V4");
      advertised.empty() && metadata != nullptr) {
    // In ECS every runner of a task shares the task's private IP; others reach it there.
    auto ip = ecs_task_ip(metadata);
    if (!ip) throw std::runtime_error("runner.advertise_host is empty and " + ip.error().message);
    advertised = ip.value();
  }
  if (advertised.empty()) advertised = config_.host;
  address_ = advertised + ":" + std::to_string(server_.port());
  if (config_.common.admin.port != 0)
    admin_address_ = advertised + ":" + std::to_string(config_.common.admin.port);
  collect_metrics();

  auto manager_address = parse_host_port(config_.manager);
  if (!manager_address)
    throw config_error("runner.manager: expected host:port, got '" + config_.manager + "'");
  manager_client_options options;
  options.manager = *manager_address;
  options.hello = hello_msg{protocol_version, "runner", config_.name};
  options.registration = registration();
  options.limits = config_.common.limits();
  fetcher_ = std::make_unique<plugin_fetcher>(
      io_, plugin_fetcher_options{cache_dir_, options.manager, options.hello, options.limits});
  manager_ = std::make_unique<manager_client>(
      io_, options, [this](const assignment_snapshot& snapshot) { on_snapshot(snapshot); });
  manager_->start();
  if (watcher_) watcher_->start();
  last_tick_ = steady_clock::now();
  watch_stalls();
  sweep_deadlines();
  spdlog::info("runner {} listening on {} (incarnation {})", config_.name, address_, incarnation_);
}

void runner::watch_stalls() {
  const auto tick =
      std::clamp<milliseconds>(config_.stall_fence / 4, milliseconds(1), milliseconds(250));
  stall_timer_.expires_after(tick);
  stall_timer_.async_wait([this](const error_code& ec) {
    if (ec || stopping_) return;
    const auto now = steady_clock::now();
    const auto gap = std::chrono::duration_cast<milliseconds>(now - last_tick_);
    if (gap > config_.stall_fence) begin_fence(gap);
    last_tick_ = now;
    watch_stalls();
  });
}

bool runner::check_fenced() {
  if (fenced_) return true;
  // After a SIGCONT, requests read from the socket and queued messages may run before the
  // late tick does: they compare the clock with the last tick themselves.
  const auto gap = std::chrono::duration_cast<milliseconds>(steady_clock::now() - last_tick_);
  if (gap <= config_.stall_fence) return false;
  begin_fence(gap);
  return true;
}

void runner::begin_fence(milliseconds stalled) {
  if (fenced_) return;
  fenced_ = true;
  fenced_at_ = steady_clock::now();
  // Posted: this may run inside the entity host's loop over a mailbox, and the fence
  // passivates entities.
  asio::post(io_, [this, stalled] { enter_fence(stalled); });
}

void runner::enter_fence(milliseconds stalled) {
  if (stopping_) return;
  spdlog::warn(
      "runner {}: the event loop stalled for {} ms (over runner.stall_fence_ms = {}), so the "
      "manager may have moved its shards; fenced: serving nothing until it has registered "
      "again and has a fresh assignment",
      config_.name, stalled.count(), config_.stall_fence.count());
  owned_.clear();
  // Locked shards go to releasing (nothing new runs, locks go as entities passivate), the
  // others are forgotten; then every entity is passivated, busy ones once idle.
  if (persisted_) persisted_->set_wanted({});
  entities_->evict_shards([](const std::string&, std::int32_t) { return false; });
  if (manager_) manager_->reconnect();
}

void runner::stop(std::function<void()> on_stopped) {
  if (on_stopped) on_stopped_.push_back(std::move(on_stopped));
  if (stopped() && !on_stopped_.empty()) notify_stopped();
  if (stopping_) return;
  stopping_ = true;
  stall_timer_.cancel();
  if (watcher_) watcher_->stop();  // plugins stay as they are while the runner drains
  if (fetcher_) fetcher_->stop();
  server_.stop_accepting();
  asio::co_spawn(io_, shut_down(), asio::detached);
}

void runner::notify_stopped() {
  for (auto& callback : on_stopped_) asio::post(io_, std::move(callback));
  on_stopped_.clear();
}

awaitable<void> runner::shut_down() {
  const auto started = steady_clock::now();
  spdlog::info("runner {} stopping: leaving the cluster, finishing in-flight requests",
               config_.name);
  // Singletons end their runs now; the drain below waits for them (they hold `work_`), so
  // their shard locks go only after the runs returned.
  if (jobs_) jobs_->stop();
  if (manager_ && manager_->connected()) {
    // The manager publishes the new assignment before it answers, so other runners start
    // taking over our shards while we finish; their locks follow as our entities go idle.
    auto leave = manager_->unregister(milliseconds(2000));
    auto left = co_await std::move(leave);
    if (!left.ok())
      spdlog::warn("could not unregister ({}: {}); the manager will notice the runner is gone",
                   left.error, left.message);
  }
  if (manager_) manager_->stop();
  // Whichever comes first: the last piece of work leaving the gate, or the timeout.
  drain_timer_.expires_at(started + config_.shutdown_timeout);
  work_.close([this] { drain_timer_.cancel(); });
  error_code ec;
  co_await drain_timer_.async_wait(asio::redirect_error(use_awaitable, ec));
  if (work_.count() > 0)
    spdlog::warn("{} requests still running after the {} ms shutdown timeout; their callers retry",
                 work_.count(), config_.shutdown_timeout.count());
  if (entities_) {
    // runner.state_save = "passivation": what was not written yet goes before the locks do.
    auto written = std::make_shared<bool>(false);
    drain_timer_.expires_at(
        std::max(started + config_.shutdown_timeout, steady_clock::now() + milliseconds(2000)));
    entities_->write_unsaved([this, written] {
      if (std::exchange(*written, true)) return;
      drain_timer_.cancel();
    });
    if (!*written) co_await drain_timer_.async_wait(asio::redirect_error(use_awaitable, ec));
    *written = true;  // a late answer no longer cancels the timer
  }
  if (persisted_) persisted_->stop();  // releases the shard locks
  if (entities_) entities_->stop();
  router_.stop();
  server_.on_disconnect = [this](const connection_ptr& conn) {
    caller_gone(conn);
    if (server_.connection_count() == 0) notify_stopped();
  };
  server_.close_after_flush();
  stopped_ = true;
  spdlog::info("runner {} left the cluster after {} ms", config_.name,
               std::chrono::duration_cast<milliseconds>(steady_clock::now() - started).count());
  if (server_.connection_count() == 0) notify_stopped();
}

bool runner::owns(const std::string& group, std::int32_t shard) const {
  auto it = owned_.find(group);
  if (it == owned_.end() || shard < 1 || static_cast<std::size_t>(shard) > it->second.size())
    return false;
  return it->second[static_cast<std::size_t>(shard - 1)];
}

std::size_t runner::owned_shards() const {
  std::size_t count = 0;
  for (const auto& [group, shards] : owned_)
    for (bool owned : shards) count += owned ? 1 : 0;
  return count;
}

result<void> runner::readiness() const {
  if (stopping_) return failure{errc::shutting_down, "stopping"};
  if (!registered()) return failure{errc::unavailable, "not registered with the manager"};
  if (fenced_) return failure{errc::not_owner, "fenced after a stall, registering again"};
  const auto owned = owned_shards();
  if (held_shards() < owned)
    return failure{errc::not_owner, "holds the locks of " + std::to_string(held_shards()) +
                                        " of its " + std::to_string(owned) + " shards"};
  return success();
}

void runner::collect_metrics() {
  using metrics::metric_type;
  using metrics::sample;
  auto& registry = metrics::default_registry();
  const auto per_type = [this](std::size_t entity_host::type_load::*field) {
    std::vector<sample> samples;
    for (const auto& [type, load] : entities_->load_by_type())
      samples.push_back({{{"entity_type", type}}, static_cast<double>(load.*field)});
    return samples;
  };
  collectors_.push_back(registry.collect(
      "cluster_runner_active_entities", "Active (activated, not passivated) entities by type.",
      metric_type::gauge, [per_type] { return per_type(&entity_host::type_load::active); }));
  collectors_.push_back(registry.collect(
      "cluster_runner_mailbox_depth", "Messages waiting in entities' mailboxes, by type.",
      metric_type::gauge, [per_type] { return per_type(&entity_host::type_load::queued); }));
  collectors_.push_back(registry.collect(
      "cluster_runner_busy_entities", "Entities running a message now, by type.",
      metric_type::gauge, [per_type] { return per_type(&entity_host::type_load::running); }));
  collectors_.push_back(registry.collect(
      "cluster_runner_shards_owned", "Shards the assignment gives this runner, by group.",
      metric_type::gauge, [this] {
        std::vector<sample> samples;
        for (const auto& [group, shards] : owned_)
          samples.push_back({{{"group", group}},
                             static_cast<double>(std::count(shards.begin(), shards.end(), true))});
        return samples;
      }));
  collectors_.push_back(
      registry.collect("cluster_runner_shards_locked",
                       "Shards whose storage lock this runner holds.", metric_type::gauge, [this] {
                         return std::vector<sample>{{{}, static_cast<double>(held_shards())}};
                       }));
  collectors_.push_back(registry.collect(
      "cluster_runner_persisted_waiting_callers",
      "Callers waiting for the stored reply of a persisted message.", metric_type::gauge, [this] {
        return std::vector<sample>{{{}, static_cast<double>(persisted_->waiting_callers())}};
      }));
  collectors_.push_back(registry.collect("cluster_runner_fenced",
                                         "1 while the runner is fenced after a stall.",
                                         metric_type::gauge, [this] {
                                           return std::vector<sample>{{{}, fenced_ ? 1.0 : 0.0}};
                                         }));
  collectors_.push_back(registry.collect(
      "cluster_runner_activations_total", "Entity activations.", metric_type::counter, [this] {
        return std::vector<sample>{{{}, static_cast<double>(entities_->activations())}};
      }));
  collectors_.push_back(registry.collect(
      "cluster_runner_passivations_total", "Entity passivations.", metric_type::counter, [this] {
        return std::vector<sample>{{{}, static_cast<double>(entities_->passivations())}};
      }));
}

void runner::on_snapshot(const assignment_snapshot& snapshot) {
  // Pushed plugins do not depend on what this runner owns: fenced or not, it fetches them.
  if (fetcher_) fetcher_->update(snapshot.pushed_plugins);
  if (fenced_) {
    // Only a snapshot answering a registration sent after the stall tells what this runner
    // still owns; an older one may predate the manager moving its shards.
    if (!manager_ || !manager_->registered() || manager_->registered_at() <= fenced_at_) {
      router_.update(snapshot);
      return;
    }
    fenced_ = false;
    spdlog::info("runner {}: fence lifted by assignment v{} after registering again", config_.name,
                 snapshot.version);
  }
  std::map<std::string, std::vector<bool>> owned;
  for (const auto& group : snapshot.groups) {
    auto& flags = owned[group.group];
    flags.resize(group.owners.size());
    for (std::size_t i = 0; i < group.owners.size(); ++i) flags[i] = group.owners[i] == address_;
    shards_per_group_[group.group] = group.shards;
  }
  const std::size_t before = owned_shards();
  owned_ = std::move(owned);
  router_.update(snapshot);
  std::map<std::string, std::set<std::int32_t>> wanted;
  for (const auto& [group, flags] : owned_)
    for (std::size_t i = 0; i < flags.size(); ++i)
      if (flags[i]) wanted[group].insert(static_cast<std::int32_t>(i + 1));
  if (persisted_) persisted_->set_wanted(std::move(wanted));
  const std::size_t after = owned_shards();
  if (before != after)
    spdlog::info("assignment v{}: serving {} shards (was {})", snapshot.version, after, before);
}

void runner::on_message(const connection_ptr& conn, envelope&& env) {
  switch (static_cast<message_kind>(env.kind)) {
    case message_kind::request: {
      auto request = env.as<request_msg>();
      if (!request) {
        conn->send_reply(
            env.id, reply_msg::failure(errc::invalid_request,
                                       "request has the wrong shape: " + request.error().message));
        return;
      }
      on_request(conn, env.id, std::move(request).value());
      return;
    }
    case message_kind::interrupt:
      // An id not in flight (answered already) is ignored, as the protocol says.
      if (auto* control = find_control(conn, env.id))
        control->cancel(errc::cancelled, "interrupted by the caller");
      return;
    case message_kind::stream_ack: {
      auto ack = env.as<stream_ack_msg>();
      if (!ack) {
        conn->send_reply(
            env.id, reply_msg::failure(errc::invalid_request,
                                       "stream_ack has the wrong shape: " + ack.error().message));
        return;
      }
      if (auto* control = find_control(conn, env.id)) control->grant(ack.value().credit);
      return;
    }
    default:
      conn->send_reply(
          env.id, reply_msg::failure(errc::unknown_kind, "runners do not handle message kind " +
                                                             std::to_string(env.kind)));
  }
}

void runner::on_request(const connection_ptr& conn, std::uint64_t id, request_msg&& request) {
  const auto received = steady_clock::now();
  auto* series = request_metrics_.repeated(request.entity_type, request.rpc);
  if (series == nullptr) {
    const entity_type* known = registry_.find(request.entity_type);
    series = known != nullptr && known->rpc_index(request.rpc)
                 ? &request_metrics_.of(request.entity_type, request.rpc)
                 : &request_metrics_.unknown();
  }
  const trace::scoped_trace_id logged(trace::trace_id_of(request.traceparent));
  const auto span =
      trace::start_server_span(request.traceparent, "runner", request.entity_type, request.rpc);
  if (span) request.traceparent = span->child_traceparent();
  if (conn->in_flight >= conn->limits().max_in_flight) {
    request_metrics_.record(*series, static_cast<std::uint32_t>(errc::too_many_requests),
                            to_string(errc::too_many_requests), steady_clock::now() - received);
    conn->send_reply(id, reply_msg::failure(errc::too_many_requests,
                                            "too many requests in flight on this connection"));
    return;
  }
  // Capped like the proxy's: a client cannot park requests (and their waiters) for weeks.
  const auto timeout = request.timeout_ms > 0
                           ? std::min(milliseconds(request.timeout_ms), config_.request_timeout * 6)
                           : config_.request_timeout;
  ++conn->in_flight;
  const auto deadline = received + timeout;
  auto control = std::make_shared<request_control>(io_, request.credit, request.discard,
                                                   conn->limits().decode.max_frame_bytes / 2);
  control->deadline = deadline;
  control->timeout = timeout;
  const std::weak_ptr<connection> weak(conn);
  control->send_items = [weak, id](std::vector<bytes>&& items) {
    if (auto live = weak.lock())
      live->send(message_kind::stream_chunk, id, stream_chunk_msg{std::move(items)});
  };
  auto& requests = callers_of(conn).by_id;
  const bool tracked = requests.emplace(id, control).second;  // a reused id is not tracked
  serve(
      std::move(request), deadline,
      [this, weak, id, control, tracked, series, received, span,
       hold = work_.hold()](reply_msg&& reply) mutable {
        request_metrics_.record(*series, static_cast<std::uint32_t>(reply.code),
                                to_string(reply.code), steady_clock::now() - received);
        trace::finish_server_span(span, reply.ok() ? "" : to_string(reply.code));
        // The items written so far go before the reply; nothing of the request follows it.
        control->flush();
        control->finish();
        if (auto live = weak.lock()) {
          --live->in_flight;
          live->send_reply(id, reply);
          if (tracked && live->attachment)
            static_cast<caller_requests*>(live->attachment.get())->by_id.erase(id);
        }
        hold.release();
      },
      control);
}

runner::caller_requests& runner::callers_of(const connection_ptr& conn) {
  if (!conn->attachment) {
    auto requests = std::make_shared<caller_requests>();
    callers_.push_back(requests);
    conn->attachment = std::move(requests);
  }
  return *static_cast<caller_requests*>(conn->attachment.get());
}

request_control* runner::find_control(const connection_ptr& conn, std::uint64_t id) {
  if (!conn->attachment) return nullptr;
  auto& requests = static_cast<caller_requests*>(conn->attachment.get())->by_id;
  const auto it = requests.find(id);
  return it == requests.end() ? nullptr : it->second.get();
}

void runner::caller_gone(const connection_ptr& conn) {
  if (!conn->attachment) return;
  // Copied: a cancel may answer a queued request, whose reply erases it from the map.
  std::vector<std::shared_ptr<request_control>> in_flight;
  for (const auto& [id, control] : static_cast<caller_requests*>(conn->attachment.get())->by_id)
    in_flight.push_back(control);
  for (const auto& control : in_flight)
    if (!control->persisted) control->cancel(errc::cancelled, "the caller went away");
}

void runner::sweep_deadlines() {
  deadline_timer_.expires_after(milliseconds(100));
  deadline_timer_.async_wait([this](const error_code& ec) {
    if (ec) return;
    const auto now = steady_clock::now();
    std::vector<std::shared_ptr<request_control>> overdue;
    std::erase_if(callers_, [&](const std::weak_ptr<caller_requests>& weak) {
      const auto requests = weak.lock();
      if (!requests) return true;
      for (const auto& [id, control] : requests->by_id)
        if (control->overdue(now)) overdue.push_back(control);
      return false;
    });
    for (const auto& control : overdue)
      control->cancel(errc::deadline_exceeded,
                      control->stream ? "the stream made no progress for " +
                                            std::to_string(control->timeout.count()) + " ms"
                                      : "the request's deadline passed while it ran");
    if (!stopped_) sweep_deadlines();
  });
}

void runner::serve(request_msg request, steady_clock::time_point deadline,
                   entity_host::reply_callback done, std::shared_ptr<request_control> control) {
  if (stopping_) {
    done(reply_msg::failure(errc::shutting_down, "runner " + config_.name + " is stopping"));
    return;
  }
  if (check_fenced()) {
    done(reply_msg::failure(errc::not_owner,
                            "runner " + config_.name + " is registering again after a stall"));
    return;
  }
  // Before storage or a plugin sees it: a bad id fails this call only.
  if (auto valid = validate_request(request, config_.common.request_limits()); !valid) {
    done(reply_msg::failure(std::move(valid).error()));
    return;
  }
  const entity_type* type = registry_.find(request.entity_type);
  if (type == nullptr) {
    done(reply_msg::failure(
        errc::unknown_entity_type,
        "runner " + config_.name + " has no entity type '" + request.entity_type + "'"));
    return;
  }
  // `clusterctl cron list` asks the runner serving a cron job or a singleton how it runs.
  const std::uint32_t flags = type->info.options.flags;
  const bool cron_status =
      request.rpc == cron_status_rpc &&
      (((flags & CLUSTER_ENTITY_CRON) != 0 && request.entity_id == "cron") ||
       ((flags & CLUSTER_ENTITY_SINGLETON) != 0 && request.entity_id == "singleton"));
  const auto rpc_index = type->rpc_index(request.rpc);
  if (!rpc_index && !cron_status) {
    done(reply_msg::failure(errc::unknown_rpc, "entity type '" + request.entity_type +
                                                   "' has no RPC '" + request.rpc + "'"));
    return;
  }
  auto shards = shards_per_group_.find(type->info.group);
  const std::int32_t shard =
      shards == shards_per_group_.end() || shards->second == 0
          ? 0
          : shard_for(request.entity_id, static_cast<std::int32_t>(shards->second));
  if (shard == 0 || !owns(type->info.group, shard)) {
    done(reply_msg::failure(errc::not_owner, "runner " + config_.name + " does not own shard " +
                                                 std::to_string(shard) + " of group '" +
                                                 type->info.group + "'"));
    return;
  }
  const entity_address address{type, request.entity_id, shard};
  const bool persisted = !cron_status && type->persisted(*rpc_index);
  if (control) {
    control->stream = !cron_status && type->streams(*rpc_index);
    // Stored requests run to their end whatever the caller does (an interrupt still reaches
    // one that has not started); the caller's deadline only bounds its wait.
    control->persisted = persisted;
    control->has_deadline = !persisted;
  }
  if (request.discard && !cron_status) {
    // Answered Ok once accepted (in the mailbox; stored), or with what refused it.
    done = accept_discarded(std::move(done),
                            request.entity_type + "/" + request.entity_id + " " + request.rpc);
  }
  if (!persisted_->holds(type->info.group, shard)) {
    if (persisted_->suspended(type->info.group, shard)) {
      if (persisted) {
        done(reply_msg::failure(errc::storage_error,
                                "storage is unavailable: persisted calls are refused until it is "
                                "back (retry later)"));
      } else if (!manager_->heard_within(config_.stall_fence)) {
        // Nobody else takes the lock while the storage is away, unless the manager declared
        // this runner dead and ended its sessions: only while the manager is heard from
        // (it pings every health_check_interval_ms) is the lock's loss the storage's doing.
        done(reply_msg::failure(errc::not_owner,
                                "runner " + config_.name + " lost the lock of shard " +
                                    std::to_string(shard) + " of group '" + type->info.group +
                                    "' and cannot reach the manager"));
      } else {
        const bool discard = request.discard;
        entities_->deliver(address, *rpc_index, std::move(request), deadline, done, true, {},
                           std::move(control));
        if (discard) done(reply_msg::success({}));
      }
      return;
    }
    // Assigned here but another runner may still run it: wait for its lock (retriable).
    done(reply_msg::failure(errc::not_owner, "runner " + config_.name + " is taking over shard " +
                                                 std::to_string(shard) + " of group '" +
                                                 type->info.group + "'"));
    return;
  }
  if (cron_status) {
    done(reply_msg::success(
        pack_bytes((flags & CLUSTER_ENTITY_CRON) != 0
                       ? jobs_->cron_status_of(type->info.name, config_.name)
                       : jobs_->singleton_status_of(type->info.name, config_.name))));
    return;
  }
  if (persisted) {
    persisted_->submit(address, *rpc_index, std::move(request), deadline, std::move(done),
                       std::move(control));
    return;
  }
  const bool discard = request.discard;
  entities_->deliver(address, *rpc_index, std::move(request), deadline, done, true, {},
                     std::move(control));
  // In the mailbox now unless it was refused at once (answered then).
  if (discard) done(reply_msg::success({}));
}

}  // namespace cluster::host
