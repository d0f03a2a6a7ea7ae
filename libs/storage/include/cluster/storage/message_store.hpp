#pragma once
// Durable messages of persisted RPCs and the single-owner shard locks.
//
// Every operation completes through its callback on the io_context thread, never inside
// the call. The PostgreSQL backend batches concurrent operations (one statement and one
// commit per batch); the memory backend keeps everything in the process (nothing survives
// it, and its locks are always granted).

#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cluster/protocol/messages.hpp"
#include "cluster/storage/storage_settings.hpp"

namespace cluster {

namespace asio = boost::asio;

struct persisted_message {
  std::int64_t id = 0;
  std::string group;
  std::int32_t shard = 0;
  request_msg request;  ///< primary_key always set (a generated one when the caller gave none)
};

struct persist_outcome {
  std::int64_t id = 0;
  bool inserted = false;           ///< new: the shard's lock holder must run it
  std::optional<reply_msg> reply;  ///< already processed: its stored reply
  std::optional<std::string> error;
};

class message_store {
 public:
  virtual ~message_store() = default;
  virtual std::string backend_name() const = 0;

  /// Stores a message unless one with the same (entity type, entity id, primary key) exists.
  virtual void persist(persisted_message message, std::function<void(persist_outcome)> done) = 0;
  /// Stores the reply and marks the message processed in one transaction. `announce`: also
  /// tell every other store's `on_reply` (PostgreSQL: NOTIFY at commit), for a caller that
  /// may wait on another runner. `done(false)` when it could not be stored.
  virtual void complete(std::int64_t id, reply_msg reply, bool announce,
                        std::function<void(bool)> done) = 0;
  /// Unprocessed messages of a shard with id > `after`, oldest first, at most batch_size.
  virtual void unprocessed(std::string group, std::int32_t shard, std::int64_t after,
                           std::function<void(std::vector<persisted_message>, bool ok)> done) = 0;
  /// Takes the single-owner locks of `shards` that nobody else holds; reports those held now.
  virtual void acquire(std::string group, std::vector<std::int32_t> shards,
                       std::function<void(std::vector<std::int32_t>)> done) = 0;
  virtual void release(std::string group, std::vector<std::int32_t> shards) = 0;
  /// The stored replies of those of `ids` that have one.
  virtual void replies(std::vector<std::int64_t> ids,
                       std::function<void(std::map<std::int64_t, reply_msg>)> done) = 0;
  /// Deletes processed messages (and replies) older than the retention, at most batch_size.
  virtual void purge(std::function<void(std::size_t purged)> done) = 0;
  virtual void stop() = 0;
  /// Was the storage reachable at the last attempt? (A lock refused while it is not says
  /// nothing about other owners.)
  virtual bool reachable() const { return true; }
  /// Do other runners see these messages (a shard's next owner replays them)?
  virtual bool shared() const { return false; }

  /// A reply to message `id` was stored (by any runner, for PostgreSQL).
  std::function<void(std::int64_t id)> on_reply;
  /// The storage session ended: every lock is gone.
  std::function<void()> on_locks_lost;
};

/// The memory backend: everything stays in this process, locks are always granted.
std::unique_ptr<message_store> make_memory_message_store(asio::io_context& io);

}  // namespace cluster
