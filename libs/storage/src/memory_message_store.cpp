// The memory message store.
#include <algorithm>
#include <tuple>

#include "cluster/protocol/assert.hpp"
#include "cluster/storage/message_store.hpp"

namespace cluster {

namespace {

class memory_message_store final : public message_store {
 public:
  memory_message_store(asio::io_context& io, std::uint32_t batch_size)
      : io_(io), batch_size_(std::max<std::uint32_t>(1, batch_size)) {}
  std::string backend_name() const override { return "memory"; }

  void persist(persisted_message message, persist_done done) override {
    CLUSTER_ASSERT(message.request.primary_key.has_value(),
                   "persisted messages carry a primary key (a generated one at least)");
    persist_outcome outcome;
    auto key = std::make_tuple(message.request.entity_type, message.request.entity_id,
                               *message.request.primary_key);
    if (auto it = by_key_.find(key); it != by_key_.end()) {
      outcome.id = it->second;
      if (auto reply = replies_.find(it->second); reply != replies_.end())
        outcome.reply = reply->second;
    } else {
      message.id = ++next_id_;
      outcome.id = message.id;
      outcome.inserted = true;
      by_key_.emplace(std::move(key), message.id);
      unprocessed_.emplace(message.id, std::move(message));
    }
    asio::post(io_, [done = std::move(done), outcome = std::move(outcome)]() mutable {
      done(std::move(outcome));
    });
  }

  void complete(std::int64_t id, reply_msg reply, bool /*announce: one process*/,
                complete_done done) override {
    unprocessed_.erase(id);
    replies_.emplace(id, std::move(reply));  // a rerun after a lost lock keeps the first
    asio::post(io_, [this, id, done = std::move(done)] {
      done(success());
      if (on_reply) on_reply(id);
    });
  }

  void unprocessed(std::string group, std::int32_t shard, std::int64_t after,
                   unprocessed_done done) override {
    std::vector<persisted_message> out;
    for (auto it = unprocessed_.upper_bound(after);
         it != unprocessed_.end() && out.size() < batch_size_; ++it)
      if (it->second.group == group && it->second.shard == shard) out.push_back(it->second);
    asio::post(io_,
               [done = std::move(done), out = std::move(out)]() mutable { done(std::move(out)); });
  }

  void acquire(std::string, std::vector<std::int32_t> shards, acquire_done done) override {
    asio::post(io_, [done = std::move(done), shards = std::move(shards)]() mutable {
      done(std::move(shards));
    });
  }
  void release(std::string, std::vector<std::int32_t>) override {}

  void replies(std::vector<std::int64_t> ids, replies_done done) override {
    std::map<std::int64_t, reply_msg> out;
    for (auto id : ids)
      if (auto it = replies_.find(id); it != replies_.end()) out.emplace(id, it->second);
    asio::post(io_,
               [done = std::move(done), out = std::move(out)]() mutable { done(std::move(out)); });
  }

  void purge(purge_done done) override {
    asio::post(io_, [done = std::move(done)] { done(std::size_t{0}); });
  }
  void stop() override {}

 private:
  asio::io_context& io_;
  std::uint32_t batch_size_;
  std::int64_t next_id_ = 0;
  std::map<std::tuple<std::string, std::string, std::string>, std::int64_t> by_key_;
  std::map<std::int64_t, persisted_message> unprocessed_;
  std::map<std::int64_t, reply_msg> replies_;
};

}  // namespace

std::unique_ptr<message_store> make_memory_message_store(asio::io_context& io,
                                                         std::uint32_t batch_size) {
  return std::make_unique<memory_message_store>(io, batch_size);
}

}  // namespace cluster
