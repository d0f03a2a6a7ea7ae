// cluster-plugin-host: runs one entity plugin for a runner (runner.isolation = "process").
//
// The runner starts it with a socketpair end as --channel-fd and the operation board as
// --board-fd, and nothing else of its descriptors. It loads the plugin, reports its catalog,
// then runs the plugin's callbacks as the runner asks (plugin_channel.hpp has the frames).
// Before it enters plugin code it writes the operation's id and the time to the board, so
// the runner can name what a crash interrupted and stop a callback that runs too long.
// It exits when the channel closes and dies with the runner (PR_SET_PDEATHSIG).
//
// Thread: one, running the io_context; plugin callbacks run on it one at a time.
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <deque>
#include <unordered_map>

#include "cluster/host/entity_registry.hpp"
#include "cluster/host/host_services.hpp"
#include "cluster/host/plugin_channel.hpp"
#include "cluster/host/plugin_process.hpp"
#include "cluster/process/settings.hpp"

namespace cluster::host {
namespace {

/// A handler's reply or a call's completion, packed straight from the plugin's buffer.
struct outcome_view {
  std::int32_t status;
  const char* tag;
  const char* message;
  const std::uint8_t* data;
  std::size_t size;
  std::uint32_t state_change = plugin_state_unchanged;
  const bytes* state = nullptr;  // plugin_state_set: the handler's new state
  template <class Packer>
  void msgpack_pack(Packer& packer) const {
    const bool with_state = state_change != plugin_state_unchanged;
    packer.pack_map(with_state ? 6 : 4);
    if (with_state) {
      packer.pack(std::string_view("state_change"));
      packer.pack(state_change);
      packer.pack(std::string_view("state"));
      const auto state_size = static_cast<std::uint32_t>(state ? state->size() : 0);
      packer.pack_bin(state_size);
      if (state_size > 0)
        packer.pack_bin_body(reinterpret_cast<const char*>(state->data()), state_size);
    }
    packer.pack(std::string_view("status"));
    packer.pack(status);
    packer.pack(std::string_view("tag"));
    packer.pack(std::string_view(tag ? tag : ""));
    packer.pack(std::string_view("message"));
    packer.pack(std::string_view(message ? message : ""));
    packer.pack(std::string_view("payload"));
    packer.pack_bin(static_cast<std::uint32_t>(size));
    packer.pack_bin_body(reinterpret_cast<const char*>(data), static_cast<std::uint32_t>(size));
  }
};

/// A stream item, packed straight from the plugin's buffer (plugin_stream_item_msg's key).
struct item_view {
  const std::uint8_t* data;
  std::size_t size;
  template <class Packer>
  void msgpack_pack(Packer& packer) const {
    packer.pack_map(1);
    packer.pack(std::string_view("item"));
    packer.pack_bin(static_cast<std::uint32_t>(size));
    packer.pack_bin_body(reinterpret_cast<const char*>(data), static_cast<std::uint32_t>(size));
  }
};

class plugin_host {
 public:
  plugin_host(asio::io_context& io, std::shared_ptr<plugin_channel> channel, operation_board* board,
              const entity_registry& registry)
      : io_(io), channel_(std::move(channel)), board_(board), registry_(registry) {}

  void on_frame(envelope&& env) {
    switch (static_cast<plugin_kind>(env.kind)) {
      case plugin_kind::create:
        if (auto m = env.as<plugin_create_msg>()) return create(env.id, std::move(m).value());
        break;
      case plugin_kind::destroy:
        if (auto m = env.as<plugin_destroy_msg>()) return destroy(env.id, m.value().instance);
        break;
      case plugin_kind::handle:
        if (auto m = env.as<plugin_handle_msg>()) return handle(env.id, m.value());
        break;
      case plugin_kind::call_done:
        if (auto m = env.as<plugin_outcome_msg>()) return call_done(env.id, m.value());
        break;
      case plugin_kind::stop:
        if (auto m = env.as<plugin_stop_msg>()) return stop(m.value().instance);
        break;
      case plugin_kind::stream_ready:
        return stream_ready(env.id);
      case plugin_kind::cancel:
        return cancel(env.id);
      default:
        break;
    }
    spdlog::critical("unreadable frame of kind {} from the runner", env.kind);
    std::_Exit(3);
  }

 private:
  struct instance {
    const entity_type* type = nullptr;
    std::string id;
    std::int32_t shard = 0;
    void* object = nullptr;
    std::string failure;  // why the constructor failed (object is NULL)
    stop_signal stop;
  };
  /// The host side of one callback's cluster_call_context.
  struct invocation {
    plugin_host* host;
    std::uint64_t operation;
    instance* entity;
    bool creating;
    std::string* creation_error;
    cluster_call_context ctx{};
    std::uint32_t state_change = plugin_state_unchanged;  // what set_state said last
    bytes state;
    /// The runner cancelled the request (cluster_host_api::cancelled); `cancel` ends its
    /// sleeps, the runner its calls.
    bool cancelled = false;
    stop_signal cancel;
    /// The readies of the items it streamed that the runner has not let go yet, oldest first.
    std::deque<std::pair<void (*)(void*), void*>> readies;
  };
  struct call_record {
    cluster_call_done_fn done;
    void* user;
    std::uint64_t operation;
  };
  struct timer_record {
    plugin_host* host;
    std::uint64_t operation;
    void (*fire)(void*);
    void* user;
  };

  /// Marks the board while plugin code runs for `operation`.
  template <class F>
  void run_plugin(std::uint64_t operation, F&& body) {
    const std::uint64_t outer = board_->running.load(std::memory_order_relaxed);
    board_->since_ns.store(monotonic_ns(), std::memory_order_relaxed);
    board_->running.store(operation, std::memory_order_release);
    body();
    board_->running.store(outer, std::memory_order_release);
  }

  void bind(invocation& call, const instance& entity, const char* rpc) {
    call.ctx = cluster_call_context{};
    call.ctx.struct_size = sizeof(cluster_call_context);
    call.ctx.shard = entity.shard;
    call.ctx.entity_type = entity.type->info.name.c_str();
    call.ctx.entity_id = entity.id.c_str();
    call.ctx.shard_group = entity.type->info.group.c_str();
    call.ctx.rpc = rpc;
    call.ctx.api = &api;
    call.ctx.host_ctx = &call;
  }

  void create(std::uint64_t operation, plugin_create_msg m) {
    instance entity;
    entity.type = registry_.find(m.entity_type);
    entity.id = std::move(m.entity_id);
    entity.shard = m.shard;
    if (entity.type == nullptr) {
      entity.failure = "this plugin has no entity type '" + m.entity_type + "'";
      instances_.emplace(m.instance, std::move(entity));
      return;
    }
    auto& stored = instances_.emplace(m.instance, std::move(entity)).first->second;
    std::string creation_error;
    invocation creating{this, operation, &stored, true, &creation_error};
    bind(creating, stored, "");
    if (m.state) {
      creating.ctx.state = m.state->data();
      creating.ctx.state_size = m.state->size();
    }
    run_plugin(operation, [&] { stored.object = stored.type->create(&creating.ctx); });
    if (stored.object == nullptr)
      stored.failure = "activation of " + stored.type->info.name + "/" + stored.id +
                       " failed in its constructor" +
                       (creation_error.empty() ? std::string() : ": " + creation_error);
  }

  void destroy(std::uint64_t operation, std::uint64_t handle) {
    auto it = instances_.find(handle);
    if (it == instances_.end()) return;
    if (it->second.object != nullptr)
      run_plugin(operation, [&] { it->second.type->destroy(it->second.object); });
    instances_.erase(it);
  }

  void stop(std::uint64_t handle) {
    if (auto it = instances_.find(handle); it != instances_.end()) it->second.stop.request();
  }

  void handle(std::uint64_t operation, const plugin_handle_msg& m) {
    auto it = instances_.find(m.instance);
    if (it == instances_.end()) {
      send_reply(operation, CLUSTER_STATUS_DEFECT, nullptr, "no such instance in the plugin host",
                 nullptr, 0);
      return;
    }
    if (it->second.object == nullptr) {
      // The runner activates the entity again for its next message.
      const std::string why = std::move(it->second.failure);
      instances_.erase(it);
      send_reply(operation, host_status_activation_failed, nullptr, why.c_str(), nullptr, 0);
      return;
    }
    instance& entity = it->second;
    // The runner asks for a stop while a handler runs; a new handler starts without one.
    entity.stop.reset();
    const auto& rpcs = entity.type->info.rpcs;
    const char* rpc = m.rpc_index < rpcs.size() ? rpcs[m.rpc_index].name.c_str() : "";
    auto* call = new invocation{this, operation, &entity, false, nullptr};
    bind(*call, entity, rpc);
    call->ctx.fencing_token = m.fencing_token;
    running_.emplace(operation, call);
    run_plugin(operation, [&] {
      entity.type->handle(entity.object, m.rpc_index, m.payload.data(), m.payload.size(),
                          &call->ctx, &plugin_host::on_reply, call);
    });
  }

  /// Frames about a running handler find it here; one that replied since is gone, and so is
  /// every operation of an earlier child (ids are never reused).
  invocation* running(std::uint64_t operation) const {
    auto it = running_.find(operation);
    return it == running_.end() ? nullptr : it->second;
  }

  void stream_ready(std::uint64_t operation) {
    invocation* call = running(operation);
    if (call == nullptr || call->readies.empty()) return;
    const auto [ready, user] = call->readies.front();
    call->readies.pop_front();
    run_plugin(operation, [&] { ready(user); });
  }

  void cancel(std::uint64_t operation) {
    invocation* call = running(operation);
    if (call == nullptr) return;
    call->cancelled = true;
    call->cancel.request();
  }

  void call_done(std::uint64_t id, const plugin_outcome_msg& m) {
    auto it = calls_.find(id);
    if (it == calls_.end()) return;
    const call_record record = it->second;
    calls_.erase(it);
    run_plugin(record.operation, [&] {
      record.done(record.user, m.status, m.tag.empty() ? nullptr : m.tag.c_str(),
                  m.message.empty() ? nullptr : m.message.c_str(), m.payload.data(),
                  m.payload.size());
    });
  }

  void send_reply(std::uint64_t operation, std::int32_t status, const char* tag,
                  const char* message, const std::uint8_t* data, std::size_t size,
                  const invocation* call = nullptr) {
    outcome_view view{status, tag, message, data, size};
    if (call != nullptr) {
      view.state_change = call->state_change;
      view.state = &call->state;
    }
    channel_->send(plugin_kind::reply, operation, view);
  }

  static void on_reply(void* reply_ctx, std::int32_t status, const char* tag, const char* message,
                       const std::uint8_t* data, std::size_t size) {
    std::unique_ptr<invocation> call(static_cast<invocation*>(reply_ctx));
    call->host->running_.erase(call->operation);
    call->host->send_reply(call->operation, status, tag, message, data, size, call.get());
  }

  /// Kept for the reply frame; the runner checks it (stateful type, not read-only).
  static void set_state(void* host_ctx, const std::uint8_t* data, std::size_t size,
                        std::uint32_t flags) {
    auto* call = static_cast<invocation*>(host_ctx);
    if ((flags & CLUSTER_STATE_CLEAR) != 0) {
      call->state_change = plugin_state_cleared;
      call->state.clear();
    } else {
      call->state_change = plugin_state_set;
      call->state.assign(data, data + size);
    }
  }

  static void log(void* host_ctx, std::int32_t level, const char* message) {
    auto* call = static_cast<invocation*>(host_ctx);
    log_for_plugin(call->entity->type->info.name, call->entity->id, level, message);
    if (call->creation_error != nullptr && level >= 3 && message != nullptr)
      *call->creation_error = message;
  }

  static std::int64_t now_ms(void*) { return unix_now_ms(); }

  static void call(void* host_ctx, const char* entity_type, const char* entity_id, const char* rpc,
                   const std::uint8_t* payload, std::size_t size, const char* primary_key,
                   cluster_call_done_fn done, void* user) {
    auto* self = static_cast<invocation*>(host_ctx);
    if (self->creating) {
      refuse_in_constructor(self, done, user,
                            "an entity cannot call other entities from its constructor");
      return;
    }
    self->host->forward(plugin_kind::call, *self, entity_type, entity_id, rpc, payload, size,
                        primary_key, done, user);
  }

  static void send(void* host_ctx, const char* entity_type, const char* entity_id, const char* rpc,
                   const std::uint8_t* payload, std::size_t size, const char* primary_key,
                   cluster_call_done_fn done, void* user) {
    auto* self = static_cast<invocation*>(host_ctx);
    if (self->creating) {
      if (done != nullptr)
        refuse_in_constructor(self, done, user,
                              "an entity cannot send to other entities from its constructor");
      return;
    }
    self->host->forward(plugin_kind::send, *self, entity_type, entity_id, rpc, payload, size,
                        primary_key, done, user);
  }

  static void refuse_in_constructor(const invocation* self, cluster_call_done_fn done, void* user,
                                    const char* why) {
    plugin_host* host = self->host;
    asio::post(host->io_, [host, done, user, why, operation = self->operation] {
      host->run_plugin(operation, [&] {
        done(user, CLUSTER_STATUS_CALL_FAILED, "InvalidRequest", why, nullptr, 0);
      });
    });
  }

  /// A call or a send goes to the runner, which makes it on the handler's context there.
  /// A send without `done` gets id 0: the runner answers nothing for it.
  void forward(plugin_kind kind, const invocation& caller, const char* entity_type,
               const char* entity_id, const char* rpc, const std::uint8_t* payload,
               std::size_t size, const char* primary_key, cluster_call_done_fn done, void* user) {
    std::uint64_t id = 0;
    if (done != nullptr) {
      id = next_call_++;
      calls_.emplace(id, call_record{done, user, caller.operation});
    }
    plugin_call_msg m;
    m.operation = caller.operation;
    m.entity_type = entity_type ? entity_type : "";
    m.entity_id = entity_id ? entity_id : "";
    m.rpc = rpc ? rpc : "";
    m.payload.assign(payload, payload + size);
    if (primary_key != nullptr) m.primary_key = primary_key;
    channel_->send(kind, id, m);
  }

  static void sleep(void* host_ctx, std::int64_t delay_ms, void (*fire)(void*), void* user) {
    auto* self = static_cast<invocation*>(host_ctx);
    auto* record = new timer_record{self->host, self->operation, fire, user};
    // Ended early by a stop of the entity or a cancel of the request, whichever first.
    auto timer = std::make_shared<asio::steady_timer>(self->host->io_);
    timer->expires_after(milliseconds(std::max<std::int64_t>(0, delay_ms)));
    timer->async_wait([timer, record](const error_code&) { timer_fired(record); });
    self->entity->stop.track(timer);
    self->cancel.track(timer);
  }

  /// Handed to the runner's context, which knows the credit and whether the RPC streams;
  /// `ready` runs when its stream_ready comes back (stream_ready above).
  static void stream_write(void* host_ctx, const std::uint8_t* data, std::size_t size,
                           void (*ready)(void*), void* user) {
    auto* self = static_cast<invocation*>(host_ctx);
    plugin_host* host = self->host;
    if (self->creating) {
      // As in the runner: no stream to write to, and not a handler to fail.
      asio::post(host->io_, [host, ready, user, operation = self->operation] {
        host->run_plugin(operation, [&] { ready(user); });
      });
      return;
    }
    self->readies.emplace_back(ready, user);
    host->channel_->send(plugin_kind::stream_item, self->operation, item_view{data, size});
  }

  static std::int32_t cancelled(void* host_ctx) {
    return static_cast<invocation*>(host_ctx)->cancelled ? 1 : 0;
  }

  static std::int32_t stop_requested(void* host_ctx) {
    return static_cast<invocation*>(host_ctx)->entity->stop.requested() ? 1 : 0;
  }

  static void timer_fired(void* user) {
    std::unique_ptr<timer_record> record(static_cast<timer_record*>(user));
    record->host->run_plugin(record->operation, [&] { record->fire(record->user); });
  }

  static const cluster_host_api api;

  asio::io_context& io_;
  std::shared_ptr<plugin_channel> channel_;
  operation_board* board_;
  const entity_registry& registry_;
  std::unordered_map<std::uint64_t, instance> instances_;
  std::unordered_map<std::uint64_t, call_record> calls_;
  std::unordered_map<std::uint64_t, invocation*> running_;  // handlers by operation
  std::uint64_t next_call_ = 1;
};

const cluster_host_api plugin_host::api = {
    sizeof(cluster_host_api),   0,
    &plugin_host::log,          &plugin_host::call,
    &plugin_host::now_ms,       &plugin_host::sleep,
    &plugin_host::set_state,    &plugin_host::stop_requested,
    &plugin_host::stream_write, &plugin_host::cancelled,
    &plugin_host::send,
};

int run(int argc, char** argv) {
  CLI::App app{"cluster-plugin-host: runs one entity plugin for a runner"};
  std::string plugin, level = "info", format = "text";
  int channel_fd = -1, board_fd = -1;
  pid_t parent = 0;
  app.add_option("--plugin", plugin, "the plugin file")->required();
  app.add_option("--channel-fd", channel_fd, "the runner's socketpair end")->required();
  app.add_option("--board-fd", board_fd, "the operation board (a memfd)")->required();
  app.add_option("--parent", parent, "the runner's pid")->required();
  app.add_option("--log-level", level, "log level");
  app.add_option("--log-format", format, "log format: text or json");
  CLI11_PARSE(app, argc, argv);

  // Dies with the runner, also when the runner is killed; and if the runner ended before
  // this line, there is no one to serve.
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) return 4;
  const std::string name = "plugin " + std::filesystem::path(plugin).filename().string();
  if (auto logging = setup_logging(name, level, format); !logging) return 2;

  void* page =
      ::mmap(nullptr, sizeof(operation_board), PROT_READ | PROT_WRITE, MAP_SHARED, board_fd, 0);
  if (page == MAP_FAILED) {
    spdlog::critical("cannot map the operation board");
    return 2;
  }
  auto* board = static_cast<operation_board*>(page);

  entity_registry registry;
  if (auto loaded = registry.load_file(plugin); !loaded) {
    // Written before any loop runs: the runner reads it, then sees this process end.
    const auto refusal = encode_frame(static_cast<message_kind>(plugin_kind::load_failed), 0,
                                      plugin_failure_msg{loaded.error().message});
    const ssize_t written = ::write(channel_fd, refusal.data(), refusal.size());
    std::_Exit(written == static_cast<ssize_t>(refusal.size()) ? 2 : 3);
  }

  asio::io_context io(1);
  plugin_channel::socket_type socket(io, asio::local::stream_protocol(), channel_fd);
  decode_limits limits;
  limits.max_frame_bytes = 64 * 1024 * 1024;  // the runner bounds what callers send
  auto channel = std::make_shared<plugin_channel>(std::move(socket), limits);
  plugin_catalog_msg catalog;
  catalog.types = registry.catalog();
  if (const auto* first = registry.find(catalog.types.front().name)) {
    catalog.plugin_name = first->plugin_name;
    catalog.plugin_version = first->plugin_version;
  }
  channel->send(plugin_kind::catalog, 0, catalog);
  plugin_host host(io, channel, board, registry);
  channel->start([&host](envelope&& env) { host.on_frame(std::move(env)); },
                 [&io](const std::string&) { io.stop(); });
  io.run();
  spdlog::default_logger()->flush();
  // Plugin destructors and static destructors are not run: the runner is gone or done with
  // this process, and a plugin's teardown must not decide how it ends.
  std::_Exit(0);
}

}  // namespace
}  // namespace cluster::host

// In a sanitizer build, a plugin's crash must still end this process by its signal: the
// runner names the signal in the crashed request's Defect. (Unused without ASan.)
extern "C" const char* __asan_default_options() {
  return "handle_segv=0:handle_sigbus=0:handle_abort=0:handle_sigfpe=0:handle_sigill=0";
}

int main(int argc, char** argv) { return cluster::host::run(argc, argv); }
