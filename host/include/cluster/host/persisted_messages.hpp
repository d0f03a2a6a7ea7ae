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
// Thread: the runner's io_context thread; storage work happens on the store's own thread.

#include <map>
#include <set>

#include "cluster/host/entity_host.hpp"
#include "cluster/process/gate.hpp"
#include "cluster/storage/message_store.hpp"

namespace cluster::host {

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

  /// The shards the assignment gives this runner; locks follow (taken and released).
  void set_wanted(std::map<std::string, std::set<std::int32_t>> wanted);
  /// May entities of this shard run here now?
  bool holds(const std::string& group, std::int32_t shard) const;
  /// Was this shard's lock lost only because the storage went away? Its entities keep
  /// serving volatile calls (nobody else can take the lock meanwhile); persisted calls are
  /// refused with StorageError until the lock is back.
  bool suspended(const std::string& group, std::int32_t shard) const;
  /// Replies of finished messages being stored (a graceful stop waits for them).
  std::size_t storing() const { return storing_; }
  std::size_t held_shards() const;

  /// Stores a persisted request for a held shard and answers with its (stored) reply.
  void submit(const entity_address& address, std::uint32_t rpc_index, request_msg request,
              steady_clock::time_point deadline, entity_host::reply_callback done);

  std::size_t waiting_callers() const { return waiter_count_; }

  /// When set, each message holds it from its hand-off to an entity until its reply is
  /// stored: the runner's graceful stop waits on that gate.
  gate* in_flight = nullptr;

 private:
  struct waiter {
    steady_clock::time_point deadline;
    steady_clock::time_point since;
    entity_host::reply_callback done;
  };
  using shard_key = std::pair<std::string, std::int32_t>;

  void sync_locks();
  void replay(const shard_key& shard, std::int64_t after);
  /// Suspended shards of `wanted` the store did not lock although it is reachable.
  void lost_to_others(const std::string& group, const std::vector<std::int32_t>& wanted,
                      const std::vector<std::int32_t>& held);
  void run(persisted_message message);
  void finish(std::int64_t id, const shard_key& shard, reply_msg&& reply, gate::holder hold);
  gate::holder hold_in_flight() { return in_flight ? in_flight->hold() : gate::holder(); }
  void answer(std::int64_t id, const reply_msg& reply);
  void fetch_replies(std::vector<std::int64_t> ids);
  void locks_lost();
  awaitable<void> maintenance_loop();
  awaitable<void> purge_loop();

  asio::io_context& io_;
  std::unique_ptr<message_store> store_;
  entity_host& entities_;
  const entity_registry& registry_;
  storage_settings settings_;
  std::map<std::string, std::set<std::int32_t>> wanted_;
  std::set<shard_key> held_;
  std::set<shard_key> suspended_;
  std::set<shard_key> acquiring_;
  // Held, replay not finished: new messages are left to the replay, which reads them in id
  // order (the store runs statements in the order they were issued, so none is missed).
  std::set<shard_key> replaying_;
  std::set<shard_key> retry_replay_;
  std::set<std::int64_t> running_;  // ids handed to an entity and not yet stored as done
  std::map<std::int64_t, std::vector<waiter>> waiters_;
  std::size_t waiter_count_ = 0;
  std::size_t storing_ = 0;
  asio::steady_timer maintenance_timer_;
  asio::steady_timer purge_timer_;
  bool stopped_ = false;
  std::uint64_t lock_epoch_ = 0;  // bumped when locks are lost: stale completions are ignored
};

}  // namespace cluster::host
