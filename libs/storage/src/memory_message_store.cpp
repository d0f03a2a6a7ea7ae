// The memory message store.
#include <algorithm>
#include <tuple>

#include "cluster/protocol/assert.hpp"
#include "cluster/storage/message_store.hpp"
#include "cluster/storage/request_fingerprint.hpp"

namespace cluster {

namespace {

std::int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

class memory_message_store final : public message_store {
 public:
  memory_message_store(asio::io_context& io, std::uint32_t batch_size, std::int32_t max_attempts)
      : io_(io),
        batch_size_(std::max<std::uint32_t>(1, batch_size)),
        max_attempts_(std::max(1, max_attempts)) {}
  std::string backend_name() const override { return "memory"; }

  void persist(persisted_message message, persist_done done) override {
    CLUSTER_ASSERT(message.request.primary_key.has_value(),
                   "persisted messages carry a primary key (a generated one at least)");
    result<persist_outcome> outcome = persist_outcome{};
    auto key = std::make_tuple(message.request.entity_type, message.request.entity_id,
                               *message.request.primary_key);
    const auto fingerprint = fingerprint_of(message.request);
    if (auto it = by_key_.find(key); it != by_key_.end()) {
      if (it->second.fingerprint != fingerprint) {
        outcome = primary_key_reused();
      } else {
        outcome.value().id = it->second.id;
        if (auto reply = replies_.find(it->second.id); reply != replies_.end())
          outcome.value().reply = reply->second;
      }
    } else {
      message.id = ++next_id_;
      outcome.value().id = message.id;
      outcome.value().inserted = true;
      by_key_.emplace(std::move(key), stored_key{message.id, fingerprint});
      unprocessed_.emplace(message.id, std::move(message));
    }
    asio::post(io_, [done = std::move(done), outcome = std::move(outcome)]() mutable {
      done(std::move(outcome));
    });
  }

  void complete(std::int64_t id, reply_msg reply, bool /*announce: one process*/,
                complete_done done) override {
    unprocessed_.erase(id);
    last_failures_.erase(id);
    replies_.emplace(id, std::move(reply));  // a rerun after a lost lock keeps the first
    asio::post(io_, [this, id, done = std::move(done)] {
      done(success());
      if (on_reply) on_reply(id);
    });
  }

  void unprocessed(std::string group, std::int32_t shard, std::int64_t after,
                   unprocessed_done done) override {
    std::vector<persisted_message> out;
    const auto now = unix_ms();
    for (auto it = unprocessed_.upper_bound(after);
         it != unprocessed_.end() && out.size() < batch_size_; ++it) {
      auto& stored = it->second;
      if (stored.group != group || stored.shard != shard) continue;
      const bool due = !stored.request.deliver_at_ms || *stored.request.deliver_at_ms <= now;
      const bool counted = due && counted_by_replay(stored.attempts, max_attempts_);
      if (counted) ++stored.attempts;
      out.push_back(stored);
      out.back().suspect = due && !counted;
    }
    asio::post(io_,
               [done = std::move(done), out = std::move(out)]() mutable { done(std::move(out)); });
  }

  void next_attempt(std::int64_t id, std::optional<std::string> failure,
                    attempt_done done) override {
    attempt_outcome outcome;
    if (auto it = unprocessed_.find(id); it != unprocessed_.end()) {
      if (failure) last_failures_[id] = std::move(*failure);
      if (it->second.attempts < max_attempts_) {
        ++it->second.attempts;
        outcome.rerun = it->second;
        outcome.rerun->suspect = false;
      } else {
        auto why = last_failures_.find(id);
        auto reply = reply_msg::failure(
            errc::defect, dead_letter_message(it->second.attempts, why == last_failures_.end()
                                                                       ? runner_stopped_failure
                                                                       : why->second));
        unprocessed_.erase(it);
        if (why != last_failures_.end()) last_failures_.erase(why);
        replies_.emplace(id, reply);
        outcome.dead_lettered = std::move(reply);
      }
    }
    const bool announce = outcome.dead_lettered.has_value();
    asio::post(
        io_, [this, id, announce, done = std::move(done), outcome = std::move(outcome)]() mutable {
          done(std::move(outcome));
          if (announce && on_reply) on_reply(id);
        });
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
  std::int32_t max_attempts_;
  std::int64_t next_id_ = 0;
  struct stored_key {
    std::int64_t id;
    request_fingerprint fingerprint;  // of the request first stored under the key
  };
  std::map<std::tuple<std::string, std::string, std::string>, stored_key> by_key_;
  std::map<std::int64_t, persisted_message> unprocessed_;
  std::map<std::int64_t, reply_msg> replies_;
  std::map<std::int64_t, std::string> last_failures_;  // of pending messages cut short
};

}  // namespace

std::string dead_letter_message(std::int32_t attempts, std::string_view last_failure) {
  return "dead-lettered after " + std::to_string(attempts) +
         (attempts == 1 ? " attempt: " : " attempts: ") + std::string(last_failure);
}

std::unique_ptr<message_store> make_memory_message_store(asio::io_context& io,
                                                         std::uint32_t batch_size,
                                                         std::int32_t max_attempts) {
  return std::make_unique<memory_message_store>(io, batch_size, max_attempts);
}

}  // namespace cluster
