#include "cluster/net/connection.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <utility>

#include "cluster/metrics/metrics.hpp"

namespace cluster {

namespace {

// The frame layer's totals, shared by every connection of the process.
struct net_metrics {
  metrics::counter& bytes_received;
  metrics::counter& bytes_sent;
  metrics::counter& frames_received;
  metrics::counter& frames_sent;
  metrics::counter& connections_opened;
  metrics::gauge& connections_open;
};

net_metrics make_net_counters(metrics::registry& r) {
  return net_metrics{
      r.counter_of("cluster_net_received_bytes_total", "Bytes read from cluster connections."),
      r.counter_of("cluster_net_sent_bytes_total", "Bytes written to cluster connections."),
      r.counter_of("cluster_net_received_frames_total", "Frames read from cluster connections."),
      r.counter_of("cluster_net_sent_frames_total", "Frames written to cluster connections."),
      r.counter_of("cluster_net_connections_opened_total",
                   "Cluster connections opened (accepted or dialled)."),
      r.gauge_of("cluster_net_connections", "Cluster connections open now.")};
}

// Frames are counted per read and per write, not per frame: an atomic add per frame was a
// visible share of a proxy's time.
net_metrics& net_counters() {
  static net_metrics m = make_net_counters(metrics::default_registry());
  return m;
}

std::string describe_peer(const tcp::socket& socket) {
  error_code ec;
  auto endpoint = socket.remote_endpoint(ec);
  if (ec) return "unknown peer";
  return endpoint.address().to_string() + ":" + std::to_string(endpoint.port());
}

}  // namespace

// Reads one frame: its envelope, or why there is none (`unavailable` when the peer closed or
// the socket failed, `frame_too_large` or `malformed_frame` when the frame itself is bad).
// `on_stall` runs if the body does not arrive within the frame body timeout; it must close
// the socket. Only the handshake reads this way; then read_loop takes over.
template <class Stream>
awaitable<result<envelope>> read_frame(Stream& stream, std::vector<char>& body,
                                       asio::steady_timer& body_timer,
                                       const connection_limits& limits,
                                       std::function<void()> on_stall) {
  unsigned char header[frame_header_size];
  error_code ec;
  co_await asio::async_read(stream, asio::buffer(header), asio::redirect_error(use_awaitable, ec));
  if (ec) co_return failure{errc::unavailable, ec.message()};
  const std::uint32_t size = decode_frame_header(header);
  if (size > limits.decode.max_frame_bytes)
    co_return failure{errc::frame_too_large, "frame of " + std::to_string(size) +
                                                 " bytes exceeds the limit of " +
                                                 std::to_string(limits.decode.max_frame_bytes)};
  body_timer.expires_after(limits.frame_body_timeout);
  body_timer.async_wait([on_stall = std::move(on_stall)](const error_code& timer_ec) {
    if (!timer_ec) on_stall();
  });
  // The buffer grows with the bytes that actually arrive (at most doubling), so a header
  // announcing max_frame_bytes followed by a stall does not commit max_frame_bytes of memory.
  constexpr std::size_t first_chunk = 64 * 1024;
  body.clear();
  std::size_t received = 0;
  while (!ec && received < size) {
    const std::size_t chunk =
        std::min<std::size_t>(size - received, std::max(first_chunk, received));
    body.resize(received + chunk);
    received += co_await asio::async_read(stream, asio::buffer(body.data() + received, chunk),
                                          asio::redirect_error(use_awaitable, ec));
  }
  body_timer.cancel();
  if (ec) co_return failure{errc::unavailable, ec.message()};
  co_return decode_envelope(body.data(), size, limits.decode);
}

awaitable<result<envelope>> connection::read_handshake_frame() {
  std::vector<char> body;
  asio::steady_timer body_timer(socket_.get_executor());
  std::function<void()> on_stall = [weak = weak_from_this()] {
    if (auto self = weak.lock()) self->close();
  };
  if (tls_) {
    auto read = read_frame(*tls_, body, body_timer, limits_, on_stall);
    co_return co_await std::move(read);
  }
  auto read = read_frame(socket_, body, body_timer, limits_, on_stall);
  co_return co_await std::move(read);
}

awaitable<error_code> connection::write_frame_now(const msgpack::sbuffer& out) {
  error_code ec;
  if (tls_)
    co_await asio::async_write(*tls_, asio::buffer(out.data(), out.size()),
                               asio::redirect_error(use_awaitable, ec));
  else
    co_await asio::async_write(socket_, asio::buffer(out.data(), out.size()),
                               asio::redirect_error(use_awaitable, ec));
  co_return ec;
}

awaitable<bool> sleep_for(steady_clock::duration duration) {
  asio::steady_timer timer(co_await asio::this_coro::executor);
  timer.expires_after(duration);
  error_code ec;
  co_await timer.async_wait(asio::redirect_error(use_awaitable, ec));
  co_return !ec;
}

std::optional<host_port> parse_host_port(std::string_view text) {
  const auto colon = text.rfind(':');
  if (colon == std::string_view::npos || colon + 1 == text.size()) return std::nullopt;
  std::string host(text.substr(0, colon));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']')
    host = host.substr(1, host.size() - 2);
  unsigned port = 0;
  for (char c : text.substr(colon + 1)) {
    if (c < '0' || c > '9') return std::nullopt;
    port = port * 10 + static_cast<unsigned>(c - '0');
    if (port > 65535) return std::nullopt;
  }
  if (host.empty()) return std::nullopt;
  return host_port{std::move(host), static_cast<std::uint16_t>(port)};
}

connection::connection(tcp::socket socket, connection_limits limits, bool server_side)
    : socket_(std::move(socket)),
      limits_(limits),
      peer_(describe_peer(socket_)),
      handshaken_(!server_side),
      server_side_(server_side),
      deadline_timer_(socket_.get_executor()),
      body_timer_(socket_.get_executor()),
      handshake_timer_(socket_.get_executor()) {
  error_code ignored;
  socket_.set_option(tcp::no_delay(true), ignored);
  net_counters().connections_opened.inc();
  net_counters().connections_open.add(1);
}

connection::~connection() {
  net_counters().connections_open.add(-1);
  error_code ignored;
  socket_.close(ignored);
}

void connection::start(message_handler on_message, std::function<void()> on_close) {
  on_message_ = std::move(on_message);
  on_close_ = std::move(on_close);
  if (!handshaken_) {
    // Covers TLS, hello and auth: a peer that starts and never finishes is dropped.
    handshake_timer_.expires_after(limits_.handshake_timeout);
    handshake_timer_.async_wait([weak = weak_from_this()](const error_code& ec) {
      auto self = weak.lock();
      if (!ec && self && !self->handshaken_) {
        spdlog::warn("closing {}: no complete handshake within the handshake timeout", self->peer_);
        self->close();
      }
    });
  }
  asio::co_spawn(socket_.get_executor(), read_loop(shared_from_this()), asio::detached);
}

awaitable<void> connection::read_loop(connection_ptr self) {
  // One read takes whatever arrived (many frames under load) and every complete frame in it
  // is decoded before the next read: one syscall for a batch instead of two per frame. The
  // buffer grows with the bytes of a frame that actually arrive (at most doubling, never past
  // the announced frame), so a header announcing max_frame_bytes and then a stall does not
  // commit that much memory.
  constexpr std::size_t initial_buffer = 16 * 1024;
  std::vector<char> buffer(initial_buffer);
  std::size_t begin = 0, end = 0;
  bool stall_timer_armed = false;
  if (server_side_ && limits_.security && limits_.security->tls_server) {
    auto negotiate = accept_tls_if_offered();
    if (!co_await std::move(negotiate)) {
      if (!closing_) close();
      co_return;
    }
  }
  std::uint64_t frames_read = 0;  // dispatched since the last read, counted before the next
  while (open_ && !closing_) {
    const std::size_t available = end - begin;
    if (available >= frame_header_size) {
      unsigned char header[frame_header_size];
      std::memcpy(header, buffer.data() + begin, frame_header_size);
      const std::uint32_t size = decode_frame_header(header);
      if (size > limits_.decode.max_frame_bytes) {
        protocol_error(0, errc::frame_too_large,
                       "frame of " + std::to_string(size) + " bytes exceeds the limit of " +
                           std::to_string(limits_.decode.max_frame_bytes));
        break;
      }
      const std::size_t whole = frame_header_size + size;
      if (available >= whole) {
        if (stall_timer_armed) {
          body_timer_.cancel();
          stall_timer_armed = false;
        }
        auto env = decode_envelope(buffer.data() + begin + frame_header_size, size, limits_.decode);
        begin += whole;
        if (!env) {
          protocol_error(0, env.error().code, env.error().message);
          break;
        }
        last_heard_ = steady_clock::now();
        ++frames_read;
        if (!dispatch(self, std::move(env).value())) break;
        continue;
      }
      if (!stall_timer_armed) {
        stall_timer_armed = true;
        body_timer_.expires_after(limits_.frame_body_timeout);
        body_timer_.async_wait([weak = weak_from_this()](const error_code& ec) {
          auto stalled = weak.lock();
          if (ec || !stalled) return;
          spdlog::warn("closing {}: frame body stalled", stalled->peer_);
          stalled->close();
        });
      }
    }
    if (begin == end) {
      begin = end = 0;
      if (buffer.size() > initial_buffer) std::vector<char>(initial_buffer).swap(buffer);
    }
    if (end == buffer.size()) {
      if (begin > 0) {
        std::memmove(buffer.data(), buffer.data() + begin, end - begin);
        end -= begin;
        begin = 0;
      }
      // Still full: one partial frame larger than the buffer (its size is checked above).
      if (end == buffer.size()) {
        unsigned char header[frame_header_size];
        std::memcpy(header, buffer.data(), frame_header_size);
        buffer.resize(std::min(buffer.size() * 2,
                               frame_header_size + std::size_t{decode_frame_header(header)}));
      }
    }
    // Before waiting: a connection that goes quiet has all its frames counted.
    net_counters().frames_received.inc(std::exchange(frames_read, 0));
    error_code ec;
    const auto free_space = asio::buffer(buffer.data() + end, buffer.size() - end);
    const std::size_t n =
        tls_
            ? co_await tls_->async_read_some(free_space, asio::redirect_error(use_awaitable, ec))
            : co_await socket_.async_read_some(free_space, asio::redirect_error(use_awaitable, ec));
    if (ec) break;
    net_counters().bytes_received.inc(n);
    end += n;
  }
  net_counters().frames_received.inc(frames_read);
  if (!closing_) close();
}

bool connection::dispatch(const connection_ptr& self, envelope&& env) {
  if (!handshaken_) return handle_handshake(env);
  switch (static_cast<message_kind>(env.kind)) {
    case message_kind::reply:
      handle_reply(std::move(env));
      break;
    case message_kind::stream_chunk:
      handle_chunk(std::move(env));
      break;
    case message_kind::ping:
      send(message_kind::pong, env.id, empty_msg{});
      break;
    case message_kind::pong:
    case message_kind::hello_ack:
      break;
    case message_kind::hello:
      send_reply(env.id, reply_msg::failure(errc::invalid_request, "handshake already done"));
      break;
    default:
      if (allowed && !permitted(env)) break;
      if (on_message_) {
        // A copy: the handler may close this connection, which drops on_message_.
        auto handler = on_message_;
        handler(self, std::move(env));
      }
      break;
  }
  return true;
}

void connection::handle_reply(envelope&& env) {
  auto it = pending_.find(env.id);
  if (it == pending_.end()) return;  // late reply to a call that already timed out
  auto done = std::move(it->second.done);
  pending_.erase(it);
  // Nothing pending: every deadline entry is stale. The armed timer, if any, fires once
  // and finds nothing to do.
  if (pending_.empty()) deadlines_.clear();
  auto reply = env.as<reply_msg>();
  if (!reply) {
    done(reply_msg::failure(errc::malformed_frame,
                            "reply has the wrong shape: " + reply.error().message));
    return;
  }
  done(std::move(reply).value());
}

void connection::handle_chunk(envelope&& env) {
  auto it = pending_.find(env.id);
  // Chunks of a stream that ended (or timed out here) or of no stream at all are dropped.
  if (it == pending_.end() || !it->second.on_items) return;
  auto chunk = env.as<stream_chunk_msg>();
  if (!chunk) {
    auto done = std::move(it->second.done);
    pending_.erase(it);
    interrupt_sent(env.id);
    done(reply_msg::failure(errc::malformed_frame,
                            "stream chunk has the wrong shape: " + chunk.error().message));
    return;
  }
  auto& call = it->second;
  const auto count = chunk.value().items.size();
  if (count > call.credit_left) {
    // The peer broke the flow control: stop the stream rather than buffer past the window.
    const auto credit_left = call.credit_left;
    auto done = std::move(call.done);
    pending_.erase(it);
    interrupt_sent(env.id);
    done(reply_msg::failure(errc::invalid_request,
                            "stream chunk of " + std::to_string(count) + " items exceeds the " +
                                std::to_string(credit_left) + " items of credit left"));
    return;
  }
  call.credit_left -= static_cast<std::uint32_t>(count);
  restart_wait(env.id, call);
  auto on_items = call.on_items;
  (*on_items)(std::move(chunk.value().items));
}

void connection::interrupt_sent(std::uint64_t id) {
  send(message_kind::interrupt, id, empty_msg{});
}

void connection::ack(std::uint64_t id, std::uint32_t credit) {
  auto it = pending_.find(id);
  if (it == pending_.end() || !it->second.on_items || credit == 0) return;
  it->second.credit_left += credit;
  restart_wait(id, it->second);
  send(message_kind::stream_ack, id, stream_ack_msg{credit});
}

void connection::interrupt(std::uint64_t id) {
  if (pending_.find(id) == pending_.end()) return;
  interrupt_sent(id);
}

void connection::restart_wait(std::uint64_t id, pending_call& call) {
  call.deadline = steady_clock::now() + call.timeout;
  watch_deadline(id, call.deadline);
}

void connection::close_after_flush() {
  closing_ = true;
  if (!writing_) close();
}

void connection::protocol_error(std::uint64_t id, errc code, const std::string& message) {
  spdlog::warn("closing connection from {}: {}", peer_, message);
  send_reply(id, reply_msg::failure(code, message));
  closing_ = true;
  if (!writing_) close();
}

void connection::schedule_write() {
  ++frames_queued_;
  if (over_queue_bound()) {
    close_not_reading();
    return;
  }
  if (writing_) return;
  writing_ = true;
  asio::post(socket_.get_executor(), [self = shared_from_this()] { self->write_queued(); });
}

void connection::write_queued() {
  if (!open_ || queued_.size() == 0) {
    writing_ = false;
    if (closing_) close();
    return;
  }
  std::swap(queued_, in_write_);
  // A burst can grow a buffer a lot: give that memory back rather than keep it per connection.
  constexpr std::size_t kept_bytes = 1 << 20;
  if (queued_.size() > kept_bytes) queued_ = msgpack::sbuffer(1024);
  queued_.clear();
  auto written = [self = shared_from_this()](const error_code& ec, std::size_t) {
    self->in_write_.clear();
    if (ec) {
      self->writing_ = false;
      self->close();
      return;
    }
    self->write_queued();
  };
  net_counters().bytes_sent.inc(in_write_.size());
  net_counters().frames_sent.inc(std::exchange(frames_queued_, 0));
  const auto frames = asio::buffer(in_write_.data(), in_write_.size());
  if (tls_)
    asio::async_write(*tls_, frames, std::move(written));
  else
    asio::async_write(socket_, frames, std::move(written));
}

void connection::close_not_reading() {
  spdlog::warn(
      "closing {} ({} {}): {} bytes queued for it exceed the limit of {}; it does not "
      "read",
      peer_, peer_role.empty() ? "peer" : peer_role, peer_name, queued_.size() + in_write_.size(),
      limits_.max_queued_bytes);
  close();
}

void connection::watch_idle() {
  if (limits_.idle_timeout <= milliseconds(0) || peer_role != "client") return;
  if (!idle_timer_) idle_timer_.emplace(socket_.get_executor());
  arm_idle_timer(last_heard_ + limits_.idle_timeout);
}

void connection::arm_idle_timer(steady_clock::time_point at) {
  idle_timer_->expires_at(at);
  idle_timer_->async_wait([weak = weak_from_this()](const error_code& ec) {
    auto self = weak.lock();
    if (ec || !self || !self->open_) return;
    self->check_idle();
  });
}

void connection::check_idle() {
  const auto now = steady_clock::now();
  // A client waiting for a slow reply sends nothing meanwhile, and is not idle.
  const auto due = in_flight > 0 ? now + limits_.idle_timeout : last_heard_ + limits_.idle_timeout;
  if (now < due) {
    arm_idle_timer(due);
    return;
  }
  spdlog::info("closing {} (client {}): nothing received for {} ms", peer_, peer_name,
               limits_.idle_timeout.count());
  close();
}

void connection::watch_deadline(std::uint64_t id, steady_clock::time_point deadline) {
  if (deadlines_.size() >= 2 * pending_.size() + 64) {
    // Mostly answered calls: rebuild from what is pending (this call included).
    deadlines_.clear();
    for (const auto& [pending_id, call] : pending_)
      deadlines_.push_back({call.deadline, pending_id});
    std::make_heap(deadlines_.begin(), deadlines_.end(), std::greater<>{});
  } else {
    deadlines_.push_back({deadline, id});
    std::push_heap(deadlines_.begin(), deadlines_.end(), std::greater<>{});
  }
  if (deadline < timer_at_) arm_deadline_timer(deadline);
}

void connection::arm_deadline_timer(steady_clock::time_point at) {
  timer_at_ = at;
  // Replaces (cancels) the wait for a later deadline, if any.
  deadline_timer_.expires_at(at);
  deadline_timer_.async_wait([weak = weak_from_this()](const error_code& ec) {
    auto self = weak.lock();
    if (ec || !self) return;
    self->expire_due_calls();
  });
}

void connection::expire_due_calls() {
  timer_at_ = steady_clock::time_point::max();
  const auto now = steady_clock::now();
  std::vector<reply_callback> expired;
  std::vector<std::uint64_t> held;
  while (!deadlines_.empty()) {
    const deadline_entry earliest = deadlines_.front();
    auto it = pending_.find(earliest.id);
    // A streaming call's wait restarts with each chunk and ack: older entries are stale.
    const bool live = it != pending_.end() && it->second.deadline == earliest.at;
    if (live && earliest.at > now) break;
    std::pop_heap(deadlines_.begin(), deadlines_.end(), std::greater<>{});
    deadlines_.pop_back();
    if (!live) continue;  // answered before its deadline
    if (it->second.on_items && it->second.credit_left == 0) {
      // The consumer holds all the credit: the producer is waiting for it, not late.
      held.push_back(it->first);
      continue;
    }
    if (it->second.on_items) interrupt_sent(it->first);  // a producer has nobody to wait for
    expired.push_back(std::move(it->second.done));
    pending_.erase(it);
  }
  for (auto id : held) restart_wait(id, pending_.at(id));
  if (!deadlines_.empty() && deadlines_.front().at < timer_at_)
    arm_deadline_timer(deadlines_.front().at);
  // The callbacks may call again (a router retrying elsewhere) or close this connection.
  for (auto& done : expired)
    done(reply_msg::failure(errc::deadline_exceeded, "no reply from " + peer_));
}

void connection::fail_later(reply_callback done, errc code, std::string message) {
  asio::post(socket_.get_executor(),
             [done = std::move(done), code, message = std::move(message)]() mutable {
               done(reply_msg::failure(code, std::move(message)));
             });
}

void connection::close() {
  if (!open_) return;
  open_ = false;
  error_code ignored;
  socket_.shutdown(tcp::socket::shutdown_both, ignored);
  socket_.close(ignored);
  deadline_timer_.cancel();
  body_timer_.cancel();
  if (idle_timer_) idle_timer_->cancel();
  handshake_timer_.cancel();
  queued_.clear();
  auto pending = std::move(pending_);
  pending_.clear();
  deadlines_.clear();
  timer_at_ = steady_clock::time_point::max();
  for (auto& [id, call] : pending)
    fail_later(std::move(call.done), errc::unavailable, "connection to " + peer_ + " was lost");
  if (on_close_) {
    auto on_close = std::move(on_close_);
    on_close_ = nullptr;
    asio::post(socket_.get_executor(), std::move(on_close));
  }
  on_message_ = nullptr;
}

awaitable<result<connection_ptr>> connect_to(host_port address, hello_msg hello,
                                             connection_limits limits, milliseconds timeout,
                                             connection::message_handler on_message,
                                             std::function<void()> on_close,
                                             role_mask accepted_servers) {
  const auto cannot = [&address](errc code, const std::string& why) {
    return failure{code, "cannot connect to " + address.to_string() + ": " + why};
  };
  auto executor = co_await asio::this_coro::executor;
  // The deadline closes whatever is open when it fires: the socket while connecting, the
  // connection during the handshake. Shared with the timer's handler, which may run later.
  struct attempt {
    explicit attempt(const asio::any_io_executor& ex) : socket(ex) {}
    tcp::socket socket;
    std::weak_ptr<connection> conn;
    bool timed_out = false;
  };
  auto state = std::make_shared<attempt>(executor);
  asio::steady_timer deadline(executor);
  deadline.expires_after(timeout);
  deadline.async_wait([state](const error_code& ec) {
    if (ec) return;
    state->timed_out = true;
    error_code ignored;
    state->socket.close(ignored);
    if (auto conn = state->conn.lock()) conn->close();
  });
  const auto timed_out = [&] {
    return cannot(errc::unavailable, "timed out after " + std::to_string(timeout.count()) + " ms");
  };
  error_code ec;
  tcp::resolver resolver(executor);
  const std::string port = std::to_string(address.port);
  auto endpoints =
      co_await resolver.async_resolve(address.host, port, asio::redirect_error(use_awaitable, ec));
  if (!ec && !state->timed_out)
    co_await asio::async_connect(state->socket, endpoints, asio::redirect_error(use_awaitable, ec));
  if (state->timed_out) co_return timed_out();
  if (ec) co_return cannot(errc::unavailable, ec.message());
  auto conn = std::make_shared<connection>(std::move(state->socket), limits, false);
  state->conn = conn;
  auto handshake = conn->client_handshake(std::move(hello), accepted_servers);
  auto shaken = co_await std::move(handshake);
  deadline.cancel();
  if (state->timed_out) co_return timed_out();
  if (!shaken) co_return cannot(shaken.error().code, shaken.error().message);
  conn->start(std::move(on_message), std::move(on_close));
  co_return conn;
}

}  // namespace cluster
