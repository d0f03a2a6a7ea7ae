#pragma once
// Persisted RPCs and shard locks on a runner.
//
// A shard is served only while this runner holds its storage lock (PostgreSQL: a session
// advisory lock, gone with the runner's session). On taking a lock the runner replays the
// shard's unprocessed messages in id order before it runs new ones, so per-entity order
// survives crashes and moves. A persisted request is stored (deduplicated by entity and
// primary key) before it runs; its reply is stored and the message marked processed in
// one transaction, and every caller waiting for that message gets the stored reply.
//
// Poison messages: every attempt is counted in storage before it runs (at insert for a new
// message, by the replay read after a crash or a move, by `next_attempt` before a rerun), so
// a message that kills its runner is counted too. A message cut short twice is a suspect:
// the replay runs it alone (with the later messages of its entity behind it) so that it
// cannot take the shard's other messages down with it again. One that had
// storage.max_attempts is dead-lettered: its callers get a Defect, the shard goes on. A
// reply that says the attempt was cut short (`reply_msg::attempt_cut_short`, a crashed
// plugin process) is not stored: the message runs again after a backoff, its callers wait.
//
// Interrupts (docs/protocol.md "Interrupts"): a message its caller interrupts before it reached
// its entity (waiting for its time, for the replay, in a backoff) is stored as processed with
// the reply Cancelled, so that no replay runs it; from its hand-off on, the entity host has
// the interrupt (a queued message leaves the mailbox answered Cancelled, a running handler is
// told) and whatever reply comes back is stored like any other. A closed connection does not
// interrupt a persisted message.
//
// Nothing here polls on a fixed tick: work starts when something changes (an assignment,
// a lock granted or refused, the storage session lost, an entity of a moving shard
// passivated), and timers run only while there is something to retry or wait for (a lock
// held by another runner, the storage away, a waiter's deadline or reply poll).
//
// Thread: the runner's io_context thread; storage work happens on the store's own thread.

#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string_view>

#include "cluster/host/entity_host.hpp"
#include "cluster/process/gate.hpp"
#include "cluster/storage/message_store.hpp"

namespace cluster::host {

/// Where a shard stands with its storage lock on this runner. A shard that is neither
/// assigned here nor locked here has no state ("unowned"). The transitions are listed in
/// persisted_messages.cpp (`may_move`); any other one is a bug and aborts.
enum class shard_state : std::uint8_t {
  awaiting_lock,        ///< assigned, not locked: the lock is asked for at once, then on a timer
                        ///< while another runner holds it or the storage cannot be asked
  acquiring,            ///< assigned, a lock request in flight
  replaying,            ///< locked: running the stored unprocessed messages in id order; new
                        ///< messages are left to the replay, which reads them in order too
  replay_failed,        ///< locked, a replay read failed: read again on a timer
  serving,              ///< locked and replayed: new messages run at once
  releasing,            ///< locked, no longer assigned: runs nothing new; the lock goes as soon
                        ///< as the shard's last entity is passivated
  suspended,            ///< assigned, the lock went with the storage session: nobody else can take
                        ///< it while the storage is away, so entities serve volatile calls only;
                        ///< the lock is asked for again on a timer
  suspended_acquiring,  ///< suspended, a lock request in flight
};

std::string_view to_string(shard_state state);

class persisted_messages {
 public:
  persisted_messages(asio::io_context& io, std::unique_ptr<message_store> store,
                     entity_host& entities, const entity_registry& registry,
                     storage_settings settings);
  ~persisted_messages();
  persisted_messages(const persisted_messages&) = delete;
  persisted_messages& operator=(const persisted_messages&) = delete;

  void start();
  void stop();
  std::string backend_name() const { return store_->backend_name(); }
  /// The store itself, for the runner's own records (cron bookkeeping).
  message_store& store() { return *store_; }

  /// The shards the assignment gives this runner; locks follow (taken and released).
  void set_wanted(const std::map<std::string, std::set<std::int32_t>>& wanted);
  /// May entities of this shard run here now?
  bool holds(const std::string& group, std::int32_t shard) const;
  /// Was this shard's lock lost only because the storage went away? Its entities keep
  /// serving volatile calls (nobody else can take the lock meanwhile); persisted calls are
  /// refused with StorageError until the lock is back.
  bool suspended(const std::string& group, std::int32_t shard) const;
  /// The shard's state; nullopt when it is neither assigned nor locked here.
  std::optional<shard_state> state(std::string_view group, std::int32_t shard) const;
  /// Replies of finished messages being stored (a graceful stop waits for them).
  std::size_t storing() const { return storing_; }
  std::size_t held_shards() const { return held_shards_; }

  /// Stores a persisted request for a held shard and answers with its (stored) reply.
  /// A `discard` request is answered Ok (empty) once stored; `done` may run again later with
  /// its outcome. `control` (may be null) lets its caller interrupt it: before the message
  /// reaches its entity it is stored as processed with the reply Cancelled and never runs;
  /// after that its handler is told, and the outcome it ends with is stored.
  void submit(const entity_address& address, std::uint32_t rpc_index, request_msg request,
              steady_clock::time_point deadline, entity_host::reply_callback done,
              std::shared_ptr<request_control> control = {});

  std::size_t waiting_callers() const { return waiter_count_; }

  /// Runs each time a shard enters `serving` here: locked, its stored messages replayed
  /// (the new ones run at once). Kept-alive entities, singletons and cron jobs start here.
  /// Called on the io thread, after the state changed; it may call `submit`.
  std::function<void(const std::string& group, std::int32_t shard)> on_shard_serving;

  /// When set, each message holds it from its hand-off to an entity until its reply is
  /// stored: the runner's graceful stop waits on that gate.
  gate* in_flight = nullptr;

 private:
  struct waiter {
    steady_clock::time_point deadline;
    steady_clock::time_point next_poll;  ///< ask the store for its reply then
    entity_host::reply_callback done;
    std::shared_ptr<request_control> control;  ///< its caller's, hooked while it waits
  };
  using shard_key = std::pair<std::string, std::int32_t>;
  using shard_ref = std::pair<std::string_view, std::int32_t>;
  /// Orders keys and looks them up by (string_view, shard) without building a string.
  struct shard_less {
    using is_transparent = void;
    template <class A, class B>
    bool operator()(const A& a, const B& b) const {
      const int order = std::string_view(a.first).compare(std::string_view(b.first));
      return order < 0 || (order == 0 && a.second < b.second);
    }
  };
  using shard_map = std::map<shard_key, shard_state, shard_less>;

  /// A timer that runs `fire` at the earliest time asked for: one pending wait at most,
  /// re-armed only when asked for an earlier time.
  class wakeup {
   public:
    wakeup(asio::io_context& io, std::function<void()> fire);
    void at(steady_clock::time_point when);
    void cancel();

   private:
    asio::steady_timer timer_;
    steady_clock::time_point due_ = steady_clock::time_point::max();
    std::function<void()> fire_;
  };

  // The only places shard states change (each asserts the transition is in the table).
  void add(shard_key key);
  void enter(shard_map::iterator it, shard_state next);
  void forget(shard_map::iterator it);

  /// Locks for every shard awaiting one, one request per group.
  void sync_locks();
  void acquired(const std::string& group, const std::vector<std::int32_t>& asked,
                result<std::vector<std::int32_t>> held);
  /// Releases the locks of releasing shards without active entities.
  void release_idle();
  void shard_passivated(const std::string& group, std::int32_t shard);
  /// Reads (and runs) the shard's unprocessed messages after id `after`, a batch at a time.
  void replay(const shard_key& shard, std::int64_t after, std::size_t replayed = 0);
  /// After a replay batch: the next batch, or serving.
  void replay_next(shard_map::iterator it, bool more, std::int64_t last, std::size_t replayed);
  /// Runs the next message of the shard's run-alone queue (see `alone_run`).
  void run_next_alone(const shard_key& shard);
  /// After next_attempt: the message is dead-lettered or already answered; its waiters
  /// get the outcome.
  void not_run_again(std::int64_t id, const attempt_outcome& outcome);
  /// A message handed to `run` is done with (stored, dead-lettered, or left to a replay).
  void message_done(std::int64_t id);
  /// The attempt of message `id` was cut short: count the next one and run it after a
  /// backoff, or dead-letter it.
  void cut_short(std::int64_t id, std::string why);
  void requeued(const std::string& group, std::int32_t shard, std::int64_t id);
  void retry();
  void schedule_retry(milliseconds delay);
  /// The next delay while the storage is away (doubling up to a bound); a success resets it.
  milliseconds storage_backoff();
  void run(persisted_message message, milliseconds backoff = milliseconds(0));
  void finish(std::int64_t id, const shard_key& shard, reply_msg&& reply, gate::holder hold);
  /// `finish` of a stateful entity's message whose handler set a state: reply, processed mark
  /// and state in one transaction (complete_with_state). A refused or failed write stores
  /// nothing: the callers get NotOwner and, while this runner still holds the shard, the
  /// message runs again (a new activation reads the stored state).
  void finish_with_state(std::int64_t id, const shard_key& shard, reply_msg&& reply,
                         state_write state, gate::holder hold,
                         std::function<void(result<void>)> committed);
  gate::holder hold_in_flight() { return in_flight ? in_flight->hold() : gate::holder(); }
  /// A caller of message `id` interrupted it (`by`: that caller's control).
  void interrupted(std::int64_t id, const shard_key& shard, const request_control& by);
  /// Stores `reply` as the outcome of message `id`, which has not reached its entity, and
  /// answers its waiters with it: it never runs (here, after a replay, or elsewhere).
  void withdraw(std::int64_t id, reply_msg reply);
  /// Takes message `id` out of the shards' run-alone queues.
  void drop_from_alone(std::int64_t id);
  /// Ends message `id`'s hand-off to its entity; its control (null when not handed).
  std::shared_ptr<request_control> end_hand_off(std::int64_t id);
  /// Whether an interrupted message whose run did not count should be withdrawn now.
  bool withdraws_instead(const std::shared_ptr<request_control>& handed,
                         const shard_key& shard) const;
  void answer(std::int64_t id, const reply_msg& reply);
  void fetch_replies(std::vector<std::int64_t> ids);
  /// Answers expired waiters, polls for replies a notification may have missed.
  void check_waiters();
  void purge();
  void locks_lost();
  /// Are the shard's new messages run here now (locked, assigned)?
  bool runs_here(std::string_view group, std::int32_t shard) const;

  asio::io_context& io_;
  std::unique_ptr<message_store> store_;
  entity_host& entities_;
  const entity_registry& registry_;
  storage_settings settings_;
  shard_map shards_;
  std::size_t held_shards_ = 0;
  std::set<std::int64_t> running_;  // ids handed to an entity and not yet stored as done
  std::map<std::int64_t, std::unique_ptr<asio::steady_timer>> scheduled_;  // deliver-at waits
  /// Messages handed to their entity, by id, until their reply is stored (or their attempt
  /// did not count): the control through which their callers' interrupts reach the handler.
  /// One per message, not a caller's: every caller of a message may interrupt it, and a
  /// message a replay runs has none.
  std::map<std::int64_t, std::shared_ptr<request_control>> handed_;
  /// Messages interrupted before they reached their entity, until their Cancelled reply is
  /// stored. What a store read before that returns is not run; what it reads after that
  /// does not list them (a store completes operations in the order they were asked).
  std::set<std::int64_t> withdrawn_;
  std::map<std::int64_t, std::vector<waiter>> waiters_;
  /// A replay batch's suspects and the messages of their entities after them, run one at a
  /// time in id order; the shard's next batch is read once the queue is done.
  struct alone_run {
    std::deque<persisted_message> queue;
    std::uint64_t generation = 0;
    bool more = false;  ///< the batch was full: read another after `last`
    std::int64_t last = 0;
    std::size_t replayed = 0;
  };
  std::map<shard_key, alone_run, shard_less> alone_;
  std::map<std::int64_t, std::pair<shard_key, std::uint64_t>> alone_running_;  // id → queue
  std::uint64_t alone_generation_ = 0;
  std::size_t waiter_count_ = 0;
  std::size_t storing_ = 0;
  milliseconds backoff_;
  wakeup retry_;
  wakeup waiters_due_;
  wakeup purge_due_;
  bool stopped_ = false;
  std::uint64_t lock_epoch_ = 0;  // bumped when locks are lost: stale completions are ignored
};

}  // namespace cluster::host
