// The memory message store.
#include <algorithm>
#include <set>
#include <tuple>
#include <utility>

#include "cluster/protocol/assert.hpp"
#include "cluster/storage/message_store.hpp"
#include "cluster/storage/request_fingerprint.hpp"

namespace cluster {

namespace {

failure already_processed(std::int64_t id) {
  return failure{errc::state_conflict,
                 "message " + std::to_string(id) + " was processed already: its state stands"};
}

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

  void acquire(std::string group, std::vector<std::int32_t> shards, acquire_done done) override {
    // A shard held already keeps its epoch: only a lock newly taken starts a new one.
    for (auto shard : shards) {
      auto key = std::make_pair(group, shard);
      if (held_.insert(key).second) ++epochs_[key];
    }
    asio::post(io_, [done = std::move(done), shards = std::move(shards)]() mutable {
      done(std::move(shards));
    });
  }
  void release(std::string group, std::vector<std::int32_t> shards) override {
    for (auto shard : shards) held_.erase(std::make_pair(group, shard));
  }

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

  void load_state(std::string entity_type, std::string entity_id, state_done done) override {
    stored_state out;
    if (auto it = states_.find(std::make_pair(entity_type, entity_id)); it != states_.end())
      out = it->second;
    asio::post(io_,
               [done = std::move(done), out = std::move(out)]() mutable { done(std::move(out)); });
  }

  void save_state(state_write write, write_done done) override {
    result<void> outcome = write_state(std::move(write));
    asio::post(io_, [done = std::move(done), outcome = std::move(outcome)]() mutable {
      done(std::move(outcome));
    });
  }

  void complete_with_state(std::int64_t id, reply_msg reply, bool /*announce: one process*/,
                           state_write state, write_done done) override {
    // A message no longer pending was completed by an earlier run: its reply and the state
    // it wrote stand. A conflict, so that this run's effect is not applied twice and its
    // caller, retrying, gets the stored reply.
    result<void> outcome = unprocessed_.count(id) != 0 ? write_state(std::move(state))
                                                       : result<void>(already_processed(id));
    const bool completed = outcome.has_value();
    if (completed) {
      unprocessed_.erase(id);
      last_failures_.erase(id);
      replies_.emplace(id, std::move(reply));
    }
    asio::post(
        io_, [this, id, completed, done = std::move(done), outcome = std::move(outcome)]() mutable {
          done(std::move(outcome));
          if (completed && on_reply) on_reply(id);
        });
  }

  void remember_kept(std::string group, std::int32_t shard, kept_entity entity,
                     write_done done) override {
    auto key = std::make_pair(entity.entity_type, entity.entity_id);
    kept_[std::move(key)] = std::make_pair(std::move(group), shard);
    asio::post(io_, [done = std::move(done)] { done(success()); });
  }

  void forget_kept(kept_entity entity, write_done done) override {
    kept_.erase(std::make_pair(entity.entity_type, entity.entity_id));
    asio::post(io_, [done = std::move(done)] { done(success()); });
  }

  void kept_entities(std::string group, std::int32_t shard, kept_done done) override {
    std::vector<kept_entity> out;
    for (const auto& [entity, where] : kept_)
      if (where.first == group && where.second == shard)
        out.push_back(kept_entity{entity.first, entity.second});
    asio::post(io_,
               [done = std::move(done), out = std::move(out)]() mutable { done(std::move(out)); });
  }

  std::int64_t lock_epoch(std::string_view group, std::int32_t shard) const override {
    const auto it = epochs_.find(std::make_pair(std::string(group), shard));
    return it == epochs_.end() ? 0 : it->second;
  }

 private:
  result<void> write_state(state_write write) {
    auto& stored =
        states_[std::make_pair(std::move(write.entity_type), std::move(write.entity_id))];
    if (stored.version != write.expected_version)
      return failure{errc::state_conflict, "the state is at version " +
                                               std::to_string(stored.version) + ", not " +
                                               std::to_string(write.expected_version)};
    stored.version = write.expected_version + 1;
    stored.data = std::move(write.data);
    return success();
  }

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
  std::map<std::pair<std::string, std::string>, stored_state> states_;  // by (type, id)
  // A kept-alive entity (type, id) and the (group, shard) it was remembered for.
  std::map<std::pair<std::string, std::string>, std::pair<std::string, std::int32_t>> kept_;
  std::set<std::pair<std::string, std::int32_t>> held_;  // the locks taken and not released
  std::map<std::pair<std::string, std::int32_t>, std::int64_t> epochs_;  // never reset
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
