#pragma once
/// @file
/// The C++ SDK for cluster-sst entity plugins: header-only, the only thing a plugin
/// includes. It turns typed C++ entities into the C descriptors of <cluster/plugin_abi.h>
/// and turns exceptions into error replies at the boundary.
///
/// A plugin declares its entity types once with CLUSTER_PLUGIN(...). Each active entity is
/// one instance of its class; the runner calls it with one message at a time, in arrival
/// order, on the runner's thread. A handler is a member function
///   Reply handler(const Request&, cluster::context&)            (plain), or
///   cluster::task<Reply> handler(const Request&, cluster::context&)   (coroutine), or
///   cluster::stream<Item, Reply> handler(const Request&, cluster::context&)   (streaming:
///   `co_yield` items, `co_return` the final reply; the RPC is declared streaming),
/// where the RPC type `R` has nested `R::Request` and `R::Reply` with msgpack adaptors.
/// The class is default-constructible or has a constructor taking `cluster::context&`:
/// there the context logs and tells the time and the entity's address, but is valid only
/// until the constructor returns (keep copies of what you need, not the context).

#include <coroutine>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <msgpack.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include "cluster/cron.hpp"
#include "cluster/plugin_abi.h"

namespace cluster {

/// Flags of an RPC declaration.
struct rpc_flags {
  std::uint32_t bits = 0;
};
/// The RPC is stored before it runs and replayed after a crash (at-least-once).
inline constexpr rpc_flags persisted{CLUSTER_RPC_PERSISTED};
/// The RPC runs at most once and is lost with its runner (the default).
inline constexpr rpc_flags volatile_rpc{0};
/// The RPC changes nothing in its entity: it may run beside other read-only calls of the same
/// entity (up to the type's `.concurrency(n)`), and a state change inside it is refused.
/// Combines with `persisted` (`cluster::persisted | cluster::read_only`).
inline constexpr rpc_flags read_only{CLUSTER_RPC_READ_ONLY};
/// Both flags' bits.
constexpr rpc_flags operator|(rpc_flags a, rpc_flags b) { return rpc_flags{a.bits | b.bits}; }

/// A typed application error: travels to the caller as an error reply with `tag`.
class app_error : public std::runtime_error {
 public:
  app_error(std::string tag, const std::string& message)
      : std::runtime_error(message), tag_(std::move(tag)) {}
  /// Machine-readable error name, e.g. "NotFound".
  const std::string& tag() const { return tag_; }

 private:
  std::string tag_;
};

/// A call to another entity failed: `tag` is the cluster error name (e.g. "UnknownRpc")
/// or the callee's application error tag.
class call_error : public app_error {
 public:
  using app_error::app_error;
};

/// The handler's request was cancelled: its caller interrupted it or went away, or its deadline
/// passed. Thrown by `co_await ctx.sleep_ms(...)`, `co_await ctx.call(...)` and `co_yield` once
/// `ctx.cancelled()` holds; let it propagate (the caller gets Cancelled), or catch it to clean
/// up and rethrow.
class cancelled : public std::runtime_error {
 public:
  cancelled() : std::runtime_error("the request was cancelled") {}
};

/// A request or reply without fields: `{}` on the wire (any map is accepted).
struct empty {
  template <class Packer>
  void msgpack_pack(Packer& packer) const {
    packer.pack_map(0);
  }
  void msgpack_unpack(const msgpack::object& object) {
    if (object.type != msgpack::type::MAP) throw msgpack::type_error();
  }
};

namespace detail {
struct state_access;
/// Marks the classes derived from cluster::stateful (found by std::is_base_of).
struct stateful_marker {};
}  // namespace detail

/// Base of an entity class that keeps durable state: derive `class Counter : public
/// cluster::stateful<CounterState>` (State: default-constructible, with msgpack adaptors).
///
/// Lifecycle: the runner loads the stored state before it activates the entity; `state()`
/// holds it from right after the constructor (the constructor itself sees a default State).
/// After a handler that succeeded (and is not read-only) the SDK encodes the state and hands
/// it to the runner when its bytes changed; the runner stores it before this entity runs its
/// next message: with the reply of a persisted RPC in one transaction, before the reply of a
/// volatile one. A handler that fails (an app_error or any exception) changes nothing: the
/// state goes back to what was stored. Coroutine handlers are committed when they reply.
/// Thread: the entity's, like every member (one message at a time).
template <class State>
class stateful : private detail::stateful_marker {
 public:
  using state_type = State;

  /// The entity's state; change it in handlers.
  State& state() { return state_; }
  const State& state() const { return state_; }
  /// Deletes the stored state once this handler succeeds; `state()` is a default State again.
  void clear_state() {
    state_ = State{};
    cleared_ = true;
  }

 private:
  friend struct detail::state_access;
  State state_{};
  bool cleared_ = false;
  bool stored_ = false;         // the runner has a stored state for this entity
  std::vector<char> baseline_;  // bytes of the stored state (of State{} when none is stored)
};

/// Lazily started coroutine result of a coroutine handler or helper. Await it with co_await.
template <class T>
class task;

namespace detail {

template <class T>
struct task_promise_base {
  std::exception_ptr error;
  std::coroutine_handle<> continuation;
  std::suspend_always initial_suspend() noexcept { return {}; }
  struct final_awaiter {
    bool await_ready() noexcept { return false; }
    template <class P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> h) noexcept {
      auto next = h.promise().continuation;
      return next ? next : std::noop_coroutine();
    }
    void await_resume() noexcept {}
  };
  final_awaiter final_suspend() noexcept { return {}; }
  void unhandled_exception() { error = std::current_exception(); }
};

template <class T>
struct task_promise : task_promise_base<T> {
  std::optional<T> value;
  task<T> get_return_object();
  void return_value(T v) { value = std::move(v); }
  T result() {
    if (this->error) std::rethrow_exception(this->error);
    return std::move(*value);
  }
};

template <>
struct task_promise<void> : task_promise_base<void> {
  task<void> get_return_object();
  void return_void() {}
  void result() {
    if (this->error) std::rethrow_exception(this->error);
  }
};

}  // namespace detail

template <class T>
class [[nodiscard]] task {
 public:
  using promise_type = detail::task_promise<T>;
  explicit task(std::coroutine_handle<promise_type> h) : handle_(h) {}
  task(task&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  task& operator=(task&& other) noexcept {
    if (this != &other) {
      if (handle_) handle_.destroy();
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }
  task(const task&) = delete;
  task& operator=(const task&) = delete;
  ~task() {
    if (handle_) handle_.destroy();
  }

  bool await_ready() const noexcept { return false; }
  std::coroutine_handle<> await_suspend(std::coroutine_handle<> awaiting) noexcept {
    handle_.promise().continuation = awaiting;
    return handle_;
  }
  T await_resume() { return handle_.promise().result(); }

 private:
  std::coroutine_handle<promise_type> handle_;
};

/// Coroutine result of a streaming handler: `co_yield` each item (an `Item`, encoded with its
/// msgpack adaptor), then `co_return` the final reply (`Reply`; `void`: MessagePack nil).
/// Each `co_yield` completes once the caller's credit lets the item go, so a slow consumer
/// slows the handler down instead of filling buffers; after a cancellation it throws
/// cluster::cancelled. Awaiting other things (`ctx.sleep_ms`, `ctx.call`) works as in a task.
///
/// GCC 12 destroys the temporaries of a co_yield full-expression twice: build a non-trivial
/// item in its own statement (`Item item{...}; co_yield item;`).
template <class Item, class Reply = void>
class stream;

namespace detail {
inline bool request_cancelled(const cluster_call_context* raw) {
  return raw != nullptr && raw->api->cancelled != nullptr &&
         raw->api->cancelled(raw->host_ctx) != 0;
}

template <class Item, class Reply>
struct stream_promise : task_promise<Reply> {
  const cluster_call_context* raw = nullptr;  // set by the invoker before the first resume
  msgpack::sbuffer item;                      // the item being written

  stream<Item, Reply> get_return_object();

  struct yield_awaiter {
    stream_promise* promise;
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
      const auto* raw = promise->raw;
      raw->api->stream_write(raw->host_ctx,
                             reinterpret_cast<const std::uint8_t*>(promise->item.data()),
                             promise->item.size(), &yield_awaiter::ready, h.address());
    }
    static void ready(void* address) { std::coroutine_handle<>::from_address(address).resume(); }
    void await_resume() const {
      promise->item.clear();
      if (request_cancelled(promise->raw)) throw ::cluster::cancelled();
    }
  };
  yield_awaiter yield_value(const Item& next) {
    item.clear();
    msgpack::pack(item, next);
    return yield_awaiter{this};
  }
};
}  // namespace detail

template <class Item, class Reply>
class [[nodiscard]] stream {
 public:
  using promise_type = detail::stream_promise<Item, Reply>;
  using item_type = Item;
  using reply_type = Reply;
  explicit stream(std::coroutine_handle<promise_type> h) : handle_(h) {}
  stream(stream&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  stream& operator=(stream&& other) noexcept {
    if (this != &other) {
      if (handle_) handle_.destroy();
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }
  stream(const stream&) = delete;
  stream& operator=(const stream&) = delete;
  ~stream() {
    if (handle_) handle_.destroy();
  }

  /// Where the items go (the invoker sets it before the handler starts).
  void bind(const cluster_call_context* raw) { handle_.promise().raw = raw; }
  bool await_ready() const noexcept { return false; }
  std::coroutine_handle<> await_suspend(std::coroutine_handle<> awaiting) noexcept {
    handle_.promise().continuation = awaiting;
    return handle_;
  }
  Reply await_resume() { return handle_.promise().result(); }

 private:
  std::coroutine_handle<promise_type> handle_;
};

namespace detail {
template <class Item, class Reply>
stream<Item, Reply> stream_promise<Item, Reply>::get_return_object() {
  return stream<Item, Reply>(
      std::coroutine_handle<stream_promise<Item, Reply>>::from_promise(*this));
}
}  // namespace detail

namespace detail {
template <class T>
task<T> task_promise<T>::get_return_object() {
  return task<T>(std::coroutine_handle<task_promise<T>>::from_promise(*this));
}
inline task<void> task_promise<void>::get_return_object() {
  return task<void>(std::coroutine_handle<task_promise<void>>::from_promise(*this));
}

inline msgpack::unpack_limit payload_limits() {
  // Bounds what a hostile payload can make the decoder allocate.
  return msgpack::unpack_limit(1u << 20, 1u << 20, 64u << 20, 64u << 20, 64u << 20, 64);
}

template <class T>
T decode(const std::uint8_t* data, std::size_t size) {
  msgpack::object_handle handle = msgpack::unpack(reinterpret_cast<const char*>(data), size,
                                                  nullptr, nullptr, payload_limits());
  return handle.get().as<T>();
}

template <class T>
msgpack::sbuffer encode(const T& value) {
  msgpack::sbuffer buffer;
  msgpack::pack(buffer, value);
  return buffer;
}

template <class E>
inline constexpr bool is_stateful_v = std::is_base_of_v<stateful_marker, E>;

/// What the SDK does with a stateful entity's state around its handlers.
struct state_access {
  template <class S>
  static std::vector<char> bytes_of(const S& value) {
    const auto buffer = encode(value);
    return std::vector<char>(buffer.data(), buffer.data() + buffer.size());
  }

  /// Inside `create`: decodes the stored state (throws when it does not decode).
  template <class S>
  static void load(stateful<S>& entity, const cluster_call_context* raw) {
    if (raw->state != nullptr && raw->state_size > 0) {
      entity.state_ = decode<S>(raw->state, raw->state_size);
      entity.baseline_.assign(reinterpret_cast<const char*>(raw->state),
                              reinterpret_cast<const char*>(raw->state) + raw->state_size);
      entity.stored_ = true;
    } else {
      entity.baseline_ = bytes_of(S{});
    }
  }

  /// After a handler that succeeded: hands a changed state (or a clear) to the runner.
  /// Throws when the state does not encode (the handler then fails and the state goes back).
  template <class S>
  static void commit(stateful<S>& entity, const cluster_call_context* raw) {
    auto now = bytes_of(entity.state_);
    if (std::exchange(entity.cleared_, false) && now == bytes_of(S{})) {
      if (entity.stored_) raw->api->set_state(raw->host_ctx, nullptr, 0, CLUSTER_STATE_CLEAR);
      entity.stored_ = false;
      entity.baseline_ = std::move(now);
      return;
    }
    if (now == entity.baseline_) return;  // unchanged: nothing to store
    raw->api->set_state(raw->host_ctx, reinterpret_cast<const std::uint8_t*>(now.data()),
                        now.size(), 0);
    entity.stored_ = true;
    entity.baseline_ = std::move(now);
  }

  /// After a handler that failed: back to the stored state. Never throws.
  template <class S>
  static void restore(stateful<S>& entity) noexcept {
    entity.cleared_ = false;
    try {
      entity.state_ =
          entity.stored_ ? decode<S>(reinterpret_cast<const std::uint8_t*>(entity.baseline_.data()),
                                     entity.baseline_.size())
                         : S{};
    } catch (...) {
      // Bytes this SDK encoded itself decode again; nothing better to do otherwise.
    }
  }
};

/// The state step after a handler of entity E: commits on success (a throw means the state
/// did not encode), restores on failure. A no-op for entities without state and read-only RPCs.
template <class E>
void after_handler(E& entity, const cluster_call_context* raw, bool read_only, bool ok) {
  if constexpr (is_stateful_v<E>) {
    if (read_only) return;
    if (!ok) return state_access::restore(entity);
    try {
      state_access::commit(entity, raw);
    } catch (...) {
      state_access::restore(entity);
      throw;
    }
  }
}
}  // namespace detail

/// What a handler knows and can do: its address, its shard, a logger, the clock, and
/// calls to other entities. Valid until the handler's reply is sent.
class context {
 public:
  explicit context(const cluster_call_context* raw) : raw_(raw) {}

  std::string_view entity_type() const { return raw_->entity_type; }
  std::string_view entity_id() const { return raw_->entity_id; }
  std::string_view shard_group() const { return raw_->shard_group; }
  /// 1-based shard number inside the shard group.
  std::int32_t shard() const { return raw_->shard; }
  std::string_view rpc() const { return raw_->rpc; }
  /// The epoch of this runner's lock on the entity's shard. It grows every time the shard's
  /// lock changes hands, so an external system can refuse writes of an owner that lost the
  /// shard: send the token with each write and reject one below the highest seen (see
  /// sdk/README.md). 0 when the runner's store has no shard locks.
  std::int64_t fencing_token() const { return raw_->fencing_token; }
  /// Unix time in milliseconds, from the runner.
  std::int64_t now_ms() const { return raw_->api->now_ms(raw_->host_ctx); }

  /// Awaitable pause of this handler; the runner serves other entities meanwhile. This
  /// entity's next message still waits for the handler to finish.
  auto sleep_ms(std::int64_t delay_ms) {
    struct awaiter {
      const cluster_call_context* raw;
      std::int64_t delay;
      bool await_ready() const noexcept { return false; }
      void await_suspend(std::coroutine_handle<> h) {
        raw->api->sleep(raw->host_ctx, delay, &awaiter::fire, h.address());
      }
      static void fire(void* address) { std::coroutine_handle<>::from_address(address).resume(); }
      void await_resume() const {
        if (detail::request_cancelled(raw)) throw ::cluster::cancelled();
      }
    };
    return awaiter{raw_, delay_ms};
  }

  /// True once this handler's request is cancelled: its caller interrupted it or went away,
  /// or its deadline passed. Awaiting `sleep_ms`, `call` or a `co_yield` then throws
  /// cluster::cancelled; a handler that loops without awaiting should check this.
  bool cancelled() const { return detail::request_cancelled(raw_); }

  /// True once the runner asked this entity to stop: its shard is moving away or the
  /// runner is stopping. A singleton's run returns soon after; pending `sleep_ms` waits
  /// end at once then.
  bool stop_requested() const {
    return raw_->api->stop_requested != nullptr && raw_->api->stop_requested(raw_->host_ctx) != 0;
  }

  void log_debug(const std::string& message) const { log(0, message); }
  void log_info(const std::string& message) const { log(1, message); }
  void log_warn(const std::string& message) const { log(2, message); }
  void log_error(const std::string& message) const { log(3, message); }

  /// Awaitable call to RPC `rpc` of entity (`entity_type`, `entity_id`). Yields the reply,
  /// or throws call_error. The runner's thread keeps serving other entities meanwhile.
  ///
  /// GCC 12 destroys the temporaries of a co_await full-expression twice. The parameters
  /// here are views for that reason; build a non-trivial request in its own statement:
  ///   const Echo::Request request{"hi"};
  ///   auto reply = co_await ctx.call<Echo::Reply>("Probe", id, "Echo", request);
  template <class Reply, class Request>
  auto call(std::string_view entity_type, std::string_view entity_id, std::string_view rpc,
            const Request& request, const char* primary_key = nullptr) {
    struct awaiter {
      const cluster_call_context* raw = nullptr;
      std::string type, id, rpc_name;
      msgpack::sbuffer payload;
      std::optional<std::string> key;
      std::coroutine_handle<> waiting;
      std::int32_t status = CLUSTER_STATUS_DEFECT;
      std::string tag, message;
      std::vector<std::uint8_t> reply;

      bool await_ready() const noexcept { return false; }
      void await_suspend(std::coroutine_handle<> h) {
        waiting = h;
        raw->api->call(raw->host_ctx, type.c_str(), id.c_str(), rpc_name.c_str(),
                       reinterpret_cast<const std::uint8_t*>(payload.data()), payload.size(),
                       key ? key->c_str() : nullptr, &awaiter::done, this);
      }
      static void done(void* self, std::int32_t status, const char* tag, const char* message,
                       const std::uint8_t* data, std::size_t size) {
        auto* a = static_cast<awaiter*>(self);
        a->status = status;
        a->tag = tag ? tag : "";
        a->message = message ? message : "";
        a->reply.assign(data, data + size);
        a->waiting.resume();
      }
      Reply await_resume() {
        if (status == CLUSTER_STATUS_CALL_FAILED && detail::request_cancelled(raw))
          throw ::cluster::cancelled();
        if (status != CLUSTER_STATUS_OK) throw call_error(tag, message);
        try {
          return detail::decode<Reply>(reply.data(), reply.size());
        } catch (const std::exception& e) {
          throw call_error("BadReply", std::string("reply did not decode: ") + e.what());
        }
      }
    };
    // Members one by one, not aggregate initialization: plugins may build with
    // -Wmissing-field-initializers.
    awaiter pending;
    pending.raw = raw_;
    pending.type = std::string(entity_type);
    pending.id = std::string(entity_id);
    pending.rpc_name = std::string(rpc);
    pending.payload = detail::encode(request);
    if (primary_key != nullptr) pending.key = std::string(primary_key);
    return pending;
  }

  /// Fire and forget: sends RPC `rpc` of entity (`entity_type`, `entity_id`) a request and
  /// does not wait for its outcome (it is sent at once, awaited or not). Awaiting the result
  /// tells whether the callee accepted it (a persisted RPC: stored): it throws call_error
  /// when it was refused (unknown type or RPC, mailbox full, no runner). Not awaited, a
  /// refusal is logged at debug level by the runner.
  template <class Request>
  auto send(std::string_view entity_type, std::string_view entity_id, std::string_view rpc,
            const Request& request, const char* primary_key = nullptr) {
    // Shared with the runner's completion: the result may outlive an awaiter never awaited.
    struct outcome {
      bool done = false;
      std::int32_t status = CLUSTER_STATUS_OK;
      std::string tag, message;
      std::coroutine_handle<> waiting;
      const cluster_call_context* raw = nullptr;
    };
    struct awaiter {
      std::shared_ptr<outcome> state;
      bool await_ready() const noexcept { return state->done; }
      void await_suspend(std::coroutine_handle<> h) { state->waiting = h; }
      void await_resume() const {
        if (state->status == CLUSTER_STATUS_CALL_FAILED && detail::request_cancelled(state->raw))
          throw ::cluster::cancelled();
        if (state->status != CLUSTER_STATUS_OK) throw call_error(state->tag, state->message);
      }
      static void done(void* user, std::int32_t status, const char* tag, const char* message,
                       const std::uint8_t*, std::size_t) {
        std::unique_ptr<std::shared_ptr<outcome>> held(
            static_cast<std::shared_ptr<outcome>*>(user));
        auto& s = **held;
        s.done = true;
        s.status = status;
        s.tag = tag ? tag : "";
        s.message = message ? message : "";
        if (auto waiting = std::exchange(s.waiting, nullptr)) waiting.resume();
      }
    };
    auto state = std::make_shared<outcome>();
    state->raw = raw_;
    const auto payload = detail::encode(request);
    const std::string type(entity_type), id(entity_id), rpc_name(rpc);
    auto* user = new std::shared_ptr<outcome>(state);
    raw_->api->send(raw_->host_ctx, type.c_str(), id.c_str(), rpc_name.c_str(),
                    reinterpret_cast<const std::uint8_t*>(payload.data()), payload.size(),
                    primary_key, &awaiter::done, user);
    return awaiter{std::move(state)};
  }

 private:
  void log(std::int32_t level, const std::string& message) const {
    raw_->api->log(raw_->host_ctx, level, message.c_str());
  }
  const cluster_call_context* raw_;
};

namespace detail {

/// Reports a failure through the C reply function; never throws.
inline void reply_failure(cluster_reply_fn reply, void* reply_ctx, std::exception_ptr error) {
  try {
    std::rethrow_exception(error);
  } catch (const cancelled& e) {
    reply(reply_ctx, CLUSTER_STATUS_CANCELLED, "Cancelled", e.what(), nullptr, 0);
  } catch (const app_error& e) {
    reply(reply_ctx, CLUSTER_STATUS_APPLICATION_ERROR, e.tag().c_str(), e.what(), nullptr, 0);
  } catch (const std::exception& e) {
    reply(reply_ctx, CLUSTER_STATUS_DEFECT, "Defect", e.what(), nullptr, 0);
  } catch (...) {
    reply(reply_ctx, CLUSTER_STATUS_DEFECT, "Defect", "unknown exception", nullptr, 0);
  }
}

/// Replies `value` after the state step of entity E (encode the reply, then commit the
/// state, then reply: a reply that does not encode leaves the state as it was stored).
template <class E, class T>
void reply_success(E& entity, const cluster_call_context* raw, bool read_only,
                   cluster_reply_fn reply, void* reply_ctx, const T& value) {
  msgpack::sbuffer buffer;
  try {
    msgpack::pack(buffer, value);
  } catch (...) {
    after_handler(entity, raw, read_only, false);
    reply_failure(reply, reply_ctx, std::current_exception());
    return;
  }
  try {
    after_handler(entity, raw, read_only, true);
  } catch (...) {
    reply_failure(reply, reply_ctx, std::current_exception());
    return;
  }
  reply(reply_ctx, CLUSTER_STATUS_OK, nullptr, nullptr,
        reinterpret_cast<const std::uint8_t*>(buffer.data()), buffer.size());
}

/// A handler failed: its entity's state goes back to the stored one, then the failure.
template <class E>
void reply_failed(E& entity, const cluster_call_context* raw, bool read_only,
                  cluster_reply_fn reply, void* reply_ctx, std::exception_ptr error) {
  after_handler(entity, raw, read_only, false);
  reply_failure(reply, reply_ctx, error);
}

/// Drives a top-level task to completion and hands its outcome to `done`.
struct detached {
  struct promise_type {
    detached get_return_object() noexcept { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }
  };
};

/// What a coroutine handler's `co_return` gives: its reply, or nil for a `void` stream.
template <class Work>
using drive_value_t =
    std::conditional_t<std::is_void_v<decltype(std::declval<Work&>().await_resume())>,
                       msgpack::type::nil_t, decltype(std::declval<Work&>().await_resume())>;

template <class E, class Work, class State>
detached drive(E& entity, bool read_only, Work work, std::unique_ptr<State> state,
               cluster_reply_fn reply, void* reply_ctx) {
  std::exception_ptr error;
  std::optional<drive_value_t<Work>> value;
  try {
    if constexpr (std::is_void_v<decltype(work.await_resume())>) {
      co_await std::move(work);
      value.emplace();
    } else {
      value.emplace(co_await std::move(work));
    }
  } catch (...) {
    error = std::current_exception();
  }
  // The request must outlive the handler's frame: free it after. The raw context stays
  // valid until the reply is sent.
  work = Work(nullptr);
  const cluster_call_context* raw = state->raw;
  state.reset();
  if (error) {
    reply_failed(entity, raw, read_only, reply, reply_ctx, error);
  } else {
    reply_success(entity, raw, read_only, reply, reply_ctx, *value);
  }
}

template <class E>
using invoker = std::function<void(E&, const std::uint8_t*, std::size_t,
                                   const cluster_call_context*, bool, cluster_reply_fn, void*)>;

template <class T>
struct is_task : std::false_type {};
template <class T>
struct is_task<task<T>> : std::true_type {};
template <class T>
struct is_stream : std::false_type {};
template <class I, class R>
struct is_stream<stream<I, R>> : std::true_type {};

template <class E, class R, class Method>
invoker<E> make_invoker(Method method) {
  using request_type = typename R::Request;
  return [method](E& entity, const std::uint8_t* data, std::size_t size,
                  const cluster_call_context* raw, bool read_only, cluster_reply_fn reply,
                  void* reply_ctx) {
    std::optional<request_type> request;
    try {
      request.emplace(decode<request_type>(data, size));
    } catch (const msgpack::type_error&) {
      reply(reply_ctx, CLUSTER_STATUS_BAD_PAYLOAD, "BadPayload",
            "a field is missing or has the wrong type", nullptr, 0);
      return;
    } catch (const std::exception& e) {
      reply(reply_ctx, CLUSTER_STATUS_BAD_PAYLOAD, "BadPayload", e.what(), nullptr, 0);
      return;
    }
    using result_type = std::invoke_result_t<Method, E&, const request_type&, context&>;
    if constexpr (is_task<result_type>::value || is_stream<result_type>::value) {
      struct state {
        request_type request;
        context ctx;
        const cluster_call_context* raw;
      };
      auto held = std::make_unique<state>(state{std::move(*request), context(raw), raw});
      std::optional<result_type> work;
      try {
        work.emplace(std::invoke(method, entity, std::as_const(held->request), held->ctx));
        if constexpr (is_stream<result_type>::value) work->bind(raw);
      } catch (...) {
        reply_failed(entity, raw, read_only, reply, reply_ctx, std::current_exception());
        return;
      }
      drive(entity, read_only, std::move(*work), std::move(held), reply, reply_ctx);
    } else {
      context ctx(raw);
      std::optional<result_type> value;
      try {
        value.emplace(std::invoke(method, entity, std::as_const(*request), ctx));
      } catch (...) {
        reply_failed(entity, raw, read_only, reply, reply_ctx, std::current_exception());
        return;
      }
      reply_success(entity, raw, read_only, reply, reply_ctx, *value);
    }
  };
}

/// What an entity declaration turns into: the C descriptor of one entity type and the
/// storage it points into. Lives as long as the plugin is loaded.
struct entity_record {
  entity_record() = default;
  entity_record(const entity_record&) = delete;
  entity_record& operator=(const entity_record&) = delete;
  virtual ~entity_record() = default;

  std::string name;
  std::string group;
  std::string cron_expression;  // what descriptor.cron_schedule points to
  std::vector<std::string> rpc_names;
  std::vector<cluster_rpc_descriptor> rpcs;
  std::vector<const cluster_rpc_descriptor*> rpc_pointers;
  cluster_entity_descriptor descriptor{};
};

/// The record of one entity type implemented by class E. It is the type's `type_data`:
/// the C callbacks reach this type's own RPC table through it, so two entity types
/// backed by one class keep separate tables.
template <class E>
struct typed_entity_record final : entity_record {
  std::vector<invoker<E>> invokers;

  static void* create(void* /*type_data*/, const cluster_call_context* raw) noexcept {
    try {
      std::unique_ptr<E> entity;
      if constexpr (std::is_constructible_v<E, context&>) {
        context ctx(raw);
        entity = std::make_unique<E>(ctx);
      } else {
        entity = std::make_unique<E>();
      }
      if constexpr (is_stateful_v<E>) {
        try {
          state_access::load(*entity, raw);
        } catch (const std::exception& e) {
          log_activation_failure(
              raw, (std::string("its stored state (") + std::to_string(raw->state_size) +
                    " bytes) does not decode as its state type: " + e.what())
                       .c_str());
          return nullptr;
        }
      }
      return entity.release();
    } catch (const std::exception& e) {
      log_activation_failure(raw, e.what());
    } catch (...) {
      log_activation_failure(raw, "unknown exception");
    }
    return nullptr;
  }
  static void destroy(void* /*type_data*/, void* instance) noexcept {
    delete static_cast<E*>(instance);
  }
  static void handle(void* type_data, void* instance, std::uint32_t rpc_index,
                     const std::uint8_t* payload, std::size_t size, const cluster_call_context* raw,
                     cluster_reply_fn reply, void* reply_ctx) noexcept {
    const auto& table = static_cast<const typed_entity_record*>(type_data)->invokers;
    if (rpc_index >= table.size()) {
      reply(reply_ctx, CLUSTER_STATUS_DEFECT, "Defect", "RPC index out of range", nullptr, 0);
      return;
    }
    const auto& rpcs = static_cast<const typed_entity_record*>(type_data)->rpcs;
    const bool read_only = (rpcs[rpc_index].flags & CLUSTER_RPC_READ_ONLY) != 0;
    try {
      table[rpc_index](*static_cast<E*>(instance), payload, size, raw, read_only, reply, reply_ctx);
    } catch (...) {
      reply_failure(reply, reply_ctx, std::current_exception());
    }
  }

 private:
  static void log_activation_failure(const cluster_call_context* raw, const char* what) noexcept {
    try {
      context(raw).log_error(std::string("activation failed: ") + what);
    } catch (...) {
      // Out of memory while reporting: the NULL instance still tells the runner.
    }
  }
};

}  // namespace detail

/// Declares one entity type; chain `.group(...)` and `.rpc<R>(...)`.
template <class E>
class entity_builder {
 public:
  explicit entity_builder(std::string name) { record_->name = std::move(name); }

  /// Shard group of the type (default "default").
  entity_builder& group(std::string group_name) & {
    record_->group = std::move(group_name);
    return *this;
  }
  entity_builder&& group(std::string group_name) && {
    return std::move(group(std::move(group_name)));
  }

  /// Never passivated for idleness while its shard is served here; after a shard move its
  /// new owner activates it again without waiting for a message.
  entity_builder& keep_alive() & {
    record_->descriptor.flags |= CLUSTER_ENTITY_KEEP_ALIVE;
    return *this;
  }
  entity_builder&& keep_alive() && { return std::move(keep_alive()); }

  /// Passivated after `ms` without a message (default: the runner's runner.passivate_after_ms).
  entity_builder& max_idle_ms(std::int64_t ms) & {
    if (ms <= 0)
      throw std::invalid_argument("entity type '" + record_->name +
                                  "': max_idle_ms must be positive");
    record_->descriptor.max_idle_ms = ms;
    return *this;
  }
  entity_builder&& max_idle_ms(std::int64_t ms) && { return std::move(max_idle_ms(ms)); }

  /// At most `n` queued messages per entity; more are refused MailboxFull (default: the
  /// runner's runner.mailbox_capacity).
  entity_builder& mailbox_capacity(std::uint32_t n) & {
    if (n == 0)
      throw std::invalid_argument("entity type '" + record_->name +
                                  "': mailbox_capacity must be positive");
    record_->descriptor.mailbox_capacity = n;
    return *this;
  }
  entity_builder&& mailbox_capacity(std::uint32_t n) && { return std::move(mailbox_capacity(n)); }

  /// Up to `n` read-only calls of one entity run at once; any other call waits until they
  /// are done and runs alone (default 1: one call at a time).
  entity_builder& concurrency(std::uint32_t n) & {
    if (n == 0)
      throw std::invalid_argument("entity type '" + record_->name +
                                  "': concurrency must be positive");
    record_->descriptor.concurrency = n;
    return *this;
  }
  entity_builder&& concurrency(std::uint32_t n) && { return std::move(concurrency(n)); }

  /// Adds RPC `name` of type R (with R::Request and R::Reply), handled by `method`.
  /// A method returning cluster::stream<Item, Reply> declares a streaming RPC (volatile:
  /// `persisted` with it is refused by build()).
  template <class R, class Method>
  entity_builder& rpc(std::string name, Method method, rpc_flags flags = volatile_rpc) & {
    using result_type = std::invoke_result_t<Method, E&, const typename R::Request&, context&>;
    record_->rpc_names.push_back(std::move(name));
    cluster_rpc_descriptor rpc{};
    rpc.struct_size = sizeof(cluster_rpc_descriptor);
    rpc.flags = flags.bits;
    if constexpr (detail::is_stream<result_type>::value) rpc.flags |= CLUSTER_RPC_STREAM;
    record_->rpcs.push_back(rpc);
    record_->invokers.push_back(detail::make_invoker<E, R>(method));
    return *this;
  }
  template <class R, class Method>
  entity_builder&& rpc(std::string name, Method method, rpc_flags flags = volatile_rpc) && {
    return std::move(rpc<R>(std::move(name), method, flags));
  }

  /// Finalizes into a descriptor whose pointers stay valid while the plugin is loaded.
  /// Throws std::invalid_argument for a declaration the runner would refuse anyway.
  std::unique_ptr<detail::entity_record> build() && {
    auto& r = *record_;
    if (r.name.empty()) throw std::invalid_argument("an entity type has an empty name");
    for (std::size_t i = 0; i < r.rpcs.size(); ++i) {
      if (r.rpc_names[i].empty())
        throw std::invalid_argument("entity type '" + r.name + "' has an RPC without a name");
      for (std::size_t j = 0; j < i; ++j)
        if (r.rpc_names[i] == r.rpc_names[j])
          throw std::invalid_argument("entity type '" + r.name + "' declares RPC '" +
                                      r.rpc_names[i] + "' twice");
      constexpr std::uint32_t persisted_stream = CLUSTER_RPC_PERSISTED | CLUSTER_RPC_STREAM;
      if ((r.rpcs[i].flags & persisted_stream) == persisted_stream)
        throw std::invalid_argument("RPC " + r.rpc_names[i] + " of " + r.name +
                                    " is both persisted and streaming");
      r.rpcs[i].name = r.rpc_names[i].c_str();
    }
    for (const auto& rpc : r.rpcs) r.rpc_pointers.push_back(&rpc);
    // The options set above (flags, mailbox_capacity, ...) are kept: only the rest is filled.
    auto& d = r.descriptor;
    d.struct_size = sizeof(cluster_entity_descriptor);
    d.rpc_count = static_cast<std::uint32_t>(r.rpcs.size());
    d.name = r.name.c_str();
    d.shard_group = r.group.empty() ? "default" : r.group.c_str();
    d.rpcs = r.rpc_pointers.data();
    d.create = &detail::typed_entity_record<E>::create;
    d.destroy = &detail::typed_entity_record<E>::destroy;
    d.handle = &detail::typed_entity_record<E>::handle;
    d.type_data = record_.get();
    if constexpr (detail::is_stateful_v<E>) d.flags |= CLUSTER_ENTITY_STATEFUL;
    return std::move(record_);
  }

 private:
  std::unique_ptr<detail::typed_entity_record<E>> record_ =
      std::make_unique<detail::typed_entity_record<E>>();
};

/// Starts the declaration of entity type `name` implemented by class E.
template <class E>
entity_builder<E> entity(std::string name) {
  return entity_builder<E>(std::move(name));
}

/// One tick of a cron job: when it was due and when it started (Unix ms, UTC). A tick
/// that was missed and run late (`run_missed_once`) has fired_ms well after scheduled_ms.
struct cron_tick {
  std::int64_t scheduled_ms = 0;
  std::int64_t fired_ms = 0;
  MSGPACK_DEFINE_MAP(scheduled_ms, fired_ms);
};

/// What a cron job does about ticks that fell due while no runner served it.
enum class cron_missed : std::uint32_t {
  skip = CLUSTER_CRON_SKIP_MISSED,          ///< they never run; the next tick after now does
  run_once = CLUSTER_CRON_RUN_MISSED_ONCE,  ///< one run for all of them at once, then on time
};
inline constexpr cron_missed skip_missed = cron_missed::skip;
inline constexpr cron_missed run_missed_once = cron_missed::run_once;

namespace detail {
/// RPC 0 of a singleton: its run, an empty map in and out.
struct singleton_run {
  using Request = empty;
  using Reply = empty;
};
/// RPC 0 of a cron job: one tick.
struct cron_run {
  using Request = cron_tick;
  using Reply = empty;
};

template <class S>
task<empty> run_singleton(S& singleton, const empty&, context& ctx) {
  if constexpr (is_task<decltype(singleton.run(ctx))>::value) {
    auto work = singleton.run(ctx);
    co_await work;
  } else {
    singleton.run(ctx);
  }
  co_return empty{};
}

template <class J>
task<empty> run_cron(J& job, const cron_tick& stored, context& ctx) {
  // The runner stores a tick before it is due, so it cannot know when it starts: 0 there.
  cron_tick tick = stored;
  if (tick.fired_ms == 0) tick.fired_ms = ctx.now_ms();
  if constexpr (is_task<decltype(job.run(tick, ctx))>::value) {
    auto work = job.run(tick, ctx);
    co_await work;
  } else {
    job.run(tick, ctx);
  }
  co_return empty{};
}
}  // namespace detail

/// Declares a singleton: one instance in the whole cluster (entity id "singleton"), started
/// as soon as a runner serves its shard and moved when that runner dies. S has
///   cluster::task<void> run(cluster::context&)
/// which runs until `ctx.stop_requested()`; when it returns or throws while its runner
/// still owns it, the runner calls it again after a backoff. Chain `.group(...)`.
template <class S>
class singleton_builder {
 public:
  explicit singleton_builder(std::string name) : inner_(std::move(name)) {
    inner_.template rpc<detail::singleton_run>("run", &detail::run_singleton<S>);
  }
  /// Shard group of the singleton (default "default"): a runner serving it runs it.
  singleton_builder& group(std::string group_name) & {
    inner_.group(std::move(group_name));
    return *this;
  }
  singleton_builder&& group(std::string group_name) && {
    return std::move(group(std::move(group_name)));
  }

  std::unique_ptr<detail::entity_record> build() && {
    auto record = std::move(inner_).build();
    record->descriptor.flags |= CLUSTER_ENTITY_SINGLETON | CLUSTER_ENTITY_KEEP_ALIVE;
    return record;
  }

 private:
  entity_builder<S> inner_;
};

/// Starts the declaration of singleton `name` implemented by class S.
template <class S>
singleton_builder<S> singleton(std::string name) {
  return singleton_builder<S>(std::move(name));
}

/// Declares a cron job: `schedule` (cron.hpp: 5 or 6 fields, UTC) says when it runs, and
/// each tick runs once in the cluster, across crashes and moves. J has
///   void run(const cluster::cron_tick&, cluster::context&)   or
///   cluster::task<void> run(const cluster::cron_tick&, cluster::context&).
/// A tick that throws is retried like any persisted message (at least once, deduplicated
/// by its scheduled time). Chain `.group(...)` and `.missed(...)`.
template <class J>
class cron_builder {
 public:
  cron_builder(std::string name, std::string schedule)
      : inner_(std::move(name)), schedule_(std::move(schedule)) {
    inner_.template rpc<detail::cron_run>("tick", &detail::run_cron<J>, persisted);
  }
  /// Shard group of the job (default "default").
  cron_builder& group(std::string group_name) & {
    inner_.group(std::move(group_name));
    return *this;
  }
  cron_builder&& group(std::string group_name) && {
    return std::move(group(std::move(group_name)));
  }
  /// Ticks missed while no runner served the job: `skip_missed` (default) or
  /// `run_missed_once`.
  cron_builder& missed(cron_missed policy) & {
    missed_ = policy;
    return *this;
  }
  cron_builder&& missed(cron_missed policy) && { return std::move(missed(policy)); }

  /// Throws std::invalid_argument when the schedule does not parse.
  std::unique_ptr<detail::entity_record> build() && {
    auto record = std::move(inner_).build();
    try {
      (void)cron_schedule::parse(schedule_);
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument("cron job '" + record->name + "': " + e.what());
    }
    record->cron_expression = std::move(schedule_);
    record->descriptor.flags |= CLUSTER_ENTITY_CRON;
    record->descriptor.cron_missed = static_cast<std::uint32_t>(missed_);
    record->descriptor.cron_schedule = record->cron_expression.c_str();
    return record;
  }

 private:
  entity_builder<J> inner_;
  std::string schedule_;
  cron_missed missed_ = skip_missed;
};

/// Starts the declaration of cron job `name` implemented by class J, run on `schedule`.
template <class J>
cron_builder<J> cron(std::string name, std::string schedule) {
  return cron_builder<J>(std::move(name), std::move(schedule));
}

/// Names and versions the plugin; optional, as the first argument of CLUSTER_PLUGIN:
///   CLUSTER_PLUGIN(cluster::plugin("greeter").version("1.2.0"), cluster::entity<...>(...))
/// Without it the plugin is named after its entity types, at version "0.0.0".
class plugin_builder {
 public:
  explicit plugin_builder(std::string name) : name_(std::move(name)) {}
  /// The plugin's own version, shown by the runner when it loads the plugin.
  plugin_builder& version(std::string v) & {
    version_ = std::move(v);
    return *this;
  }
  plugin_builder&& version(std::string v) && { return std::move(version(std::move(v))); }

  const std::string& name() const { return name_; }
  const std::string& version() const { return version_; }

 private:
  std::string name_;
  std::string version_ = "0.0.0";
};

/// Starts the plugin's own declaration (name, version).
inline plugin_builder plugin(std::string name) { return plugin_builder(std::move(name)); }

namespace detail {

/// The plugin's descriptor and the storage it points into.
class plugin_record {
 public:
  template <class... Declarations>
  explicit plugin_record(Declarations&&... declarations) {
    // Moved even when given as lvalues: a declaration is consumed by the plugin.
    (add(std::move(declarations)), ...);
    if (records_.empty()) throw std::invalid_argument("the plugin declares no entity type");
    for (const auto& r : records_) {
      for (const auto* seen : entities_)
        if (r->name == seen->name)
          throw std::invalid_argument("entity type '" + r->name + "' is declared twice");
      entities_.push_back(&r->descriptor);
      if (!named_) name_ += (name_.empty() ? "" : ",") + r->name;
    }
    descriptor_.abi_major = CLUSTER_ABI_MAJOR;
    descriptor_.abi_minor = CLUSTER_ABI_MINOR;
    descriptor_.struct_size = sizeof(cluster_plugin_descriptor);
    descriptor_.entity_count = static_cast<std::uint32_t>(entities_.size());
    descriptor_.plugin_name = name_.c_str();
    descriptor_.entities = entities_.data();
    descriptor_.plugin_version = version_.c_str();
  }
  plugin_record(const plugin_record&) = delete;
  plugin_record& operator=(const plugin_record&) = delete;

  const cluster_plugin_descriptor* descriptor() const { return &descriptor_; }

 private:
  void add(plugin_builder&& p) {
    if (named_) throw std::invalid_argument("cluster::plugin(...) is given twice");
    named_ = true;
    name_ = p.name();
    version_ = p.version();
  }
  template <class E>
  void add(entity_builder<E>&& builder) {
    records_.push_back(std::move(builder).build());
  }
  template <class S>
  void add(singleton_builder<S>&& builder) {
    records_.push_back(std::move(builder).build());
  }
  template <class J>
  void add(cron_builder<J>&& builder) {
    records_.push_back(std::move(builder).build());
  }

  std::vector<std::unique_ptr<entity_record>> records_;
  std::vector<const cluster_entity_descriptor*> entities_;
  bool named_ = false;
  std::string name_;
  std::string version_ = "0.0.0";
  cluster_plugin_descriptor descriptor_{};
};

/// Reports a failed entry through the load context; never throws.
inline void report_entry_failure(const cluster_load_context* load, std::exception_ptr error) {
  const char* what = "unknown exception";
  try {
    std::rethrow_exception(error);
  } catch (const std::exception& e) {
    what = e.what();
  } catch (...) {
  }
  if (load == nullptr || load->error == nullptr || load->error_size == 0 ||
      load->struct_size < sizeof(cluster_load_context))
    return;
  std::size_t n = 0;
  for (; what[n] != '\0' && n + 1 < load->error_size; ++n) load->error[n] = what[n];
  load->error[n] = '\0';
}

}  // namespace detail
}  // namespace cluster

/// Declares the plugin's entity types; use once per plugin, at namespace scope:
///   CLUSTER_PLUGIN(cluster::entity<Greeter>("Greeter").rpc<Greet>("Greet", &Greeter::greet));
/// An exception while the declaration is built (a bad declaration, or the plugin's own
/// code in it) makes the entry fail with its message: the runner refuses the file.
#define CLUSTER_PLUGIN(...)                                                          \
  extern "C" __attribute__((visibility("default"))) const cluster_plugin_descriptor* \
  cluster_plugin_entry(const cluster_load_context* load) noexcept {                  \
    try {                                                                            \
      static const ::cluster::detail::plugin_record plugin{__VA_ARGS__};             \
      return plugin.descriptor();                                                    \
    } catch (...) {                                                                  \
      ::cluster::detail::report_entry_failure(load, std::current_exception());       \
      return nullptr;                                                                \
    }                                                                                \
  }
