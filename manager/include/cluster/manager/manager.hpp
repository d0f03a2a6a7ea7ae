#pragma once
// cluster-manager: the runner registry and the shard assignment of every shard group.
//
// Owns, on the process's single io_context thread: the protocol server, the registry of
// live runners (each bound to its registration connection), the assignment per group,
// the subscribers that get every new snapshot, the manager store and the dead-letter store
// (whose worker thread answers on this thread).

#include <memory>
#include <optional>
#include <set>

#include "cluster/manager/assignment.hpp"
#include "cluster/manager/cluster_view.hpp"
#include "cluster/net/server.hpp"
#include "cluster/process/admin.hpp"
#include "cluster/process/defaults.hpp"
#include "cluster/process/settings.hpp"
#include "cluster/protocol/validate.hpp"
#include "cluster/security/digest.hpp"
#include "cluster/storage/dead_letter_store.hpp"
#include "cluster/storage/manager_store.hpp"

namespace cluster::manager {

/// What the manager accepts from runners, so that no peer can make its state or its
/// snapshot unbounded.
struct manager_limits {
  /// Per registration: address, names, groups, entity types and their RPCs, plugins
  /// (`manager.max_groups_per_runner`, `manager.max_entity_types_per_runner`,
  /// `manager.max_plugins_per_runner`).
  registration_limits registration;
  /// Largest assignment snapshot the manager will make; a registration that could push it
  /// past this is refused. 0: what subscribers accept, `cluster.max_frame_bytes`, less room
  /// for the frame around it (`manager.max_snapshot_bytes`).
  std::uint32_t max_snapshot_bytes = 0;
  /// Largest plugin file `clusterctl plugin push` may store (`manager.max_plugin_bytes`).
  std::uint32_t max_plugin_bytes = 64u * 1024 * 1024;
  /// All stored plugins together (`manager.max_plugin_total_bytes`): the manager holds them
  /// in memory to serve fetch_plugin. At most registration.max_plugins plugins are stored.
  std::uint32_t max_plugin_total_bytes = 512u * 1024 * 1024;
};

struct manager_config {
  common_settings common;
  std::string host{defaults::host};
  std::uint16_t port = defaults::manager_port;
  std::uint32_t shards_per_group = 300;
  /// After a restart, runners known from storage keep their shards this long while they
  /// reconnect, so a manager restart moves nothing. Also how long a runner that lost its
  /// connection but still answers probes keeps its shards while it registers again.
  milliseconds reconnect_grace{10000};
  /// The manager pings every runner this often...
  milliseconds health_check_interval{500};
  /// ...and drops the connection of a runner it has not heard from for this long.
  milliseconds health_timeout{1500};
  /// A runner whose connection dropped is probed (connect + handshake to its address) this
  /// many times before its shards move; one that answers keeps them while it reconnects.
  /// A frozen runner's kernel still accepts the connection, so each probe of one lasts the
  /// whole timeout, and the probes of one take probe_attempts timeouts plus a half timeout
  /// between two (1 s). A frozen runner loses its shards (and is fenced) at most
  /// health_timeout + health_check_interval + that (3 s) after it froze, and at the earliest
  /// health_timeout - health_check_interval + that (2 s): runner.stall_fence_ms (1 s) must
  /// stay below the latter, so a runner fences itself after any stall that could have cost
  /// it its shards.
  std::uint32_t probe_attempts = 2;
  milliseconds probe_timeout{400};
  /// Moves of shards between live runners (joins, balancing) happen at most this many per
  /// rebalance interval; orphaned shards (their runner left or died) are assigned at once.
  std::uint32_t max_moves_per_rebalance = 50;
  milliseconds rebalance_interval{500};
  /// An entity type counts for the choice of a group's owners (eligible_runners) only once
  /// it has been known this long, and a type a runner stopped declaring still counts for it
  /// this long: runners that watch the same plugin folder load (or drop) a file within
  /// moments of each other, and the first must not take every shard meanwhile.
  milliseconds plugin_settle{3000};
  manager_limits limits;

  std::vector<config_section> sections();
};

class manager {
 public:
  using config_type = manager_config;
  /// The role this process's key must prove (security.key_file).
  static constexpr cluster::role security_role = cluster::role::manager;
  manager(asio::io_context& io, manager_config config, std::unique_ptr<manager_store> store);
  manager(const manager&) = delete;
  manager& operator=(const manager&) = delete;

  /// Restores state from the store and listens. Throws on start-up failure.
  void start();
  /// Stops the health loop and closes every connection (runners keep their shards: the
  /// manager's state is in its store); `on_stopped` runs posted, once per call.
  void stop(std::function<void()> on_stopped);
  void stop() { stop(nullptr); }

  std::uint16_t port() const { return server_.port(); }
  /// The current snapshot (what subscribers last got).
  assignment_snapshot snapshot() const;
  /// Connections subscribed to assignment snapshots (one subscription per connection).
  std::size_t subscriber_count() const;
  /// The largest snapshot this manager makes (see manager_limits::max_snapshot_bytes).
  std::size_t snapshot_limit() const;
  /// Serving: started and its storage reachable (/readyz).
  result<void> readiness() const;
  /// The dashboard (`/`, `/dashboard`, `/dashboard/<file>`) and `/api/cluster` on the admin
  /// endpoint (observability.cpp).
  void admin_routes(admin_endpoint& admin);
  /// The dashboard's view of the cluster (events, scraped runner numbers).
  cluster_view& view() { return *view_; }

 private:
  struct runner_entry {
    register_runner_msg registration;
    std::weak_ptr<connection> conn;
    /// Set while the runner has no live registration but keeps its shards: restored from
    /// storage after a manager restart, or its connection dropped while it still answers
    /// probes. It is removed when this passes without a new registration.
    std::optional<steady_clock::time_point> keep_until;
    /// Bumped on every registration and disconnect: a probe of an older one gives up.
    std::uint64_t generation = 0;
    /// Entity types an earlier registration of this runner declared and the current one does
    /// not, with when they went: they count for it until plugin_settle has passed.
    std::map<std::string, steady_clock::time_point> departed;
  };

  /// An upload in progress (one per connection): the chunks so far.
  struct plugin_upload {
    stored_plugin plugin;
    bytes data;
  };

  void on_message(const connection_ptr& conn, envelope&& env);
  /// push_plugin, list_plugins, remove_plugin, fetch_plugin (plugins.cpp).
  void serve_plugins(const connection_ptr& conn, envelope&& env);
  void push_plugin(const connection_ptr& conn, std::uint64_t id, push_plugin_msg&& msg);
  void remove_plugin(const connection_ptr& conn, std::uint64_t id, const std::string& name);
  void fetch_plugin(const connection_ptr& conn, std::uint64_t id, const fetch_plugin_msg& msg);
  /// May `plugin` be stored (bounds, count, total bytes, the snapshot)?
  result<void> admit_plugin(const stored_plugin& plugin) const;
  /// Loads the stored plugins, dropping those whose bytes do not match their hash.
  void restore_plugins();
  void on_disconnect(const connection_ptr& conn);
  void register_runner(const connection_ptr& conn, std::uint64_t id, register_runner_msg&& msg);
  /// A runner unregisters itself; an admin may unregister any runner.
  void unregister_runner(const connection_ptr& conn, std::uint64_t id, const std::string& address);
  void subscribe(const connection_ptr& conn, std::uint64_t id);
  /// Is `registration` within the limits, and would the snapshot stay within its bound
  /// with it? Used for registrations from peers and from storage alike.
  result<void> admit_registration(const register_runner_msg& registration) const;
  /// An upper bound of the snapshot's encoded size once `registration` is registered (it
  /// replaces a runner at the same address): every owner counted as the longest address,
  /// since a rebalance may give any shard to any runner.
  std::size_t snapshot_bytes_with(const register_runner_msg& registration) const {
    return snapshot_bound(&registration, nullptr);
  }
  /// The same bound, with `registration` (if any) registered and `plugin` (if any) stored.
  std::size_t snapshot_bound(const register_runner_msg* registration,
                             const stored_plugin* plugin) const;
  /// Loads runners and assignments, dropping what breaks the limits (stored by an older
  /// version) and groups no runner serves.
  void restore_from_store();
  /// Forgets the groups and entity types no registered runner declares any more, and
  /// recomputes the entity types from the registrations (an RPC any runner has counts).
  void forget_unserved();
  /// list_dead_letters, replay_dead_letter, drop_dead_letter: answered through the store.
  void serve_dead_letters(const connection_ptr& conn, envelope&& env);
  /// `fence`: the runner was declared dead rather than leaving: end its storage sessions.
  void remove_runner(const std::string& address, const std::string& why, bool fence);
  /// Confirms that a runner whose connection dropped is gone before its shards move.
  awaitable<void> probe_runner(std::string address, std::uint64_t generation);
  /// Pings runners every health_check_interval and drops the connections of silent ones.
  awaitable<void> health_loop();
  /// Arms expiry_timer_ for the earliest `keep_until` of a runner without a connection.
  void schedule_expiry();
  void expire_kept_runners();
  /// Arms rebalance_timer_ for when the rate limit lets the next moves happen.
  void schedule_rebalance();
  bool is_live(const runner_entry& entry) const;
  /// The runners of `group` that may own its shards now (eligible_runners over the live
  /// runners, with the types that have settled).
  std::vector<std::string> eligible_for(const std::string& group,
                                        steady_clock::time_point now) const;
  /// Arms settle_timer_ for the next moment a type settles or a departed type stops counting.
  void schedule_settle();
  /// Recomputes every group's assignment and pushes the snapshot if anything changed.
  void rebalance_all(bool force_publish);
  void publish();
  /// The manager's metrics (runners, shards, moves, backlog) and the view's upkeep: its
  /// scrape loop and the store's backlog, read every 5 s (observability.cpp).
  void start_observing();
  awaitable<void> backlog_loop();
  /// Events of a registration: the runner joined, or which of its plugins changed.
  void record_registration(const register_runner_msg* before, const register_runner_msg& now);

  asio::io_context& io_;
  manager_config config_;
  std::unique_ptr<manager_store> store_;
  std::unique_ptr<dead_letter_store> dead_letters_;  // nullptr with the memory backend
  std::unique_ptr<cluster_view> view_;
  std::vector<std::shared_ptr<void>> collectors_;  // the manager's computed metrics
  metrics::counter* shard_moves_ = nullptr;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
  server server_;
  std::map<std::string, runner_entry> runners_;  // by address
  std::map<std::string, shard_owners> groups_;   // group → owners
  std::map<std::string, entity_type_info> entity_types_;
  /// When each entity type was first declared by some runner (min(): restored from storage).
  std::map<std::string, steady_clock::time_point> type_since_;
  std::vector<std::weak_ptr<connection>> subscribers_;
  std::map<std::string, pushed_plugin> plugins_;        // by name
  std::map<const connection*, plugin_upload> uploads_;  // erased on disconnect
  std::uint64_t version_ = 0;
  std::uint64_t next_generation_ = 1;
  std::uint64_t next_ping_id_ = 1;
  bool stopped_ = false;
  bool rebalance_pending_ = false;  // the last rebalance hit the move limit
  steady_clock::time_point last_rebalance_{};
  asio::steady_timer ping_timer_;
  asio::steady_timer expiry_timer_;
  asio::steady_timer rebalance_timer_;
  asio::steady_timer settle_timer_;
};

}  // namespace cluster::manager
