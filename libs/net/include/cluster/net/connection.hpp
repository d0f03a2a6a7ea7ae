#pragma once
// A framed, multiplexed protocol connection.
//
// Lifecycle: created by `connect_to` (client side, after the handshake) or by `server`
// (which runs the handshake: hello, then with authentication the signed hello_ack and the
// client's auth; docs/security.md). `start` runs the read loop; `close` fails every pending
// call with `unavailable`. Thread model: every process runs one io_context on one thread, so
// a connection is only touched from that thread (no strand needed).

#include <boost/asio/ssl/stream.hpp>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "cluster/net/asio.hpp"
#include "cluster/net/permissions.hpp"
#include "cluster/protocol/codec.hpp"
#include "cluster/security/security_context.hpp"

namespace cluster {

struct connection_limits {
  decode_limits decode;
  milliseconds handshake_timeout{5000};
  /// Once a frame header arrived, its body must follow within this time.
  milliseconds frame_body_timeout{10000};
  std::size_t max_in_flight = 4096;  ///< inbound requests being served per connection
  /// Bytes queued for the peer (waiting plus being written) past which it counts as a peer
  /// that does not read: the connection is closed instead of buffering without end. Keep it
  /// above max_frame_bytes, or one large frame closes the connection.
  std::size_t max_queued_bytes = 64 * 1024 * 1024;
  /// Server side: a peer of role `client` that sends nothing for this long while none of its
  /// requests is being served is closed. Zero: never. Only clients: proxies keep idle pooled
  /// connections to runners, and the cluster's own processes ping.
  milliseconds idle_timeout{300000};
  /// How this process proves itself and checks its peers (and whether it uses TLS). Null:
  /// no authentication (roles as claimed in hello) and plain TCP.
  std::shared_ptr<const security_context> security;
};

class connection : public std::enable_shared_from_this<connection> {
 public:
  /// Called for every inbound message that is not a reply to one of our calls.
  using message_handler = std::function<void(const std::shared_ptr<connection>&, envelope&&)>;
  using reply_callback = std::function<void(reply_msg&&)>;

  /// `server_side`: the peer must open with hello within the handshake timeout.
  connection(tcp::socket socket, connection_limits limits, bool server_side);
  ~connection();
  connection(const connection&) = delete;
  connection& operator=(const connection&) = delete;

  /// Starts reading. `on_message` gets requests and pushes; `on_close` runs once.
  void start(message_handler on_message, std::function<void()> on_close = {});

  template <class Fields>
  void send(message_kind kind, std::uint64_t id, const Fields& fields) {
    if (!open_) return;
    append_frame(queued_, kind, id, fields);
    schedule_write();
  }
  void send_reply(std::uint64_t id, const reply_msg& reply) {
    send(message_kind::reply, id, reply);
  }

  /// Sends a request-like message; `done` runs exactly once, on this connection's executor,
  /// with the reply, `deadline_exceeded` after `timeout`, or `unavailable` when closed.
  /// Returns the message's id (for `interrupt`).
  template <class Fields>
  std::uint64_t call(message_kind kind, const Fields& fields, milliseconds timeout,
                     reply_callback done) {
    return start_call(kind, fields, timeout, std::move(done), nullptr, 0);
  }

  /// Called with the items of each stream_chunk of a streaming call, in order.
  using items_callback = std::function<void(std::vector<bytes>&&)>;
  /// A call whose reply is a stream (docs/protocol.md "Streaming replies"): `on_items` gets
  /// the items as they arrive, `done` the final reply as for `call`. `credit` is what the
  /// request granted (0: default_stream_credit); the consumer grants more with `ack` once it
  /// has consumed items, so a slow consumer holds the producer back. `timeout` bounds each
  /// wait (for the first item, between items, for the final reply) while the producer has
  /// credit; while the consumer holds all of it, the call does not time out.
  template <class Fields>
  std::uint64_t call_stream(message_kind kind, const Fields& fields, std::uint32_t credit,
                            milliseconds timeout, items_callback on_items, reply_callback done) {
    return start_call(kind, fields, timeout, std::move(done),
                      std::make_shared<items_callback>(std::move(on_items)),
                      credit == 0 ? default_stream_credit : credit);
  }
  /// Grants `credit` more items to streaming call `id` (a stream_ack); nothing if it ended.
  void ack(std::uint64_t id, std::uint32_t credit);
  /// Asks the peer to stop call `id` (an interrupt); the call still ends with its reply
  /// (`Cancelled` from a peer that stopped it). Nothing if it already ended.
  void interrupt(std::uint64_t id);

  /// Coroutine form of `call`.
  template <class Fields>
  awaitable<reply_msg> async_call(message_kind kind, Fields fields, milliseconds timeout) {
    return asio::async_initiate<decltype(use_awaitable), void(reply_msg)>(
        [self = shared_from_this(), kind, fields = std::move(fields), timeout](auto handler) {
          auto shared = std::make_shared<decltype(handler)>(std::move(handler));
          self->call(kind, fields, timeout,
                     [shared](reply_msg&& reply) { (*shared)(std::move(reply)); });
        },
        use_awaitable);
  }

  /// Closes the socket and fails pending calls; safe to call repeatedly.
  void close();
  /// Closes once everything queued so far has been written.
  void close_after_flush();
  bool is_open() const { return open_; }
  const std::string& peer() const { return peer_; }
  std::size_t pending_calls() const { return pending_.size(); }
  /// Name and role the peer gave in its hello (server side) or hello_ack (client side); with
  /// authentication the role is the one its key proved.
  std::string peer_name;
  std::string peer_role;
  /// Server side: asked at hello whether a peer with that role may stay (it is refused with
  /// too_many_requests otherwise).
  std::function<bool(const std::string& role)> admit;
  /// Server side: who may connect and send what (null: everyone everything).
  std::shared_ptr<const permissions> allowed;
  /// Whether the connection runs over TLS.
  bool encrypted() const { return tls_ != nullptr; }
  /// Client side, for connect_to: TLS (if configured), hello, hello_ack, auth; before `start`.
  awaitable<result<void>> client_handshake(hello_msg hello, role_mask accepted_servers);
  /// Inbound requests currently being served (maintained by the owner of the handler).
  std::size_t in_flight = 0;
  /// The owner's state for this peer, if it keeps any (the proxy: the requests it routes
  /// for it), so it needs no map from connections to it.
  std::shared_ptr<void> attachment;
  const connection_limits& limits() const { return limits_; }
  /// When the last frame arrived from the peer (health checks ping and watch this).
  steady_clock::time_point last_heard() const { return last_heard_; }
  asio::any_io_executor executor() { return socket_.get_executor(); }

 private:
  struct pending_call {
    steady_clock::time_point deadline;
    reply_callback done;
    // Streaming calls only (null otherwise, so a plain call allocates nothing more). Shared:
    // the callback may close the connection, which drops the pending call it runs from.
    std::shared_ptr<items_callback> on_items;
    milliseconds timeout{0};
    std::uint32_t credit_left = 0;  // items the peer may still send before the next ack
  };

  template <class Fields>
  std::uint64_t start_call(message_kind kind, const Fields& fields, milliseconds timeout,
                           reply_callback done, std::shared_ptr<items_callback> on_items,
                           std::uint32_t credit) {
    const std::uint64_t id = next_id_++;
    if (!open_) {
      fail_later(std::move(done), errc::unavailable, "connection to " + peer_ + " is closed");
      return id;
    }
    const auto deadline = steady_clock::now() + timeout;
    pending_.emplace(id,
                     pending_call{deadline, std::move(done), std::move(on_items), timeout, credit});
    watch_deadline(id, deadline);
    append_frame(queued_, kind, id, fields);
    schedule_write();
    return id;
  }
  void handle_chunk(envelope&& env);
  void interrupt_sent(std::uint64_t id);
  /// A streaming call made progress: its wait starts again.
  void restart_wait(std::uint64_t id, pending_call& call);

  /// The one check per send: past max_queued_bytes the peer is not reading and is closed.
  bool over_queue_bound() const {
    return queued_.size() + in_write_.size() > limits_.max_queued_bytes;
  }
  void close_not_reading();
  /// Server side, once peer_role holds the peer's role: closes an idle client (see
  /// connection_limits::idle_timeout). One timer, armed only for clients; a frame costs
  /// nothing here (the timer compares last_heard_ when it fires).
  void watch_idle();
  void arm_idle_timer(steady_clock::time_point at);
  void check_idle();
  /// Starts a write of everything queued once the current handler is done (frames sent
  /// meanwhile join it), unless one is in progress; its completion starts the next.
  void schedule_write();
  void write_queued();
  awaitable<void> read_loop(std::shared_ptr<connection> self);
  /// Adds a pending call's deadline; re-arms the timer if it is the earliest.
  void watch_deadline(std::uint64_t id, steady_clock::time_point deadline);
  void arm_deadline_timer(steady_clock::time_point at);
  /// The timer fired: fails the calls whose deadline passed, re-arms for the next one.
  void expire_due_calls();
  void fail_later(reply_callback done, errc code, std::string message);
  void protocol_error(std::uint64_t id, errc code, const std::string& message);
  bool handle_handshake(const envelope& env);
  // The handshake's steps (handshake.cpp).
  bool handle_hello(const envelope& env);
  bool handle_auth(const envelope& env);
  void finish_handshake(const std::string& name, role proven);
  /// Server side, when TLS is possible: a first byte 0x16 (a TLS record) starts TLS; a plain
  /// frame is refused when TLS is required. False when the connection must stop.
  awaitable<bool> accept_tls_if_offered();
  /// The TLS session's exporter value (empty on plain TCP): what the signatures bind to.
  std::vector<std::uint8_t> channel_binding() const;
  awaitable<result<envelope>> read_handshake_frame();
  awaitable<error_code> write_frame_now(const msgpack::sbuffer& frame);
  /// Whether the peer may send `kind`; answers and logs a denial.
  bool permitted(const envelope& env);
  /// Handles one decoded frame; false when the connection must stop reading.
  bool dispatch(const std::shared_ptr<connection>& self, envelope&& env);
  void handle_reply(envelope&& env);

  tcp::socket socket_;
  // Over socket_ once TLS was negotiated; every read and write then goes through it.
  std::unique_ptr<asio::ssl::stream<tcp::socket&>> tls_;
  connection_limits limits_;
  std::string peer_;
  bool open_ = true;
  bool handshaken_;
  bool server_side_;
  std::optional<role> proven_role_;  // server side, once the handshake is done
  // Server side, between hello_ack and auth: what the client's signature must cover.
  struct handshake_in_progress {
    hello_msg hello;
    hello_ack_msg ack;
    role claimed;
    public_key key;
  };
  std::unique_ptr<handshake_in_progress> handshake_;
  unsigned denials_logged_ = 0;
  bool closing_ = false;  // close once the write queue is flushed
  bool writing_ = false;  // a write is scheduled or in progress
  // Frames wait in `queued_` while `in_write_` is on the wire; the two swap after each
  // write, so steady traffic allocates nothing per frame. `in_write_` is empty when no write
  // is in progress, so their sizes add up to what the peer has not taken yet.
  msgpack::sbuffer queued_{1024};
  msgpack::sbuffer in_write_{1024};
  std::uint64_t frames_queued_ = 0;  // frames in `queued_`, counted when they are written
  std::uint64_t next_id_ = 1;
  steady_clock::time_point last_heard_ = steady_clock::now();
  std::unordered_map<std::uint64_t, pending_call> pending_;
  // Deadlines of pending calls, a min-heap on `at`. One timer is armed for the earliest;
  // nothing runs while no call is pending. Entries of calls answered meanwhile stay until
  // they reach the top or the heap is rebuilt from pending_ (when it holds more than twice
  // as many entries), so a reply costs nothing here and a call one push.
  struct deadline_entry {
    steady_clock::time_point at;
    std::uint64_t id;
    bool operator>(const deadline_entry& other) const { return at > other.at; }
  };
  std::vector<deadline_entry> deadlines_;
  steady_clock::time_point timer_at_ = steady_clock::time_point::max();  // max: not armed
  asio::steady_timer deadline_timer_;
  asio::steady_timer body_timer_;
  std::optional<asio::steady_timer> idle_timer_;  // only for server-side client connections
  asio::steady_timer handshake_timer_;            // server side: hello to the end of the handshake
  message_handler on_message_;
  std::function<void()> on_close_;
};

using connection_ptr = std::shared_ptr<connection>;

/// Connects, runs the handshake (TLS and authentication as `limits.security` says), then
/// starts the connection. Never throws. Fails with `unavailable` (unreachable, timed out,
/// closed during the handshake), `unauthorized` (the server did not prove a key trusted for
/// one of `accepted_servers`, or refused ours), the code of the peer's refusal (e.g.
/// `unsupported_version`, `too_many_requests`, `forbidden`) or `malformed_frame`; the
/// message names the address. With authentication, hello's role is the key's.
awaitable<result<connection_ptr>> connect_to(host_port address, hello_msg hello,
                                             connection_limits limits, milliseconds timeout,
                                             connection::message_handler on_message,
                                             std::function<void()> on_close,
                                             role_mask accepted_servers = any_server_role);

}  // namespace cluster
