#include "cluster/host/entity_host.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>

#include "cluster/host/host_services.hpp"
#include "cluster/protocol/assert.hpp"
#include "cluster/trace/trace.hpp"

namespace cluster::host {

// The host side of a cluster_call_context: one per running request, and one on the stack
// while `create` runs (`creating`; then `done` is empty and calls are refused).
struct entity_host::invocation {
  entity_host* host;
  slot_key key;
  std::string rpc;
  cluster_call_context ctx{};
  reply_callback done;
  bool creating = false;
  std::string* creation_error = nullptr;  // while creating: the last error the plugin logged
  state_commit commit;                    // persisted messages of stateful types
  bool read_only = false;
  bool shared = false;             // runs beside other read-only calls (concurrency)
  bool state_set = false;          // the handler called set_state
  std::optional<bytes> new_state;  // what it set (nullopt: clear)
  std::string state_refused;       // why its set_state is refused (a Defect replaces the reply)
  /// The request's link to its caller (streamed items, cancellation); null for requests
  /// without one (persisted replays, entity-to-entity calls from this runner).
  std::shared_ptr<request_control> control;
  bool streams = false;        // the RPC is declared streaming
  std::string stream_refused;  // why a stream_write was refused (a Defect replaces the reply)
  stop_signal cancel;          // fires the handler's sleeps when its request is cancelled
  /// The request's trace context: the handler's calls to other entities continue it, and
  /// its log lines carry the trace id.
  std::string traceparent;
  /// A call the handler made to another entity, until it completes or the request is
  /// cancelled (then it completes at once and its late reply is dropped).
  struct outbound {
    cluster_call_done_fn done;
    void* user;
    bool completed = false;
  };
  std::vector<std::shared_ptr<outbound>> calls;

  bool is_cancelled() const { return control && control->cancelled(); }

  void bind(const slot& s) {
    ctx = cluster_call_context{};
    ctx.struct_size = sizeof(cluster_call_context);
    ctx.shard = s.shard;
    ctx.entity_type = s.type->info.name.c_str();
    ctx.entity_id = key.second.c_str();
    ctx.shard_group = s.type->info.group.c_str();
    ctx.rpc = rpc.c_str();
    ctx.api = &api;
    ctx.host_ctx = this;
    if (host->fencing_token) ctx.fencing_token = host->fencing_token(s.type->info.group, s.shard);
  }

  static void log(void* host_ctx, std::int32_t level, const char* message) {
    auto* self = static_cast<invocation*>(host_ctx);
    const trace::scoped_trace_id logged(trace::trace_id_of(self->traceparent));
    log_for_plugin(self->key.first, self->key.second, level, message);
    if (self->creation_error != nullptr && level >= 3 && message != nullptr)
      *self->creation_error = message;
  }

  static std::int64_t now_ms(void*) { return unix_now_ms(); }

  static void call(void* host_ctx, const char* entity_type, const char* entity_id, const char* rpc,
                   const std::uint8_t* payload, std::size_t size, const char* primary_key,
                   cluster_call_done_fn done, void* user) {
    auto* self = static_cast<invocation*>(host_ctx);
    if (self->creating) {
      // The entity does not exist yet: nothing could deliver the reply to it.
      asio::post(self->host->io_, [done, user] {
        done(user, CLUSTER_STATUS_CALL_FAILED, "InvalidRequest",
             "an entity cannot call other entities from its constructor", nullptr, 0);
      });
      return;
    }
    call_out(self, entity_type, entity_id, rpc, payload, size, primary_key, done, user, false);
  }

  static void send(void* host_ctx, const char* entity_type, const char* entity_id, const char* rpc,
                   const std::uint8_t* payload, std::size_t size, const char* primary_key,
                   cluster_call_done_fn done, void* user) {
    auto* self = static_cast<invocation*>(host_ctx);
    if (self->creating) {
      if (done == nullptr) return;
      asio::post(self->host->io_, [done, user] {
        done(user, CLUSTER_STATUS_CALL_FAILED, "InvalidRequest",
             "an entity cannot send to other entities from its constructor", nullptr, 0);
      });
      return;
    }
    call_out(self, entity_type, entity_id, rpc, payload, size, primary_key, done, user, true);
  }

  static void call_out(invocation* self, const char* entity_type, const char* entity_id,
                       const char* rpc, const std::uint8_t* payload, std::size_t size,
                       const char* primary_key, cluster_call_done_fn done, void* user,
                       bool discard) {
    request_msg request;
    request.entity_type = entity_type ? entity_type : "";
    request.entity_id = entity_id ? entity_id : "";
    request.rpc = rpc ? rpc : "";
    request.payload.assign(payload, payload + size);
    if (primary_key != nullptr) request.primary_key = primary_key;
    request.discard = discard;
    request.traceparent = self->traceparent;
    auto& io = self->host->io_;
    auto pending = std::make_shared<outbound>(outbound{done, user});
    if (self->is_cancelled()) {
      pending->completed = true;
      if (done != nullptr) asio::post(io, [done, user] { complete_cancelled(done, user); });
      return;
    }
    if (done != nullptr) {
      std::erase_if(self->calls, [](const auto& call) { return call->completed; });
      self->calls.push_back(pending);
    }
    const std::string what = request.entity_type + "." + request.rpc;
    self->host->call_out_(std::move(request), [&io, pending, what](reply_msg&& reply) {
      // The ABI promises `done` never runs inside `call`: always resume from the loop.
      asio::post(io, [pending, what, reply = std::move(reply)] {
        if (pending->completed) return;  // cancelled meanwhile: completed already
        pending->completed = true;
        if (pending->done == nullptr) {
          if (!reply.ok()) spdlog::debug("send to {} not accepted: {}", what, reply.message);
          return;
        }
        const std::int32_t status = reply.ok() ? CLUSTER_STATUS_OK
                                    : reply.code == errc::application_error
                                        ? CLUSTER_STATUS_APPLICATION_ERROR
                                        : CLUSTER_STATUS_CALL_FAILED;
        pending->done(pending->user, status, reply.ok() ? nullptr : reply.error.c_str(),
                      reply.ok() ? nullptr : reply.message.c_str(), reply.payload.data(),
                      reply.payload.size());
      });
    });
  }

  static void complete_cancelled(cluster_call_done_fn done, void* user) {
    done(user, CLUSTER_STATUS_CALL_FAILED, "Cancelled", "the calling request was cancelled",
         nullptr, 0);
  }

  /// The request was cancelled: sleeps end, pending calls complete, a plugin's process is told.
  void cancelled_now() {
    cancel.request();
    for (auto& call : calls) {
      if (call->completed) continue;
      call->completed = true;
      asio::post(host->io_,
                 [done = call->done, user = call->user] { complete_cancelled(done, user); });
    }
    calls.clear();
  }

  static void stream_write(void* host_ctx, const std::uint8_t* data, std::size_t size,
                           void (*ready)(void*), void* user) {
    auto* self = static_cast<invocation*>(host_ctx);
    auto& io = self->host->io_;
    if (self->creating || !self->done || !self->streams) {
      if (!self->creating && self->stream_refused.empty())
        self->stream_refused = "stream_write outside a streaming RPC (" + self->key.first + "." +
                               self->rpc + " is not declared CLUSTER_RPC_STREAM)";
      asio::post(io, [ready, user] { ready(user); });
      return;
    }
    if (!self->control) {
      // Nobody streams from it (an entity-to-entity call): the items are dropped.
      asio::post(io, [ready, user] { ready(user); });
      return;
    }
    self->control->write(bytes(data, data + size), [ready, user] { ready(user); });
  }

  static std::int32_t cancelled(void* host_ctx) {
    return static_cast<invocation*>(host_ctx)->is_cancelled() ? 1 : 0;
  }

  static void sleep(void* host_ctx, std::int64_t delay_ms, void (*fire)(void*), void* user) {
    auto* self = static_cast<invocation*>(host_ctx);
    auto& entities = self->host->entities_;
    if (auto it = entities.find(self->key); it != entities.end() && !self->creating) {
      // Ended early by a stop of the entity or a cancel of this request, whichever first.
      auto timer = std::make_shared<asio::steady_timer>(self->host->io_);
      timer->expires_after(milliseconds(std::max<std::int64_t>(0, delay_ms)));
      timer->async_wait([timer, fire, user](const error_code&) { fire(user); });
      it->second.stop.track(timer);
      self->cancel.track(timer);
    } else {
      fire_after(self->host->io_, delay_ms, fire, user);  // inside the constructor
    }
  }

  static std::int32_t stop_requested(void* host_ctx) {
    auto* self = static_cast<invocation*>(host_ctx);
    const auto& entities = self->host->entities_;
    const auto it = entities.find(self->key);
    return self->host->stopped_ || (it != entities.end() && it->second.stop.requested()) ? 1 : 0;
  }

  static void set_state(void* host_ctx, const std::uint8_t* data, std::size_t size,
                        std::uint32_t flags) {
    auto* self = static_cast<invocation*>(host_ctx);
    if (self->creating || !self->done) {
      self->state_refused = "set_state is only valid inside a handler";
    } else if (!stateful(*self)) {
      self->state_refused = "set_state on entity type '" + self->key.first +
                            "', which does not declare CLUSTER_ENTITY_STATEFUL";
    } else if (self->read_only) {
      self->state_refused = "set_state inside read-only RPC " + self->key.first + "." + self->rpc;
    }
    if (!self->state_refused.empty()) return;
    self->state_set = true;
    if ((flags & CLUSTER_STATE_CLEAR) != 0) {
      self->new_state.reset();
    } else {
      self->new_state.emplace(data, data + size);
    }
  }

  static bool stateful(const invocation& self) {
    auto it = self.host->entities_.find(self.key);
    return it != self.host->entities_.end() && it->second.state != nullptr;
  }

  static void on_reply(void* reply_ctx, std::int32_t status, const char* tag, const char* message,
                       const std::uint8_t* data, std::size_t size) {
    auto* self = static_cast<invocation*>(reply_ctx);
    const std::string tag_text = tag ? tag : "";
    const std::string message_text = message ? message : "";
    reply_msg reply;
    switch (status) {
      case CLUSTER_STATUS_OK:
        reply = reply_msg::success(bytes(data, data + size));
        break;
      case CLUSTER_STATUS_APPLICATION_ERROR:
        reply.code = errc::application_error;
        reply.error = tag_text.empty() ? "ApplicationError" : tag_text;
        reply.message = message_text;
        break;
      case CLUSTER_STATUS_CANCELLED:
        // The caller learns why: interrupted, gone, or out of time.
        reply = self->is_cancelled() ? reply_msg::failure(self->control->cancel_code(),
                                                          self->control->cancel_reason())
                                     : reply_msg::failure(errc::cancelled, message_text);
        break;
      case host_status_crashed:
        reply = reply_msg::crashed(message_text);
        break;
      case host_status_not_run:
        reply = reply_msg::failure(errc::not_owner, message_text);
        break;
      case host_status_activation_failed:
        reply = reply_msg::failure(errc::defect, message_text);
        self->host->activation_failed(self->key);
        break;
      case CLUSTER_STATUS_BAD_PAYLOAD:
        reply = reply_msg::failure(errc::bad_payload, "payload does not decode as " +
                                                          self->key.first + "." + self->rpc +
                                                          "'s request: " + message_text);
        break;
      default:
        spdlog::warn("{}/{} {} failed: {}", self->key.first, self->key.second, self->rpc,
                     message_text);
        reply = reply_msg::failure(errc::defect, message_text);
        break;
    }
    self->host->finish(self, std::move(reply));
  }

  static const cluster_host_api api;
};

const cluster_host_api entity_host::invocation::api = {
    sizeof(cluster_host_api),
    0,
    &entity_host::invocation::log,
    &entity_host::invocation::call,
    &entity_host::invocation::now_ms,
    &entity_host::invocation::sleep,
    &entity_host::invocation::set_state,
    &entity_host::invocation::stop_requested,
    &entity_host::invocation::stream_write,
    &entity_host::invocation::cancelled,
    &entity_host::invocation::send,
};

namespace {
bool declares_state(const entity_type& type) {
  return ((type.descriptor.flags | type.info.options.flags) & CLUSTER_ENTITY_STATEFUL) != 0;
}
}  // namespace

entity_host::entity_host(asio::io_context& io, entity_host_options options, outbound_call call_out)
    : io_(io),
      options_(options),
      call_out_(std::move(call_out)),
      sweep_timer_(io),
      watch_(options.handler_timeout) {
  asio::co_spawn(io_, sweep_loop(), asio::detached);
}

entity_host::~entity_host() {
  for (auto& [key, s] : entities_)
    if (!s.busy && s.instance != nullptr) s.type->destroy(s.instance);
  // (No watch here: the runner is going away.)
}

void entity_host::deliver(const entity_address& address, std::uint32_t rpc_index,
                          request_msg request, steady_clock::time_point deadline,
                          reply_callback done, bool bounded, state_commit commit,
                          std::shared_ptr<request_control> control) {
  if (stopped_) {
    done(reply_msg::failure(errc::shutting_down, "runner is stopping"));
    return;
  }
  slot_key key{address.type->info.name, address.entity_id};
  auto found = find_or_activate(key, address);
  if (!found) {
    done(reply_msg::failure(found.error().code, found.error().message));
    return;
  }
  auto it = found.value();
  slot& s = it->second;
  s.evict = false;
  if (bounded && s.mailbox.size() >= mailbox_capacity(s)) {
    done(reply_msg::failure(errc::mailbox_full, "mailbox of " + key.first + "/" + key.second +
                                                    " holds " + std::to_string(s.mailbox.size()) +
                                                    " messages (limit)"));
    return;
  }
  if (control) {
    // Until it starts, an interrupt takes it out of the mailbox.
    control->on_cancel = [this, key, raw = control.get()] { cancel_queued(key, raw); };
  }
  s.mailbox.push_back(message{rpc_index, std::move(request), deadline, std::move(done),
                              std::move(commit), std::move(control)});
  if (!s.busy) run_next(key);
}

result<void> entity_host::activate_now(const entity_address& address) {
  if (stopped_) return failure{errc::shutting_down, "runner is stopping"};
  const slot_key key{address.type->info.name, address.entity_id};
  auto found = find_or_activate(key, address);
  if (!found) return found.error();
  slot& s = found.value()->second;
  s.evict = false;
  // A stateful one without a message: its state is read, then it is created.
  if (s.state && s.instance == nullptr && !s.busy) load_and_activate(key);
  return success();
}

result<std::map<entity_host::slot_key, entity_host::slot>::iterator> entity_host::find_or_activate(
    const slot_key& key, const entity_address& address) {
  auto it = entities_.find(key);
  if (it != entities_.end()) return it;
  slot fresh;
  fresh.type = address.type->retired && resolve_type ? resolve_type(key.first)
                                                     : address.type->shared_from_this();
  if (fresh.type == nullptr || fresh.type->retired) {
    return failure{errc::unknown_entity_type,
                   "entity type '" + key.first + "' was removed from this runner"};
  }
  fresh.id = address.entity_id;
  fresh.shard = address.shard;
  if (declares_state(*fresh.type)) {
    // Activated once its state is read (run_next, activate_now): messages queue meanwhile.
    fresh.state = std::make_unique<entity_state>();
  } else if (std::string why; !activate(key, fresh, why, nullptr)) {
    return failure{errc::defect, why};
  }
  ++activations_;
  ++active_per_shard_[{fresh.type->info.group, address.shard}];
  fresh.last_active = steady_clock::now();
  auto active = entities_.emplace(key, std::move(fresh)).first;
  if (on_activated) on_activated(*active->second.type, active->second.id, active->second.shard);
  return active;
}

void entity_host::run_next(const slot_key& key) {
  auto it = entities_.find(key);
  if (it == entities_.end()) return;
  slot& s = it->second;
  while ((!s.busy || may_share(s)) && !s.mailbox.empty()) {
    if (!s.busy && s.type->retired && !s.evict && !move_on(it)) return;
    message next = std::move(s.mailbox.front());
    s.mailbox.pop_front();
    if (next.control && next.control->cancelled()) {
      next.done(reply_msg::failure(next.control->cancel_code(), next.control->cancel_reason()));
      continue;
    }
    if (steady_clock::now() >= next.deadline) {
      // The caller gave up already: running it would only waste the entity's time.
      next.done(reply_msg::failure(errc::deadline_exceeded, "expired in the mailbox"));
      continue;
    }
    if (may_run && !may_run(s.type->info.group, s.shard)) {
      next.done(reply_msg::failure(errc::not_owner, "the runner stopped serving shard " +
                                                        std::to_string(s.shard) + " of group '" +
                                                        s.type->info.group + "'"));
      continue;
    }
    if (s.instance == nullptr) {
      if (s.state) {
        // First message, a dropped activation or a lost process: read the state first.
        s.mailbox.push_front(std::move(next));
        load_and_activate(key);
        return;
      }
      // Its plugin's process ended since the last message: a new activation, in the next one.
      std::string why;
      if (!activate(key, s, why, nullptr)) {
        next.done(reply_msg::failure(errc::defect, why));
        continue;
      }
    }
    const bool read_only = (s.type->rpcs[next.rpc_index].flags & CLUSTER_RPC_READ_ONLY) != 0;
    // A read-only call of a type with concurrency > 1 may be joined by more of them.
    const bool shared = read_only && s.type->info.options.concurrency > 1;
    if (!s.busy && !s.evict && !stopped_) s.stop.reset();
    s.busy = true;
    if (shared) ++s.shared_calls;
    auto* call = new invocation{this, key, next.request.rpc, {}, std::move(next.done)};
    call->commit = std::move(next.commit);
    call->read_only = read_only;
    call->shared = shared;
    call->streams = s.type->streams(next.rpc_index);
    call->traceparent = std::move(next.request.traceparent);
    call->bind(s);
    if (next.control) {
      call->control = std::move(next.control);
      call->control->on_cancel = [this, call] { cancel_running(call); };
    }
    const bool watched = watch_.enabled() && !s.type->process;
    if (watched) watch_.enter(key.first, key.second, call->rpc);
    const auto type = s.type;  // `s` may be gone once `handle` returns
    void* const instance = s.instance;
    const bool stopping = s.stop.requested();
    type->handle(instance, next.rpc_index, next.request.payload.data(), next.request.payload.size(),
                 &call->ctx, &invocation::on_reply, call);
    if (watched) watch_.leave();
    // A plugin's process starts each handler without a stop: repeat one that stands.
    if (stopping && type->process) type->process->request_stop(instance);
    // The reply (maybe already sent) schedules the next message; a shared call lets the
    // next read-only one start beside it now.
    if (shared) asio::post(io_, [this, key] { run_next(key); });
    return;
  }
  // A retired type's instance goes as soon as it is idle (its version may then unload).
  if (!s.busy && s.mailbox.empty() && (s.evict || stopped_ || s.type->retired)) passivate(it);
}

bool entity_host::may_share(const slot& s) const {
  if (s.shared_calls == 0 || s.shared_calls >= s.type->info.options.concurrency ||
      s.mailbox.empty() || s.instance == nullptr || s.type->retired || s.evict || stopped_)
    return false;
  const auto& next = s.mailbox.front();
  return next.rpc_index < s.type->rpcs.size() &&
         (s.type->rpcs[next.rpc_index].flags & CLUSTER_RPC_READ_ONLY) != 0;
}

void entity_host::cancel_queued(const slot_key& key, const request_control* control) {
  auto it = entities_.find(key);
  if (it == entities_.end()) return;
  auto& mailbox = it->second.mailbox;
  const auto queued = std::find_if(mailbox.begin(), mailbox.end(), [control](const message& m) {
    return m.control.get() == control;
  });
  if (queued == mailbox.end()) return;
  auto done = std::move(queued->done);
  mailbox.erase(queued);
  done(reply_msg::failure(control->cancel_code(), control->cancel_reason()));
}

void entity_host::cancel_running(invocation* call) {
  spdlog::info("{}/{} {}: cancelled ({})", call->key.first, call->key.second, call->rpc,
               call->control->cancel_reason());
  call->cancelled_now();
  auto it = entities_.find(call->key);
  if (it == entities_.end()) return;
  // In its own process the handler is told there (its sleeps and calls end there).
  if (const auto& process = it->second.type->process) process->cancel(call);
}

void entity_host::finish(invocation* call, reply_msg&& reply) {
  const slot_key key = call->key;
  if (call->control) call->control->on_cancel = nullptr;
  if (!call->stream_refused.empty() && reply.ok())
    reply = reply_msg::failure(errc::defect, call->stream_refused);
  auto done = std::move(call->done);
  if (call->shared) {
    auto it = entities_.find(key);
    if (it != entities_.end() && it->second.shared_calls > 0 && --it->second.shared_calls > 0) {
      // Others still read: the entity stays busy; a waiting reader may start now.
      delete call;
      done(std::move(reply));
      asio::post(io_, [this, key] { run_next(key); });
      return;
    }
  }
  if (!call->state_set && call->state_refused.empty()) {
    // Every call of a type without state, and those that set none: nothing to write.
    delete call;
    done(std::move(reply));
    idle_again(key);
    return;
  }
  std::unique_ptr<invocation> ended(call);
  if (!ended->state_refused.empty()) {
    spdlog::warn("{}/{} {}: {}", key.first, key.second, ended->rpc, ended->state_refused);
    if (auto it = entities_.find(key); it != entities_.end()) drop_activation(it->second);
    done(reply_msg::failure(errc::defect, ended->state_refused));
    idle_again(key);
    return;
  }
  commit_state(key, std::move(reply), std::move(done), std::move(ended->commit),
               std::move(ended->new_state));
}

void entity_host::idle_again(const slot_key& key) {
  auto it = entities_.find(key);
  if (it == entities_.end()) return;
  it->second.busy = false;
  it->second.last_active = steady_clock::now();
  // Posted, not called: a long mailbox of synchronous handlers must not grow the stack.
  asio::post(io_, [this, key] { run_next(key); });
}

void entity_host::commit_state(const slot_key& key, reply_msg&& reply, reply_callback done,
                               state_commit commit, std::optional<bytes> data) {
  auto it = entities_.find(key);
  CLUSTER_ASSERT(it != entities_.end() && it->second.state, "a busy stateful entity has a slot");
  slot& s = it->second;
  if (data && options_.max_state_bytes > 0 && data->size() > options_.max_state_bytes) {
    const std::string why = "state of " + key.first + "/" + key.second + " is " +
                            std::to_string(data->size()) +
                            " bytes, over storage.max_state_bytes (" +
                            std::to_string(options_.max_state_bytes) + "); nothing was stored";
    spdlog::warn("{}", why);
    drop_activation(s);
    done(reply_msg::failure(errc::defect, why));
    idle_again(key);
    return;
  }
  const std::int64_t expected = s.state->version;
  state_write write{key.first, key.second, expected, std::move(data)};
  // After the write: the version it made, or (refused, failed) an activation that no longer
  // matches storage. False when this host or the slot is gone.
  auto written = [this, alive = std::weak_ptr<int>(alive_), key,
                  expected](const result<void>& outcome) {
    if (alive.expired()) return false;
    auto found = entities_.find(key);
    if (found == entities_.end()) return false;
    slot& entity = found->second;
    if (outcome) {
      entity.state->version = expected + 1;
      entity.state->unsaved.reset();
    } else {
      spdlog::warn("state of {}/{} not written ({}); dropping the activation", key.first,
                   key.second, outcome.error().message);
      drop_activation(entity);
    }
    return true;
  };
  if (commit) {
    commit(std::move(reply), std::move(write),
           [this, key, written = std::move(written)](result<void> outcome) {
             if (written(outcome)) idle_again(key);
           });
    return;
  }
  if (!options_.save_state_on_reply) {
    s.state->unsaved = std::move(write.data);
    done(std::move(reply));
    idle_again(key);
    return;
  }
  if (state_store == nullptr) {
    drop_activation(s);
    done(reply_msg::failure(errc::storage_error, "this runner has no store for entity state"));
    idle_again(key);
    return;
  }
  state_store->save_state(
      std::move(write), [this, key, written = std::move(written), reply = std::move(reply),
                         done = std::move(done)](result<void> outcome) mutable {
        const bool alive = written(outcome);
        if (outcome) {
          done(std::move(reply));
        } else {
          done(reply_msg::failure(errc::not_owner, "state changed elsewhere; retry"));
        }
        if (alive) idle_again(key);
      });
}

void entity_host::drop_activation(slot& s) {
  if (s.instance != nullptr) {
    s.type->destroy(s.instance);
    s.instance = nullptr;
    ++passivations_;
  }
  if (s.state) {
    s.state->loaded = false;
    s.state->unsaved.reset();
  }
}

void entity_host::load_and_activate(const slot_key& key) {
  auto it = entities_.find(key);
  if (it == entities_.end()) return;
  slot& s = it->second;
  const auto activate_from = [this, key](const std::optional<bytes>& data) {
    auto found = entities_.find(key);
    if (found == entities_.end()) return;
    slot& entity = found->second;
    entity.busy = false;
    if (stopped_ && entity.mailbox.empty()) return passivate(found);
    std::string why;
    if (!activate(key, entity, why, &data)) {
      spdlog::warn("{}", why);
      entity.state->loaded = false;
      return fail_queued(found, reply_msg::failure(errc::defect, why));
    }
    run_next(key);
  };
  s.busy = true;  // nothing runs, nothing passivates it until its state is there
  if (s.state->unsaved) {
    // Its plugin's process ended with a state not written yet: that is the newest.
    const auto data = *s.state->unsaved;
    return activate_from(data);
  }
  if (state_store == nullptr) {
    s.busy = false;
    return fail_queued(
        it, reply_msg::failure(errc::storage_error, "this runner has no store for entity state"));
  }
  state_store->load_state(
      key.first, key.second,
      [this, alive = std::weak_ptr<int>(alive_), key, activate_from](result<stored_state> loaded) {
        if (alive.expired()) return;
        auto found = entities_.find(key);
        if (found == entities_.end()) return;
        if (!loaded) {
          found->second.busy = false;
          return fail_queued(found,
                             reply_msg::failure(errc::storage_error,
                                                "state of " + key.first + "/" + key.second +
                                                    " not loaded: " + loaded.error().message));
        }
        found->second.state->version = loaded.value().version;
        found->second.state->loaded = true;
        activate_from(loaded.value().data);
      });
}

void entity_host::fail_queued(std::map<slot_key, slot>::iterator it, const reply_msg& reply) {
  auto queued = std::move(it->second.mailbox);
  it->second.mailbox.clear();
  passivate(it);
  for (auto& pending : queued) pending.done(reply_msg(reply));
}

void entity_host::write_unsaved(std::function<void()> done) {
  auto pending = std::make_shared<std::size_t>(1);
  auto finished = std::make_shared<std::function<void()>>(std::move(done));
  const auto one_done = [pending, finished] {
    if (--*pending == 0 && *finished) (*finished)();
  };
  for (auto& [key, s] : entities_) {
    if (!s.state || !s.state->unsaved || state_store == nullptr) continue;
    ++*pending;
    const std::int64_t expected = s.state->version;
    auto after = [this, alive = std::weak_ptr<int>(alive_), entity = key, expected,
                  one_done](result<void> outcome) {
      if (!alive.expired()) {
        auto found = entities_.find(entity);
        if (!outcome) {
          spdlog::warn("state of {}/{} not written at stop: {}", entity.first, entity.second,
                       outcome.error().message);
        } else if (found != entities_.end() && found->second.state &&
                   found->second.state->version == expected) {
          found->second.state->version = expected + 1;
          found->second.state->unsaved.reset();
        }
      }
      one_done();
    };
    state_store->save_state(state_write{key.first, key.second, expected, *s.state->unsaved},
                            std::move(after));
  }
  one_done();
}

void entity_host::passivate(std::map<slot_key, slot>::iterator it) {
  slot& s = it->second;
  for (auto& pending : s.mailbox)
    pending.done(reply_msg::failure(errc::shutting_down, "entity passivated"));
  if (s.instance != nullptr) s.type->destroy(s.instance);
  ++passivations_;
  // Held to the end: this may be the last reference to a retired version (which unloads
  // it), and `group` is the type's.
  const auto type = s.type;
  const std::string& group = type->info.group;
  const std::int32_t shard_number = s.shard;
  if (s.state && s.state->unsaved && state_store != nullptr) {
    // runner.state_save = "passivation": written now. The shard counts the entity as active
    // until the write is answered, so its lock (and the next owner's read) waits for it.
    const std::string type_name = it->first.first;
    const std::string id = it->first.second;
    state_write write{type_name, id, s.state->version, std::move(*s.state->unsaved)};
    entities_.erase(it);
    ++unsaved_writes_;
    state_store->save_state(std::move(write),
                            [this, alive = std::weak_ptr<int>(alive_), group = std::string(group),
                             shard_number, type_name, id](result<void> outcome) {
                              if (alive.expired()) return;
                              --unsaved_writes_;
                              if (!outcome)
                                spdlog::warn("state of {}/{} not written at passivation: {}",
                                             type_name, id, outcome.error().message);
                              shard_left(group, shard_number);
                            });
    return;
  }
  entities_.erase(it);
  shard_left(group, shard_number);
}

void entity_host::shard_left(const std::string& group, std::int32_t shard_number) {
  const auto shard = active_per_shard_.find({group, shard_number});
  const bool last = --shard->second == 0;
  if (last) active_per_shard_.erase(shard);
  if (last && on_shard_passivated) on_shard_passivated(group, shard_number);
}

void entity_host::evict_shards(std::function<bool(const std::string&, std::int32_t)> keep) {
  for (auto it = entities_.begin(); it != entities_.end();) {
    auto current = it++;
    slot& s = current->second;
    if (keep(s.type->info.group, s.shard)) continue;
    if (s.busy || !s.mailbox.empty()) {
      s.evict = true;
      if (s.busy) request_stop(s);
    } else {
      passivate(current);
    }
  }
}

void entity_host::passivate_idle(steady_clock::time_point now) {
  for (auto it = entities_.begin(); it != entities_.end();) {
    auto current = it++;
    slot& s = current->second;
    if (s.busy || !s.mailbox.empty()) continue;
    const auto& options = s.type->info.options;
    // Kept alive: only a move, an eviction or a stop passivates it.
    const bool kept = (options.flags & CLUSTER_ENTITY_KEEP_ALIVE) != 0 && !s.type->retired;
    const auto idle_limit =
        options.max_idle_ms > 0 ? milliseconds(options.max_idle_ms) : options_.passivate_after;
    if (!kept && now - s.last_active >= idle_limit) {
      passivate(current);
    } else {
      decltype(s.mailbox)().swap(s.mailbox);  // gives back the empty mailbox's storage
    }
  }
}

bool entity_host::activate(const slot_key& key, slot& s, std::string& why,
                           const std::optional<bytes>* state) {
  // The constructor gets a real context (log, clock, address) for the time it runs.
  std::string creation_error;
  invocation creating{this, key, std::string(), {}, {}, true, &creation_error};
  creating.bind(s);
  if (state != nullptr && *state) {
    creating.ctx.state = (*state)->data();
    creating.ctx.state_size = (*state)->size();
  }
  const bool watched = watch_.enabled() && !s.type->process;
  if (watched) watch_.enter(key.first, key.second, "(constructor)");
  s.instance = s.type->create(&creating.ctx);
  if (watched) watch_.leave();
  if (s.instance != nullptr) return true;
  why = "activation of " + key.first + "/" + key.second + " failed in its constructor" +
        (creation_error.empty() ? std::string() : ": " + creation_error);
  return false;
}

void entity_host::activation_failed(const slot_key& key) {
  if (auto it = entities_.find(key); it != entities_.end()) it->second.instance = nullptr;
}

void entity_host::instances_lost(const plugin_process* process) {
  // By process, not by name: after a swap, the old and the new version's types share names.
  for (auto& [key, s] : entities_)
    if (s.type->process.get() == process) s.instance = nullptr;
}

void entity_host::retire_types() {
  for (auto it = entities_.begin(); it != entities_.end();) {
    auto current = it++;
    slot& s = current->second;
    // A busy one moves on when its message is done (run_next); it is asked to stop, or a
    // singleton's run would keep the old version loaded for ever.
    if (s.type->retired && s.busy) request_stop(s);
    if (s.type->retired && !s.busy && !s.evict) move_on(current);
  }
}

bool entity_host::move_on(std::map<slot_key, slot>::iterator it) {
  slot& s = it->second;
  if (s.mailbox.empty()) {
    passivate(it);  // on its old code; the next message activates the current type
    return false;
  }
  auto next = resolve_type ? resolve_type(s.type->info.name) : nullptr;
  if (next && next->info.group != s.type->info.group) {
    // The new version moved the type to another shard group: these messages were routed by
    // the old one. NotOwner makes their callers route them again.
    const auto queued = std::move(s.mailbox);
    s.mailbox.clear();
    for (auto& pending : queued)
      pending.done(reply_msg::failure(
          errc::not_owner,
          "entity type '" + it->first.first + "' moved to shard group '" + next->info.group + "'"));
    passivate(it);
    return false;
  }
  if (!next) {
    // Removed: what was queued before still runs, on the old code; then it is passivated.
    s.evict = true;
    return true;
  }
  // Replaced: the old instance goes now; the queued messages run in a new instance of the
  // new version, each by its RPC's name (the new version may number its RPCs differently).
  const std::string type_name = it->first.first;
  std::vector<std::pair<reply_callback, std::string>> unknown;  // answered after the walk
  for (auto m = s.mailbox.begin(); m != s.mailbox.end();) {
    if (auto index = next->rpc_index(m->request.rpc)) {
      m->rpc_index = *index;
      ++m;
      continue;
    }
    unknown.emplace_back(std::move(m->done), std::move(m->request.rpc));
    m = s.mailbox.erase(m);
  }
  bool alive = true;
  if (s.mailbox.empty()) {
    passivate(it);
    alive = false;
  } else {
    if (s.instance != nullptr) {
      s.type->destroy(s.instance);
      s.instance = nullptr;
      ++passivations_;
    }
    const auto old_type = std::move(s.type);  // released here: may unload the old version
    s.type = std::move(next);
  }
  for (auto& [done, rpc] : unknown)
    done(reply_msg::failure(errc::unknown_rpc, "entity type '" + type_name + "' has no RPC '" +
                                                   rpc + "' in its new version"));
  return alive;
}

void entity_host::request_stop(const std::string& type, const std::string& id) {
  if (auto it = entities_.find(slot_key{type, id}); it != entities_.end()) request_stop(it->second);
}

void entity_host::request_stop(slot& s) {
  s.stop.request();
  // In its own process the handler asks that process: it hears of the stop there.
  if (s.type->process && s.instance != nullptr) s.type->process->request_stop(s.instance);
}

std::size_t entity_host::mailbox_capacity(const slot& s) const {
  const auto own = s.type->info.options.mailbox_capacity;
  return own != 0 ? own : options_.mailbox_capacity;
}

bool entity_host::shard_active(const std::string& group, std::int32_t shard) const {
  return active_per_shard_.count({group, shard}) > 0;
}

bool entity_host::mailbox_full(const std::string& type, const std::string& id) const {
  auto it = entities_.find(slot_key{type, id});
  return it != entities_.end() && it->second.mailbox.size() >= mailbox_capacity(it->second);
}

void entity_host::stop() {
  stopped_ = true;
  sweep_timer_.cancel();
  for (auto it = entities_.begin(); it != entities_.end();) {
    auto current = it++;
    if (!current->second.busy) {
      passivate(current);
    } else {
      // Queued messages never ran: tell their callers now; the running one finishes.
      request_stop(current->second);
      auto queued = std::move(current->second.mailbox);
      current->second.mailbox.clear();
      for (auto& pending : queued)
        pending.done(reply_msg::failure(errc::shutting_down, "runner is stopping"));
    }
  }
}

awaitable<void> entity_host::sweep_loop() {
  const auto interval =
      std::clamp<milliseconds>(options_.passivate_after / 4, milliseconds(10), milliseconds(1000));
  while (!stopped_) {
    sweep_timer_.expires_after(interval);
    error_code ec;
    co_await sweep_timer_.async_wait(asio::redirect_error(use_awaitable, ec));
    if (ec || stopped_) break;
    passivate_idle(steady_clock::now());
  }
}

std::map<std::string, entity_host::type_load, std::less<>> entity_host::load_by_type() const {
  std::map<std::string, type_load, std::less<>> load;
  for (const auto& [key, s] : entities_) {
    auto& of_type = load[key.first];
    ++of_type.active;
    of_type.queued += s.mailbox.size();
    of_type.running += s.busy ? 1 : 0;
  }
  return load;
}

}  // namespace cluster::host
