#include "cluster/host/persisted_messages.hpp"

#include <spdlog/spdlog.h>

#include "cluster/client/router.hpp"

namespace cluster::host {

namespace {

std::int64_t unix_ms() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

}  // namespace

persisted_messages::persisted_messages(asio::io_context& io, std::unique_ptr<message_store> store,
                                       entity_host& entities, const entity_registry& registry,
                                       storage_settings settings)
    : io_(io),
      store_(std::move(store)),
      entities_(entities),
      registry_(registry),
      settings_(std::move(settings)),
      maintenance_timer_(io),
      purge_timer_(io) {
  store_->on_reply = [this](std::int64_t id) {
    if (waiters_.count(id) && !running_.count(id)) fetch_replies({id});
  };
  store_->on_locks_lost = [this] { locks_lost(); };
}

persisted_messages::~persisted_messages() { store_->stop(); }

void persisted_messages::start() {
  asio::co_spawn(io_, maintenance_loop(), asio::detached);
  asio::co_spawn(io_, purge_loop(), asio::detached);
}

void persisted_messages::stop() {
  if (stopped_) return;
  stopped_ = true;
  maintenance_timer_.cancel();
  purge_timer_.cancel();
  // Retriable: the caller's retry (same primary key) finds the message at its next owner.
  for (auto& [id, list] : waiters_)
    for (auto& w : list) w.done(reply_msg::failure(errc::shutting_down, "runner is stopping"));
  waiters_.clear();
  waiter_count_ = 0;
  held_.clear();
  suspended_.clear();
  store_->stop();  // finishes queued statements, then releases every lock
}

bool persisted_messages::holds(const std::string& group, std::int32_t shard) const {
  return held_.count({group, shard}) > 0;
}

bool persisted_messages::suspended(const std::string& group, std::int32_t shard) const {
  return suspended_.count({group, shard}) > 0;
}

std::size_t persisted_messages::held_shards() const { return held_.size(); }

void persisted_messages::set_wanted(std::map<std::string, std::set<std::int32_t>> wanted) {
  wanted_ = std::move(wanted);
  std::erase_if(suspended_, [this](const shard_key& shard) {
    auto it = wanted_.find(shard.first);
    return it == wanted_.end() || !it->second.count(shard.second);
  });
  // Stop serving shards that moved away at once; their locks go once their entities are idle.
  entities_.evict_shards([this](const std::string& group, std::int32_t shard) {
    auto it = wanted_.find(group);
    return it != wanted_.end() && it->second.count(shard);
  });
  sync_locks();
}

void persisted_messages::sync_locks() {
  if (stopped_) return;
  std::map<std::string, std::vector<std::int32_t>> acquire, release;
  for (const auto& [group, shards] : wanted_)
    for (auto shard : shards)
      if (!held_.count({group, shard}) && !acquiring_.count({group, shard}))
        acquire[group].push_back(shard);
  for (auto it = held_.begin(); it != held_.end();) {
    const auto& [group, shard] = *it;
    auto wanted = wanted_.find(group);
    const bool keep = wanted != wanted_.end() && wanted->second.count(shard);
    if (!keep && !entities_.shard_active(group, shard)) {
      release[group].push_back(shard);
      replaying_.erase(*it);
      it = held_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& [group, shards] : release) store_->release(group, shards);
  for (auto& [group, shards] : acquire) {
    for (auto shard : shards) acquiring_.insert({group, shard});
    store_->acquire(group, shards,
                    [this, group = group, shards = shards,
                     epoch = lock_epoch_](std::vector<std::int32_t> held) {
                      for (auto shard : shards) acquiring_.erase({group, shard});
                      if (stopped_ || epoch != lock_epoch_) return;
                      if (store_->reachable()) lost_to_others(group, shards, held);
                      for (auto shard : held) {
                        suspended_.erase({group, shard});
                        auto wanted = wanted_.find(group);
                        if (wanted == wanted_.end() || !wanted->second.count(shard)) {
                          store_->release(group, {shard});  // moved away meanwhile
                          continue;
                        }
                        if (!held_.insert({group, shard}).second) continue;
                        replaying_.insert({group, shard});
                        replay({group, shard}, 0);
                      }
                    });
  }
}

void persisted_messages::lost_to_others(const std::string& group,
                                        const std::vector<std::int32_t>& wanted,
                                        const std::vector<std::int32_t>& held) {
  std::set<std::int32_t> lost;
  for (auto shard : wanted)
    if (suspended_.count({group, shard}) &&
        std::find(held.begin(), held.end(), shard) == held.end())
      lost.insert(shard);
  if (lost.empty()) return;
  spdlog::warn(
      "{} shards of group '{}' are locked by another runner since the storage "
      "outage; passivating their entities",
      lost.size(), group);
  for (auto shard : lost) suspended_.erase({group, shard});
  entities_.evict_shards(
      [&](const std::string& g, std::int32_t shard) { return g != group || !lost.count(shard); });
}

void persisted_messages::replay(const shard_key& shard, std::int64_t after) {
  store_->unprocessed(
      shard.first, shard.second, after,
      [this, shard, epoch = lock_epoch_](std::vector<persisted_message> batch, bool ok) {
        if (stopped_ || epoch != lock_epoch_ || !held_.count(shard)) return;
        if (!ok) {
          retry_replay_.insert(shard);  // storage trouble: the next maintenance tick retries
          return;
        }
        std::int64_t last = 0;
        for (auto& message : batch) {
          last = message.id;
          if (!running_.count(message.id)) run(std::move(message));
        }
        if (batch.size() >= settings_.batch_size) {
          replay(shard, last);
        } else {
          replaying_.erase(shard);
          if (!batch.empty())
            spdlog::info("replayed {} stored messages of shard {}/{}", batch.size(), shard.first,
                         shard.second);
        }
      });
}

void persisted_messages::submit(const entity_address& address, std::uint32_t rpc_index,
                                request_msg request, steady_clock::time_point deadline,
                                entity_host::reply_callback done) {
  if (entities_.mailbox_full(address.type->info.name, address.entity_id)) {
    done(reply_msg::failure(errc::mailbox_full, "mailbox of " + address.type->info.name + "/" +
                                                    address.entity_id + " is full"));
    return;
  }
  persisted_message message;
  message.group = address.type->info.group;
  message.shard = address.shard;
  if (!request.primary_key || request.primary_key->empty())
    request.primary_key = generated_request_key();
  request.persisted = true;
  message.request = std::move(request);
  (void)rpc_index;
  store_->persist(message, [this, message, deadline, done = std::move(done),
                            epoch = lock_epoch_](persist_outcome outcome) mutable {
    if (outcome.error) {
      done(reply_msg::failure(errc::storage_error, *outcome.error));
      return;
    }
    if (outcome.reply) {  // a duplicate of a processed message: its reply, not a second run
      done(std::move(*outcome.reply));
      return;
    }
    const shard_key shard{message.group, message.shard};
    if (outcome.inserted && !store_->shared() && (epoch != lock_epoch_ || !held_.count(shard))) {
      // The shard moved while the message was stored, and its next owner cannot see this
      // store: the caller's retry (routers retry NotOwner) runs it there instead.
      done(reply_msg::failure(errc::not_owner, "shard moved away while the message was stored"));
      return;
    }
    waiters_[outcome.id].push_back(waiter{deadline, steady_clock::now(), std::move(done)});
    ++waiter_count_;
    // While a shard replays, new messages run from the replay, in id order.
    if (outcome.inserted && epoch == lock_epoch_ && held_.count(shard) &&
        !replaying_.count(shard) && !running_.count(outcome.id)) {
      message.id = outcome.id;
      run(std::move(message));
    }
  });
}

void persisted_messages::run(persisted_message message) {
  const entity_type* type = registry_.find(message.request.entity_type);
  const std::int64_t id = message.id;
  running_.insert(id);
  if (type == nullptr || !type->rpc_index(message.request.rpc)) {
    // Stored by a runner with other plugins: answer it rather than replay it forever.
    finish(id, {message.group, message.shard},
           reply_msg::failure(type ? errc::unknown_rpc : errc::unknown_entity_type,
                              "stored message for " + message.request.entity_type + "." +
                                  message.request.rpc + " has no handler on this runner"),
           hold_in_flight());
    return;
  }
  const entity_address address{type, message.request.entity_id, message.shard};
  const auto rpc_index = *type->rpc_index(message.request.rpc);
  auto deliver = [this, address, rpc_index, id, shard = shard_key{message.group, message.shard},
                  request = std::move(message.request)]() mutable {
    entities_.deliver(
        address, rpc_index, std::move(request), steady_clock::time_point::max(),
        [this, id, shard, hold = hold_in_flight()](reply_msg&& reply) mutable {
          finish(id, shard, std::move(reply), std::move(hold));
        },
        false);
  };
  const auto delay = message.request.deliver_at_ms ? *message.request.deliver_at_ms - unix_ms() : 0;
  if (delay <= 0) {
    deliver();
    return;
  }
  auto timer = std::make_shared<asio::steady_timer>(io_, milliseconds(delay));
  timer->async_wait([timer, deliver = std::move(deliver), this, id,
                     shard = shard_key{message.group, message.shard},
                     epoch = lock_epoch_](const error_code&) mutable {
    if (stopped_ || epoch != lock_epoch_ || !held_.count(shard)) {
      // The shard moved or its lock was lost meanwhile: its next holder replays the message.
      running_.erase(id);
      return;
    }
    deliver();
  });
}

void persisted_messages::finish(std::int64_t id, const shard_key& shard, reply_msg&& reply,
                                gate::holder hold) {
  ++storing_;
  // Callers wait where the shard is served: here, unless it moved away while this ran (a
  // retry may then wait at the new owner). A move this runner has not heard of yet leaves
  // that caller to the reply polling.
  auto wanted = wanted_.find(shard.first);
  const bool moved =
      !held_.count(shard) || wanted == wanted_.end() || !wanted->second.count(shard.second);
  store_->complete(id, reply, moved,
                   [this, id, reply, hold = std::move(hold)](bool stored) mutable {
                     --storing_;
                     running_.erase(id);
                     if (!stored)
                       spdlog::warn("reply of message {} not stored; it will run again", id);
                     answer(id, reply);
                     hold.release();
                   });
}

void persisted_messages::answer(std::int64_t id, const reply_msg& reply) {
  auto it = waiters_.find(id);
  if (it == waiters_.end()) return;
  auto list = std::move(it->second);
  waiters_.erase(it);
  waiter_count_ -= list.size();
  for (auto& w : list) w.done(reply_msg(reply));
}

void persisted_messages::fetch_replies(std::vector<std::int64_t> ids) {
  store_->replies(std::move(ids), [this](std::map<std::int64_t, reply_msg> found) {
    for (auto& [id, reply] : found) answer(id, reply);
  });
}

void persisted_messages::locks_lost() {
  if (held_.empty()) return;
  spdlog::error(
      "lost the storage session: {} shards serve volatile calls only until their "
      "locks are back",
      held_.size());
  ++lock_epoch_;
  // Nobody else can take these locks while the storage is away; entities stay active (their
  // in-memory state survives a database restart) unless another runner has them on return.
  suspended_.insert(held_.begin(), held_.end());
  held_.clear();
  replaying_.clear();
  acquiring_.clear();
}

awaitable<void> persisted_messages::maintenance_loop() {
  while (!stopped_) {
    maintenance_timer_.expires_after(milliseconds(100));
    error_code ec;
    co_await maintenance_timer_.async_wait(asio::redirect_error(use_awaitable, ec));
    if (stopped_) break;
    sync_locks();
    auto retry = std::move(retry_replay_);
    retry_replay_.clear();
    for (const auto& shard : retry)
      if (held_.count(shard)) replay(shard, 0);
    // Waiters: answer the expired, poll for replies a notification may have missed.
    const auto now = steady_clock::now();
    std::vector<std::int64_t> poll;
    for (auto it = waiters_.begin(); it != waiters_.end();) {
      auto& list = it->second;
      for (auto w = list.begin(); w != list.end();) {
        if (w->deadline <= now) {
          w->done(reply_msg::failure(errc::deadline_exceeded,
                                     "stored, not yet processed; retry with the same key"));
          w = list.erase(w);
          --waiter_count_;
        } else {
          if (now - w->since >= settings_.poll_interval && !running_.count(it->first))
            poll.push_back(it->first);
          ++w;
        }
      }
      it = list.empty() ? waiters_.erase(it) : std::next(it);
    }
    std::sort(poll.begin(), poll.end());
    poll.erase(std::unique(poll.begin(), poll.end()), poll.end());
    if (!poll.empty()) fetch_replies(std::move(poll));
  }
}

awaitable<void> persisted_messages::purge_loop() {
  const auto idle =
      std::clamp<milliseconds>(settings_.retention / 10, milliseconds(100), milliseconds(60000));
  while (!stopped_) {
    purge_timer_.expires_after(idle);
    error_code ec;
    co_await purge_timer_.async_wait(asio::redirect_error(use_awaitable, ec));
    if (stopped_) break;
    store_->purge([](std::size_t purged) {
      if (purged > 0) spdlog::info("purged {} processed messages past retention", purged);
    });
  }
}

}  // namespace cluster::host
