#include "cluster/host/plugin_process.hpp"

#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <mutex>
#include <optional>

#include "cluster/host/host_services.hpp"
#include "cluster/metrics/metrics.hpp"

extern char** environ;

namespace cluster::host {

namespace {

constexpr int instance_generation_shift = 40;
constexpr milliseconds first_restart_delay{50};
constexpr milliseconds last_restart_delay{5000};
// A child that ran this long was healthy: its successor starts at the first delay again.
constexpr auto healthy_run = std::chrono::seconds(10);
constexpr milliseconds watchdog_period{20};
constexpr std::size_t recent_operations_kept = 64;

int open_pidfd(pid_t pid) { return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)); }

void signal_pidfd(int pidfd, int signal) {
  if (pidfd >= 0) ::syscall(SYS_pidfd_send_signal, pidfd, signal, nullptr, 0);
}

std::string signal_name(int signal) {
  const char* abbreviation = ::sigabbrev_np(signal);
  return abbreviation ? std::string("SIG") + abbreviation : "signal " + std::to_string(signal);
}

std::string describe_exit(int status) {
  if (WIFSIGNALED(status)) return "crashed: " + signal_name(WTERMSIG(status));
  if (WIFEXITED(status)) return "exited with status " + std::to_string(WEXITSTATUS(status));
  return "ended";
}

/// Reaps `pid`; its wait status, or -1 when it was reaped elsewhere.
int reap(pid_t pid) {
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  return status;
}

std::uint64_t resident_bytes(pid_t pid) {
  std::ifstream statm("/proc/" + std::to_string(pid) + "/statm");
  std::uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
}

/// A handle's request, packed straight from the runner's buffer (plugin_handle_msg's keys).
struct handle_view {
  std::uint64_t instance;
  std::uint32_t rpc_index;
  const std::uint8_t* data;
  std::size_t size;
  std::int64_t fencing_token;
  template <class Packer>
  void msgpack_pack(Packer& packer) const {
    packer.pack_map(4);
    packer.pack(std::string_view("instance"));
    packer.pack(instance);
    packer.pack(std::string_view("rpc_index"));
    packer.pack(rpc_index);
    packer.pack(std::string_view("payload"));
    packer.pack_bin(static_cast<std::uint32_t>(size));
    packer.pack_bin_body(reinterpret_cast<const char*>(data), static_cast<std::uint32_t>(size));
    packer.pack(std::string_view("fencing_token"));
    packer.pack(fencing_token);
  }
};

/// The readies the runner owes its children's stream items, by token. The entity host drops
/// a ready it still holds when its request ends (an item that waited for credit when the
/// child crashed), so a ready owns nothing: it carries a token, and the token of an operation
/// that ended finds nothing. Shared by every plugin process in this process, whatever loop
/// each runs on.
class ready_book {
 public:
  struct entry {
    std::weak_ptr<plugin_process> process;
    std::uint64_t operation;
  };
  static ready_book& instance() {
    static ready_book book;
    return book;
  }
  std::uint64_t add(entry e) {
    const std::lock_guard lock(mutex_);
    const std::uint64_t token = next_++;
    entries_.emplace(token, std::move(e));
    return token;
  }
  std::optional<entry> take(std::uint64_t token) {
    const std::lock_guard lock(mutex_);
    auto it = entries_.find(token);
    if (it == entries_.end()) return std::nullopt;
    entry e = std::move(it->second);
    entries_.erase(it);
    return e;
  }
  void drop(const std::vector<std::uint64_t>& tokens) {
    if (tokens.empty()) return;
    const std::lock_guard lock(mutex_);
    for (const auto token : tokens) entries_.erase(token);
  }

 private:
  std::mutex mutex_;
  std::uint64_t next_ = 1;
  std::unordered_map<std::uint64_t, entry> entries_;
};

}  // namespace

struct plugin_process::pending_call {
  std::weak_ptr<plugin_process> process;
  std::uint64_t generation;
  std::uint64_t call_id;
};

plugin_process::plugin_process(asio::io_context& io, std::filesystem::path plugin,
                               isolation_options options, std::string label)
    : io_(io),
      plugin_(std::move(plugin)),
      file_name_(label.empty() ? plugin_.filename().string() : std::move(label)),
      options_(std::move(options)),
      restart_timer_(io),
      watchdog_(io),
      backoff_(first_restart_delay) {}

plugin_process::~plugin_process() {
  shutdown();
  for (const auto& [id, op] : operations_) ready_book::instance().drop(op.readies);
  if (board_ != nullptr) ::munmap(board_, sizeof(operation_board));
  if (board_fd_ >= 0) ::close(board_fd_);
}

result<void> plugin_process::map_board() {
  board_fd_ = ::memfd_create("cluster-operation-board", MFD_CLOEXEC);
  if (board_fd_ < 0 || ::ftruncate(board_fd_, static_cast<off_t>(sizeof(operation_board))) != 0)
    return failure{errc::invalid_request, std::string("memfd: ") + std::strerror(errno)};
  void* page =
      ::mmap(nullptr, sizeof(operation_board), PROT_READ | PROT_WRITE, MAP_SHARED, board_fd_, 0);
  if (page == MAP_FAILED)
    return failure{errc::invalid_request, std::string("mmap: ") + std::strerror(errno)};
  board_ = new (page) operation_board();
  return success();
}

result<std::shared_ptr<plugin_process>> plugin_process::start(asio::io_context& io,
                                                              const std::filesystem::path& plugin,
                                                              const isolation_options& options,
                                                              std::string label) {
  std::shared_ptr<plugin_process> process(
      new plugin_process(io, plugin, options, std::move(label)));
  BOOST_OUTCOME_TRY(process->map_board());
  BOOST_OUTCOME_TRY(fd, process->spawn());
  if (auto loaded = process->await_catalog(fd); !loaded) {
    ::close(fd);
    return loaded.error();
  }
  for (std::size_t i = 0; i < process->catalog_.types.size(); ++i)
    process->types_.push_back(remote_type{process.get(), i});
  process->attach(fd, true);
  spdlog::info("plugin {} runs in process {} (isolation \"process\")", process->file_name_,
               process->pid_);
  return process;
}

void plugin_process::launch(asio::io_context& io, const std::filesystem::path& plugin,
                            const isolation_options& options, std::string label,
                            started_handler done) {
  std::shared_ptr<plugin_process> process(
      new plugin_process(io, plugin, options, std::move(label)));
  auto fd = [&]() -> result<int> {
    BOOST_OUTCOME_TRY(process->map_board());
    return process->spawn();
  }();
  if (!fd) {
    asio::post(io, [done = std::move(done), why = fd.error()]() mutable { done(std::move(why)); });
    return;
  }
  process->on_started_ = std::move(done);
  process->attach(fd.value(), false);
  process->restart_timer_.expires_after(options.start_timeout);
  hold_until_started(std::move(process));
}

void plugin_process::hold_until_started(std::shared_ptr<plugin_process> process) {
  // The timer's handler holds the process until `launch` is answered (or the loop ends):
  // past the start timeout it kills the child and waits for its exit to answer.
  auto& timer = process->restart_timer_;
  timer.async_wait([process = std::move(process)](const error_code& ec) mutable {
    if (ec || !process->on_started_) return;
    process->kill_child("did not load it within " +
                        std::to_string(process->options_.start_timeout.count()) + " ms");
    process->restart_timer_.expires_after(watchdog_period);
    hold_until_started(std::move(process));
  });
}

result<int> plugin_process::spawn() {
  int ends[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, ends) != 0)
    return failure{errc::unavailable, std::string("socketpair: ") + std::strerror(errno)};
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  // The child gets its channel as 3 and the board as 4, and nothing else of the runner's:
  // an inherited database socket would keep the runner's session (and its locks) alive.
  posix_spawn_file_actions_adddup2(&actions, ends[1], 3);
  posix_spawn_file_actions_adddup2(&actions, board_fd_, 4);
  posix_spawn_file_actions_addclosefrom_np(&actions, 5);
  const auto level = spdlog::level::to_string_view(spdlog::get_level());
  std::vector<std::string> args = {options_.plugin_host,
                                   "--plugin",
                                   plugin_.string(),
                                   "--channel-fd",
                                   "3",
                                   "--board-fd",
                                   "4",
                                   "--parent",
                                   std::to_string(::getpid()),
                                   "--log-level",
                                   std::string(level.data(), level.size()),
                                   "--log-format",
                                   options_.log_format};
  std::vector<char*> argv;
  for (auto& arg : args) argv.push_back(arg.data());
  argv.push_back(nullptr);
  board_->running.store(0);
  pid_t pid = -1;
  const int spawned =
      ::posix_spawn(&pid, options_.plugin_host.c_str(), &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  ::close(ends[1]);
  if (spawned != 0) {
    ::close(ends[0]);
    return failure{errc::unavailable, "cannot start " + options_.plugin_host + ": " +
                                          std::strerror(spawned) +
                                          " (set runner.plugin_host to cluster-plugin-host)"};
  }
  pid_ = pid;
  pidfd_ = open_pidfd(pid);
  kill_reason_.clear();
  started_at_ = steady_clock::now();
  return ends[0];
}

result<void> plugin_process::await_catalog(int fd) {
  const auto deadline = steady_clock::now() + options_.start_timeout;
  std::vector<char> buffer(64 * 1024);
  std::size_t filled = 0;
  const auto refuse = [&](std::string why) -> result<void> {
    signal_pidfd(pidfd_, SIGKILL);
    reap(pid_);
    ::close(pidfd_);
    pidfd_ = -1;
    pid_ = -1;
    return failure{errc::invalid_request, std::move(why)};
  };
  while (true) {
    if (filled >= frame_header_size) {
      unsigned char header[frame_header_size];
      std::memcpy(header, buffer.data(), frame_header_size);
      const std::uint32_t size = decode_frame_header(header);
      if (size > options_.limits.max_frame_bytes)
        return refuse("the plugin host sent a frame too large");
      if (buffer.size() < frame_header_size + size) buffer.resize(frame_header_size + size);
      if (filled >= frame_header_size + size) {
        auto env = decode_envelope(buffer.data() + frame_header_size, size, options_.limits);
        if (!env) return refuse("the plugin host sent a malformed frame: " + env.error().message);
        if (env.value().kind == static_cast<std::uint32_t>(plugin_kind::load_failed)) {
          auto why = env.value().as<plugin_failure_msg>();
          return refuse(why ? why.value().message : "the plugin did not load");
        }
        auto catalog = env.value().as<plugin_catalog_msg>();
        if (env.value().kind != static_cast<std::uint32_t>(plugin_kind::catalog) || !catalog)
          return refuse("the plugin host did not send the plugin's catalog");
        catalog_ = std::move(catalog).value();
        return success();
      }
    }
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - steady_clock::now());
    if (left.count() <= 0)
      return refuse("the plugin host did not load it within " +
                    std::to_string(options_.start_timeout.count()) + " ms");
    pollfd wait{fd, POLLIN, 0};
    if (::poll(&wait, 1, static_cast<int>(left.count())) <= 0) continue;
    const ssize_t got = ::read(fd, buffer.data() + filled, buffer.size() - filled);
    if (got > 0) {
      filled += static_cast<std::size_t>(got);
      continue;
    }
    if (got < 0 && errno == EINTR) continue;
    // The child ended before it could answer: the plugin crashed while loading.
    const int status = reap(pid_);
    ::close(pidfd_);
    pidfd_ = -1;
    pid_ = -1;
    return failure{errc::invalid_request, "the plugin " + describe_exit(status) + " while loading"};
  }
}

void plugin_process::attach(int fd, bool ready) {
  plugin_channel::socket_type socket(io_, asio::local::stream_protocol(), fd);
  channel_ = std::make_shared<plugin_channel>(std::move(socket), options_.limits);
  channel_->set_stale_after(options_.stale_after);
  ready_ = ready;
  std::weak_ptr<plugin_process> weak = weak_from_this();
  channel_->start(
      [weak](envelope&& env) {
        if (auto self = weak.lock()) self->on_frame(std::move(env));
      },
      [weak, generation = generation_](const std::string& why) {
        // The child closed its end or sent garbage: it is ending, or must. Its exit (seen on
        // the pidfd) answers its requests.
        auto self = weak.lock();
        if (!self || self->generation_ != generation) return;
        if (self->channel_ && self->channel_->went_stale()) {
          // Frames from before a stall must not run after it (another runner may own their
          // entities now): end the child before it sees them; child_ended answers them.
          self->unsent_from_batch_ = self->channel_->batches_written();
          self->kill_child(why);
          return;
        }
        signal_pidfd(self->pidfd_, SIGKILL);
      });
  watch_exit();
}

void plugin_process::watch_exit() {
  exit_watch_ = std::make_unique<asio::posix::stream_descriptor>(io_, pidfd_);
  exit_watch_->async_wait(
      asio::posix::stream_descriptor::wait_read,
      [weak = weak_from_this(), generation = generation_](const error_code& ec) {
        auto self = weak.lock();
        if (ec || !self || self->generation_ != generation) return;
        self->child_ended();
      });
}

cluster_entity_descriptor plugin_process::descriptor(std::size_t index) {
  const auto& info = catalog_.types[index];
  cluster_entity_descriptor d{};
  d.struct_size = sizeof(cluster_entity_descriptor);
  d.rpc_count = static_cast<std::uint32_t>(info.rpcs.size());
  d.name = info.name.c_str();
  d.shard_group = info.group.c_str();
  d.rpcs = nullptr;
  d.create = &plugin_process::forward_create;
  d.destroy = &plugin_process::forward_destroy;
  d.handle = &plugin_process::forward_handle;
  d.type_data = &types_[index];
  // The options as the child's registry read and checked them; the schedule stays in the
  // catalog (the runner reads entity_type::info, never this pointer).
  d.flags = info.options.flags;
  d.mailbox_capacity = info.options.mailbox_capacity;
  d.max_idle_ms = info.options.max_idle_ms;
  d.concurrency = info.options.concurrency;
  d.cron_missed = info.options.cron_missed;
  d.cron_schedule = nullptr;
  return d;
}

std::vector<cluster_rpc_descriptor> plugin_process::rpc_descriptors(std::size_t index) const {
  std::vector<cluster_rpc_descriptor> rpcs;
  for (const auto& rpc : catalog_.types[index].rpcs) {
    cluster_rpc_descriptor d{};
    d.struct_size = sizeof(cluster_rpc_descriptor);
    d.flags = (rpc.persisted ? CLUSTER_RPC_PERSISTED : 0u) |
              (rpc.read_only ? CLUSTER_RPC_READ_ONLY : 0u) | (rpc.stream ? CLUSTER_RPC_STREAM : 0u);
    d.name = rpc.name.c_str();
    rpcs.push_back(d);
  }
  return rpcs;
}

// --- the descriptor's callbacks (the runner's entity host calls them) ------------------

void* plugin_process::forward_create(void* type_data, const cluster_call_context* ctx) {
  auto* type = static_cast<remote_type*>(type_data);
  plugin_process& self = *type->process;
  const std::uint64_t instance =
      (self.generation_ << instance_generation_shift) | self.next_instance_++;
  const std::uint64_t id = self.new_operation_id();
  const auto& name = self.catalog_.types[type->index].name;
  self.recent_.emplace_back(id, name + "/" + ctx->entity_id + " (its constructor)");
  if (self.recent_.size() > recent_operations_kept) self.recent_.pop_front();
  plugin_create_msg create{instance, name, ctx->entity_id, ctx->shard, std::nullopt};
  if (ctx->state != nullptr) create.state.emplace(ctx->state, ctx->state + ctx->state_size);
  self.send(plugin_kind::create, id, create);
  // Creation is confirmed by the first handle: a constructor that fails answers it.
  return reinterpret_cast<void*>(instance);
}

void plugin_process::forward_destroy(void* type_data, void* instance) {
  auto* type = static_cast<remote_type*>(type_data);
  plugin_process& self = *type->process;
  const auto handle = reinterpret_cast<std::uintptr_t>(instance);
  if ((handle >> instance_generation_shift) != self.generation_) return;  // died with its child
  const std::uint64_t id = self.new_operation_id();
  self.recent_.emplace_back(id, "a destructor of " + self.catalog_.types[type->index].name);
  if (self.recent_.size() > recent_operations_kept) self.recent_.pop_front();
  self.send(plugin_kind::destroy, id, plugin_destroy_msg{handle});
}

void plugin_process::request_stop(void* instance) {
  const auto handle = reinterpret_cast<std::uintptr_t>(instance);
  if ((handle >> instance_generation_shift) != generation_) return;  // died with its child
  send(plugin_kind::stop, 0, plugin_stop_msg{handle});
}

void plugin_process::cancel(void* reply_ctx) {
  // Queued before the Cancelled completions of the handler's pending calls (the entity host
  // posts those), so the child knows why they failed when they arrive.
  if (auto it = by_reply_ctx_.find(reply_ctx); it != by_reply_ctx_.end())
    send(plugin_kind::cancel, it->second, empty_msg{});
}

void plugin_process::forget(std::uint64_t operation_id, const operation& op) {
  if (auto it = by_reply_ctx_.find(op.reply_ctx);
      it != by_reply_ctx_.end() && it->second == operation_id)
    by_reply_ctx_.erase(it);
  ready_book::instance().drop(op.readies);
}

void plugin_process::forward_handle(void* type_data, void* instance, std::uint32_t rpc_index,
                                    const std::uint8_t* payload, std::size_t size,
                                    const cluster_call_context* ctx, cluster_reply_fn reply,
                                    void* reply_ctx) {
  auto* type = static_cast<remote_type*>(type_data);
  plugin_process& self = *type->process;
  const auto handle = reinterpret_cast<std::uintptr_t>(instance);
  if ((handle >> instance_generation_shift) != self.generation_) {
    // The entity host activates again after a crash; an older instance is a bug upstream.
    const std::string message = "plugin " + self.file_name_ + " restarted under this request";
    reply(reply_ctx, host_status_crashed, "Defect", message.c_str(), nullptr, 0);
    return;
  }
  const std::uint64_t id = self.new_operation_id();
  self.operations_.emplace(id, operation{reply, reply_ctx, ctx, self.queued_batch(), {}});
  self.by_reply_ctx_[reply_ctx] = id;
  self.send(plugin_kind::handle, id,
            handle_view{handle, rpc_index, payload, size, ctx->fencing_token});
  self.arm_watchdog();
}

void plugin_process::call_completed(void* user, std::int32_t status, const char* tag,
                                    const char* message, const std::uint8_t* data,
                                    std::size_t size) {
  std::unique_ptr<pending_call> call(static_cast<pending_call*>(user));
  auto self = call->process.lock();
  // A call of a child that has ended since: its handler is gone.
  if (!self || self->generation_ != call->generation) return;
  self->send(plugin_kind::call_done, call->call_id,
             plugin_outcome_msg{status,
                                tag ? tag : "",
                                message ? message : "",
                                bytes(data, data + size),
                                plugin_state_unchanged,
                                {}});
}

void plugin_process::item_went(void* user) {
  const auto token = static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(user));
  auto entry = ready_book::instance().take(token);
  if (!entry) return;  // its operation ended (replied, or lost with its child)
  auto self = entry->process.lock();
  if (!self) return;
  auto it = self->operations_.find(entry->operation);
  if (it == self->operations_.end()) return;
  std::erase(it->second.readies, token);
  self->send(plugin_kind::stream_ready, entry->operation, empty_msg{});
}

// --- frames from the child -------------------------------------------------------------

void plugin_process::on_frame(envelope&& env) {
  switch (static_cast<plugin_kind>(env.kind)) {
    case plugin_kind::catalog:
      if (!ready_ && on_started_) {
        auto catalog = env.as<plugin_catalog_msg>();
        if (!catalog) {
          kill_child("sent a malformed catalog");
          return;
        }
        catalog_ = std::move(catalog).value();
        for (std::size_t i = 0; i < catalog_.types.size(); ++i)
          types_.push_back(remote_type{this, i});
        ready_ = true;
        channel_->send_encoded(outbox_);
        outbox_.clear();
        restart_timer_.cancel();
        spdlog::info("plugin {} runs in process {} (isolation \"process\")", file_name_, pid_);
        auto done = std::move(on_started_);
        on_started_ = nullptr;
        done(shared_from_this());
        return;
      }
      if (!ready_) {
        ready_ = true;
        for (auto& [id, op] : operations_)
          if (op.batch == unsent_batch) op.batch = channel_->batches_written();
        channel_->send_encoded(outbox_);
        outbox_.clear();
        spdlog::info("plugin {} runs again in process {} (restart {})", file_name_, pid_,
                     restarts_);
      }
      return;
    case plugin_kind::load_failed: {
      auto why = env.as<plugin_failure_msg>();
      if (on_started_) {
        start_error_ = why ? why.value().message : "the plugin did not load";
        return;  // the child exits; its exit answers `launch`
      }
      spdlog::error("plugin {} did not load in its new process: {}", file_name_,
                    why ? why.value().message : "no reason given");
      return;  // the child exits; its exit schedules the next attempt
    }
    case plugin_kind::reply: {
      auto it = operations_.find(env.id);
      auto outcome = env.as<plugin_outcome_msg>();
      if (it == operations_.end() || !outcome) {
        kill_child("sent a reply to no request");
        return;
      }
      const operation done = std::move(it->second);
      operations_.erase(it);
      forget(env.id, done);
      const auto& o = outcome.value();
      if (o.state_change != plugin_state_unchanged) {
        // The handler's set_state, on the runner's context, before its reply (as in process).
        done.ctx->api->set_state(done.ctx->host_ctx, o.state.data(), o.state.size(),
                                 o.state_change == plugin_state_cleared ? CLUSTER_STATE_CLEAR : 0u);
      }
      done.reply(done.reply_ctx, o.status, o.tag.c_str(), o.message.c_str(), o.payload.data(),
                 o.payload.size());
      return;
    }
    case plugin_kind::call:
      return forward_call(env, false);
    case plugin_kind::send:
      return forward_call(env, true);
    case plugin_kind::stream_item:
      return forward_item(env);
    default:
      kill_child("sent a frame of unknown kind " + std::to_string(env.kind));
  }
}

void plugin_process::forward_call(const envelope& env, bool discard) {
  auto call = env.as<plugin_call_msg>();
  if (!call) {
    kill_child(discard ? "sent a malformed send" : "sent a malformed call");
    return;
  }
  // A send whose handler wants no completion has id 0: nothing goes back for it.
  const bool answered = !discard || env.id != 0;
  auto& c = call.value();
  auto it = operations_.find(c.operation);
  if (it == operations_.end()) {
    if (answered)
      send(plugin_kind::call_done, env.id,
           plugin_outcome_msg{CLUSTER_STATUS_CALL_FAILED,
                              "InvalidRequest",
                              "the calling handler has already replied",
                              {},
                              plugin_state_unchanged,
                              {}});
    return;
  }
  // Through the handler's own context in the runner: a cancel of its request completes its
  // pending calls there, and its sends carry `discard` as they would in process.
  const cluster_call_context* ctx = it->second.ctx;
  auto* pending = answered ? new pending_call{weak_from_this(), generation_, env.id} : nullptr;
  const auto forward = discard ? ctx->api->send : ctx->api->call;
  forward(ctx->host_ctx, c.entity_type.c_str(), c.entity_id.c_str(), c.rpc.c_str(),
          c.payload.data(), c.payload.size(), c.primary_key ? c.primary_key->c_str() : nullptr,
          answered ? &plugin_process::call_completed : nullptr, pending);
}

void plugin_process::forward_item(const envelope& env) {
  auto it = operations_.find(env.id);
  auto item = env.as<plugin_stream_item_msg>();
  if (it == operations_.end() || !item) {
    kill_child("sent a stream item of no request");
    return;
  }
  // The runner's context decides: credit, cancellation, a refusal outside a streaming RPC.
  // Its ready sends stream_ready; the entity host runs readies in the order of their items.
  const std::uint64_t token = ready_book::instance().add({weak_from_this(), env.id});
  it->second.readies.push_back(token);
  const cluster_call_context* ctx = it->second.ctx;
  const auto& bytes_in = item.value().item;
  ctx->api->stream_write(ctx->host_ctx, bytes_in.data(), bytes_in.size(),
                         &plugin_process::item_went,
                         reinterpret_cast<void*>(static_cast<std::uintptr_t>(token)));
}

// --- crashes, limits and restarts ------------------------------------------------------

std::string plugin_process::label_of(std::uint64_t operation_id) const {
  if (operation_id == 0) return {};
  if (auto it = operations_.find(operation_id); it != operations_.end()) {
    const auto* ctx = it->second.ctx;
    return std::string(ctx->entity_type) + "/" + ctx->entity_id + " " + ctx->rpc;
  }
  for (const auto& [id, label] : recent_)
    if (id == operation_id) return label;
  return {};
}

void plugin_process::kill_child(std::string reason) {
  if (pid_ <= 0) return;
  if (kill_reason_.empty()) kill_reason_ = "killed: " + std::move(reason);
  signal_pidfd(pidfd_, SIGKILL);
}

void plugin_process::arm_watchdog() {
  if (watching_ || (options_.handler_timeout.count() <= 0 && options_.memory_limit_mb == 0)) return;
  watching_ = true;
  watchdog_.expires_after(watchdog_period);
  watchdog_.async_wait([weak = weak_from_this()](const error_code& ec) {
    auto self = weak.lock();
    if (ec || !self) return;
    self->watching_ = false;
    self->check_limits();
    if (!self->operations_.empty()) self->arm_watchdog();
  });
}

void plugin_process::check_limits() {
  if (pid_ <= 0 || !kill_reason_.empty()) return;
  const std::uint64_t running = board_->running.load(std::memory_order_acquire);
  const std::int64_t since = board_->since_ns.load(std::memory_order_acquire);
  const auto timeout = options_.handler_timeout;
  if (running != 0 && timeout.count() > 0 &&
      monotonic_ns() - since > std::chrono::nanoseconds(timeout).count()) {
    const auto label = label_of(running);
    kill_child((label.empty() ? std::string("a callback") : label) +
               " ran past runner.handler_timeout_ms (" + std::to_string(timeout.count()) + " ms)");
    return;
  }
  if (options_.memory_limit_mb > 0) {
    const std::uint64_t resident = resident_bytes(pid_);
    if (resident > std::uint64_t(options_.memory_limit_mb) << 20) {
      const auto label = label_of(running);
      kill_child("over runner.plugin_memory_limit_mb (" + std::to_string(options_.memory_limit_mb) +
                 " MB; resident " + std::to_string(resident >> 20) + " MB)" +
                 (label.empty() ? std::string() : " while running " + label));
    }
  }
}

void plugin_process::child_ended() {
  const int status = reap(pid_);
  const std::uint64_t running = board_->running.load(std::memory_order_acquire);
  const std::string label = label_of(running);
  std::string what = !kill_reason_.empty() ? kill_reason_
                     : status < 0          ? std::string("ended")
                                           : describe_exit(status);
  if (kill_reason_.empty() && !label.empty()) what += " while running " + label;
  const std::string message = "plugin " + file_name_ + " " + what;
  if (channel_) channel_->close();
  channel_.reset();
  exit_watch_.reset();  // closes the pidfd
  pidfd_ = -1;
  const pid_t ended = pid_;
  pid_ = -1;
  ready_ = false;
  ++generation_;
  recent_.clear();
  outbox_.clear();  // frames for the child that ended; their requests are answered below
  if (on_started_) {
    // `launch` still waits: the plugin was refused, or the child died while loading it.
    restart_timer_.cancel();
    shut_down_ = true;
    auto done = std::move(on_started_);
    on_started_ = nullptr;
    const std::string why = !start_error_.empty()   ? start_error_
                            : !kill_reason_.empty() ? "the plugin host was " + kill_reason_
                                                    : "the plugin " + what + " while loading";
    done(failure{errc::invalid_request, why});
    return;
  }
  if (shut_down_) {
    if (on_exited_) asio::post(io_, std::move(on_exited_));
    on_exited_ = nullptr;
    return;
  }
  spdlog::error("{} (process {})", message, ended);

  if (on_instances_lost) {
    std::vector<std::string> names;
    for (const auto& type : catalog_.types) names.push_back(type.name);
    on_instances_lost(names);
  }
  auto cut_short = std::move(operations_);
  operations_.clear();
  by_reply_ctx_.clear();
  for (const auto& [id, op] : cut_short) ready_book::instance().drop(op.readies);
  const auto unsent_from = std::exchange(unsent_from_batch_, unsent_batch);
  for (auto& [id, op] : cut_short) {
    if (op.batch >= unsent_from) {
      const std::string text =
          "the runner stalled before this request reached plugin " + file_name_ + "; not run";
      op.reply(op.reply_ctx, host_status_not_run, "NotOwner", text.c_str(), nullptr, 0);
      continue;
    }
    const std::string text = id == running || label.empty()
                                 ? message
                                 : message + " (this request was in progress in the same process)";
    op.reply(op.reply_ctx, host_status_crashed, "Defect", text.c_str(), nullptr, 0);
  }
  restart();
}

void plugin_process::restart() {
  if (steady_clock::now() - started_at_ > healthy_run) backoff_ = first_restart_delay;
  const auto delay = backoff_;
  backoff_ = std::min(backoff_ * 2, last_restart_delay);
  ++restarts_;
  metrics::default_registry()
      .counters("cluster_plugin_restarts_total",
                "Restarts of plugin processes (after a crash, a hang or a kill), by plugin file.",
                {"plugin"}, 200)
      .with({file_name_})
      .inc();
  spdlog::warn("restarting plugin {} in {} ms (restart {})", file_name_, delay.count(), restarts_);
  restart_timer_.expires_after(delay);
  restart_timer_.async_wait([weak = weak_from_this()](const error_code& ec) {
    auto self = weak.lock();
    if (ec || !self || self->shut_down_) return;
    auto fd = self->spawn();
    if (!fd) {
      spdlog::error("plugin {}: {}", self->file_name_, fd.error().message);
      self->restart();
      return;
    }
    self->attach(fd.value(), false);  // ready once its catalog arrives
  });
}

void plugin_process::retire(std::function<void()> exited) {
  if (shut_down_ || pid_ <= 0) {
    shut_down_ = true;
    restart_timer_.cancel();
    if (exited) asio::post(io_, std::move(exited));
    return;
  }
  shut_down_ = true;  // no restart from now on
  on_exited_ = std::move(exited);
  watchdog_.cancel();
  // The child exits when its channel closes, after the frames queued before (destroys).
  if (channel_) channel_->close_after_flush();
  restart_timer_.expires_after(std::chrono::seconds(2));
  restart_timer_.async_wait([weak = weak_from_this()](const error_code& ec) {
    auto self = weak.lock();
    if (ec || !self || self->pid_ <= 0) return;
    spdlog::warn("plugin {} (process {}) did not exit after its unload; killing it",
                 self->file_name_, self->pid_);
    signal_pidfd(self->pidfd_, SIGKILL);
  });
}

void plugin_process::shutdown() {
  const bool first = !shut_down_;
  shut_down_ = true;
  if (first) {
    restart_timer_.cancel();
    watchdog_.cancel();
  }
  on_exited_ = nullptr;
  if (channel_) channel_->close();  // the child exits when its channel closes
  if (pid_ > 0) {
    pollfd wait{pidfd_, POLLIN, 0};
    if (::poll(&wait, 1, 2000) <= 0) signal_pidfd(pidfd_, SIGKILL);
    reap(pid_);
    pid_ = -1;
  }
  exit_watch_.reset();  // closes the pidfd
  pidfd_ = -1;
}

}  // namespace cluster::host
