// The memory message store.
#include <algorithm>
#include <tuple>

#include "cluster/storage/message_store.hpp"

namespace cluster {

namespace {

class memory_message_store final : public message_store {
 public:
  explicit memory_message_store(asio::io_context& io) : io_(io) {}
  std::string backend_name() const override { return "memory"; }

  void persist(persisted_message message, std::function<void(persist_outcome)> done) override {
    persist_outcome outcome;
    const auto key = std::make_tuple(message.request.entity_type, message.request.entity_id,
                                     *message.request.primary_key);
    if (auto it = by_key_.find(key); it != by_key_.end()) {
      outcome.id = it->second;
      if (auto reply = replies_.find(it->second); reply != replies_.end())
        outcome.reply = reply->second;
    } else {
      message.id = ++next_id_;
      outcome.id = message.id;
      outcome.inserted = true;
      by_key_.emplace(key, message.id);
      unprocessed_.emplace(message.id, std::move(message));
    }
    asio::post(io_, [done = std::move(done), outcome = std::move(outcome)] { done(outcome); });
  }

  void complete(std::int64_t id, reply_msg reply, bool /*announce: one process*/,
                std::function<void(bool)> done) override {
    unprocessed_.erase(id);
    replies_[id] = std::move(reply);
    asio::post(io_, [this, id, done = std::move(done)] {
      done(true);
      if (on_reply) on_reply(id);
    });
  }

  void unprocessed(std::string group, std::int32_t shard, std::int64_t after,
                   std::function<void(std::vector<persisted_message>, bool)> done) override {
    std::vector<persisted_message> out;
    for (auto it = unprocessed_.upper_bound(after); it != unprocessed_.end() && out.size() < 512;
         ++it)
      if (it->second.group == group && it->second.shard == shard) out.push_back(it->second);
    asio::post(io_, [done = std::move(done), out = std::move(out)] { done(out, true); });
  }

  void acquire(std::string, std::vector<std::int32_t> shards,
               std::function<void(std::vector<std::int32_t>)> done) override {
    asio::post(io_, [done = std::move(done), shards = std::move(shards)] { done(shards); });
  }
  void release(std::string, std::vector<std::int32_t>) override {}

  void replies(std::vector<std::int64_t> ids,
               std::function<void(std::map<std::int64_t, reply_msg>)> done) override {
    std::map<std::int64_t, reply_msg> out;
    for (auto id : ids)
      if (auto it = replies_.find(id); it != replies_.end()) out.emplace(id, it->second);
    asio::post(io_, [done = std::move(done), out = std::move(out)] { done(out); });
  }

  void purge(std::function<void(std::size_t)> done) override {
    asio::post(io_, [done = std::move(done)] { done(0); });
  }
  void stop() override {}

 private:
  asio::io_context& io_;
  std::int64_t next_id_ = 0;
  std::map<std::tuple<std::string, std::string, std::string>, std::int64_t> by_key_;
  std::map<std::int64_t, persisted_message> unprocessed_;
  std::map<std::int64_t, reply_msg> replies_;
};

}  // namespace

std::unique_ptr<message_store> make_memory_message_store(asio::io_context& io) {
  return std::make_unique<memory_message_store>(io);
}

}  // namespace cluster
