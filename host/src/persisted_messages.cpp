#include "cluster/host/persisted_messages.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "cluster/client/router.hpp"
#include "cluster/protocol/assert.hpp"

namespace cluster::host {

namespace {

// A lock another runner holds is asked for again this often (it goes when that runner's
// entities of the shard are idle, or with its session).
constexpr milliseconds lock_retry_interval{100};
// While the storage is away, retries start at this and double up to the bound.
constexpr milliseconds first_backoff{100};
constexpr milliseconds max_backoff{2000};
// A message whose attempt was cut short runs again after this, doubling per attempt.
constexpr milliseconds retry_first_backoff{100};
// Waiters ask the store for a reply no more often than this (at most once per
// poll_interval each, however small the setting).
constexpr milliseconds min_poll_interval{100};

std::int64_t unix_ms() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool locked(shard_state state) {
  switch (state) {
    case shard_state::replaying:
    case shard_state::replay_failed:
    case shard_state::serving:
    case shard_state::releasing:
      return true;
    default:
      return false;
  }
}

// The shard lifecycle: every transition a shard may take. `to` nullopt: the shard is
// forgotten (neither assigned nor locked any more).
constexpr bool may_move(shard_state from, std::optional<shard_state> to) {
  using s = shard_state;
  if (!to) {
    // Unassigned (a late grant of an acquiring shard is released when it arrives), or the
    // lock released or lost while releasing. A locked shard goes through `releasing`.
    return from == s::awaiting_lock || from == s::acquiring || from == s::suspended ||
           from == s::suspended_acquiring || from == s::releasing;
  }
  switch (from) {
    case s::awaiting_lock:
      return *to == s::acquiring;
    case s::acquiring:
      return *to == s::replaying || *to == s::awaiting_lock;  // granted, refused or lost
    case s::replaying:
      return *to == s::serving || *to == s::replay_failed || *to == s::releasing ||
             *to == s::suspended;
    case s::replay_failed:
      return *to == s::replaying || *to == s::releasing || *to == s::suspended;
    case s::serving:
      return *to == s::releasing || *to == s::suspended;
    case s::releasing:
      return *to == s::replaying;  // assigned here again before the lock went
    case s::suspended:
      return *to == s::suspended_acquiring;
    case s::suspended_acquiring:
      // Granted; the storage still away; reachable but the lock went to another runner.
      return *to == s::replaying || *to == s::suspended || *to == s::awaiting_lock;
  }
  return false;
}

}  // namespace

std::string_view to_string(shard_state state) {
  switch (state) {
    case shard_state::awaiting_lock:
      return "awaiting_lock";
    case shard_state::acquiring:
      return "acquiring";
    case shard_state::replaying:
      return "replaying";
    case shard_state::replay_failed:
      return "replay_failed";
    case shard_state::serving:
      return "serving";
    case shard_state::releasing:
      return "releasing";
    case shard_state::suspended:
      return "suspended";
    case shard_state::suspended_acquiring:
      return "suspended_acquiring";
  }
  return "unknown";
}

// --- wakeup ----------------------------------------------------------------------------

persisted_messages::wakeup::wakeup(asio::io_context& io, std::function<void()> fire)
    : timer_(io), fire_(std::move(fire)) {}

void persisted_messages::wakeup::at(steady_clock::time_point when) {
  if (when >= due_) return;
  due_ = when;
  timer_.expires_at(when);  // cancels the later wait, if any
  // A cancelled wait only reads its error code: the timer may be gone by then.
  timer_.async_wait([this](const error_code& ec) {
    if (ec) return;
    due_ = steady_clock::time_point::max();
    fire_();
  });
}

void persisted_messages::wakeup::cancel() {
  due_ = steady_clock::time_point::min();  // nothing is armed again
  timer_.cancel();
}

// --- lifecycle -------------------------------------------------------------------------

persisted_messages::persisted_messages(asio::io_context& io, std::unique_ptr<message_store> store,
                                       entity_host& entities, const entity_registry& registry,
                                       storage_settings settings)
    : io_(io),
      store_(std::move(store)),
      entities_(entities),
      registry_(registry),
      settings_(std::move(settings)),
      backoff_(first_backoff),
      retry_(io, [this] { retry(); }),
      waiters_due_(io, [this] { check_waiters(); }),
      purge_due_(io, [this] { purge(); }) {
  store_->on_reply = [this](std::int64_t id) {
    if (waiters_.count(id) && !running_.count(id)) fetch_replies({id});
  };
  store_->on_locks_lost = [this] { locks_lost(); };
  store_->on_requeued = [this](const std::string& group, std::int32_t shard, std::int64_t id) {
    requeued(group, shard, id);
  };
  entities_.on_shard_passivated = [this](const std::string& group, std::int32_t shard) {
    shard_passivated(group, shard);
  };
  entities_.state_store = store_.get();
}

persisted_messages::~persisted_messages() {
  entities_.on_shard_passivated = nullptr;
  entities_.state_store = nullptr;
  store_->stop();
}

void persisted_messages::start() {
  const auto every =
      std::clamp<milliseconds>(settings_.retention / 10, milliseconds(100), milliseconds(60000));
  purge_due_.at(steady_clock::now() + every);
}

void persisted_messages::stop() {
  if (stopped_) return;
  stopped_ = true;
  retry_.cancel();
  waiters_due_.cancel();
  purge_due_.cancel();
  scheduled_.clear();  // their messages stay stored: the shard's next holder replays them
  alone_.clear();
  alone_running_.clear();
  // Retriable: the caller's retry (same primary key) finds the message at its next owner.
  auto waiting = std::move(waiters_);
  waiters_.clear();
  waiter_count_ = 0;
  for (auto& [id, list] : waiting)
    for (auto& w : list) {
      if (w.control) w.control->on_cancel = nullptr;
      w.done(reply_msg::failure(errc::shutting_down, "runner is stopping"));
    }
  // Every state ends here at once: the store releases every lock as it stops.
  shards_.clear();
  held_shards_ = 0;
  store_->stop();  // finishes queued statements, then releases every lock
}

// --- shard states ----------------------------------------------------------------------

void persisted_messages::add(shard_key key) {
  shards_.emplace(std::move(key), shard_state::awaiting_lock);
}

void persisted_messages::enter(shard_map::iterator it, shard_state next) {
  const shard_state from = it->second;
  if (!may_move(from, next)) {
    spdlog::critical("shard {}/{}: no transition from {} to {}", it->first.first, it->first.second,
                     to_string(from), to_string(next));
    CLUSTER_ASSERT(false, "impossible shard state transition");
  }
  held_shards_ += locked(next);
  held_shards_ -= locked(from);
  it->second = next;
}

void persisted_messages::forget(shard_map::iterator it) {
  if (!may_move(it->second, std::nullopt)) {
    spdlog::critical("shard {}/{}: cannot be forgotten while {}", it->first.first, it->first.second,
                     to_string(it->second));
    CLUSTER_ASSERT(false, "impossible shard state transition");
  }
  held_shards_ -= locked(it->second);
  shards_.erase(it);
}

bool persisted_messages::holds(const std::string& group, std::int32_t shard) const {
  const auto current = state(group, shard);
  return current && locked(*current);
}

bool persisted_messages::suspended(const std::string& group, std::int32_t shard) const {
  const auto current = state(group, shard);
  return current == shard_state::suspended || current == shard_state::suspended_acquiring;
}

std::optional<shard_state> persisted_messages::state(std::string_view group,
                                                     std::int32_t shard) const {
  auto it = shards_.find(shard_ref{group, shard});
  if (it == shards_.end()) return std::nullopt;
  return it->second;
}

bool persisted_messages::runs_here(std::string_view group, std::int32_t shard) const {
  const auto current = state(group, shard);
  return current == shard_state::serving || current == shard_state::replaying ||
         current == shard_state::replay_failed;
}

void persisted_messages::set_wanted(const std::map<std::string, std::set<std::int32_t>>& wanted) {
  if (stopped_) return;
  const auto assigned = [&wanted](const shard_key& key) {
    auto group = wanted.find(key.first);
    return group != wanted.end() && group->second.count(key.second) > 0;
  };
  for (auto it = shards_.begin(); it != shards_.end();) {
    auto current = it++;
    if (assigned(current->first)) continue;
    if (locked(current->second)) {
      if (current->second != shard_state::releasing) enter(current, shard_state::releasing);
    } else {
      forget(current);  // a grant still in flight is released when it arrives
    }
  }
  for (const auto& [group, shards] : wanted) {
    for (auto shard : shards) {
      auto it = shards_.find(shard_ref{group, shard});
      if (it == shards_.end()) {
        add({group, shard});
      } else if (it->second == shard_state::releasing) {
        enter(it, shard_state::replaying);  // its messages may have moved meanwhile: read again
        replay(it->first, 0);
      }
    }
  }
  // Stop serving shards that moved away at once; their locks go once their entities are
  // passivated (shard_passivated), or now for those without any.
  entities_.evict_shards([this](const std::string& group, std::int32_t shard) {
    const auto current = state(group, shard);
    return current && *current != shard_state::releasing;
  });
  release_idle();
  sync_locks();
}

void persisted_messages::release_idle() {
  std::map<std::string, std::vector<std::int32_t>> release;
  for (auto it = shards_.begin(); it != shards_.end();) {
    auto current = it++;
    const auto& [group, shard] = current->first;
    if (current->second != shard_state::releasing || entities_.shard_active(group, shard)) continue;
    release[group].push_back(shard);
    forget(current);
  }
  for (auto& [group, shards] : release) store_->release(group, std::move(shards));
}

void persisted_messages::shard_passivated(const std::string& group, std::int32_t shard) {
  if (stopped_) return;
  auto it = shards_.find(shard_ref{group, shard});
  if (it == shards_.end() || it->second != shard_state::releasing) return;
  forget(it);
  store_->release(group, {shard});
}

void persisted_messages::sync_locks() {
  if (stopped_) return;
  std::map<std::string, std::vector<std::int32_t>> acquire;
  for (auto it = shards_.begin(); it != shards_.end(); ++it) {
    if (it->second == shard_state::awaiting_lock) {
      enter(it, shard_state::acquiring);
    } else if (it->second == shard_state::suspended) {
      enter(it, shard_state::suspended_acquiring);
    } else {
      continue;
    }
    acquire[it->first.first].push_back(it->first.second);
  }
  for (auto& [group, shards] : acquire)
    store_->acquire(group, shards,
                    [this, group = group, shards = shards](result<std::vector<std::int32_t>> held) {
                      acquired(group, shards, std::move(held));
                    });
}

void persisted_messages::acquired(const std::string& group, const std::vector<std::int32_t>& asked,
                                  result<std::vector<std::int32_t>> held) {
  if (stopped_) return;
  // A failure says nothing about other owners: suspended shards stay suspended.
  const bool reachable = held.has_value();
  static const std::vector<std::int32_t> none;
  const auto& granted = reachable ? held.value() : none;
  for (auto shard : granted) {
    auto it = shards_.find(shard_ref{group, shard});
    if (it == shards_.end()) {
      store_->release(group, {shard});  // no longer assigned here
      continue;
    }
    // Other states: an answer from before the locks were lost, or one asked twice.
    if (it->second != shard_state::acquiring && it->second != shard_state::suspended_acquiring)
      continue;
    enter(it, shard_state::replaying);
    replay(it->first, 0);
  }
  const std::set<std::int32_t> granted_set(granted.begin(), granted.end());
  std::set<std::int32_t> lost;
  bool retry_needed = false;
  for (auto shard : asked) {
    if (granted_set.count(shard)) continue;
    auto it = shards_.find(shard_ref{group, shard});
    if (it == shards_.end()) continue;
    if (it->second == shard_state::acquiring) {
      enter(it, shard_state::awaiting_lock);
      retry_needed = true;
    } else if (it->second == shard_state::suspended_acquiring) {
      if (reachable) {
        lost.insert(shard);
        enter(it, shard_state::awaiting_lock);
      } else {
        enter(it, shard_state::suspended);
      }
      retry_needed = true;
    }
  }
  if (!lost.empty()) {
    spdlog::warn(
        "{} shards of group '{}' are locked by another runner since the storage "
        "outage; passivating their entities",
        lost.size(), group);
    entities_.evict_shards(
        [&](const std::string& g, std::int32_t shard) { return g != group || !lost.count(shard); });
  }
  if (reachable) backoff_ = first_backoff;
  if (retry_needed) schedule_retry(reachable ? lock_retry_interval : storage_backoff());
  if (!reachable)
    spdlog::debug("shard locks of group '{}' not asked: {}", group, held.error().message);
}

milliseconds persisted_messages::storage_backoff() {
  const auto delay = backoff_;
  backoff_ = std::min(backoff_ * 2, max_backoff);
  return delay;
}

void persisted_messages::schedule_retry(milliseconds delay) {
  if (stopped_) return;
  retry_.at(steady_clock::now() + delay);
}

void persisted_messages::retry() {
  if (stopped_) return;
  for (auto it = shards_.begin(); it != shards_.end(); ++it) {
    if (it->second != shard_state::replay_failed) continue;
    enter(it, shard_state::replaying);
    replay(it->first, 0);
  }
  sync_locks();
}

void persisted_messages::locks_lost() {
  if (stopped_) return;
  ++lock_epoch_;
  // Scheduled messages are read again by the replay once the locks are back.
  for (const auto& [id, timer] : scheduled_) running_.erase(id);
  scheduled_.clear();
  std::size_t suspended = 0;
  for (auto it = shards_.begin(); it != shards_.end();) {
    auto current = it++;
    switch (current->second) {
      case shard_state::acquiring:
        enter(current, shard_state::awaiting_lock);
        break;
      case shard_state::suspended_acquiring:
        enter(current, shard_state::suspended);
        break;
      case shard_state::replaying:
      case shard_state::replay_failed:
      case shard_state::serving:
        // Nobody else can take these locks while the storage is away; entities stay active
        // (their in-memory state survives a database restart) unless another runner has
        // them on return.
        enter(current, shard_state::suspended);
        ++suspended;
        break;
      case shard_state::releasing:
        forget(current);  // the lock is gone already
        break;
      case shard_state::awaiting_lock:
      case shard_state::suspended:
        break;
    }
  }
  if (suspended > 0)
    spdlog::error(
        "lost the storage session: {} shards serve volatile calls only until their "
        "locks are back",
        suspended);
  schedule_retry(storage_backoff());
}

// --- messages --------------------------------------------------------------------------

void persisted_messages::replay(const shard_key& shard, std::int64_t after, std::size_t replayed) {
  store_->unprocessed(
      shard.first, shard.second, after,
      [this, shard, replayed,
       epoch = lock_epoch_](result<std::vector<persisted_message>> read) mutable {
        if (stopped_ || epoch != lock_epoch_) return;
        auto it = shards_.find(shard);
        // Released, moved or lost meanwhile: whoever holds the lock next replays.
        if (it == shards_.end() || it->second != shard_state::replaying) return;
        if (!read) {
          spdlog::warn("replay of shard {}/{} failed ({}); retrying", shard.first, shard.second,
                       read.error().message);
          enter(it, shard_state::replay_failed);
          schedule_retry(storage_backoff());
          return;
        }
        auto& batch = read.value();
        const std::size_t count = batch.size();
        std::int64_t last = 0;
        alone_run alone;
        // Entities with a suspect queued: their later messages queue behind it (entity order).
        std::set<std::pair<std::string_view, std::string_view>> held_back;
        for (auto& message : batch) {
          last = message.id;
          if (running_.count(message.id)) continue;
          ++replayed;
          if (message.suspect ||
              held_back.count({message.request.entity_type, message.request.entity_id})) {
            alone.queue.push_back(std::move(message));
            const auto& queued = alone.queue.back().request;  // deques keep elements in place
            held_back.insert({queued.entity_type, queued.entity_id});
            continue;
          }
          run(std::move(message));
        }
        const bool more = count >= settings_.batch_size;
        if (alone.queue.empty()) return replay_next(it, more, last, replayed);
        spdlog::warn(
            "shard {}/{}: {} stored messages were cut short before; running them one at a time",
            shard.first, shard.second, alone.queue.size());
        alone.generation = ++alone_generation_;
        alone.more = more;
        alone.last = last;
        alone.replayed = replayed;
        alone_.insert_or_assign(shard, std::move(alone));
        run_next_alone(shard);
      });
}

void persisted_messages::replay_next(shard_map::iterator it, bool more, std::int64_t last,
                                     std::size_t replayed) {
  if (more) return replay(it->first, last, replayed);
  enter(it, shard_state::serving);
  if (replayed > 0)
    spdlog::info("replayed {} stored messages of shard {}/{}", replayed, it->first.first,
                 it->first.second);
  // Last: the hook may submit messages or activate entities of the shard, now served here.
  if (on_shard_serving) {
    const shard_key key = it->first;
    on_shard_serving(key.first, key.second);
  }
}

void persisted_messages::run_next_alone(const shard_key& shard) {
  auto found = alone_.find(shard);
  if (found == alone_.end()) return;
  auto it = shards_.find(shard);
  if (stopped_ || it == shards_.end() || it->second != shard_state::replaying) {
    alone_.erase(found);  // whoever replays the shard next reads these again
    return;
  }
  auto& alone = found->second;
  while (!alone.queue.empty()) {
    auto message = std::move(alone.queue.front());
    alone.queue.pop_front();
    if (running_.count(message.id)) continue;
    const bool due = !message.request.deliver_at_ms || *message.request.deliver_at_ms <= unix_ms();
    if (!message.suspect) {
      if (!due) {  // its time orders it anyway
        run(std::move(message));
        continue;
      }
      alone_running_[message.id] = {shard, alone.generation};
      run(std::move(message));
      return;
    }
    const auto id = message.id;
    running_.insert(id);  // not replayed twice meanwhile
    alone_running_[id] = {shard, alone.generation};
    store_->next_attempt(id, std::nullopt,
                         [this, id, epoch = lock_epoch_](result<attempt_outcome> next) mutable {
                           if (stopped_) return;
                           if (epoch != lock_epoch_ || !next) {
                             if (!next)
                               spdlog::warn("message {} not counted ({}); left to a replay", id,
                                            next.error().message);
                             running_.erase(id);
                             alone_running_.erase(id);
                             return;
                           }
                           auto& outcome = next.value();
                           if (outcome.rerun) {
                             run(std::move(*outcome.rerun));
                             return;
                           }
                           not_run_again(id, outcome);
                         });
    return;
  }
  const bool more = alone.more;
  const auto last = alone.last;
  const auto replayed = alone.replayed;
  alone_.erase(found);
  replay_next(it, more, last, replayed);
}

void persisted_messages::not_run_again(std::int64_t id, const attempt_outcome& outcome) {
  running_.erase(id);
  if (outcome.dead_lettered) {
    spdlog::warn("message {} dead-lettered: {}", id, outcome.dead_lettered->message);
    answer(id, *outcome.dead_lettered);
  } else if (waiters_.count(id)) {
    fetch_replies({id});  // answered meanwhile (another runner ran it)
  }
  message_done(id);
}

void persisted_messages::message_done(std::int64_t id) {
  if (alone_running_.empty()) return;  // the common case: nothing runs alone
  auto it = alone_running_.find(id);
  if (it == alone_running_.end()) return;
  const auto [shard, generation] = std::move(it->second);
  alone_running_.erase(it);
  auto queue = alone_.find(shard);
  if (queue != alone_.end() && queue->second.generation == generation) run_next_alone(shard);
}

void persisted_messages::cut_short(std::int64_t id, std::string why) {
  store_->next_attempt(
      id, std::move(why), [this, id, epoch = lock_epoch_](result<attempt_outcome> next) mutable {
        if (stopped_) return;
        if (epoch != lock_epoch_) {  // the lock went meanwhile: its next holder replays it
          running_.erase(id);
          message_done(id);
          return;
        }
        if (!next) {
          spdlog::warn("attempt of message {} cut short and not counted ({}); left to a replay", id,
                       next.error().message);
          running_.erase(id);
          message_done(id);
          return;
        }
        auto& outcome = next.value();
        if (outcome.rerun) {
          // The plugin's process restarts meanwhile: 100 ms, doubling with every attempt.
          const int doublings = std::clamp(outcome.rerun->attempts - 2, 0, 5);
          run(std::move(*outcome.rerun), retry_first_backoff * (1 << doublings));
          return;
        }
        not_run_again(id, outcome);
      });
}

void persisted_messages::requeued(const std::string& group, std::int32_t shard, std::int64_t id) {
  if (stopped_ || running_.count(id) || !runs_here(group, shard)) return;
  running_.insert(id);
  store_->next_attempt(id, std::nullopt,
                       [this, id, epoch = lock_epoch_](result<attempt_outcome> next) mutable {
                         if (stopped_) return;
                         if (epoch == lock_epoch_ && next && next.value().rerun) {
                           spdlog::info("running replayed dead letter {}", id);
                           run(std::move(*next.value().rerun));
                           return;
                         }
                         running_.erase(id);
                         if (next && next.value().dead_lettered)
                           answer(id, *next.value().dead_lettered);
                       });
}

void persisted_messages::submit(const entity_address& address, std::uint32_t rpc_index,
                                request_msg request, steady_clock::time_point deadline,
                                entity_host::reply_callback done,
                                std::shared_ptr<request_control> control) {
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
  // Counted at insert when it runs right after it is stored; a replay counts the others.
  message.attempts = state(message.group, message.shard) == shard_state::serving ? 1 : 0;
  (void)rpc_index;
  store_->persist(message, [this, message, deadline, done = std::move(done),
                            control = std::move(control),
                            epoch = lock_epoch_](result<persist_outcome> stored) mutable {
    if (!stored) {
      done(reply_msg::failure(stored.error().code, std::move(stored.error().message)));
      return;
    }
    auto& outcome = stored.value();
    const bool discard = message.request.discard;
    if (outcome.reply) {  // a duplicate of a processed message: its reply, not a second run
      done(discard ? reply_msg::success({}) : std::move(*outcome.reply));
      return;
    }
    const auto current = epoch == lock_epoch_ ? state(message.group, message.shard) : std::nullopt;
    const bool here = current == shard_state::serving || current == shard_state::replaying ||
                      current == shard_state::replay_failed;
    if (outcome.inserted && !store_->shared() && !here) {
      // The shard moved while the message was stored, and its next owner cannot see this
      // store: the caller's retry (routers retry NotOwner) runs it there instead.
      done(reply_msg::failure(errc::not_owner, "shard moved away while the message was stored"));
      return;
    }
    // Interrupted while it was being stored: it is withdrawn below, before it can run.
    const bool interrupted_early = control && control->cancelled();
    if (discard && !interrupted_early) {
      // Stored: that is all its caller hears. Its outcome still goes to `done` (the runner
      // logs a failure), and nobody interrupts it any more.
      done(reply_msg::success({}));
      control.reset();
    }
    const auto now = steady_clock::now();
    const auto poll_at = now + std::max(settings_.poll_interval, min_poll_interval);
    if (control && !interrupted_early) {
      // The control outlives neither its waiter (unhooked when it leaves) nor this object
      // (stop answers and unhooks every waiter).
      control->on_cancel = [this, id = outcome.id, shard = shard_key{message.group, message.shard},
                            by = control.get()] { interrupted(id, shard, *by); };
    }
    waiters_[outcome.id].push_back(waiter{deadline, poll_at, std::move(done), control});
    ++waiter_count_;
    waiters_due_.at(std::min(deadline, poll_at));
    if (interrupted_early) interrupted(outcome.id, {message.group, message.shard}, *control);
    // While a shard replays, new messages run from the replay, in id order. A shard moving
    // away runs nothing new: its next owner replays the message.
    if (outcome.inserted && current == shard_state::serving && !running_.count(outcome.id)) {
      message.id = outcome.id;
      run(std::move(message));
    }
  });
}

void persisted_messages::run(persisted_message message, milliseconds backoff) {
  const std::int64_t id = message.id;
  // Read, or counted, before its interrupt was stored: withdraw's completion ends it.
  if (withdrawn_.count(id)) return;
  running_.insert(id);
  shard_key shard{std::move(message.group), message.shard};
  const auto delay = std::max<std::int64_t>(
      message.request.deliver_at_ms ? *message.request.deliver_at_ms - unix_ms() : 0,
      backoff.count());
  std::optional<shard_key> scheduled;  // deliver-at: the shard to check when the time comes
  if (delay > 0) scheduled = shard;
  auto deliver = [this, id, shard = std::move(shard), entity_shard = message.shard,
                  request = std::move(message.request)]() mutable {
    // Resolved when it runs, not when it was read: a plugin swapped in meanwhile serves it.
    const entity_type* type = registry_.find(request.entity_type);
    const auto rpc_index = type ? type->rpc_index(request.rpc) : std::nullopt;
    if (!rpc_index) {
      // Stored by a runner with other plugins, or its type was removed here: answer it
      // rather than replay it forever.
      finish(id, shard,
             reply_msg::failure(type ? errc::unknown_rpc : errc::unknown_entity_type,
                                "stored message for " + request.entity_type + "." + request.rpc +
                                    " has no handler on this runner"),
             hold_in_flight());
      return;
    }
    const entity_address address{type, request.entity_id, entity_shard};
    auto hold = hold_in_flight();
    // From here on an interrupt is the entity host's: it takes the message out of the
    // mailbox (answered Cancelled, which `finish` stores) or tells the running handler.
    auto control = std::make_shared<request_control>(io_, 0, /*discard=*/true, 0);
    control->persisted = true;
    control->has_deadline = false;
    handed_[id] = control;
    entities_.deliver(
        address, *rpc_index, std::move(request), steady_clock::time_point::max(),
        [this, id, shard, hold](reply_msg&& reply) mutable {
          finish(id, shard, std::move(reply), std::move(hold));
        },
        false,
        [this, id, shard, hold](reply_msg&& reply, state_write state,
                                std::function<void(result<void>)> committed) mutable {
          finish_with_state(id, shard, std::move(reply), std::move(state), std::move(hold),
                            std::move(committed));
        },
        std::move(control));
  };
  if (delay <= 0) {
    deliver();
    return;
  }
  // One timer per message (running_ keeps a message from running twice), owned here so that
  // stop() and the destructor cancel it.
  auto& timer = scheduled_[id];
  timer = std::make_unique<asio::steady_timer>(io_, milliseconds(delay));
  timer->async_wait([deliver = std::move(deliver), this, id, shard = std::move(*scheduled),
                     epoch = lock_epoch_](const error_code& ec) mutable {
    if (ec) return;  // cancelled: this object may be gone
    scheduled_.erase(id);
    if (stopped_ || epoch != lock_epoch_ || !runs_here(shard.first, shard.second)) {
      // The shard moved or its lock was lost meanwhile: its next holder replays the message.
      running_.erase(id);
      // A store only this runner sees cannot hand it over: its callers' routers retry
      // NotOwner with the same key at the new owner, which stores and runs it there.
      if (!stopped_ && !store_->shared())
        answer(id, reply_msg::failure(errc::not_owner, "shard moved away before it was due"));
      message_done(id);
      return;
    }
    deliver();
  });
}

void persisted_messages::finish(std::int64_t id, const shard_key& shard, reply_msg&& reply,
                                gate::holder hold) {
  if (reply.code == errc::not_owner) {
    // Refused before it ran (plugins cannot answer NotOwner): the runner was fenced. The
    // message stays stored, unprocessed, for the shard's holder to replay; the callers'
    // routers retry there with the same primary key and wait for that run.
    end_hand_off(id);
    running_.erase(id);
    answer(id, reply);
    message_done(id);
    return;
  }
  if (reply.attempt_cut_short()) {
    // Not its reply: the plugin's process died under it. Its callers keep waiting.
    spdlog::warn("message {} ({}/{}): {}; counting the attempt", id, shard.first, shard.second,
                 reply.message);
    if (withdraws_instead(end_hand_off(id), shard)) {
      withdraw(id, reply_msg::failure(errc::cancelled,
                                      "interrupted by the caller; its attempt was cut short "
                                      "and it does not run again"));
      return;
    }
    if (!stopped_) cut_short(id, std::move(reply.message));
    return;  // `hold` ends here: a graceful stop need not wait out the backoff
  }
  ++storing_;
  // Callers wait where the shard is served: here, unless it moved away while this ran (a
  // retry may then wait at the new owner). A move this runner has not heard of yet leaves
  // that caller to the reply polling.
  const bool moved = !runs_here(shard.first, shard.second);
  store_->complete(id, reply, moved,
                   [this, id, reply, hold = std::move(hold)](result<void> stored) mutable {
                     --storing_;
                     end_hand_off(id);
                     running_.erase(id);
                     if (!stored)
                       spdlog::warn("reply of message {} not stored ({}); it will run again", id,
                                    stored.error().message);
                     answer(id, reply);
                     hold.release();
                     message_done(id);
                   });
}

void persisted_messages::finish_with_state(std::int64_t id, const shard_key& shard,
                                           reply_msg&& reply, state_write state, gate::holder hold,
                                           std::function<void(result<void>)> committed) {
  if (reply.code == errc::not_owner || reply.attempt_cut_short()) {
    // Not a handler's reply (it never ran, or its process died): no state goes with it.
    committed(failure{errc::state_conflict, "the handler's run did not complete"});
    return finish(id, shard, std::move(reply), std::move(hold));
  }
  ++storing_;
  const bool moved = !runs_here(shard.first, shard.second);
  store_->complete_with_state(
      id, reply, moved, std::move(state),
      [this, id, shard, reply, hold = std::move(hold),
       committed = std::move(committed)](result<void> stored) mutable {
        --storing_;
        const auto handed = end_hand_off(id);
        running_.erase(id);
        // The entity first: its next message runs on what is stored now.
        committed(stored);
        if (stored) {
          answer(id, reply);
        } else {
          // Nothing of this run is stored (reply, processed mark, state): the message is
          // still pending, so its effect on the state happens once, in a later run.
          spdlog::warn("message {} ({}/{}): its state was not written ({}); it runs again", id,
                       shard.first, shard.second, stored.error().message);
          if (withdraws_instead(handed, shard)) {
            running_.insert(id);
            hold.release();
            return withdraw(id, reply_msg::failure(errc::cancelled,
                                                   "interrupted by the caller; its run did not "
                                                   "commit and it does not run again"));
          }
          answer(id, reply_msg::failure(errc::not_owner, "state changed elsewhere; retry"));
          if (!stopped_ && runs_here(shard.first, shard.second)) {
            // Still this shard's holder: run it again (a new activation reads the stored
            // state), counted like an attempt cut short. A retry with the same key waits.
            running_.insert(id);
            hold.release();
            return cut_short(id, "its state write was refused: " + stored.error().message);
          }
        }
        hold.release();
        message_done(id);
      });
}

void persisted_messages::interrupted(std::int64_t id, const shard_key& shard,
                                     const request_control& by) {
  if (stopped_) return;
  if (auto it = handed_.find(id); it != handed_.end()) {
    // A copy: the cancel may answer the message at once, which ends its hand-off.
    const auto control = it->second;
    control->cancel(by.cancel_code(), by.cancel_reason());
    return;
  }
  if (!holds(shard.first, shard.second)) {
    // Another runner may run it (the shard moved, or its lock went with the storage
    // session): withdrawing it is not this runner's to do. Only this caller stops waiting.
    auto list = waiters_.find(id);
    if (list == waiters_.end()) return;
    const auto mine = std::find_if(list->second.begin(), list->second.end(),
                                   [&by](const waiter& w) { return w.control.get() == &by; });
    if (mine == list->second.end()) return;
    auto done = std::move(mine->done);
    list->second.erase(mine);
    --waiter_count_;
    if (list->second.empty()) waiters_.erase(list);
    // Posted: the caller's reply may release the control whose cancel runs this.
    asio::post(io_, [done = std::move(done)]() mutable {
      done(reply_msg::failure(errc::cancelled,
                              "interrupted; the stored message may still run where its shard is "
                              "served"));
    });
    return;
  }
  withdraw(id, reply_msg::failure(errc::cancelled, "interrupted by the caller before it ran"));
}

void persisted_messages::withdraw(std::int64_t id, reply_msg reply) {
  if (!withdrawn_.insert(id).second) return;  // its reply is being stored already
  scheduled_.erase(id);                       // a deliver-at or backoff wait ends with its timer
  ++storing_;
  // Announced: a caller with its primary key may wait at another runner.
  store_->complete(id, reply, true, [this, id, reply](result<void> stored) {
    --storing_;
    withdrawn_.erase(id);
    if (stopped_) return;
    // Read before the reply was stored and not run yet: never run now.
    drop_from_alone(id);
    running_.erase(id);
    if (stored) {
      answer(id, reply);
    } else {
      // Still pending: whoever replays the shard next runs it.
      spdlog::warn("interrupt of message {} not stored ({}); it will run", id,
                   stored.error().message);
      answer(id, reply_msg::failure(errc::storage_error, "the interrupt could not be stored (" +
                                                             stored.error().message +
                                                             "): the message may still run"));
    }
    message_done(id);
  });
}

void persisted_messages::drop_from_alone(std::int64_t id) {
  for (auto& [shard, alone] : alone_)
    std::erase_if(alone.queue, [id](const persisted_message& m) { return m.id == id; });
}

std::shared_ptr<request_control> persisted_messages::end_hand_off(std::int64_t id) {
  auto it = handed_.find(id);
  if (it == handed_.end()) return nullptr;
  auto control = std::move(it->second);
  handed_.erase(it);
  return control;
}

bool persisted_messages::withdraws_instead(const std::shared_ptr<request_control>& handed,
                                           const shard_key& shard) const {
  // Its run did not count, and a caller asked it to stop: it is not started again.
  return handed && handed->cancelled() && !stopped_ && holds(shard.first, shard.second);
}

void persisted_messages::answer(std::int64_t id, const reply_msg& reply) {
  auto it = waiters_.find(id);
  if (it == waiters_.end()) return;
  auto list = std::move(it->second);
  waiters_.erase(it);
  waiter_count_ -= list.size();
  for (auto& w : list) {
    if (w.control) w.control->on_cancel = nullptr;
    w.done(reply_msg(reply));
  }
}

void persisted_messages::fetch_replies(std::vector<std::int64_t> ids) {
  store_->replies(std::move(ids), [this](result<std::map<std::int64_t, reply_msg>> found) {
    if (!found) return;  // the waiters poll again later
    for (auto& [id, reply] : found.value()) answer(id, reply);
  });
}

void persisted_messages::check_waiters() {
  if (stopped_) return;
  const auto now = steady_clock::now();
  const auto poll_every = std::max(settings_.poll_interval, min_poll_interval);
  auto next = steady_clock::time_point::max();
  std::vector<std::int64_t> poll;
  // Answered after the walk: a caller's callback may submit again.
  std::vector<entity_host::reply_callback> expired;
  for (auto it = waiters_.begin(); it != waiters_.end();) {
    auto& list = it->second;
    bool due = false;
    for (auto w = list.begin(); w != list.end();) {
      if (w->deadline <= now) {
        if (w->control) w->control->on_cancel = nullptr;
        expired.push_back(std::move(w->done));
        w = list.erase(w);
        --waiter_count_;
        continue;
      }
      if (w->next_poll <= now) {
        due = true;
        w->next_poll = now + poll_every;
      }
      next = std::min({next, w->deadline, w->next_poll});
      ++w;
    }
    // A message running here answers its waiters when it is stored.
    if (due && !running_.count(it->first)) poll.push_back(it->first);
    it = list.empty() ? waiters_.erase(it) : std::next(it);
  }
  if (!poll.empty()) fetch_replies(std::move(poll));  // ids in order, each once
  if (next != steady_clock::time_point::max()) waiters_due_.at(next);
  for (auto& done : expired)
    done(reply_msg::failure(errc::deadline_exceeded,
                            "stored, not yet processed; retry with the same key"));
}

void persisted_messages::purge() {
  if (stopped_) return;
  store_->purge([this](result<std::size_t> purged) {
    if (purged && purged.value() > 0)
      spdlog::info("purged {} processed messages past retention", purged.value());
    if (stopped_) return;
    // The next round once this one is done: purges never pile up behind a slow store.
    const auto every =
        std::clamp<milliseconds>(settings_.retention / 10, milliseconds(100), milliseconds(60000));
    purge_due_.at(steady_clock::now() + every);
  });
}

}  // namespace cluster::host
