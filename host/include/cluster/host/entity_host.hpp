#pragma once
// Runs entities: activates one on its first message, runs its messages one at a time in
// arrival order from a bounded mailbox, and passivates it when idle.
//
// Thread model: the runner's single io_context thread owns every entity, so entity
// state is single-threaded by construction. A handler that awaits another entity
// leaves its entity busy (later messages wait) but the thread free.

#include <boost/container/deque.hpp>
#include <functional>
#include <map>
#include <set>

#include "cluster/host/entity_registry.hpp"
#include "cluster/host/handler_watch.hpp"
#include "cluster/host/host_services.hpp"
#include "cluster/host/request_control.hpp"
#include "cluster/net/asio.hpp"
#include "cluster/protocol/messages.hpp"
#include "cluster/storage/message_store.hpp"

namespace cluster::host {

struct entity_host_options {
  std::size_t mailbox_capacity = 4096;
  milliseconds passivate_after{60000};
  /// One callback of an in-process plugin running longer than this ends the runner
  /// (handler_watch.hpp); 0: no limit. Plugins in their own process are bounded there.
  milliseconds handler_timeout{0};
  /// Stateful types: a state larger than this is refused (Defect, nothing stored); 0: no limit.
  std::size_t max_state_bytes = 0;
  /// runner.state_save: true ("reply"): a volatile RPC's state is written before its reply;
  /// false ("passivation"): when the entity is passivated or the runner stops (a crash loses
  /// what was not written).
  bool save_state_on_reply = true;
};

/// Where a request runs: resolved by the runner before delivery.
struct entity_address {
  const entity_type* type = nullptr;
  std::string entity_id;
  std::int32_t shard = 0;
};

class entity_host {
 public:
  using reply_callback = std::function<void(reply_msg&&)>;
  /// Sends a call from a handler to another entity; `done` runs exactly once, later.
  using outbound_call = std::function<void(request_msg, reply_callback done)>;
  /// Persisted messages of stateful types: stores the handler's reply, the message's
  /// "processed" mark and `state` in one transaction (message_store::complete_with_state),
  /// answers the message's callers, then calls `committed` with the outcome. The entity runs
  /// its next message only after that. Used only when the handler set a state.
  using state_commit = std::function<void(reply_msg&& reply, state_write state,
                                          std::function<void(result<void>)> committed)>;

  entity_host(asio::io_context& io, entity_host_options options, outbound_call call_out);
  ~entity_host();
  entity_host(const entity_host&) = delete;
  entity_host& operator=(const entity_host&) = delete;

  /// Queues `request` for its entity; `done` runs exactly once with the reply. Answers
  /// MailboxFull at once when the entity's mailbox is at its bound.
  /// Persisted messages pass `bounded = false`: they are stored already, so they are
  /// never refused (the mailbox bound protects memory from callers, not from replay).
  /// `control` links the request to its caller (request_control.hpp): its handler streams
  /// through it, and its cancellation takes the request out of the mailbox or tells the
  /// running handler (`ctx.cancelled()`, sleeps and calls end at once).
  void deliver(const entity_address& address, std::uint32_t rpc_index, request_msg request,
               steady_clock::time_point deadline, reply_callback done, bool bounded = true,
               state_commit commit = {}, std::shared_ptr<request_control> control = {});

  /// Where stateful types' state is loaded from and written to (the runner's message store;
  /// set by persisted_messages). Unset: stateful types fail to activate (StorageError).
  message_store* state_store = nullptr;
  /// Writes the state of every entity whose latest state is not written yet
  /// (runner.state_save = "passivation"); `done` runs once all writes are answered.
  void write_unsaved(std::function<void()> done);

  /// Activates the entity without a message (its constructor runs now); nothing when it is
  /// active already. For entities that live without callers: kept-alive ones, singletons,
  /// cron jobs. The caller checks that the shard is served here. It is passivated like any
  /// other when idle.
  result<void> activate_now(const entity_address& address);

  /// Is any entity of this shard active (idle or busy)?
  bool shard_active(const std::string& group, std::int32_t shard) const;
  /// Would a bounded delivery to this entity be refused now?
  bool mailbox_full(const std::string& type, const std::string& id) const;

  /// Asks the entity's running handler to end (`stop_requested`, sleeps fire at once):
  /// how a singleton's run is stopped. Nothing when the entity is not active.
  void request_stop(const std::string& type, const std::string& id);

  /// Passivates idle entities whose shard fails `keep`; busy ones follow when idle, and
  /// are asked to stop (request_stop).
  void evict_shards(std::function<bool(const std::string& group, std::int32_t shard)> keep);

  /// Passivates every idle entity idle for longer than the configured time.
  void passivate_idle(steady_clock::time_point now);

  /// The instances of this process's entity types are gone (it ended): each is activated
  /// again before its next message. Queued messages stay queued.
  void instances_lost(const plugin_process* process);

  /// Moves instances off types the registry retired (replaced or removed): an idle one is
  /// passivated now, a busy one once its running message is done. The messages queued for
  /// it (and those that arrive meanwhile) then run on `resolve_type`'s type of that name,
  /// in a new instance; when there is none (removed), they run on the old type first.
  void retire_types();
  /// The registry's current type of a name; unset or NULL: the name is no longer served.
  std::function<std::shared_ptr<const entity_type>(std::string_view name)> resolve_type;

  /// Passivates everything now (shutdown); pending messages get `ShuttingDown`; running
  /// handlers are asked to stop.
  void stop();

  std::size_t active_entities() const { return entities_.size(); }
  struct type_load {
    std::size_t active = 0;   ///< active entities
    std::size_t queued = 0;   ///< messages waiting in their mailboxes
    std::size_t running = 0;  ///< entities running a message now
  };
  /// Per entity type name, for the runner's metrics (walks every active entity).
  std::map<std::string, type_load, std::less<>> load_by_type() const;
  /// Runs when a shard's last active entity was passivated (a moving shard's lock may go).
  std::function<void(const std::string& group, std::int32_t shard)> on_shard_passivated;
  /// Asked right before a message is handed to its entity: false answers it NotOwner
  /// without running it (the runner was frozen and may have lost the shard since it was
  /// queued). Unset: everything runs.
  std::function<bool(const std::string& group, std::int32_t shard)> may_run;

  /// Runs after each activation (by a message or activate_now): the runner remembers
  /// kept-alive entities for the shard's next owner here.
  std::function<void(const entity_type& type, const std::string& id, std::int32_t shard)>
      on_activated;
  /// The fencing token of a shard held here (message_store::lock_epoch): each handler's
  /// cluster_call_context::fencing_token. Unset: 0.
  std::function<std::int64_t(const std::string& group, std::int32_t shard)> fencing_token;

  /// Counters for tests and metrics.
  std::uint64_t activations() const { return activations_; }
  std::uint64_t passivations() const { return passivations_; }

  struct invocation;  // one running request; defined in the .cpp

 private:
  struct message {
    std::uint32_t rpc_index;
    request_msg request;
    steady_clock::time_point deadline;
    reply_callback done;
    state_commit commit;                       // persisted messages of stateful types
    std::shared_ptr<request_control> control;  // requests from a connection
  };
  /// What the runner knows of a stateful entity's stored state (absent for other types).
  struct entity_state {
    std::int64_t version = 0;  ///< the stored version this activation read or last wrote
    bool loaded = false;       ///< false: load before the next activation
    /// runner.state_save = "passivation": the latest state, not written yet.
    std::optional<std::optional<bytes>> unsaved;
  };
  struct slot {
    /// Keeps the type (and its plugin's code) while the instance lives: after a swap, the
    /// old version stays loaded until its last instance is passivated.
    std::shared_ptr<const entity_type> type;
    std::string id;
    std::int32_t shard = 0;
    void* instance = nullptr;
    /// Boost's deque allocates nothing until the first message (libstdc++'s allocates
    /// ~600 bytes up front), and the idle sweep gives back the storage of empty mailboxes:
    /// most of a million idle entities' memory would otherwise be empty mailboxes.
    boost::container::deque<message> mailbox;
    bool busy = false;
    /// Read-only calls running side by side (the type's `concurrency` > 1); `busy` stays set
    /// until the last of them is done.
    std::uint32_t shared_calls = 0;
    bool evict = false;  // passivate as soon as idle: the shard moved away
    stop_signal stop;    // the shard is moving or the runner stopping: a long run ends
    steady_clock::time_point last_active;
    std::unique_ptr<entity_state> state;  // stateful types only
  };
  using slot_key = std::pair<std::string, std::string>;  // entity type, entity id

  void run_next(const slot_key& key);
  /// May the front message of `s` start beside the read-only calls running now?
  bool may_share(const slot& s) const;
  /// The type's own bound (its options), else the host's.
  std::size_t mailbox_capacity(const slot& s) const;
  /// The entity's slot, activated first when it has none.
  result<std::map<slot_key, slot>::iterator> find_or_activate(const slot_key& key,
                                                              const entity_address& address);
  /// Creates the plugin's instance of `s`; false (and the reason in `why`) when the
  /// constructor failed.
  bool activate(const slot_key& key, slot& s, std::string& why, const std::optional<bytes>* state);
  /// A constructor run in a plugin's process failed: the next message activates again.
  void activation_failed(const slot_key& key);
  void finish(invocation* call, reply_msg&& reply);
  /// A queued request was cancelled: out of the mailbox, answered with the cancellation.
  void cancel_queued(const slot_key& key, const request_control* control);
  /// A running request was cancelled: its handler is told.
  void cancel_running(invocation* call);
  /// Reads a stateful entity's state, then activates it and runs its mailbox (busy meanwhile).
  void load_and_activate(const slot_key& key);
  /// Stores the state a handler set, then replies and runs the entity's next message.
  void commit_state(const slot_key& key, reply_msg&& reply, reply_callback done,
                    state_commit commit, std::optional<bytes> data);
  /// The instance no longer matches storage (a write refused or failed): destroyed without a
  /// write; the next message activates it again from storage.
  void drop_activation(slot& s);
  /// The entity's next message may run (after its reply and any state write).
  void idle_again(const slot_key& key);
  /// Answers every queued message of `it` with `reply` and forgets the slot.
  void fail_queued(std::map<slot_key, slot>::iterator it, const reply_msg& reply);
  void shard_left(const std::string& group, std::int32_t shard);
  std::size_t unsaved_writes_ = 0;
  void passivate(std::map<slot_key, slot>::iterator it);
  void request_stop(slot& s);
  /// `it`'s type was retired and it is idle: passivates it, or moves its queued messages to
  /// the current type. False when the slot is gone.
  bool move_on(std::map<slot_key, slot>::iterator it);
  awaitable<void> sweep_loop();

  friend struct invocation;
  asio::io_context& io_;
  entity_host_options options_;
  outbound_call call_out_;
  std::map<slot_key, slot> entities_;
  /// Active entities per (group, shard): lock release asks for every moved shard, often.
  std::map<std::pair<std::string, std::int32_t>, std::size_t> active_per_shard_;
  asio::steady_timer sweep_timer_;
  handler_watch watch_;
  bool stopped_ = false;
  /// Completions of store calls check it: they may arrive after this host is gone.
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);
  std::uint64_t activations_ = 0;
  std::uint64_t passivations_ = 0;
};

}  // namespace cluster::host
