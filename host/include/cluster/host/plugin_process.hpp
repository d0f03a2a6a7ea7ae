#pragma once
// One plugin run in a child process (runner.isolation = "process"), as the runner sees it.
//
// The child, cluster-plugin-host, loads the plugin and runs its callbacks; the runner keeps
// the mailboxes, the ordering and the activations (entity_host), and reaches the plugin
// through the entity descriptor this object hands out, whose callbacks forward each
// create, handle and destroy over a socketpair (plugin_channel.hpp). So a segfault, an
// abort(), an endless loop or a runaway allocation in a handler ends only the child:
// the requests it was running fail with a Defect naming the plugin, the signal and the
// request (reply_msg::crashed), the entities it hosted are activated again in the next
// child, and the child is started again with backoff. Every other entity keeps answering.
//
// A watchdog on the runner's loop kills the child when one callback runs past
// `handler_timeout` or the child's resident memory passes `memory_limit_mb`; it reads what
// the child is running from a page both map (operation_board), so it needs nothing from a
// child that no longer answers.
//
// Thread: the runner's io_context thread (start-up: the thread that calls `start`).

#include <sys/types.h>

#include <deque>
#include <filesystem>
#include <memory>
#include <unordered_map>

#include "cluster/host/plugin_channel.hpp"
#include "cluster/plugin_abi.h"
#include "cluster/protocol/result.hpp"

namespace cluster::host {

/// The host-side status a crashed child's requests are answered with: never seen by a
/// plugin (the runner's entity host turns it into reply_msg::crashed).
inline constexpr std::int32_t host_status_crashed = 1000;
/// The host-side status of a request whose entity's constructor failed in the child: the
/// entity host answers Defect and activates the entity again for its next message, as it
/// does for a constructor that fails in the runner.
inline constexpr std::int32_t host_status_activation_failed = 1001;
/// The request never reached the plugin's process: the runner stalled before its frame was
/// written (plugin_channel::set_stale_after), so it was not run. Answered NotOwner.
inline constexpr std::int32_t host_status_not_run = 1002;

struct isolation_options {
  std::string plugin_host;       ///< the cluster-plugin-host executable
  milliseconds handler_timeout;  ///< one callback longer than this kills the child; 0: no limit
  std::uint32_t memory_limit_mb = 0;  ///< resident memory of a child; 0: no limit
  decode_limits limits;               ///< frames on the channel
  milliseconds start_timeout{10000};  ///< the first child must report its catalog within this
  /// Frames for the child that waited longer than this (a stalled runner) are not sent; the
  /// child is ended and their requests answered NotOwner (runner.stall_fence_ms). 0: off.
  milliseconds stale_after{0};
  std::string log_format = "text";  ///< the child logs as its runner does (log.format)
};

class plugin_process : public std::enable_shared_from_this<plugin_process> {
 public:
  /// Starts the child and waits (blocking, start-up only) for the plugin's catalog; fails
  /// with the reason the plugin was refused or the child ended.
  /// `label` names the plugin in logs and Defects (empty: the file's name).
  static result<std::shared_ptr<plugin_process>> start(asio::io_context& io,
                                                       const std::filesystem::path& plugin,
                                                       const isolation_options& options,
                                                       std::string label = {});
  using started_handler = std::function<void(result<std::shared_ptr<plugin_process>>)>;
  /// The same without blocking the loop (a plugin added or replaced while the runner
  /// serves): `done` runs on the loop once, with the process once the child reported its
  /// catalog, or with why it did not load (refused, crashed, or silent past start_timeout).
  static void launch(asio::io_context& io, const std::filesystem::path& plugin,
                     const isolation_options& options, std::string label, started_handler done);
  ~plugin_process();
  plugin_process(const plugin_process&) = delete;
  plugin_process& operator=(const plugin_process&) = delete;

  const plugin_catalog_msg& catalog() const { return catalog_; }
  /// The descriptor of catalog type `index`: its callbacks forward to the child. `rpcs` is
  /// NULL (the registry keeps the RPC copies, from `rpc_descriptors`).
  cluster_entity_descriptor descriptor(std::size_t index);
  std::vector<cluster_rpc_descriptor> rpc_descriptors(std::size_t index) const;

  /// Runs when a child ended: every instance of these entity types is gone (the entity host
  /// activates them again). Runs before the child's requests are answered.
  std::function<void(const std::vector<std::string>& entity_types)> on_instances_lost;

  /// Asks `instance` (a handle `create` returned) to stop its running handler, in the
  /// child: entity_host::request_stop for types in a process.
  void request_stop(void* instance);
  /// Tells the child that the request of the operation replying to `reply_ctx` (a handler
  /// running there) was cancelled: its `cancelled()` turns true, its sleeps and calls end.
  void cancel(void* reply_ctx);

  pid_t pid() const { return pid_; }
  std::uint64_t restarts() const { return restarts_; }
  /// Closes the channel, gives the child a moment to exit, then kills it. Blocking.
  void shutdown();
  /// Ends the child without blocking, once it has read what was sent to it (the last
  /// destroys): no restart from now on, a kill after 2 s. `exited` runs (posted) when it is
  /// gone. The caller keeps this object alive until then.
  void retire(std::function<void()> exited);

 private:
  struct remote_type {
    plugin_process* process;
    std::size_t index;
  };
  struct operation {
    cluster_reply_fn reply;
    void* reply_ctx;
    const cluster_call_context* ctx;  // valid until the reply is sent
    /// plugin_channel::batches_written() when its frame was queued; unsent_batch while the
    /// frame waits in outbox_ for a starting child.
    std::uint64_t batch = 0;
    /// Tokens of the items it streamed whose ready has not run yet (ready_book).
    std::vector<std::uint64_t> readies;
  };
  static constexpr std::uint64_t unsent_batch = ~std::uint64_t{0};
  struct pending_call;  // a handler's call to another entity, until it completes

  plugin_process(asio::io_context& io, std::filesystem::path plugin, isolation_options options,
                 std::string label);

  static void hold_until_started(std::shared_ptr<plugin_process> process);
  /// Maps the operation board both processes share.
  result<void> map_board();

  static void* forward_create(void* type_data, const cluster_call_context* ctx);
  static void forward_destroy(void* type_data, void* instance);
  static void forward_handle(void* type_data, void* instance, std::uint32_t rpc_index,
                             const std::uint8_t* payload, std::size_t size,
                             const cluster_call_context* ctx, cluster_reply_fn reply,
                             void* reply_ctx);
  static void call_completed(void* user, std::int32_t status, const char* tag, const char* message,
                             const std::uint8_t* data, std::size_t size);
  /// The `ready` of a child's stream item: `user` is its ready_book token.
  static void item_went(void* user);

  /// Starts a child; its channel end is returned for the caller to read the catalog from.
  result<int> spawn();
  /// Reads the catalog synchronously (start-up).
  result<void> await_catalog(int fd);
  void attach(int fd, bool ready);
  void watch_exit();
  void on_frame(envelope&& env);
  void forward_call(const envelope& env, bool discard);
  void forward_item(const envelope& env);
  /// The operation answered (or lost with its child): its index entry and its readies go.
  void forget(std::uint64_t operation_id, const operation& op);
  void child_ended();
  void restart();
  void arm_watchdog();
  void check_limits();
  void kill_child(std::string reason);
  std::string label_of(std::uint64_t operation_id) const;
  std::uint64_t new_operation_id() { return next_operation_++; }

  /// The batch a frame sent now leaves in (operation::batch).
  std::uint64_t queued_batch() const {
    return ready_ && channel_ ? channel_->batches_written() : unsent_batch;
  }
  template <class Fields>
  void send(plugin_kind kind, std::uint64_t id, const Fields& fields) {
    if (ready_ && channel_) {
      channel_->send(kind, id, fields);
    } else {
      append_frame(outbox_, static_cast<message_kind>(kind), id, fields);
    }
  }

  asio::io_context& io_;
  std::filesystem::path plugin_;
  std::string file_name_;
  isolation_options options_;
  plugin_catalog_msg catalog_;
  std::deque<remote_type> types_;  // stable addresses: descriptors point at them

  pid_t pid_ = -1;
  int pidfd_ = -1;
  std::unique_ptr<asio::posix::stream_descriptor> exit_watch_;
  std::shared_ptr<plugin_channel> channel_;
  bool ready_ = false;       // the current child sent its catalog
  msgpack::sbuffer outbox_;  // frames for a child that is starting
  int board_fd_ = -1;
  operation_board* board_ = nullptr;

  std::uint64_t generation_ = 1;  // bumped per child: instances carry it in their top bits
  std::uint64_t next_operation_ = 1;
  std::uint64_t next_instance_ = 1;
  std::unordered_map<std::uint64_t, operation> operations_;
  std::unordered_map<void*, std::uint64_t> by_reply_ctx_;     // operations_ by reply_ctx (cancel)
  std::deque<std::pair<std::uint64_t, std::string>> recent_;  // creates and destroys, by id
  std::string kill_reason_;
  /// Set when the channel went stale: operations queued in this batch or later never
  /// reached the child.
  std::uint64_t unsent_from_batch_ = unsent_batch;

  started_handler on_started_;        // set while `launch` waits for the first catalog
  std::string start_error_;           // what the child said when it refused the plugin
  std::function<void()> on_exited_;   // set by `retire`
  asio::steady_timer restart_timer_;  // also bounds a `launch`, and a `retire`
  asio::steady_timer watchdog_;
  bool watching_ = false;
  milliseconds backoff_;
  steady_clock::time_point started_at_;
  std::uint64_t restarts_ = 0;
  bool shut_down_ = false;
};

}  // namespace cluster::host
