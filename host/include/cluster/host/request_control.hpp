#pragma once
// One request's side channel between its caller and its handler, beyond the final reply:
// the items of a streaming reply, the caller's credit for them, and the request's
// cancellation (docs/protocol.md "Streams, interrupts and discards").
//
// The runner makes one for each request it serves for a connection, keeps it by the
// request's id while the request is in flight (so `interrupt` and `stream_ack` find it) and
// sends what `send_items` is given. The entity host attaches the request's current holder
// (its mailbox entry, then its running handler) through `on_cancel` and `on_credit`, and
// hands the handler's items to `write`.
//
// Thread: the runner's io_context thread.

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cluster/net/asio.hpp"
#include "cluster/protocol/errc.hpp"
#include "cluster/protocol/messages.hpp"

namespace cluster::host {

class request_control : public std::enable_shared_from_this<request_control> {
 public:
  /// `credit`: what the request granted (0: default_stream_credit); `discard`: items are
  /// dropped and credit is unlimited. `frame_bytes`: a chunk stays below this.
  request_control(asio::io_context& io, std::uint32_t credit, bool discard,
                  std::size_t frame_bytes);
  request_control(const request_control&) = delete;
  request_control& operator=(const request_control&) = delete;

  // The caller's side (the runner).

  /// Sends a chunk of items to the caller; unset: items are dropped (discard).
  std::function<void(std::vector<bytes>&& items)> send_items;
  /// The caller grants `credit` more items. False when the credit it holds out would pass
  /// max_stream_credit (the request is then cancelled with InvalidRequest).
  bool grant(std::uint32_t credit);
  /// Cancels the request: `code` (Cancelled, DeadlineExceeded, InvalidRequest) and `why` are
  /// what its caller gets if the handler stops because of it. Once only.
  void cancel(errc code, std::string why);
  /// Sends the items batched so far: before the final reply, which must follow them.
  void flush();
  /// The request's final reply was sent: nothing more is written, hooks are dropped.
  void finish();

  // The handler's side (the entity host).

  bool cancelled() const { return cancelled_; }
  errc cancel_code() const { return cancel_code_; }
  const std::string& cancel_reason() const { return cancel_reason_; }
  /// Hands one item on: sent (batched with the items written in the same turn of the loop)
  /// while credit lasts, else held until the caller acks. `ready` runs (posted) once it
  /// went, or at once on cancellation.
  void write(bytes item, std::function<void()> ready);
  /// Items a handler wrote that wait for credit (0 or 1 for an SDK handler).
  std::size_t waiting() const { return waiting_.size(); }
  /// Whether the producer waits for the caller's credit (its deadline does not run then).
  bool starved() const { return !waiting_.empty(); }
  /// When the request last made progress (created, item sent, credit granted).
  steady_clock::time_point last_progress() const { return last_progress_; }
  /// Set by the request's current holder: runs once on `cancel`.
  std::function<void()> on_cancel;

  /// Deadlines, checked by the runner's sweep: a streaming request is cancelled when it made
  /// no progress for `timeout` while it had credit (the gap rule), any other one once
  /// `deadline` passed. Persisted requests have neither (they are stored).
  bool stream = false;
  bool persisted = false;  ///< stored: a closed connection does not cancel it
  bool has_deadline = true;
  steady_clock::time_point deadline = steady_clock::time_point::max();
  milliseconds timeout{0};
  /// Should the sweep cancel it now?
  bool overdue(steady_clock::time_point now) const;

 private:
  void send_now(bytes item);
  void schedule_flush();

  asio::io_context& io_;
  std::uint64_t credit_;  // items the caller accepts now (granted and not used yet)
  bool discard_;
  std::size_t frame_bytes_;
  bool cancelled_ = false;
  bool finished_ = false;
  errc cancel_code_ = errc::ok;
  std::string cancel_reason_;
  struct waiting_item {
    bytes item;
    std::function<void()> ready;
  };
  std::vector<waiting_item> waiting_;
  std::vector<bytes> batch_;
  std::size_t batch_bytes_ = 0;
  std::uint64_t batch_generation_ = 0;
  bool flush_posted_ = false;
  steady_clock::time_point last_progress_ = steady_clock::now();
};

}  // namespace cluster::host
