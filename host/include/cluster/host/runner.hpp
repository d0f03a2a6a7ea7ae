#pragma once
// cluster-runner: hosts entity plugins and serves the shards the manager assigns to it.
//
// Owns, on the process's single io_context thread: the entity registry (plugin files are
// added, swapped and removed while it serves: plugin_watcher.hpp, entity_registry.hpp), the
// entity host, the protocol server, the manager client and a router for calls from
// handlers to entities on other runners.

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <unordered_map>

#include "cluster/client/manager_client.hpp"
#include "cluster/client/router.hpp"
#include "cluster/host/entity_host.hpp"
#include "cluster/host/jobs.hpp"
#include "cluster/host/persisted_messages.hpp"
#include "cluster/host/plugin_fetcher.hpp"
#include "cluster/host/plugin_watcher.hpp"
#include "cluster/host/request_control.hpp"
#include "cluster/metrics/rpc_metrics.hpp"
#include "cluster/net/server.hpp"
#include "cluster/process/defaults.hpp"
#include "cluster/process/gate.hpp"
#include "cluster/process/settings.hpp"

namespace cluster::host {

struct runner_config {
  common_settings common;
  std::string name = "runner-1";
  std::string host{defaults::host};
  std::uint16_t port = defaults::runner_port;
  std::string advertise_host;  ///< empty: `host`
  std::string manager = defaults::manager_address();
  std::vector<std::string> plugins;
  std::vector<std::string> groups;  ///< empty: the groups of the loaded entity types
  std::uint32_t mailbox_capacity = 4096;
  milliseconds passivate_after{60000};
  milliseconds request_timeout{10000};
  /// A graceful stop (SIGTERM) waits this long for in-flight requests before it gives up.
  milliseconds shutdown_timeout{30000};
  /// "process": each plugin file runs in its own cluster-plugin-host child (plugin_process.hpp):
  /// a crash costs that child's requests, not the runner. "none": plugins run in the runner's
  /// process (less CPU per call; a crash in one ends the runner). docs/benchmarks.md has both.
  std::string isolation = "process";
  /// One plugin callback running longer than this is stopped: with "process" its child is
  /// killed, with "none" the runner ends itself (handler_watch.hpp). 0: no limit.
  milliseconds handler_timeout{30000};
  /// With "process": a child whose resident memory passes this is killed. 0: no limit.
  std::uint32_t plugin_memory_limit_mb = 0;
  /// The cluster-plugin-host executable; empty: the one next to this program.
  std::string plugin_host;
  /// Where the runner keeps its copies of plugin files (`loaded/<sha256>.so`, what it
  /// actually loads) and pushed plugins (`pushed/<name>.so`, watched like runner.plugins).
  /// Empty: a fresh folder under the system's temp folder, removed when the runner ends.
  /// One folder per runner.
  std::string plugin_cache_dir;
  /// Watch the folders of runner.plugins (and pushed/) and load, swap and remove plugin files
  /// as they change (plugin_watcher.hpp). False: plugins are read at start only.
  bool watch_plugins = true;
  /// A changed plugin file is loaded once no event came for it for this long.
  milliseconds plugin_quiet{150};
  /// An event loop that did not run for longer than this (the process was frozen, or a
  /// handler blocked it) may have lost its shards meanwhile: the runner then fences itself
  /// (see `runner`). Keep it below the manager's earliest expiry of a silent runner
  /// (health_timeout_ms - health_check_interval_ms + its probes; 2 s by default).
  milliseconds stall_fence{1000};
  /// When a volatile RPC's new entity state is written: "reply" (before its reply is sent) or
  /// "passivation" (when the entity is passivated or the runner stops: a crash loses what
  /// was not written). Persisted RPCs always write it with their reply, in one transaction.
  std::string state_save = "reply";

  /// `[entity.<Type>]`: one entity type's options set by the runner's operator; what is unset
  /// keeps the plugin's declaration. Keyed by the type's name in upper case with `.` and `-`
  /// as `_` (entity_config_key), so that the file, CLUSTER_ENTITY_<TYPE>_<KEY> and --set
  /// entity.<Type>.<key> reach one entry.
  struct entity_overrides {
    std::optional<std::int64_t> max_idle_ms;
    std::optional<std::int64_t> mailbox_capacity;
    std::optional<std::int64_t> concurrency;
    std::optional<bool> keep_alive;
  };
  std::map<std::string, entity_overrides> entity;

  /// Declares `[cluster]`, `[log]`, `[runner]` and `[entity.<Type>]`.
  std::vector<config_section> sections();
};

/// The key of entity type `name` in runner_config::entity.
std::string entity_config_key(std::string_view name);

/// A type's options as this runner runs it: `declared` with `[entity.<Type>]` applied, then
/// every 0 ("the default") replaced by the runner's value (runner.mailbox_capacity,
/// runner.passivate_after_ms, one call at a time), so status shows what really applies.
/// A failure names the config key whose value is out of bounds.
result<entity_options> effective_options(const std::string& type, entity_options declared,
                                         const runner_config& config);

/// Fencing: after a stall longer than `stall_fence` (noticed by a steady timer whose ticks
/// came late, or by a request or a queued message that finds the last tick too old) the
/// runner answers NotOwner to every request (routers retry at the owner), answers queued
/// messages NotOwner instead of running them (persisted ones stay stored for their shard's
/// holder), gives up its shards and locks, passivates its entities, and registers with the
/// manager again. Only an assignment received on that new registration lifts the fence.
class runner {
 public:
  using config_type = runner_config;
  /// The role this process's key must prove (security.key_file).
  static constexpr cluster::role security_role = cluster::role::runner;
  runner(asio::io_context& io, runner_config config);
  ~runner();
  runner(const runner&) = delete;
  runner& operator=(const runner&) = delete;

  /// Loads plugins, listens and joins the cluster. Throws on a start-up failure (bad
  /// address, port in use, no entity type at all).
  void start();
  /// Graceful stop: refuses new requests (ShuttingDown, which routers retry elsewhere),
  /// unregisters so the manager moves its shards at once, finishes in-flight requests
  /// within `shutdown_timeout`, passivates entities, releases its shard locks and closes its
  /// connections once their replies are written. `stopped()` then holds and `on_stopped`
  /// runs (posted, once per call). In-flight work is counted by a gate, not polled.
  void stop(std::function<void()> on_stopped);
  void stop() { stop(nullptr); }
  bool stopped() const { return stopped_ && server_.connection_count() == 0; }

  std::uint16_t port() const { return server_.port(); }
  const std::string& address() const { return address_; }
  /// Does this runner serve `shard` of `group` by the latest assignment?
  bool owns(const std::string& group, std::int32_t shard) const;
  std::size_t owned_shards() const;
  /// Shards whose storage lock this runner holds (it serves only those).
  std::size_t held_shards() const { return persisted_ ? persisted_->held_shards() : 0; }
  persisted_messages& persisted() { return *persisted_; }
  /// Singletons and cron jobs served here.
  host::jobs& jobs() { return *jobs_; }
  const entity_registry& registry() const { return registry_; }
  /// runner.plugin_cache_dir as used (a temp folder when it was empty); valid after `start`.
  const std::filesystem::path& plugin_cache_dir() const { return cache_dir_; }
  /// Pushed plugin files go here (`<name>.so`, by an atomic rename): the runner loads,
  /// swaps and removes them like files of runner.plugins.
  std::filesystem::path pushed_plugins_dir() const { return cache_dir_ / "pushed"; }
  entity_host& entities() { return *entities_; }
  bool registered() const { return manager_ && manager_->registered(); }
  /// Serving: registered, not fenced or stopping, and holding the lock of every shard the
  /// assignment gives it (/readyz).
  result<void> readiness() const;
  /// Fenced after a stall, until a fresh assignment arrives.
  bool fenced() const { return fenced_; }
  /// Random hex chosen at construction; the registration and the storage sessions carry it.
  const std::string& incarnation() const { return incarnation_; }

 private:
  void on_message(const connection_ptr& conn, envelope&& env);
  void on_request(const connection_ptr& conn, std::uint64_t id, request_msg&& request);
  /// The requests in flight from one connection, by their id: interrupts and stream acks
  /// find them here (the connection's attachment).
  struct caller_requests {
    std::unordered_map<std::uint64_t, std::shared_ptr<request_control>> by_id;
  };
  caller_requests& callers_of(const connection_ptr& conn);
  request_control* find_control(const connection_ptr& conn, std::uint64_t id);
  /// A connection closed: its volatile requests are cancelled (nobody waits for them).
  void caller_gone(const connection_ptr& conn);
  /// Cancels requests past their deadline (request_control::overdue), every 100 ms.
  void sweep_deadlines();
  void on_snapshot(const assignment_snapshot& snapshot);
  /// The plugin folders: the cache folder, the watches, the start-up load.
  void load_plugins();
  /// A watched plugin file settled: load or swap it (present), or remove it.
  void plugin_file_settled(const std::filesystem::path& file, bool present);
  /// What the manager is told: address, groups, entity types and plugins as of now.
  register_runner_msg registration();
  /// Sends the registration again (once per loop turn however many plugins changed).
  void registration_changed();
  /// A kept-alive entity was activated: its shard's next owner activates it again.
  void remember_kept(const entity_type& type, const std::string& id, std::int32_t shard);
  /// A shard began serving here: its remembered kept-alive entities are activated.
  void activate_kept(const std::string& group, std::int32_t shard);
  awaitable<void> shut_down();
  void notify_stopped();
  /// Resolves and delivers a request addressed to this runner; `done` runs once.
  /// `control` links it to its caller (streams, interrupts); null for local calls.
  void serve(request_msg request, steady_clock::time_point deadline,
             entity_host::reply_callback done, std::shared_ptr<request_control> control = {});
  /// Ticks every stall_fence / 4 (at most 250 ms) and fences after a late tick.
  void watch_stalls();
  /// Registers the computed metrics (entities, mailboxes, shards, storage) with the registry.
  void collect_metrics();
  /// Is the runner fenced now? Starts the fence when the loop stalled since the last tick.
  bool check_fenced();
  /// Marks the fence at once (callable anywhere) and posts the rest of it.
  void begin_fence(milliseconds stalled);
  void enter_fence(milliseconds stalled);

  asio::io_context& io_;
  runner_config config_;
  std::string address_;
  /// A temp folder of this process (runner.plugin_cache_dir empty): removed after the
  /// registry below is gone (declared before it).
  struct owned_folder {
    std::filesystem::path path;
    owned_folder() = default;
    owned_folder(const owned_folder&) = delete;
    owned_folder& operator=(const owned_folder&) = delete;
    ~owned_folder();
  };
  owned_folder temp_cache_dir_;
  entity_registry registry_;
  std::filesystem::path cache_dir_;
  std::unique_ptr<plugin_watcher> watcher_;
  bool registration_posted_ = false;
  std::vector<std::string> registered_groups_;  // kept when no type is left
  std::set<std::string> kept_remembered_;       // "<type>/<id>" of kept-alive entities remembered
  std::unique_ptr<entity_host> entities_;
  std::unique_ptr<persisted_messages> persisted_;
  std::unique_ptr<host::jobs> jobs_;  // after persisted_: destroyed before it
  server server_;
  router router_;
  std::unique_ptr<manager_client> manager_;
  // Writes the plugins pushed to the cluster into pushed/, which the watcher loads.
  std::unique_ptr<plugin_fetcher> fetcher_;
  std::map<std::string, std::vector<bool>> owned_;  // group → shard-1 → owned
  std::map<std::string, std::uint32_t> shards_per_group_;
  bool stopping_ = false;
  bool stopped_ = false;
  // Graceful stop: requests being served and persisted messages between their hand-off to
  // an entity and their stored reply hold `work_`; the timer bounds the wait.
  gate work_;
  asio::steady_timer drain_timer_;
  std::vector<std::function<void()>> on_stopped_;
  std::string incarnation_;
  std::string admin_address_;  // host:port of the admin endpoint, "" without one
  metrics::rpc_metrics request_metrics_{
      metrics::default_registry(), "cluster_runner_requests_total",
      "Requests this runner answered, by entity type, RPC and result code.",
      "cluster_runner_request_duration_seconds",
      "Time from a request's arrival at this runner to its reply (mailbox wait, handler, "
      "storage), in seconds."};
  std::vector<std::shared_ptr<void>> collectors_;  // the runner's computed metrics
  // The stall watch: the last tick of stall_timer_, and since when the runner is fenced.
  asio::steady_timer stall_timer_;
  // Connections with requests in flight, for the deadline sweep.
  std::vector<std::weak_ptr<caller_requests>> callers_;
  asio::steady_timer deadline_timer_;
  steady_clock::time_point last_tick_ = steady_clock::now();
  bool fenced_ = false;
  steady_clock::time_point fenced_at_{};
};

}  // namespace cluster::host
