#pragma once
/// @file
/// The test kit for entity plugins: runs a plugin's entities in-process, without a cluster,
/// through the same C ABI the runner uses (the descriptor's create/handle/destroy with a real
/// cluster_call_context and cluster_host_api), so what passes here behaves the same in a
/// runner. Header-only; needs nothing but the SDK (and dlopen for `kit::load`).
///
///   #include <cluster/testing.hpp>
///   TEST(greeter, greets_by_name) {
///     cluster::testing::kit kit;  // the plugin linked into this test binary
///     auto reply = kit.call<Greet>("Greeter", "Test", "Greet", {"John"});
///     ASSERT_TRUE(reply) << reply.error();
///     EXPECT_EQ(reply->message, "Hello, John!");
///   }
///
/// What the kit does like a runner: one instance per entity (type, id), activated on its first
/// message; its messages run one at a time in arrival order; errors come back as the cluster
/// answers them (ApplicationError with its tag, BadPayload, UnknownEntityType, UnknownRpc,
/// Defect, with the runner's texts); calls to other entities never complete inside the call;
/// persisted RPCs with a primary key are deduplicated. What it does instead of a cluster:
/// a fake clock (`now_ms()`, `sleep_ms` and `deliver_at_ms` wait for `advance_ms`), stubs for
/// entity types the plugin calls, a record of those calls, of the entities' log lines and of
/// persisted messages, and replays of the latter on fresh instances.
///
/// Streaming RPCs: `call_stream` / `send_stream` collect the items a handler yields (within the
/// credit the test grants, unlimited unless `call_options::credit` says otherwise) and its
/// final reply; `pending_stream::cancel` cancels the request as a caller's interrupt does.
///
/// Threads: a kit is single-threaded. Everything runs on the thread that calls it, inside
/// `call`, `send`, `run`, `advance_ms` and `replay_persisted`; nothing runs in between.

#include <dlfcn.h>

#include <cluster/sdk.hpp>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "cluster/plugin_abi.h"

/// Defined by CLUSTER_PLUGIN in the plugin's sources when a test links them; only
/// `kit()` without arguments refers to it.
extern "C" __attribute__((visibility("default"))) const cluster_plugin_descriptor*
cluster_plugin_entry(const cluster_load_context* load) noexcept;

namespace cluster::testing {

/// MessagePack bytes.
using bytes = std::vector<std::uint8_t>;

/// How a call failed, as the cluster would answer it.
struct call_failure {
  /// The cluster's error name: "ApplicationError", "BadPayload", "UnknownEntityType",
  /// "UnknownRpc", "Defect", "InvalidRequest"; and two of the kit's own: "Pending" (no answer
  /// yet) and "BadReply" (the reply does not decode as the type asked for).
  std::string code;
  /// The application error's tag for ApplicationError, else the code.
  std::string tag;
  std::string message;
};

inline std::ostream& operator<<(std::ostream& out, const call_failure& failure) {
  out << failure.code;
  if (failure.tag != failure.code) out << " [" << failure.tag << "]";
  return out << ": " << failure.message;
}

/// The typed answer to a call: a T or a call_failure.
template <class T>
class reply {
 public:
  reply(T value) : value_(std::move(value)) {}                   // NOLINT: implicit, like result<T>
  reply(call_failure failure) : failure_(std::move(failure)) {}  // NOLINT

  bool has_value() const { return value_.has_value(); }
  explicit operator bool() const { return has_value(); }
  /// The value; throws std::logic_error naming the failure when there is none.
  const T& value() const {
    if (!value_) throw std::logic_error("the call failed: " + describe());
    return *value_;
  }
  T& value() {
    if (!value_) throw std::logic_error("the call failed: " + describe());
    return *value_;
  }
  const T* operator->() const { return &value(); }
  const T& operator*() const { return value(); }
  /// The failure; a default one (empty code) when the call succeeded.
  const call_failure& error() const { return failure_; }

  /// For a raw reply: its bytes decoded as U (a BadReply failure when they do not decode).
  template <class U>
  reply<U> as() const;

 private:
  std::string describe() const {
    std::ostringstream out;
    out << failure_;
    return out.str();
  }
  std::optional<T> value_;
  call_failure failure_;
};

template <class T>
inline std::ostream& operator<<(std::ostream& out, const reply<T>& r) {
  if (r.has_value()) return out << "ok";
  return out << r.error();
}

namespace detail {

/// The raw answer to one call, as a runner's reply carries it.
struct outcome {
  bool done = false;
  std::string code;  ///< "" when ok
  std::string tag;
  std::string message;
  bytes data;

  bool ok() const { return done && code.empty(); }
  static outcome success(bytes data) {
    outcome o;
    o.done = true;
    o.data = std::move(data);
    return o;
  }
  static outcome failure(std::string code, std::string message, std::string tag = {}) {
    outcome o;
    o.done = true;
    o.tag = tag.empty() ? code : std::move(tag);
    o.code = std::move(code);
    o.message = std::move(message);
    return o;
  }
};

/// What a streaming call's handler wrote, and the caller's side of its flow control.
struct stream_sink {
  std::vector<bytes> items;
  /// Items the caller still accepts; max(): unlimited.
  std::uint64_t credit = ~std::uint64_t{0};
  /// Writes waiting for credit: the item and its `ready`.
  std::vector<std::tuple<bytes, void (*)(void*), void*>> waiting;
  bool cancelled = false;
  std::function<void()> on_cancel;  // set while the request is queued or running
};

template <class T>
reply<T> decode_reply(const outcome& o) {
  if (!o.done)
    return call_failure{"Pending", "Pending",
                        "not answered yet: a handler waits on sleep_ms or on a call, or the "
                        "message's deliver_at_ms is ahead (advance the clock)"};
  if (!o.code.empty()) return call_failure{o.code, o.tag, o.message};
  if constexpr (std::is_same_v<T, bytes>) {
    return o.data;
  } else {
    try {
      return cluster::detail::decode<T>(o.data.data(), o.data.size());
    } catch (const std::exception& e) {
      return call_failure{
          "BadReply", "BadReply",
          std::string("the reply does not decode as the type asked for: ") + e.what()};
    }
  }
}

template <class T>
bytes encode_bytes(const T& value) {
  const msgpack::sbuffer buffer = cluster::detail::encode(value);
  const auto* begin = reinterpret_cast<const std::uint8_t*>(buffer.data());
  return bytes(begin, begin + buffer.size());
}

}  // namespace detail

template <class T>
template <class U>
reply<U> reply<T>::as() const {
  static_assert(std::is_same_v<T, bytes>, "as<U>() decodes a raw reply (reply<bytes>)");
  if (!value_) return failure_;
  return detail::decode_reply<U>(detail::outcome::success(*value_));
}

/// A call sent with `kit::send`: answered now, or later (after `advance_ms`).
template <class T>
class pending {
 public:
  explicit pending(std::shared_ptr<const detail::outcome> state) : state_(std::move(state)) {}
  bool done() const { return state_->done; }
  /// The answer; a "Pending" failure while there is none yet.
  reply<T> get() const { return detail::decode_reply<T>(*state_); }

 private:
  std::shared_ptr<const detail::outcome> state_;
};

template <class Item, class Reply>
class pending_stream;

/// Options of one call from the test.
struct call_options {
  /// Unix ms (fake clock); a persisted RPC does not run before it (volatile RPCs ignore it,
  /// like the runner).
  std::optional<std::int64_t> deliver_at_ms;
  /// Deduplicates a persisted RPC: the same key with the same request gets the first reply
  /// without running again; with another request, InvalidRequest.
  std::optional<std::string> primary_key;
  /// Streaming calls: the items the test accepts before it grants more
  /// (`pending_stream::grant`); 0: unlimited.
  std::uint32_t credit = 0;
};

/// Options of a kit.
struct kit_options {
  /// Where the fake clock starts (unix ms): 2023-11-14T22:13:20Z.
  std::int64_t start_ms = 1'700'000'000'000;
  /// Runs every persisted message twice, each time on a fresh instance, as a runner does when
  /// it crashes after the handler ran but before the reply was stored; the caller gets the
  /// second reply. Handlers must tolerate it. Stateful entities: the first run's state is not
  /// stored (nothing of it committed), so the second starts from the state before the first.
  bool run_persisted_twice = false;
  /// The shard an entity id is in (`context::shard()`); 1 when not given. (The cluster's hash
  /// lives in the runner, not in the SDK.)
  std::function<std::int32_t(std::string_view entity_id)> shard_of;
  /// Also prints the entities' log lines to stderr.
  bool echo_logs = false;
  /// Bound on callbacks run by one `run()`: a handler looping on sleep_ms(0) fails the test
  /// instead of hanging it.
  std::size_t max_steps = 1'000'000;
};

/// A call an entity made to another entity (answered by a stub or by the plugin's entities).
struct recorded_call {
  std::string from_type, from_id;  ///< the calling entity
  std::string entity_type, entity_id, rpc;
  bytes payload;
  std::optional<std::string> primary_key;
  bool discard = false;  ///< sent with `ctx.send` (fire and forget)

  /// The request decoded as T (throws msgpack's exception when it does not decode).
  template <class T>
  T request() const {
    return cluster::detail::decode<T>(payload.data(), payload.size());
  }
};

/// A persisted message delivered to one of the plugin's entities (from the test or from an
/// entity), in delivery order.
struct persisted_call {
  std::string entity_type, entity_id, rpc;
  bytes payload;
  std::optional<std::string> primary_key;
};

/// A line an entity logged through its context (level: 0 debug, 1 info, 2 warn, 3 error).
struct log_line {
  std::string entity_type, entity_id;
  std::int32_t level = 1;
  std::string message;
};

/// What the plugin declares.
struct rpc_info {
  std::string name;
  bool persisted = false;
  bool stream = false;
};
struct entity_type_info {
  std::string name;
  std::string group;
  std::vector<rpc_info> rpcs;
};

namespace detail {

class kit_state {
 public:
  using done_fn = std::function<void(outcome)>;
  using stub_fn = std::function<outcome(const recorded_call&)>;

  struct type_entry {
    cluster_entity_descriptor descriptor{};
    std::vector<cluster_rpc_descriptor> rpcs;
    std::string name, group;
    std::vector<std::string> rpc_names;
    std::optional<cluster::cron_schedule> cron;  // cron jobs: their schedule

    std::optional<std::uint32_t> rpc_index(std::string_view rpc) const {
      for (std::size_t i = 0; i < rpc_names.size(); ++i)
        if (rpc_names[i] == rpc) return static_cast<std::uint32_t>(i);
      return std::nullopt;
    }
    bool persisted(std::uint32_t index) const {
      return (rpcs[index].flags & CLUSTER_RPC_PERSISTED) != 0;
    }
    bool read_only(std::uint32_t index) const {
      return (rpcs[index].flags & CLUSTER_RPC_READ_ONLY) != 0;
    }
    bool streams(std::uint32_t index) const {
      return (rpcs[index].flags & CLUSTER_RPC_STREAM) != 0;
    }
    bool stateful() const { return (descriptor.flags & CLUSTER_ENTITY_STATEFUL) != 0; }
  };

  struct message {
    std::uint32_t rpc_index = 0;
    bytes payload;
    bool persisted = false;
    bool second_run = false;  // run_persisted_twice: this is the rerun
    done_fn done;
    std::shared_ptr<stream_sink> sink;  // calls from the test: streamed items, cancellation
  };

  using slot_key = std::pair<std::string, std::string>;
  struct slot {
    const type_entry* type = nullptr;
    std::string id;
    std::int32_t shard = 1;
    void* instance = nullptr;
    bool busy = false;
    bool evict = false;
    bool stop = false;  // kit::stop: stop_requested() is true, sleeps end at once
    std::deque<message> mailbox;
  };

  // The host side of a cluster_call_context: one per running message, and one on the
  // stack while `create` runs.
  struct invocation {
    kit_state* kit = nullptr;
    slot_key key;
    std::string rpc;
    cluster_call_context ctx{};
    message msg;
    bool creating = false;
    std::string* creation_error = nullptr;
    bool state_set = false;          // the handler called set_state
    std::optional<bytes> new_state;  // what it set (nullopt: clear)
    std::string state_refused;       // the runner's Defect for a set_state it refuses
    std::string stream_refused;      // the runner's Defect for a stream_write it refuses
    /// Calls to other entities not answered yet: a cancel completes them at once.
    struct open_call {
      cluster_call_done_fn done;
      void* user;
      bool completed = false;
    };
    std::vector<std::shared_ptr<open_call>> open_calls;

    bool is_cancelled() const { return msg.sink && msg.sink->cancelled; }

    void bind(const slot& s) {
      ctx = cluster_call_context{};
      ctx.struct_size = sizeof(cluster_call_context);
      ctx.shard = s.shard;
      ctx.entity_type = s.type->name.c_str();
      ctx.entity_id = key.second.c_str();
      ctx.shard_group = s.type->group.c_str();
      ctx.rpc = rpc.c_str();
      ctx.api = &api;
      ctx.host_ctx = this;
    }

    static void log(void* host_ctx, std::int32_t level, const char* text) {
      auto* self = static_cast<invocation*>(host_ctx);
      const std::string line = text ? text : "";
      self->kit->logs_.push_back(log_line{self->key.first, self->key.second, level, line});
      if (self->kit->options_.echo_logs)
        std::cerr << "[" << level << "] " << self->key.first << "/" << self->key.second << ": "
                  << line << "\n";
      if (self->creation_error != nullptr && level >= 3) *self->creation_error = line;
    }
    static std::int64_t now_ms(void* host_ctx) {
      return static_cast<invocation*>(host_ctx)->kit->now_ms_;
    }
    static void sleep(void* host_ctx, std::int64_t delay_ms, void (*fire)(void*), void* user) {
      auto* self = static_cast<invocation*>(host_ctx);
      self->kit->sleep(self->key, delay_ms, fire, user);
    }
    static std::int32_t stop_requested(void* host_ctx) {
      auto* self = static_cast<invocation*>(host_ctx);
      const auto it = self->kit->entities_.find(self->key);
      return self->kit->stopping_ || (it != self->kit->entities_.end() && it->second.stop) ? 1 : 0;
    }
    static void call(void* host_ctx, const char* entity_type, const char* entity_id,
                     const char* rpc, const std::uint8_t* payload, std::size_t size,
                     const char* primary_key, cluster_call_done_fn done, void* user) {
      auto* self = static_cast<invocation*>(host_ctx);
      if (self->creating) {
        // The runner's answer: the entity does not exist yet, nothing could take the reply.
        self->kit->post([done, user] {
          done(user, CLUSTER_STATUS_CALL_FAILED, "InvalidRequest",
               "an entity cannot call other entities from its constructor", nullptr, 0);
        });
        return;
      }
      recorded_call record =
          self->record(entity_type, entity_id, rpc, payload, size, primary_key, false);
      kit_state* kit = self->kit;
      if (self->is_cancelled()) {
        kit->post([done, user] { complete_cancelled(done, user); });
        return;
      }
      auto open = std::make_shared<open_call>(open_call{done, user});
      self->open_calls.push_back(open);
      // Never inside `call` (the ABI's promise): routed from the loop.
      kit->post([kit, record = std::move(record), done, user, open]() mutable {
        kit->route_call(std::move(record), [kit, done, user, open](outcome o) {
          kit->post([done, user, open, o = std::move(o)] {
            if (std::exchange(open->completed, true)) return;  // cancelled meanwhile
            const std::int32_t status = o.code.empty() ? CLUSTER_STATUS_OK
                                        : o.code == "ApplicationError"
                                            ? CLUSTER_STATUS_APPLICATION_ERROR
                                            : CLUSTER_STATUS_CALL_FAILED;
            done(user, status, o.code.empty() ? nullptr : o.tag.c_str(),
                 o.code.empty() ? nullptr : o.message.c_str(), o.data.data(), o.data.size());
          });
        });
      });
    }

    /// A call or send of this handler, added to the kit's record of calls.
    recorded_call record(const char* entity_type, const char* entity_id, const char* rpc_name,
                         const std::uint8_t* payload, std::size_t size, const char* primary_key,
                         bool discard) {
      recorded_call made;
      made.from_type = key.first;
      made.from_id = key.second;
      made.entity_type = entity_type ? entity_type : "";
      made.entity_id = entity_id ? entity_id : "";
      made.rpc = rpc_name ? rpc_name : "";
      if (size > 0) made.payload.assign(payload, payload + size);
      if (primary_key != nullptr) made.primary_key = primary_key;
      made.discard = discard;
      kit->calls_.push_back(made);
      return made;
    }

    static void complete_cancelled(cluster_call_done_fn done, void* user) {
      done(user, CLUSTER_STATUS_CALL_FAILED, "Cancelled", "the calling request was cancelled",
           nullptr, 0);
    }

    // The runner's send (host/src/entity_host.cpp): a call with discard, accepted at once.
    static void send(void* host_ctx, const char* entity_type, const char* entity_id,
                     const char* rpc, const std::uint8_t* payload, std::size_t size,
                     const char* primary_key, cluster_call_done_fn done, void* user) {
      auto* self = static_cast<invocation*>(host_ctx);
      if (self->creating) {
        if (done != nullptr)
          self->kit->post([done, user] {
            done(user, CLUSTER_STATUS_CALL_FAILED, "InvalidRequest",
                 "an entity cannot send to other entities from its constructor", nullptr, 0);
          });
        return;
      }
      recorded_call record =
          self->record(entity_type, entity_id, rpc, payload, size, primary_key, true);
      kit_state* kit = self->kit;
      kit->post([kit, record = std::move(record), done, user]() mutable {
        // Accepted once it is queued: a refusal answers at once (no such type or RPC), the
        // outcome of a queued one goes nowhere (the runner logs a failure).
        auto refused = std::make_shared<std::optional<outcome>>();
        auto accepted = std::make_shared<bool>(false);
        kit->route_call(std::move(record), [refused, accepted](outcome o) {
          if (!*accepted && !o.ok()) *refused = std::move(o);
        });
        *accepted = true;
        if (done == nullptr) return;
        kit->post([done, user, refused] {
          if (!*refused) return done(user, CLUSTER_STATUS_OK, nullptr, nullptr, nullptr, 0);
          const outcome& o = **refused;
          done(user,
               o.code == "ApplicationError" ? CLUSTER_STATUS_APPLICATION_ERROR
                                            : CLUSTER_STATUS_CALL_FAILED,
               o.tag.c_str(), o.message.c_str(), nullptr, 0);
        });
      });
    }

    // The runner's stream_write (host/src/entity_host.cpp): within the caller's credit.
    static void stream_write(void* host_ctx, const std::uint8_t* data, std::size_t size,
                             void (*ready)(void*), void* user) {
      auto* self = static_cast<invocation*>(host_ctx);
      kit_state* kit = self->kit;
      const auto it = kit->entities_.find(self->key);
      const bool streams = !self->creating && it != kit->entities_.end() &&
                           it->second.type->streams(self->msg.rpc_index);
      if (!streams) {
        if (!self->creating && self->stream_refused.empty())
          self->stream_refused = "stream_write outside a streaming RPC (" + self->key.first + "." +
                                 self->rpc + " is not declared CLUSTER_RPC_STREAM)";
        kit->post([ready, user] { ready(user); });
        return;
      }
      auto& sink = self->msg.sink;
      if (!sink || sink->cancelled) {
        kit->post([ready, user] { ready(user); });  // nobody reads it (an entity's call)
        return;
      }
      if (sink->credit == 0) {
        sink->waiting.emplace_back(bytes(data, data + size), ready, user);
        return;
      }
      --sink->credit;
      sink->items.emplace_back(data, data + size);
      kit->post([ready, user] { ready(user); });
    }

    static std::int32_t cancelled(void* host_ctx) {
      return static_cast<invocation*>(host_ctx)->is_cancelled() ? 1 : 0;
    }

    // The runner's mapping of a handler's reply (host/src/entity_host.cpp, on_reply).
    static void on_reply(void* reply_ctx, std::int32_t status, const char* tag, const char* text,
                         const std::uint8_t* data, std::size_t size) {
      auto* self = static_cast<invocation*>(reply_ctx);
      const std::string tag_text = tag ? tag : "";
      const std::string message_text = text ? text : "";
      outcome o;
      switch (status) {
        case CLUSTER_STATUS_OK:
          o = outcome::success(size > 0 ? bytes(data, data + size) : bytes());
          break;
        case CLUSTER_STATUS_APPLICATION_ERROR:
          o = outcome::failure("ApplicationError", message_text,
                               tag_text.empty() ? "ApplicationError" : tag_text);
          break;
        case CLUSTER_STATUS_BAD_PAYLOAD:
          o = outcome::failure("BadPayload", "payload does not decode as " + self->key.first + "." +
                                                 self->rpc + "'s request: " + message_text);
          break;
        case CLUSTER_STATUS_CANCELLED:
          o = outcome::failure("Cancelled",
                               self->is_cancelled() ? "interrupted by the caller" : message_text);
          break;
        default:
          o = outcome::failure("Defect", message_text);
          break;
      }
      self->kit->finish(self, std::move(o));
    }

    // The runner's checks (host/src/entity_host.cpp, set_state).
    static void set_state(void* host_ctx, const std::uint8_t* data, std::size_t size,
                          std::uint32_t flags) {
      auto* self = static_cast<invocation*>(host_ctx);
      const auto it = self->kit->entities_.find(self->key);
      const type_entry* type = it == self->kit->entities_.end() ? nullptr : it->second.type;
      if (self->creating) {
        self->state_refused = "set_state is only valid inside a handler";
      } else if (type == nullptr || !type->stateful()) {
        self->state_refused = "set_state on entity type '" + self->key.first +
                              "', which does not declare CLUSTER_ENTITY_STATEFUL";
      } else if (type->read_only(self->msg.rpc_index)) {
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

    static constexpr cluster_host_api api = {sizeof(cluster_host_api),
                                             0,
                                             &log,
                                             &call,
                                             &now_ms,
                                             &sleep,
                                             &set_state,
                                             &stop_requested,
                                             &stream_write,
                                             &cancelled,
                                             &send};
  };

  kit_state(cluster_plugin_entry_fn entry, kit_options options, std::shared_ptr<void> library)
      : library_(std::move(library)), options_(std::move(options)), now_ms_(options_.start_ms) {
    read_descriptor(entry);
    // Cron jobs tick from the start, as on a runner serving them.
    for (const auto& [name, type] : types_)
      if (type.cron) schedule_tick(name, type.cron->next_after(now_ms_));
  }
  kit_state(const kit_state&) = delete;
  kit_state& operator=(const kit_state&) = delete;

  ~kit_state() {
    // Lets handlers still waiting on the clock finish, so their coroutine frames are freed:
    // as a stopping runner, it asks them to stop (a singleton's run returns) and schedules
    // no more cron ticks.
    stopping_ = true;
    for (const auto& entry : entities_) stop(entry.first.first, entry.first.second);
    try {
      for (int round = 0; round < 10'000 && !timers_.empty(); ++round) {
        run();
        if (timers_.empty()) break;
        now_ms_ = std::max(now_ms_, timers_.begin()->first);
        run();
      }
      run();
    } catch (...) {
      // A handler that never settles: what is left is leaked, as a stopped runner leaks it.
    }
    for (auto& [key, s] : entities_)
      if (!s.busy && s.instance != nullptr)
        s.type->descriptor.destroy(s.type->descriptor.type_data, s.instance);
  }

  // --- the test's side ------------------------------------------------------------------
  std::shared_ptr<const outcome> send(std::string_view type, std::string_view id,
                                      std::string_view rpc, bytes payload,
                                      const call_options& options,
                                      std::shared_ptr<stream_sink> sink = {}) {
    auto state = std::make_shared<outcome>();
    deliver(
        std::string(type), std::string(id), std::string(rpc), std::move(payload),
        options.primary_key, options.deliver_at_ms, [state](outcome o) { *state = std::move(o); },
        std::move(sink));
    run();
    return state;
  }

  /// The test grants `credit` more items: writes waiting for it go now.
  void grant(stream_sink& sink, std::uint32_t credit) {
    sink.credit += credit;
    std::size_t released = 0;
    for (; released < sink.waiting.size() && sink.credit > 0; ++released) {
      auto [item, ready, user] = std::move(sink.waiting[released]);
      --sink.credit;
      sink.items.push_back(std::move(item));
      post([ready = ready, user = user] { ready(user); });
    }
    sink.waiting.erase(sink.waiting.begin(),
                       sink.waiting.begin() + static_cast<std::ptrdiff_t>(released));
    run();
  }

  /// As a caller's interrupt: a queued request is answered Cancelled, a running handler is
  /// told (`ctx.cancelled()`, its sleeps and calls end now).
  void cancel(stream_sink& sink) {
    if (sink.cancelled) return;
    sink.cancelled = true;
    for (auto& [item, ready, user] : sink.waiting)
      post([ready = ready, user = user] { ready(user); });
    sink.waiting.clear();
    if (auto hook = std::move(sink.on_cancel)) {
      sink.on_cancel = nullptr;
      hook();
    }
    run();
  }

  void run() {
    std::size_t steps = 0;
    for (;;) {
      if (!posted_.empty()) {
        auto next = std::move(posted_.front());
        posted_.pop_front();
        next();
      } else if (!timers_.empty() && timers_.begin()->first <= now_ms_) {
        auto next = std::move(timers_.begin()->second);
        timers_.erase(timers_.begin());
        next();
      } else {
        return;
      }
      if (++steps >= options_.max_steps)
        throw std::runtime_error("the entities did not settle after " + std::to_string(steps) +
                                 " steps (a handler loops on sleep_ms(0) or on calls?)");
    }
  }

  void advance_ms(std::int64_t delta_ms) {
    if (delta_ms < 0) throw std::invalid_argument("advance_ms: the clock does not go back");
    const std::int64_t target = now_ms_ + delta_ms;
    run();
    while (!timers_.empty() && timers_.begin()->first <= target) {
      now_ms_ = std::max(now_ms_, timers_.begin()->first);
      run();
    }
    now_ms_ = target;
    run();
  }

  void passivate(const std::string& type, const std::string& id) {
    auto it = entities_.find(slot_key{type, id});
    if (it == entities_.end()) return;
    if (it->second.busy || !it->second.mailbox.empty()) {
      it->second.evict = true;  // once its messages are done
      return;
    }
    destroy(it);
  }

  std::vector<reply<bytes>> replay_persisted() {
    run();
    for (const auto& [key, s] : entities_)
      if (s.busy || !s.mailbox.empty())
        throw std::logic_error("replay_persisted: " + key.first + "/" + key.second +
                               " is still running a message (advance the clock first)");
    while (!entities_.empty()) destroy(entities_.begin());
    // A crash before any of their commits: the states go back to before the first of them.
    for (const auto& [key, before] : before_persisted_) {
      if (before) {
        stored_states_[key] = *before;
      } else {
        stored_states_.erase(key);
      }
    }
    std::vector<std::shared_ptr<outcome>> states;
    const auto replayed = persisted_;  // replays are not recorded again
    for (const auto& p : replayed) {
      auto state = states.emplace_back(std::make_shared<outcome>());
      const type_entry* type = find(p.entity_type);
      const auto index = type ? type->rpc_index(p.rpc) : std::nullopt;
      if (!index) {
        *state = outcome::failure("UnknownRpc", "no handler for " + p.entity_type + "." + p.rpc);
        continue;
      }
      message m;
      m.rpc_index = *index;
      m.payload = p.payload;
      m.persisted = true;
      m.done = [state](outcome o) { *state = std::move(o); };
      enqueue(*type, p.entity_id, std::move(m));
    }
    run();
    std::vector<reply<bytes>> replies;
    for (const auto& state : states) replies.push_back(decode_reply<bytes>(*state));
    return replies;
  }

  template <class F>
  void stub(std::string type, std::string rpc, F fn) {
    stubs_[slot_key{std::move(type), std::move(rpc)}] = std::move(fn);
  }

  /// Calls the singleton's run (RPC 0) as a runner does once it serves it.
  std::shared_ptr<const outcome> start_singleton(std::string_view name) {
    const type_entry* type = find(name);
    if (type == nullptr || (type->descriptor.flags & CLUSTER_ENTITY_SINGLETON) == 0)
      throw std::invalid_argument("'" + std::string(name) + "' is not a singleton of the plugin");
    return send(name, "singleton", type->rpc_names.at(0), bytes{0x80}, call_options{});
  }

  /// Asks the entity's running handler to stop: stop_requested() turns true, its sleeps fire
  /// now. Its next message starts without a stop.
  void stop(const std::string& type, const std::string& id) {
    auto it = entities_.find(slot_key{type, id});
    if (it == entities_.end()) return;
    it->second.stop = true;
    for (auto& [sleep_id, pending] : sleeps_)
      if (pending.key == it->first) post([this, sleep_id = sleep_id] { wake(sleep_id); });
  }

  bool active(const std::string& type, const std::string& id) const {
    auto it = entities_.find(slot_key{type, id});
    return it != entities_.end() && it->second.instance != nullptr;
  }

  // --- what tests read ------------------------------------------------------------------
  std::shared_ptr<void> library_;  // first: unloaded after everything that points into it
  kit_options options_;
  std::int64_t now_ms_;
  std::string plugin_name_, plugin_version_;
  std::map<std::string, type_entry, std::less<>> types_;
  std::vector<recorded_call> calls_;
  std::vector<persisted_call> persisted_;
  /// Stateful entities' stored state, as the runner's store keeps it: across passivations.
  std::map<slot_key, bytes> stored_states_;
  /// Each entity's stored state before its first persisted message (nullopt: none stored):
  /// what `replay_persisted` goes back to.
  std::map<slot_key, std::optional<bytes>> before_persisted_;
  std::vector<log_line> logs_;
  std::size_t activations_ = 0;
  std::size_t passivations_ = 0;

 private:
  void post(std::function<void()> fn) { posted_.push_back(std::move(fn)); }

  struct pending_sleep {
    slot_key key;
    void (*fire)(void*);
    void* user;
  };
  void sleep(const slot_key& key, std::int64_t delay_ms, void (*fire)(void*), void* user) {
    const std::uint64_t id = ++last_sleep_;
    sleeps_.emplace(id, pending_sleep{key, fire, user});
    const auto it = entities_.find(key);
    if (stopping_ || (it != entities_.end() && it->second.stop)) {
      post([this, id] { wake(id); });
      return;
    }
    at(now_ms_ + std::max<std::int64_t>(0, delay_ms), [this, id] { wake(id); });
  }
  // A sleep ends once: by its time, or earlier by a stop.
  void wake(std::uint64_t id) {
    auto it = sleeps_.find(id);
    if (it == sleeps_.end()) return;
    const pending_sleep due = it->second;
    sleeps_.erase(it);
    due.fire(due.user);
  }

  // A cron job's tick at `scheduled_ms`: delivered then as the runner stores it (persisted,
  // key "cron:<scheduled_ms>"); once answered, the next one after it (and after now).
  void schedule_tick(const std::string& name, std::int64_t scheduled_ms) {
    at(scheduled_ms, [this, name, scheduled_ms] {
      if (stopping_) return;
      const type_entry* type = find(name);
      if (type == nullptr) return;
      msgpack::sbuffer buffer;
      msgpack::packer<msgpack::sbuffer> packer(buffer);
      packer.pack_map(2);
      packer.pack(std::string_view("scheduled_ms"));
      packer.pack(scheduled_ms);
      packer.pack(std::string_view("fired_ms"));
      packer.pack(now_ms_);
      deliver(name, "cron", type->rpc_names.at(0),
              bytes(buffer.data(), buffer.data() + buffer.size()),
              "cron:" + std::to_string(scheduled_ms), std::nullopt,
              [this, name, scheduled_ms](outcome) {
                const type_entry* current = find(name);
                if (stopping_ || current == nullptr || !current->cron) return;
                schedule_tick(name, std::max(current->cron->next_after(scheduled_ms),
                                             current->cron->next_after(now_ms_)));
              });
    });
  }
  void at(std::int64_t due_ms, std::function<void()> fn) {
    timers_.emplace(due_ms, std::move(fn));  // after the ones due at the same time
  }

  const type_entry* find(std::string_view type) const {
    auto it = types_.find(type);
    return it == types_.end() ? nullptr : &it->second;
  }

  // Where a call lands: a stub, one of the plugin's entities, or nowhere (as in a cluster
  // where no runner has the type).
  void route_call(recorded_call record, done_fn done) {
    if (auto it = stubs_.find(slot_key{record.entity_type, record.rpc}); it != stubs_.end()) {
      done(it->second(record));
      return;
    }
    for (const auto& [key, fn] : stubs_)
      if (key.first == record.entity_type && find(record.entity_type) == nullptr) {
        done(outcome::failure("UnknownRpc", "entity type '" + record.entity_type +
                                                "' has no RPC '" + record.rpc + "' (not stubbed)"));
        return;
      }
    deliver(std::move(record.entity_type), std::move(record.entity_id), std::move(record.rpc),
            std::move(record.payload), std::move(record.primary_key), std::nullopt,
            std::move(done));
  }

  struct keyed_entry {
    std::string rpc;
    bytes payload;
    std::optional<outcome> reply;
    std::vector<done_fn> waiting;
  };

  void deliver(std::string type_name, std::string id, std::string rpc, bytes payload,
               std::optional<std::string> primary_key, std::optional<std::int64_t> deliver_at_ms,
               done_fn done, std::shared_ptr<stream_sink> sink = {}) {
    const type_entry* type = find(type_name);
    if (type == nullptr) {
      done(outcome::failure("UnknownEntityType",
                            "no runner serves entity type '" + type_name +
                                "' (the plugin has no such type and the kit no stub for it)"));
      return;
    }
    const auto index = type->rpc_index(rpc);
    if (!index) {
      done(outcome::failure("UnknownRpc",
                            "entity type '" + type_name + "' has no RPC '" + rpc + "'"));
      return;
    }
    const bool persisted = type->persisted(*index);
    if (persisted && primary_key) {
      auto key = std::make_tuple(type_name, id, *primary_key);
      auto [it, fresh] = keyed_.try_emplace(key);
      keyed_entry& entry = it->second;
      if (!fresh) {
        if (entry.rpc != rpc || entry.payload != payload) {
          done(outcome::failure("InvalidRequest", "primary key reused with a different request"));
        } else if (entry.reply) {
          done(*entry.reply);
        } else {
          entry.waiting.push_back(std::move(done));
        }
        return;
      }
      entry.rpc = rpc;
      entry.payload = payload;
      entry.waiting.push_back(std::move(done));
      done = [this, key](outcome o) {
        keyed_entry& stored = keyed_[key];
        stored.reply = o;
        auto waiting = std::move(stored.waiting);
        for (auto& w : waiting) w(o);
      };
    }
    if (persisted) {
      persisted_.push_back(persisted_call{type_name, id, rpc, payload, primary_key});
      slot_key state_key{type_name, id};
      if (type->stateful() && before_persisted_.count(state_key) == 0) {
        auto stored = stored_states_.find(state_key);
        before_persisted_.emplace(state_key, stored == stored_states_.end()
                                                 ? std::nullopt
                                                 : std::optional<bytes>(stored->second));
      }
    }
    message m;
    m.rpc_index = *index;
    m.payload = std::move(payload);
    m.persisted = persisted;
    m.done = std::move(done);
    m.sink = std::move(sink);
    if (m.sink) {
      // Until it runs, a cancel answers it Cancelled (it never runs).
      m.sink->on_cancel = [this, raw = m.sink.get(), key = slot_key{type_name, id}] {
        cancel_queued(key, raw);
      };
    }
    if (persisted && deliver_at_ms && *deliver_at_ms > now_ms_) {
      auto held = std::make_shared<message>(std::move(m));
      at(*deliver_at_ms, [this, type, id, held] {
        if (held->sink && held->sink->cancelled) return;  // answered when it was cancelled
        enqueue(*type, id, std::move(*held));
      });
      if (held->sink)
        held->sink->on_cancel = [held] {
          auto answer = std::move(held->done);
          held->done = [](outcome) {};
          answer(outcome::failure("Cancelled", "interrupted by the caller before it ran"));
        };
      return;
    }
    enqueue(*type, id, std::move(m));
  }

  void enqueue(const type_entry& type, const std::string& id, message m) {
    slot_key key{type.name, id};
    auto it = entities_.find(key);
    if (it == entities_.end()) {
      slot fresh;
      fresh.type = &type;
      fresh.id = id;
      fresh.shard = options_.shard_of ? options_.shard_of(id) : 1;
      std::string why;
      if (!activate(key, fresh, why)) {
        m.done(outcome::failure("Defect", why));
        return;
      }
      it = entities_.emplace(key, std::move(fresh)).first;
    }
    it->second.evict = false;
    it->second.mailbox.push_back(std::move(m));
    if (!it->second.busy) run_next(key);
  }

  bool activate(const slot_key& key, slot& s, std::string& why) {
    std::string creation_error;
    invocation creating;
    creating.kit = this;
    creating.key = key;
    creating.creating = true;
    creating.creation_error = &creation_error;
    creating.bind(s);
    if (s.type->stateful()) {
      if (auto stored = stored_states_.find(key); stored != stored_states_.end()) {
        creating.ctx.state = stored->second.data();
        creating.ctx.state_size = stored->second.size();
      }
    }
    s.instance = s.type->descriptor.create(s.type->descriptor.type_data, &creating.ctx);
    if (s.instance != nullptr) {
      ++activations_;
      return true;
    }
    // The runner's text (host/src/entity_host.cpp, activate).
    why = "activation of " + key.first + "/" + key.second + " failed in its constructor" +
          (creation_error.empty() ? std::string() : ": " + creation_error);
    return false;
  }

  void run_next(const slot_key& key) {
    auto it = entities_.find(key);
    if (it == entities_.end()) return;
    slot& s = it->second;
    while (!s.busy && !s.mailbox.empty()) {
      message next = std::move(s.mailbox.front());
      s.mailbox.pop_front();
      if (s.instance == nullptr) {  // a rerun after a simulated crash: a fresh instance
        std::string why;
        if (!activate(key, s, why)) {
          next.done(outcome::failure("Defect", why));
          continue;
        }
      }
      s.busy = true;
      s.stop = stopping_;
      auto* call = new invocation;
      call->kit = this;
      call->key = key;
      call->rpc = s.type->rpc_names[next.rpc_index];
      call->msg = std::move(next);
      call->bind(s);
      if (call->msg.sink) call->msg.sink->on_cancel = [this, call] { cancel_running(call); };
      const auto& d = s.type->descriptor;
      d.handle(d.type_data, s.instance, call->msg.rpc_index, call->msg.payload.data(),
               call->msg.payload.size(), &call->ctx, &invocation::on_reply, call);
      return;  // the reply (maybe sent already) schedules the next message
    }
    if (!s.busy && s.mailbox.empty() && s.evict) destroy(it);
  }

  void cancel_queued(const slot_key& key, const stream_sink* sink) {
    auto it = entities_.find(key);
    if (it == entities_.end()) return;
    auto& mailbox = it->second.mailbox;
    for (auto m = mailbox.begin(); m != mailbox.end(); ++m) {
      if (m->sink.get() != sink) continue;
      auto done = std::move(m->done);
      mailbox.erase(m);
      done(outcome::failure("Cancelled", "interrupted by the caller before it ran"));
      return;
    }
  }

  // The runner's cancel of a running handler: its sleeps end and its calls complete now.
  void cancel_running(invocation* call) {
    for (auto& [sleep_id, pending] : sleeps_)
      if (pending.key == call->key) post([this, sleep_id = sleep_id] { wake(sleep_id); });
    for (auto& open : call->open_calls) {
      if (std::exchange(open->completed, true)) continue;
      post([done = open->done, user = open->user] { invocation::complete_cancelled(done, user); });
    }
    call->open_calls.clear();
  }

  void finish(invocation* call, outcome o) {
    const slot_key key = call->key;
    if (call->msg.sink) call->msg.sink->on_cancel = nullptr;
    if (!call->stream_refused.empty() && o.ok())
      o = outcome::failure("Defect", call->stream_refused);
    message msg = std::move(call->msg);
    std::unique_ptr<invocation> ended(call);
    auto it = entities_.find(key);
    if (it != entities_.end()) {
      slot& s = it->second;
      s.busy = false;
      const bool crash_before_commit =
          msg.persisted && options_.run_persisted_twice && !msg.second_run;
      if (!ended->state_refused.empty()) {
        // The runner's answer: a Defect, and the activation dropped.
        o = outcome::failure("Defect", ended->state_refused);
        drop_instance(s);
      } else if (ended->state_set && !crash_before_commit) {
        // Stored before the reply, as the runner commits it (with a persisted RPC's reply).
        if (ended->new_state) {
          stored_states_[key] = std::move(*ended->new_state);
        } else {
          stored_states_.erase(key);
        }
      }
      if (crash_before_commit) {
        // A crash after the handler ran, before its reply (and state) was stored: the instance
        // is gone and the message runs again on a fresh one, from the state stored before;
        // its caller sees only the second reply.
        drop_instance(s);
        msg.second_run = true;
        s.mailbox.push_front(std::move(msg));
        post([this, key] { run_next(key); });
        return;
      }
    }
    msg.done(std::move(o));
    // Posted, like the runner: a long mailbox of synchronous handlers does not grow the stack.
    post([this, key] { run_next(key); });
  }

  void drop_instance(slot& s) {
    if (s.instance == nullptr) return;
    s.type->descriptor.destroy(s.type->descriptor.type_data, s.instance);
    s.instance = nullptr;
    ++passivations_;
  }

  void destroy(std::map<slot_key, slot>::iterator it) {
    slot& s = it->second;
    if (s.instance != nullptr) s.type->descriptor.destroy(s.type->descriptor.type_data, s.instance);
    ++passivations_;
    entities_.erase(it);
  }

  // Reads the descriptor the way the runner does: copies each struct by the writer's
  // struct_size into a zeroed one, refuses another major or a newer minor.
  void read_descriptor(cluster_plugin_entry_fn entry) {
    if (entry == nullptr) throw std::invalid_argument("the plugin has no entry function");
    char error[512] = {};
    cluster_load_context load{};
    load.struct_size = sizeof load;
    load.host_abi_major = CLUSTER_ABI_MAJOR;
    load.host_abi_minor = CLUSTER_ABI_MINOR;
    load.error = error;
    load.error_size = sizeof error;
    const cluster_plugin_descriptor* source = entry(&load);
    if (source == nullptr)
      throw std::runtime_error(error[0] != '\0' ? std::string("entry failed: ") + error
                                                : "entry returned no descriptor");
    if (source->abi_major != CLUSTER_ABI_MAJOR || source->abi_minor > CLUSTER_ABI_MINOR)
      throw std::runtime_error("ABI version " + std::to_string(source->abi_major) + "." +
                               std::to_string(source->abi_minor) + " is not loadable by ABI " +
                               std::to_string(CLUSTER_ABI_MAJOR) + "." +
                               std::to_string(CLUSTER_ABI_MINOR));
    cluster_plugin_descriptor d{};
    copy_by_size(d, source, source->struct_size, "the plugin descriptor");
    plugin_name_ = d.plugin_name ? d.plugin_name : "";
    plugin_version_ = d.plugin_version && d.plugin_version[0] ? d.plugin_version : "0.0.0";
    if (d.entity_count == 0 || d.entities == nullptr)
      throw std::runtime_error("declares no entity types");
    for (std::uint32_t i = 0; i < d.entity_count; ++i) {
      const cluster_entity_descriptor* e = d.entities[i];
      if (e == nullptr) throw std::runtime_error("entity type " + std::to_string(i) + " is NULL");
      type_entry type;
      copy_by_size(type.descriptor, e, e->struct_size, "entity type " + std::to_string(i));
      auto& td = type.descriptor;
      if (td.name == nullptr || td.name[0] == '\0')
        throw std::runtime_error("entity type " + std::to_string(i) + " has no name");
      type.name = td.name;
      type.group = td.shard_group && td.shard_group[0] ? td.shard_group : "default";
      if (td.create == nullptr || td.destroy == nullptr || td.handle == nullptr)
        throw std::runtime_error("entity type '" + type.name + "' lacks create, destroy or handle");
      if (td.rpc_count > 0 && td.rpcs == nullptr)
        throw std::runtime_error("entity type '" + type.name + "' has no RPC table");
      for (std::uint32_t r = 0; r < td.rpc_count; ++r) {
        const cluster_rpc_descriptor* rd = td.rpcs[r];
        if (rd == nullptr) throw std::runtime_error("an RPC of '" + type.name + "' is NULL");
        cluster_rpc_descriptor copy{};
        copy_by_size(copy, rd, rd->struct_size, "an RPC of '" + type.name + "'");
        const std::string rpc_name = copy.name ? copy.name : "";
        if (rpc_name.empty())
          throw std::runtime_error("entity type '" + type.name + "' has an RPC without a name");
        if (type.rpc_index(rpc_name))
          throw std::runtime_error("entity type '" + type.name + "' declares RPC '" + rpc_name +
                                   "' twice");
        constexpr std::uint32_t persisted_stream = CLUSTER_RPC_PERSISTED | CLUSTER_RPC_STREAM;
        if ((copy.flags & persisted_stream) == persisted_stream)
          throw std::runtime_error("RPC " + rpc_name + " of " + type.name +
                                   " is both persisted and streaming");
        copy.name = nullptr;  // names are kept in rpc_names
        type.rpcs.push_back(copy);
        type.rpc_names.push_back(rpc_name);
      }
      td.rpcs = nullptr;
      // What the runner's registry refuses.
      if ((td.flags & CLUSTER_ENTITY_CRON) != 0) {
        if (td.cron_schedule == nullptr)
          throw std::runtime_error("cron job '" + type.name + "' has no schedule");
        try {
          type.cron = cluster::cron_schedule::parse(td.cron_schedule);
        } catch (const std::invalid_argument& bad) {
          throw std::runtime_error("cron job '" + type.name + "': " + bad.what());
        }
        if (type.rpcs.empty() || (type.rpcs[0].flags & CLUSTER_RPC_PERSISTED) == 0)
          throw std::runtime_error("cron job '" + type.name + "' has no persisted RPC 0");
      }
      if ((td.flags & CLUSTER_ENTITY_SINGLETON) != 0 && type.rpcs.empty())
        throw std::runtime_error("singleton '" + type.name + "' has no RPC 0 (its run)");
      td.cron_schedule = nullptr;  // kept parsed
      const std::string name = type.name;
      if (!types_.emplace(name, std::move(type)).second)
        throw std::runtime_error("declares entity type '" + name + "' twice");
    }
  }

  template <class T, class S>
  static void copy_by_size(T& target, const S* source, std::uint32_t size,
                           const std::string& what) {
    if (size < offsetof(T, struct_size) + sizeof(std::uint32_t) || size > sizeof(T))
      throw std::runtime_error(what + " claims " + std::to_string(size) + " bytes (this kit's is " +
                               std::to_string(sizeof(T)) + ")");
    std::memcpy(&target, source, size);
  }

  std::map<slot_key, slot> entities_;
  std::map<slot_key, stub_fn> stubs_;
  std::map<std::tuple<std::string, std::string, std::string>, keyed_entry> keyed_;
  std::deque<std::function<void()>> posted_;
  std::multimap<std::int64_t, std::function<void()>> timers_;
  std::map<std::uint64_t, pending_sleep> sleeps_;
  std::uint64_t last_sleep_ = 0;
  bool stopping_ = false;  // the kit is going: runs are asked to stop, no more ticks
};

}  // namespace detail

/// A streaming call sent with `kit::send_stream`: the items so far, the final reply once it
/// came, and the caller's controls (credit, cancel). `Reply` void: the final reply is nil.
template <class Item, class Reply>
class pending_stream {
 public:
  using reply_type = std::conditional_t<std::is_void_v<Reply>, cluster::empty, Reply>;
  pending_stream(std::shared_ptr<const detail::outcome> state,
                 std::shared_ptr<detail::stream_sink> sink, detail::kit_state* kit)
      : state_(std::move(state)), sink_(std::move(sink)), kit_(kit) {}

  /// The items the handler yielded so far (within the credit), decoded; throws msgpack's
  /// exception for one that does not decode as Item.
  std::vector<Item> items() const {
    std::vector<Item> out;
    for (const auto& item : sink_->items)
      out.push_back(::cluster::detail::decode<Item>(item.data(), item.size()));
    return out;
  }
  std::size_t item_count() const { return sink_->items.size(); }
  /// Items the handler wrote that wait for credit.
  std::size_t waiting() const { return sink_->waiting.size(); }
  bool done() const { return state_->done; }
  /// The final reply; "Pending" while the stream runs.
  reply<reply_type> get() const {
    if constexpr (std::is_void_v<Reply>) {
      if (state_->done && state_->code.empty()) return cluster::empty{};
    }
    return detail::decode_reply<reply_type>(*state_);
  }
  /// Accepts `credit` more items (with `call_options::credit` set) and runs what is ready.
  void grant(std::uint32_t credit) { kit_->grant(*sink_, credit); }
  /// Cancels the request as a caller's interrupt does, and runs what is ready.
  void cancel() { kit_->cancel(*sink_); }

 private:
  std::shared_ptr<const detail::outcome> state_;
  std::shared_ptr<detail::stream_sink> sink_;
  detail::kit_state* kit_;
};

/// Runs one plugin's entities in-process. Build it from the plugin linked into the test
/// binary (`kit()`), from any entry function, or from a plugin file (`kit::load`).
class kit {
 public:
  /// The plugin whose sources this test binary links (its CLUSTER_PLUGIN entry).
  /// Throws std::runtime_error when the runner would refuse the plugin.
  explicit kit(kit_options options = {}) : kit(&::cluster_plugin_entry, std::move(options)) {}
  /// The plugin behind `entry`.
  explicit kit(cluster_plugin_entry_fn entry, kit_options options = {})
      : state_(std::make_unique<detail::kit_state>(entry, std::move(options), nullptr)) {}

  /// A plugin file (a `.so` built with cluster_add_plugin), opened with dlopen(RTLD_NOW) as
  /// the runner opens it; unloaded when the kit is destroyed. Throws std::runtime_error when
  /// the file cannot be loaded or the runner would refuse it.
  static kit load(const std::string& path, kit_options options = {}) {
    void* handle = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* why = ::dlerror();
      throw std::runtime_error("cannot load " + path + ": " + (why ? why : "dlopen failed"));
    }
    std::shared_ptr<void> library(handle, [](void* h) { ::dlclose(h); });
    auto entry =
        reinterpret_cast<cluster_plugin_entry_fn>(::dlsym(handle, CLUSTER_PLUGIN_ENTRY_SYMBOL));
    if (entry == nullptr)
      throw std::runtime_error(path + " has no " CLUSTER_PLUGIN_ENTRY_SYMBOL " symbol");
    try {
      return kit(std::make_unique<detail::kit_state>(entry, std::move(options), library));
    } catch (const std::exception& e) {
      throw std::runtime_error(path + ": " + e.what());
    }
  }

  kit(kit&&) noexcept = default;
  kit& operator=(kit&&) noexcept = default;

  // --- calls from the test ----------------------------------------------------------------
  /// Calls RPC `rpc` of entity (`type`, `id`) with a typed request (R has R::Request and
  /// R::Reply) and runs everything that is ready. The reply, or how it failed ("Pending" when
  /// the handler waits on the clock: use `send` and `advance_ms`).
  template <class R>
  reply<typename R::Reply> call(std::string_view type, std::string_view id, std::string_view rpc,
                                const typename R::Request& request, call_options options = {}) {
    return send<R>(type, id, rpc, request, std::move(options)).get();
  }
  /// The same, answered now or after `advance_ms`: `pending::done()`, `pending::get()`.
  template <class R>
  pending<typename R::Reply> send(std::string_view type, std::string_view id, std::string_view rpc,
                                  const typename R::Request& request, call_options options = {}) {
    return pending<typename R::Reply>(
        state_->send(type, id, rpc, detail::encode_bytes(request), options));
  }
  /// Calls streaming RPC `rpc` (R has R::Request, R::Item and R::Reply) and runs everything
  /// that is ready: the items and the final reply, or a `pending_stream` to go on with
  /// (`advance_ms`, `grant`, `cancel`) while the handler waits.
  template <class R>
  pending_stream<typename R::Item, typename R::Reply> send_stream(
      std::string_view type, std::string_view id, std::string_view rpc,
      const typename R::Request& request, call_options options = {}) {
    auto sink = std::make_shared<detail::stream_sink>();
    if (options.credit > 0) sink->credit = options.credit;
    auto state = state_->send(type, id, rpc, detail::encode_bytes(request), options, sink);
    return pending_stream<typename R::Item, typename R::Reply>(std::move(state), std::move(sink),
                                                               state_.get());
  }
  /// A call with payload bytes as they are (a request that does not decode, say).
  reply<bytes> call_raw(std::string_view type, std::string_view id, std::string_view rpc,
                        bytes payload, call_options options = {}) {
    return send_raw(type, id, rpc, std::move(payload), std::move(options)).get();
  }
  pending<bytes> send_raw(std::string_view type, std::string_view id, std::string_view rpc,
                          bytes payload, call_options options = {}) {
    return pending<bytes>(state_->send(type, id, rpc, std::move(payload), options));
  }

  // --- stubs for the entity types the plugin calls ------------------------------------------
  /// Answers the entities' calls to (`type`, `rpc`) with `fn(const R::Request&)` or
  /// `fn(const R::Request&, const recorded_call&)` returning R::Reply. In `fn`, throw
  /// cluster::app_error("Tag", ...) for an ApplicationError, cluster::call_error("Unavailable",
  /// ...) for a cluster error of that name; another exception is a Defect. A stub wins over the
  /// plugin's own type of that name. Calls to a type with neither stub nor entity fail with
  /// UnknownEntityType, as in a cluster where no runner has it.
  template <class R, class F>
  void stub(std::string type, std::string rpc, F fn) {
    using request_type = typename R::Request;
    state_->stub(
        std::move(type), std::move(rpc),
        [fn = std::move(fn)](const recorded_call& made) mutable -> detail::outcome {
          try {
            const auto request = made.request<request_type>();
            if constexpr (std::is_invocable_v<F&, const request_type&, const recorded_call&>) {
              return detail::outcome::success(detail::encode_bytes(fn(request, made)));
            } else {
              return detail::outcome::success(detail::encode_bytes(fn(request)));
            }
          } catch (const cluster::call_error& e) {
            return detail::outcome::failure(e.tag(), e.what());
          } catch (const cluster::app_error& e) {
            return detail::outcome::failure("ApplicationError", e.what(), e.tag());
          } catch (const msgpack::type_error& e) {
            return detail::outcome::failure(
                "BadPayload",
                "payload does not decode as the stub's request: " + std::string(e.what()));
          } catch (const std::exception& e) {
            return detail::outcome::failure("Defect", e.what());
          }
        });
  }
  /// Calls the entities made to other entities, in order (stubbed or not).
  const std::vector<recorded_call>& calls() const { return state_->calls_; }
  /// How many calls went to (`type`, `rpc`).
  std::size_t calls_to(std::string_view type, std::string_view rpc) const {
    std::size_t n = 0;
    for (const auto& c : state_->calls_) n += c.entity_type == type && c.rpc == rpc ? 1 : 0;
    return n;
  }

  // --- the fake clock ------------------------------------------------------------------------
  /// The fake time (unix ms): what `context::now_ms()` returns.
  std::int64_t now_ms() const { return state_->now_ms_; }
  /// Moves the clock forward by `delta_ms`, waking sleeps and delivering deliver-at messages
  /// in time order (each at its own time), and runs everything that becomes ready.
  void advance_ms(std::int64_t delta_ms) { state_->advance_ms(delta_ms); }
  /// Runs everything that is ready now (call/send/advance_ms do it already).
  void run() { state_->run(); }

  // --- singletons and cron jobs ----------------------------------------------------------------
  /// Starts singleton `name`'s run (RPC 0 on entity "singleton"), as a runner does once it
  /// serves it; the run goes on across `advance_ms` until `stop` (or the kit's end).
  pending<cluster::empty> start_singleton(std::string_view name) {
    return pending<cluster::empty>(state_->start_singleton(name));
  }
  /// Asks (`type`, `id`)'s running handler to stop, as a runner does when the shard moves
  /// away: `ctx.stop_requested()` turns true and its sleeps end now. `stop("X", "singleton")`
  /// ends singleton X's run; `run()` (or the next call) lets it finish.
  void stop(const std::string& type, const std::string& id) {
    state_->stop(type, id);
    state_->run();
  }
  // Cron jobs tick by themselves: each tick is delivered when `advance_ms` passes its time,
  // as a persisted message (`persisted()`, key "cron:<scheduled_ms>", fired_ms the kit's time),
  // then the next one after it is due.

  // --- lifecycle -----------------------------------------------------------------------------
  /// Destroys the instance of (`type`, `id`) (after its running and queued messages, if any);
  /// its next message activates a new one, as after a runner passivated it.
  void passivate(const std::string& type, const std::string& id) { state_->passivate(type, id); }
  /// The stored state of stateful entity (`type`, `id`) decoded as S (its state type), as
  /// the runner's store holds it: written when a handler that changed it succeeded, kept
  /// across `passivate`. nullopt when none is stored (never written, or cleared).
  template <class S>
  std::optional<S> stored_state(const std::string& type, const std::string& id) const {
    auto it = state_->stored_states_.find({type, id});
    if (it == state_->stored_states_.end()) return std::nullopt;
    return ::cluster::detail::decode<S>(it->second.data(), it->second.size());
  }
  /// Stores `value` as the state of (`type`, `id`) (its next activation reads it), as if
  /// an earlier run had written it. Passivate an active entity first.
  template <class S>
  void store_state(const std::string& type, const std::string& id, const S& value) {
    const auto buffer = ::cluster::detail::encode(value);
    state_->stored_states_[{type, id}] =
        bytes(reinterpret_cast<const std::uint8_t*>(buffer.data()),
              reinterpret_cast<const std::uint8_t*>(buffer.data()) + buffer.size());
  }
  /// Stores raw bytes as the state of (`type`, `id`) (one that does not decode, say).
  void store_state_bytes(const std::string& type, const std::string& id, bytes data) {
    state_->stored_states_[{type, id}] = std::move(data);
  }
  /// Is (`type`, `id`) active (an instance exists)?
  bool active(const std::string& type, const std::string& id) const {
    return state_->active(type, id);
  }
  /// Instances created and destroyed so far.
  std::size_t activations() const { return state_->activations_; }
  std::size_t passivations() const { return state_->passivations_; }

  // --- persisted messages --------------------------------------------------------------------
  /// Persisted messages delivered so far (replays not included), in delivery order.
  const std::vector<persisted_call>& persisted() const { return state_->persisted_; }
  /// Destroys every instance and runs every persisted message again, in order, on fresh
  /// instances, as a runner replays them after a crash: the replies, in the same order
  /// (decode with `as<T>()`). Throws std::logic_error while a handler still runs.
  /// Stateful entities: a crash before any of those messages' commits, so each entity's
  /// stored state first goes back to what it was before its first persisted message.
  std::vector<reply<bytes>> replay_persisted() { return state_->replay_persisted(); }

  // --- what the plugin declares and logged -----------------------------------------------------
  const std::string& plugin_name() const { return state_->plugin_name_; }
  /// The plugin's own version ("0.0.0" when it gives none).
  const std::string& plugin_version() const { return state_->plugin_version_; }
  std::vector<entity_type_info> entity_types() const {
    std::vector<entity_type_info> out;
    for (const auto& [name, type] : state_->types_) {
      entity_type_info info{name, type.group, {}};
      for (std::size_t i = 0; i < type.rpc_names.size(); ++i)
        info.rpcs.push_back(rpc_info{type.rpc_names[i],
                                     type.persisted(static_cast<std::uint32_t>(i)),
                                     type.streams(static_cast<std::uint32_t>(i))});
      out.push_back(std::move(info));
    }
    return out;
  }
  /// Log lines of the entities (constructors included), in order.
  const std::vector<log_line>& logs() const { return state_->logs_; }
  /// Did an entity log a line containing `text`?
  bool logged(std::string_view text) const {
    for (const auto& line : state_->logs_)
      if (line.message.find(text) != std::string::npos) return true;
    return false;
  }

 private:
  explicit kit(std::unique_ptr<detail::kit_state> state) : state_(std::move(state)) {}
  std::unique_ptr<detail::kit_state> state_;
};

}  // namespace cluster::testing
