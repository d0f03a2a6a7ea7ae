#pragma once
// The channel between a runner and one of its plugin hosts (runner.isolation = "process").
//
// Frames have the cluster protocol's shape (a length header and a MessagePack body
// `[kind, id, fields]`, encoded and bounded by libs/protocol's codec) over one end of a
// socketpair. Both ends are the same build, so the kinds below are private to the runner and
// cluster-plugin-host and change with them; nothing else speaks them.
//
// Thread: the owning io_context's thread. Frames sent while one handler runs leave in one
// write; frames that arrive together are handled in one pass.

#include <atomic>
#include <boost/asio/local/stream_protocol.hpp>
#include <functional>
#include <memory>

#include "cluster/net/asio.hpp"
#include "cluster/protocol/codec.hpp"

namespace cluster::host {

enum class plugin_kind : std::uint32_t {
  catalog = 1,      ///< host → runner, once after start: what the plugin declares
  load_failed = 2,  ///< host → runner, instead of catalog: why the plugin did not load
  create = 3,       ///< runner → host: activate an instance
  destroy = 4,      ///< runner → host: passivate an instance
  handle = 5,       ///< runner → host: run one RPC (`id`: the operation, repeated by reply)
  reply = 6,        ///< host → runner: a handler's outcome
  call = 7,         ///< host → runner: a handler calls another entity (`id`: the call)
  call_done = 8,    ///< runner → host: that call's outcome
  stop = 9,         ///< runner → host: ask an instance's running handler to end
  /// host → runner: a streaming handler's item (`id`: its operation); the runner answers
  /// each with one stream_ready, in the order the items came.
  stream_item = 10,
  stream_ready = 11,  ///< runner → host: the oldest unanswered item of operation `id` went
  cancel = 12,        ///< runner → host: the request of operation `id` was cancelled
  /// host → runner: like call, fire and forget (cluster_host_api::send); `id` 0 when the
  /// handler wants no completion, else a call_done answers it
  send = 13,
};

struct plugin_catalog_msg {
  std::string plugin_name;
  std::string plugin_version;
  std::vector<entity_type_info> types;
  CLUSTER_WIRE_FIELDS(plugin_catalog_msg, plugin_name, plugin_version, types);
};

struct plugin_failure_msg {
  std::string message;
  CLUSTER_WIRE_FIELDS(plugin_failure_msg, message);
};

struct plugin_create_msg {
  std::uint64_t instance = 0;
  std::string entity_type;
  std::string entity_id;
  std::int32_t shard = 0;
  std::optional<bytes> state;  ///< stateful types: the stored state (cluster_call_context.state)
  CLUSTER_WIRE_FIELDS(plugin_create_msg, instance, entity_type, entity_id, shard, state);
};

struct plugin_destroy_msg {
  std::uint64_t instance = 0;
  CLUSTER_WIRE_FIELDS(plugin_destroy_msg, instance);
};

/// The shard of the instance is moving or the runner stopping: its `stop_requested` turns
/// true and its sleeps fire at once.
struct plugin_stop_msg {
  std::uint64_t instance = 0;
  CLUSTER_WIRE_FIELDS(plugin_stop_msg, instance);
};

struct plugin_handle_msg {
  std::uint64_t instance = 0;
  std::uint32_t rpc_index = 0;
  bytes payload;
  std::int64_t fencing_token = 0;  ///< cluster_call_context::fencing_token of the call
  CLUSTER_WIRE_FIELDS(plugin_handle_msg, instance, rpc_index, payload, fencing_token);
};

/// What a handler gave set_state, carried with its reply (the runner replays the call on its
/// own context right before the reply, so the entity host sees the same calls in both modes).
enum plugin_state_change : std::uint32_t {
  plugin_state_unchanged = 0,
  plugin_state_set = 1,      ///< `state` holds the new state
  plugin_state_cleared = 2,  ///< set_state with CLUSTER_STATE_CLEAR
};

/// A handler's reply or a call's completion: the arguments of a cluster_reply_fn.
struct plugin_outcome_msg {
  std::int32_t status = 0;
  std::string tag;
  std::string message;
  bytes payload;
  std::uint32_t state_change = plugin_state_unchanged;  ///< replies only
  bytes state;
  CLUSTER_WIRE_FIELDS(plugin_outcome_msg, status, tag, message, payload, state_change, state);
};

/// A call or a send (plugin_kind::call, plugin_kind::send).
struct plugin_call_msg {
  std::uint64_t operation = 0;  ///< the handle whose handler calls
  std::string entity_type;
  std::string entity_id;
  std::string rpc;
  bytes payload;
  std::optional<std::string> primary_key;
  CLUSTER_WIRE_FIELDS(plugin_call_msg, operation, entity_type, entity_id, rpc, payload,
                      primary_key);
};

/// One item of a streaming reply (cluster_host_api::stream_write).
struct plugin_stream_item_msg {
  bytes item;
  CLUSTER_WIRE_FIELDS(plugin_stream_item_msg, item);
};

/// One page both processes map (a memfd): which operation the plugin host is inside of, and
/// since when. The runner reads it to name the request a crash cut short and to stop a
/// handler past its time, even when the host cannot say anything any more.
struct operation_board {
  std::atomic<std::uint64_t> running{0};  ///< operation id; 0: not inside plugin code
  std::atomic<std::int64_t> since_ns{0};  ///< CLOCK_MONOTONIC (steady_clock) at entry
};
static_assert(std::atomic<std::uint64_t>::is_always_lock_free);

class plugin_channel : public std::enable_shared_from_this<plugin_channel> {
 public:
  using socket_type = asio::local::stream_protocol::socket;
  using frame_handler = std::function<void(envelope&&)>;

  plugin_channel(socket_type socket, decode_limits limits);
  plugin_channel(const plugin_channel&) = delete;
  plugin_channel& operator=(const plugin_channel&) = delete;

  /// Starts reading; `on_close(why)` runs once when the peer closes, a write fails or a
  /// frame is malformed (the channel is closed then).
  void start(frame_handler on_frame, std::function<void(const std::string& why)> on_close);

  template <class Fields>
  void send(plugin_kind kind, std::uint64_t id, const Fields& fields) {
    if (!open_) return;
    note_queued();
    append_frame(queued_, static_cast<message_kind>(kind), id, fields);
    schedule_write();
  }
  /// Appends frames encoded elsewhere (written while the peer was being started).
  void send_encoded(const msgpack::sbuffer& frames);

  void close();
  /// Closes once everything queued so far is written.
  void close_after_flush();
  bool is_open() const { return open_; }

  /// Frames that waited longer than this to be written are not written: the channel closes
  /// instead (`on_close` runs). Only a stalled event loop (a frozen runner) holds frames that
  /// long, and the runner fences itself after such a stall: what it handed the plugin before
  /// the stall must not run after it, when another runner may own those entities. 0: no limit.
  void set_stale_after(milliseconds limit) { stale_after_ = limit; }
  /// Did the channel close because frames went stale (above)?
  bool went_stale() const { return went_stale_; }
  /// How many batches of queued frames have been handed to the socket: a frame queued when
  /// this was N leaves in batch N + 1.
  std::uint64_t batches_written() const { return batches_written_; }

 private:
  void note_queued() {
    if (queued_.size() == 0 && stale_after_.count() > 0) queued_since_ = steady_clock::now();
  }
  void schedule_write();
  void write_queued();
  awaitable<void> read_loop(std::shared_ptr<plugin_channel> self);
  void closed(const std::string& why);

  socket_type socket_;
  decode_limits limits_;
  bool open_ = true;
  bool writing_ = false;
  bool closing_ = false;  // close once the queue is written
  msgpack::sbuffer queued_{4096};
  msgpack::sbuffer in_write_{4096};
  milliseconds stale_after_{0};
  bool went_stale_ = false;
  std::uint64_t batches_written_ = 0;
  steady_clock::time_point queued_since_{};  ///< when the oldest frame of queued_ was queued
  frame_handler on_frame_;
  std::function<void(const std::string&)> on_close_;
};

}  // namespace cluster::host
