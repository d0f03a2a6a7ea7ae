#pragma once
// Durable messages of persisted RPCs and the single-owner shard locks.
//
// Every operation completes through its callback on the io_context thread, never inside
// the call. Expected failures (the storage is away, a statement failed) arrive as a
// `failure` with errc::storage_error in the completion's result; they are never thrown.
// The PostgreSQL backend batches concurrent operations (one statement and one commit per
// batch); the memory backend keeps everything in the process (nothing survives it, and its
// locks are always granted).

#include <algorithm>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cluster/protocol/messages.hpp"
#include "cluster/protocol/result.hpp"
#include "cluster/storage/storage_settings.hpp"

namespace cluster {

namespace asio = boost::asio;

struct persisted_message {
  std::int64_t id = 0;
  std::string group;
  std::int32_t shard = 0;
  request_msg request;  ///< primary_key always set (a generated one when the caller gave none)
  /// Attempts counted so far, the one about to run included. `persist`: what the stored row
  /// starts with (1 when the message runs right after it is stored, 0 when a replay will read
  /// it). `unprocessed` and `next_attempt`: the stored count after their own bump.
  std::int32_t attempts = 0;
  /// From `unprocessed`: a message that is due but was not counted by the read, because it
  /// was cut short at least twice already (or reached storage.max_attempts). Run it alone,
  /// after `next_attempt`, so that it cannot take the messages running beside it down again.
  bool suspect = false;
};

/// What `next_attempt` found. Neither set: the message is no longer pending (processed).
struct attempt_outcome {
  std::optional<persisted_message> rerun;  ///< counted: run it now
  std::optional<reply_msg> dead_lettered;  ///< it had its storage.max_attempts: its stored reply
};

/// The message of a dead-lettered reply: "dead-lettered after 3 attempts: <last failure>".
std::string dead_letter_message(std::int32_t attempts, std::string_view last_failure);
/// The last failure of a message whose attempts were all counted by replays: nobody saw why.
inline constexpr std::string_view runner_stopped_failure = "the runner running it stopped";

/// What storing a persisted request found.
struct persist_outcome {
  std::int64_t id = 0;
  bool inserted = false;           ///< new: the shard's lock holder must run it
  std::optional<reply_msg> reply;  ///< already processed: its stored reply
};

/// An entity's state as stored. `version` grows by one with every write (a clear included) and
/// never goes back, so a version read once identifies that write forever. 0: never written.
struct stored_state {
  std::int64_t version = 0;
  std::optional<bytes> data;  ///< nullopt: none (never written, or cleared)
};

/// A change of an entity's state, committed only while the stored version is still
/// `expected_version` (the one its activation read or last wrote); the new version is
/// `expected_version + 1`.
struct state_write {
  std::string entity_type;
  std::string entity_id;
  std::int64_t expected_version = 0;
  std::optional<bytes> data;  ///< nullopt: clear the state
};

/// A kept-alive entity remembered for its shard (activated again by the shard's next owner).
struct kept_entity {
  std::string entity_type;
  std::string entity_id;
};

class message_store {
 public:
  using persist_done = std::function<void(result<persist_outcome>)>;
  using complete_done = std::function<void(result<void>)>;
  using unprocessed_done = std::function<void(result<std::vector<persisted_message>>)>;
  /// The shards of the request whose lock this store holds now.
  using acquire_done = std::function<void(result<std::vector<std::int32_t>>)>;
  using replies_done = std::function<void(result<std::map<std::int64_t, reply_msg>>)>;
  using purge_done = std::function<void(result<std::size_t>)>;
  using attempt_done = std::function<void(result<attempt_outcome>)>;
  using state_done = std::function<void(result<stored_state>)>;
  /// Failure errc::state_conflict: the stored version is not the expected one; nothing written.
  using write_done = std::function<void(result<void>)>;
  using kept_done = std::function<void(result<std::vector<kept_entity>>)>;

  virtual ~message_store() = default;
  virtual std::string backend_name() const = 0;

  /// Stores a message unless one with the same (entity type, entity id, primary key) exists.
  /// That one must be the same request (its request_fingerprint: entity type, entity id, RPC
  /// and payload), else the outcome is the failure `primary_key_reused()` (InvalidRequest)
  /// and nothing is stored or run. Rows stored before fingerprints existed match any request.
  virtual void persist(persisted_message message, persist_done done) = 0;
  /// Stores the reply and marks the message processed in one transaction (a message keeps
  /// its first stored reply). `announce`: also tell every other store's `on_reply`
  /// (PostgreSQL: NOTIFY at commit), for a caller that may wait on another runner.
  virtual void complete(std::int64_t id, reply_msg reply, bool announce, complete_done done) = 0;
  /// Unprocessed messages of a shard with id > `after`, oldest first, at most batch_size.
  /// Counts an attempt of every due one it returns (same statement: a crash while it runs is
  /// counted), except suspects (see persisted_message::suspect), which it leaves to
  /// `next_attempt`. A message it returns that is running here already is counted too.
  virtual void unprocessed(std::string group, std::int32_t shard, std::int64_t after,
                           unprocessed_done done) = 0;
  /// Before pending message `id` runs again: counts the attempt and returns the message, or,
  /// when it has had storage.max_attempts, dead-letters it. Dead-lettering is one
  /// transaction: the Defect reply "dead-lettered after N attempts: <last failure>" is stored
  /// (and announced like `complete(announce = true)`), the message leaves the queue and a
  /// dead letter records it. `failure`: why the attempt before ended early (kept as the last
  /// failure); nullopt keeps the stored one.
  virtual void next_attempt(std::int64_t id, std::optional<std::string> failure,
                            attempt_done done) = 0;
  /// Takes the single-owner locks of `shards` that nobody else holds; reports those held
  /// now. A failure says nothing about other owners (the storage could not be asked).
  virtual void acquire(std::string group, std::vector<std::int32_t> shards, acquire_done done) = 0;
  virtual void release(std::string group, std::vector<std::int32_t> shards) = 0;
  /// The stored replies of those of `ids` that have one.
  virtual void replies(std::vector<std::int64_t> ids, replies_done done) = 0;
  /// Deletes processed messages (and replies) older than the retention, at most batch_size.
  virtual void purge(purge_done done) = 0;
  virtual void stop() = 0;

  // --- entity state (stateful entity types) ---------------------------------------------
  // The defaults below refuse with storage_error: a backend without entity state.

  /// The entity's stored state (version 0 and no data when none was ever written).
  virtual void load_state(std::string entity_type, std::string entity_id, state_done done);
  /// Writes the state of a volatile RPC or of a passivation, if the version still matches.
  virtual void save_state(state_write write, write_done done);
  /// `complete` and `save_state` in one transaction: the reply is stored, the message marked
  /// processed and the state written together, or (a conflict, a failure) none of them.
  virtual void complete_with_state(std::int64_t id, reply_msg reply, bool announce,
                                   state_write state, write_done done);
  /// Remembers a kept-alive entity of that shard (idempotent).
  virtual void remember_kept(std::string group, std::int32_t shard, kept_entity entity,
                             write_done done);
  /// Forgets a kept-alive entity (its state was cleared, or its type is gone).
  virtual void forget_kept(kept_entity entity, write_done done);
  /// The kept-alive entities remembered for a shard.
  virtual void kept_entities(std::string group, std::int32_t shard, kept_done done);
  /// The fencing token of a shard whose lock this store reported held: the lock's epoch, which
  /// grows every time the lock is taken (by any runner). 0: no such lock, or a store without
  /// epochs. Read on the io_context thread; set before `acquire`'s completion reports the shard.
  virtual std::int64_t lock_epoch(std::string_view group, std::int32_t shard) const;

  /// Was the storage reachable at the last attempt?
  virtual bool reachable() const { return true; }
  /// Do other runners see these messages (a shard's next owner replays them)?
  virtual bool shared() const { return false; }

  /// A reply to message `id` was stored (by any runner, for PostgreSQL).
  std::function<void(std::int64_t id)> on_reply;
  /// The storage session ended: every lock is gone.
  std::function<void()> on_locks_lost;
  /// Dead letter `id` of that shard was replayed (`clusterctl dead-letters replay`): it is
  /// pending again with no attempts counted, for the shard's lock holder to run.
  std::function<void(const std::string& group, std::int32_t shard, std::int64_t id)> on_requeued;
};

/// The memory backend: everything stays in this process, locks are always granted.
/// `unprocessed` lists at most `batch_size` messages per call; a message is dead-lettered
/// after `max_attempts`.
std::unique_ptr<message_store> make_memory_message_store(asio::io_context& io,
                                                         std::uint32_t batch_size = 512,
                                                         std::int32_t max_attempts = 3);

/// Does a replay read count this message's attempt? Those below the bound have been cut
/// short once at most; the others are suspects (run alone).
inline bool counted_by_replay(std::int32_t attempts, std::int32_t max_attempts) {
  return attempts < std::min(max_attempts, 2);
}

}  // namespace cluster
