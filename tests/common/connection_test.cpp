// Framed, multiplexed connections and the server over real loopback sockets
// (libs/net: cluster/net/{connection,server}.hpp).
//
// Everything runs on one io_context driven by the test thread through `run_until`, the same
// single-threaded model as the processes.

#include "cluster/net/connection.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "cluster/metrics/metrics.hpp"
#include "cluster/net/server.hpp"

namespace {

using namespace std::chrono_literals;
using cluster::bytes;
using cluster::connection_ptr;
using cluster::envelope;
using cluster::errc;
using cluster::message_kind;
using cluster::milliseconds;
using cluster::reply_msg;
using cluster::request_msg;
using cluster::tcp;
using cluster::asio::io_context;
namespace asio = cluster::asio;

// Runs the io_context until `done` holds or `limit` passes; returns `done()`.
bool run_until(io_context& io, const std::function<bool()>& done, milliseconds limit = 5s) {
  const auto deadline = cluster::steady_clock::now() + limit;
  while (!done() && cluster::steady_clock::now() < deadline) {
    io.run_for(10ms);
    if (io.stopped()) io.restart();
  }
  return done();
}

// A request the test server holds back until told to answer.
struct held_request {
  connection_ptr conn;
  std::uint64_t id = 0;
  bytes payload;
};

// A plain socket that speaks bytes, for input no well-behaved client would send. Its state is
// shared with its pending handlers, which may run after the peer object is gone.
class raw_peer {
 public:
  explicit raw_peer(io_context& io) : io_(io), state_(std::make_shared<state>(io)) {}
  ~raw_peer() { close(); }
  raw_peer(const raw_peer&) = delete;
  raw_peer& operator=(const raw_peer&) = delete;

  /// `reading` false: a peer that never reads what it is sent (its kernel buffers fill up).
  bool connect(std::uint16_t port, bool reading = true) {
    auto connected = std::make_shared<std::optional<cluster::error_code>>();
    const tcp::endpoint endpoint(asio::ip::make_address("127.0.0.1"), port);
    state_->socket.async_connect(endpoint,
                                 [connected](const cluster::error_code& ec) { *connected = ec; });
    run_until(io_, [connected] { return connected->has_value(); });
    if (!connected->has_value() || **connected) return false;
    if (reading) read_more(state_);
    return true;
  }

  void send(std::string data) {
    auto shared = std::make_shared<std::string>(std::move(data));
    asio::async_write(state_->socket, asio::buffer(*shared),
                      [keep = state_, shared](const cluster::error_code&, std::size_t) {});
  }
  void send(const cluster::frame& frame) { send(std::string(frame.data(), frame.size())); }

  /// Waits for the peer to close the connection (EOF or reset).
  bool wait_closed(milliseconds limit = 5s) {
    return run_until(
        io_, [s = state_] { return s->closed; }, limit);
  }
  /// Waits for at least `count` complete frames.
  bool wait_frames(std::size_t count, milliseconds limit = 5s) {
    run_until(
        io_, [this, count] { return frames().size() >= count || state_->closed; }, limit);
    return frames().size() >= count;
  }
  bool closed() const { return state_->closed; }

  /// Every complete frame received so far, decoded.
  std::vector<envelope> frames() const {
    const auto& received = state_->received;
    std::vector<envelope> result;
    std::size_t at = 0;
    while (received.size() - at >= cluster::frame_header_size) {
      unsigned char header[cluster::frame_header_size];
      std::copy_n(received.begin() + static_cast<std::ptrdiff_t>(at), cluster::frame_header_size,
                  header);
      const auto size = cluster::decode_frame_header(header);
      if (received.size() - at - cluster::frame_header_size < size) break;
      auto env =
          cluster::decode_envelope(received.data() + at + cluster::frame_header_size, size, {});
      EXPECT_TRUE(env.has_value())
          << "the server sent an undecodable frame: " << env.error().message;
      if (env) result.push_back(std::move(env).value());
      at += cluster::frame_header_size + size;
    }
    return result;
  }

  void close() {
    cluster::error_code ignored;
    state_->socket.close(ignored);
  }

 private:
  struct state {
    explicit state(io_context& io) : socket(io) {}
    tcp::socket socket;
    std::array<char, 4096> chunk{};
    std::vector<char> received;
    bool closed = false;
  };

  static void read_more(const std::shared_ptr<state>& s) {
    s->socket.async_read_some(
        asio::buffer(s->chunk), [s](const cluster::error_code& ec, std::size_t n) {
          s->received.insert(s->received.end(), s->chunk.begin(),
                             s->chunk.begin() + static_cast<std::ptrdiff_t>(n));
          if (ec) {
            s->closed = true;
            return;
          }
          read_more(s);
        });
  }

  io_context& io_;
  std::shared_ptr<state> state_;
};

cluster::hello_msg client_hello(std::uint32_t version = cluster::protocol_version,
                                std::string role = "client") {
  cluster::hello_msg hello;
  hello.protocol_version = version;
  hello.role = std::move(role);
  hello.name = "connection-test";
  return hello;
}

request_msg echo_request(std::string rpc, bytes payload) {
  request_msg request;
  request.entity_type = "Echo";
  request.entity_id = "e";
  request.rpc = std::move(rpc);
  request.payload = std::move(payload);
  return request;
}

// A request whose entity_type is an integer: decodes as an envelope, not as a request_msg.
struct malformed_request {
  std::int64_t entity_type = 5;
  std::vector<int> rpc = {1, 2};
  MSGPACK_DEFINE_MAP(entity_type, rpc);
};

// A hello whose protocol_version is a string.
struct hello_with_string_version {
  std::string protocol_version = "1";
  std::string role = "client";
  MSGPACK_DEFINE_MAP(protocol_version, role);
};

// A reply whose code is a string.
struct reply_with_string_code {
  std::string code = "Ok";
  MSGPACK_DEFINE_MAP(code);
};

// A loopback server whose handler echoes requests:
//   rpc "echo"   — answered at once with the request's payload;
//   rpc "hold"   — held until `hold_count` requests are held, then all answered in reverse;
//   rpc "silent" — never answered (counted in the connection's in_flight, as a real handler
//                  counts a request it is serving);
//   rpc "bad-reply" — answered with a reply of the wrong shape;
//   rpc "close" — the handler closes the connection;
//   a request_msg of the wrong shape — answered with invalid_request;
//   any other kind — answered with unknown_kind.
class loopback : public ::testing::Test {
 protected:
  ~loopback() override {
    for (auto& conn : clients_)
      if (conn) conn->close();
    if (server_) server_->stop();
    // Let the closes and their posted callbacks run before anything is destroyed.
    io_.restart();
    io_.run_for(50ms);
  }

  static cluster::server_options default_options() {
    cluster::server_options options;
    // Longer than any run_until deadline, so a test that needs a timeout must set it.
    options.limits.handshake_timeout = 60s;
    options.limits.frame_body_timeout = 60s;
    return options;
  }

  std::uint16_t start_server(cluster::server_options options = default_options()) {
    // The handler keeps state of its own after `handle` returns, like real handlers do.
    auto calls = handled_;
    server_ = std::make_unique<cluster::server>(
        io_, std::move(options), [this, calls](const connection_ptr& conn, envelope&& env) {
          handle(conn, std::move(env));
          ++*calls;
        });
    port_ = server_->listen();
    return port_;
  }

  // A scripted streaming callee: rpc "stream" (payload: the item count) yields the items
  // 0..count-1 within the credit granted, then the final reply {count}; "stream-overrun"
  // sends one item more than the credit; "stream-stray" first sends a chunk for an id
  // nobody waits for. An interrupt ends a stream with Cancelled.
  struct scripted_stream {
    connection_ptr conn;
    std::uint64_t id = 0;
    int total = 0;
    int sent = 0;
    std::uint32_t credit = 0;
    bool done = false;
  };

  void pump(scripted_stream& stream) {
    cluster::stream_chunk_msg chunk;
    while (stream.credit > 0 && stream.sent < stream.total) {
      chunk.items.push_back(cluster::pack_bytes(stream.sent++));
      --stream.credit;
    }
    if (!chunk.items.empty()) stream.conn->send(message_kind::stream_chunk, stream.id, chunk);
    if (stream.sent == stream.total && !stream.done) {
      stream.done = true;
      stream.conn->send_reply(stream.id, reply_msg::success(cluster::pack_bytes(stream.total)));
    }
  }

  scripted_stream* stream_of(std::uint64_t id) {
    for (auto& stream : streams_)
      if (stream.id == id && !stream.done) return &stream;
    return nullptr;
  }

  bool handle_stream_frames(const connection_ptr& conn, envelope& env) {
    if (env.kind == static_cast<std::uint32_t>(message_kind::stream_ack)) {
      ++acks_seen_;
      auto ack = env.as<cluster::stream_ack_msg>();
      if (auto* stream = stream_of(env.id); stream && ack) {
        stream->credit += ack.value().credit;
        pump(*stream);
      }
      return true;
    }
    if (env.kind == static_cast<std::uint32_t>(message_kind::interrupt)) {
      interrupts_seen_.push_back(env.id);
      if (auto* stream = stream_of(env.id)) {
        stream->done = true;
        conn->send_reply(env.id, reply_msg::failure(errc::cancelled, "interrupted"));
      }
      return true;
    }
    return false;
  }

  void start_stream(const connection_ptr& conn, std::uint64_t id, const request_msg& request) {
    scripted_stream stream{conn, id, cluster::unpack_bytes<int>(request.payload).value(), 0,
                           request.credit == 0 ? cluster::default_stream_credit : request.credit};
    if (request.rpc == "stream-overrun") {
      cluster::stream_chunk_msg chunk;
      for (std::uint32_t i = 0; i <= stream.credit; ++i)
        chunk.items.push_back(cluster::pack_bytes(static_cast<int>(i)));
      conn->send(message_kind::stream_chunk, id, chunk);
      return;
    }
    if (request.rpc == "stream-stray")
      conn->send(message_kind::stream_chunk, id + 1000,
                 cluster::stream_chunk_msg{{cluster::pack_bytes(7)}});
    streams_.push_back(stream);
    pump(streams_.back());
  }

  void handle(const connection_ptr& conn, envelope&& env) {
    last_peer_ = conn->peer_role + "/" + conn->peer_name;
    if (handle_stream_frames(conn, env)) return;
    if (env.kind != static_cast<std::uint32_t>(message_kind::request)) {
      conn->send_reply(env.id,
                       reply_msg::failure(errc::unknown_kind, "kind " + std::to_string(env.kind)));
      return;
    }
    auto decoded = env.as<request_msg>();
    if (!decoded) {
      conn->send_reply(env.id, reply_msg::failure(std::move(decoded).error()));
      return;
    }
    const request_msg& request = decoded.value();
    if (request.rpc.rfind("stream", 0) == 0) {
      start_stream(conn, env.id, request);
    } else if (request.rpc == "echo") {
      conn->send_reply(env.id, reply_msg::success(request.payload));
    } else if (request.rpc == "bad-reply") {
      conn->send(message_kind::reply, env.id, reply_with_string_code{});
    } else if (request.rpc == "close") {
      conn->close();
    } else if (request.rpc == "hold") {
      held_.push_back({conn, env.id, request.payload});
      if (held_.size() == hold_count_) {
        auto held = std::move(held_);
        held_.clear();
        std::reverse(held.begin(), held.end());
        for (auto& h : held) {
          answer_order_.push_back(h.id);
          h.conn->send_reply(h.id, reply_msg::success(h.payload));
        }
      }
    }
    if (request.rpc == "silent") ++conn->in_flight;  // never answered
  }

  /// Connects with connect_to on the test's io_context; never throws.
  cluster::result<connection_ptr> connect(cluster::hello_msg hello = client_hello(),
                                          std::uint16_t port = 0, milliseconds timeout = 5s) {
    auto result = std::make_shared<std::optional<cluster::result<connection_ptr>>>();
    auto thrown = std::make_shared<bool>(false);
    cluster::connection_limits limits;
    cluster::host_port address{"127.0.0.1", port == 0 ? port_ : port};
    cluster::connection::message_handler on_message;
    std::function<void()> on_close;
    auto op = cluster::connect_to(std::move(address), std::move(hello), limits, timeout,
                                  std::move(on_message), std::move(on_close));
    asio::co_spawn(
        io_,
        [op = std::move(op), result]() mutable -> cluster::awaitable<void> {
          auto connected = co_await std::move(op);
          result->emplace(std::move(connected));
        },
        [thrown](std::exception_ptr e) { *thrown = e != nullptr; });
    EXPECT_TRUE(run_until(
        io_, [result] { return result->has_value(); }, timeout + 5s));
    EXPECT_FALSE(*thrown) << "connect_to threw";
    if (!result->has_value()) return cluster::failure{errc::defect, "connect_to never finished"};
    if (result->value()) clients_.push_back(result->value().value());
    return std::move(**result);
  }

  connection_ptr connect_ok() {
    auto result = connect();
    EXPECT_TRUE(result.has_value()) << result.error().message;
    return result ? result.value() : nullptr;
  }

  /// Makes one call and waits for its reply.
  std::optional<reply_msg> call(const connection_ptr& conn, message_kind kind,
                                const request_msg& request, milliseconds timeout = 5s) {
    auto reply = std::make_shared<std::optional<reply_msg>>();
    conn->call(kind, request, timeout, [reply](reply_msg&& r) { *reply = std::move(r); });
    run_until(
        io_, [reply] { return reply->has_value(); }, timeout + 5s);
    return *reply;
  }

  /// The connection still answers a call: the round trip a test ends with.
  void expect_usable(const connection_ptr& conn) {
    ASSERT_TRUE(conn->is_open());
    const auto reply = call(conn, message_kind::request, echo_request("echo", bytes{4, 2}));
    ASSERT_TRUE(reply.has_value());
    EXPECT_TRUE(reply->ok()) << reply->error << ": " << reply->message;
    EXPECT_EQ(reply->payload, (bytes{4, 2}));
  }

  /// A raw peer that completed the handshake by hand.
  std::unique_ptr<raw_peer> raw_handshaken() {
    auto peer = std::make_unique<raw_peer>(io_);
    EXPECT_TRUE(peer->connect(port_));
    peer->send(cluster::encode_frame(message_kind::hello, 1, client_hello()));
    EXPECT_TRUE(peer->wait_frames(1));
    const auto frames = peer->frames();
    EXPECT_EQ(frames.size(), 1u);
    if (!frames.empty()) {
      EXPECT_EQ(frames[0].kind, static_cast<std::uint32_t>(message_kind::hello_ack));
    }
    return peer;
  }

  std::unique_ptr<raw_peer> raw_connected() {
    auto peer = std::make_unique<raw_peer>(io_);
    EXPECT_TRUE(peer->connect(port_));
    return peer;
  }

  io_context io_;
  std::unique_ptr<cluster::server> server_;
  std::uint16_t port_ = 0;
  std::vector<connection_ptr> clients_;
  std::vector<held_request> held_;
  std::size_t hold_count_ = 0;
  std::vector<std::uint64_t> answer_order_;
  std::deque<scripted_stream> streams_;
  int acks_seen_ = 0;
  std::vector<std::uint64_t> interrupts_seen_;
  std::string last_peer_;  ///< role/name from the hello of the last handled message's sender
  std::shared_ptr<int> handled_ = std::make_shared<int>(0);  ///< messages the handler saw
};

// A payload of `size` bytes for echo requests and calls that fill a peer's buffers.
bytes big_payload(std::size_t size) { return bytes(size, std::uint8_t{0x5a}); }

// Expects `env` to be a reply with `code` to request `id`.
void expect_reply(const envelope& env, std::uint64_t id, errc code) {
  EXPECT_EQ(env.kind, static_cast<std::uint32_t>(message_kind::reply));
  EXPECT_EQ(env.id, id);
  const auto reply = env.as<reply_msg>();
  ASSERT_TRUE(reply.has_value()) << reply.error().message;
  EXPECT_EQ(reply.value().code, code)
      << cluster::to_string(reply.value().code) << ": " << reply.value().message;
  EXPECT_EQ(reply.value().error, cluster::to_string(code));
}

}  // namespace

TEST_F(loopback, completes_the_handshake_and_learns_the_peer_names) {
  start_server();
  auto conn = connect_ok();
  ASSERT_NE(conn, nullptr);
  ASSERT_TRUE(run_until(io_, [this] { return server_->connection_count() == 1; }));
  EXPECT_TRUE(conn->is_open());
  expect_usable(conn);
  EXPECT_EQ(last_peer_, "client/connection-test");  // what the hello said, on the server side
}

TEST_F(loopback, matches_200_concurrent_replies_answered_in_reverse_order) {
  start_server();
  auto conn = connect_ok();
  ASSERT_NE(conn, nullptr);
  constexpr int calls = 200;
  hold_count_ = calls;

  struct outcome {
    int done = 0;
    int mismatched = 0;
    std::vector<int> completion_order;
  };
  auto result = std::make_shared<outcome>();
  auto one_call = [](connection_ptr c, int i,
                     std::shared_ptr<outcome> out) -> cluster::awaitable<> {
    const bytes payload = cluster::pack_bytes(i);
    request_msg request = echo_request("hold", payload);
    auto op = c->async_call(message_kind::request, request, 10s);
    reply_msg reply = co_await std::move(op);
    if (!reply.ok() || reply.payload != payload) ++out->mismatched;
    out->completion_order.push_back(i);
    ++out->done;
  };
  for (int i = 0; i < calls; ++i) {
    auto coroutine = one_call(conn, i, result);
    asio::co_spawn(io_, std::move(coroutine), asio::detached);
  }
  ASSERT_TRUE(run_until(
      io_, [result] { return result->done == calls; }, 10s))
      << result->done << " of " << calls << " calls completed";
  EXPECT_EQ(result->mismatched, 0);
  EXPECT_EQ(conn->pending_calls(), 0u);
  // The server really answered out of order: the last call sent was answered first.
  ASSERT_EQ(answer_order_.size(), static_cast<std::size_t>(calls));
  EXPECT_TRUE(std::is_sorted(answer_order_.rbegin(), answer_order_.rend()));
  EXPECT_EQ(result->completion_order.front(), calls - 1);
  EXPECT_EQ(result->completion_order.back(), 0);
}

TEST_F(loopback, fails_a_call_that_is_never_answered_with_deadline_exceeded) {
  start_server();
  auto conn = connect_ok();
  ASSERT_NE(conn, nullptr);
  const auto reply = call(conn, message_kind::request, echo_request("silent", {}), 100ms);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->code, errc::deadline_exceeded);
  EXPECT_EQ(conn->pending_calls(), 0u);
  EXPECT_TRUE(conn->is_open());
  expect_usable(conn);
}

TEST_F(loopback, fails_a_call_with_deadline_exceeded_at_its_deadline_not_before) {
  start_server();
  auto conn = connect_ok();
  ASSERT_NE(conn, nullptr);
  const auto sent = cluster::steady_clock::now();
  auto failed_at = std::make_shared<std::optional<cluster::steady_clock::time_point>>();
  conn->call(message_kind::request, echo_request("silent", {}), 150ms, [failed_at](reply_msg&& r) {
    EXPECT_EQ(r.code, errc::deadline_exceeded);
    *failed_at = cluster::steady_clock::now();
  });
  ASSERT_TRUE(run_until(io_, [failed_at] { return failed_at->has_value(); }));
  EXPECT_GE(**failed_at - sent, 150ms);
  // The timer is armed for the deadline itself (there is no sweep interval to wait out);
  // the bound only has to hold on a loaded machine.
  EXPECT_LT(**failed_at - sent, 150ms + 2s);
}

TEST_F(loopback, a_later_call_with_an_earlier_deadline_expires_first) {
  start_server();
  auto conn = connect_ok();
  ASSERT_NE(conn, nullptr);
  auto order = std::make_shared<std::vector<std::string>>();
  auto record = [order](std::string name) {
    return [order, name = std::move(name)](reply_msg&& r) {
      order->push_back(name + ":" + std::string(cluster::to_string(r.code)));
    };
  };
  // Armed for 30 s first; each later call must re-arm the timer for its earlier deadline.
  conn->call(message_kind::request, echo_request("silent", {}), 30s, record("30s"));
  conn->call(message_kind::request, echo_request("silent", {}), 400ms, record("400ms"));
  conn->call(message_kind::request, echo_request("silent", {}), 100ms, record("100ms"));
  conn->call(message_kind::request, echo_request("silent", {}), 250ms, record("250ms"));
  ASSERT_TRUE(run_until(io_, [order] { return order->size() == 3; }));
  EXPECT_EQ(*order, (std::vector<std::string>{"100ms:DeadlineExceeded", "250ms:DeadlineExceeded",
                                              "400ms:DeadlineExceeded"}));
  EXPECT_EQ(conn->pending_calls(), 1u);  // the 30 s call still waits
  expect_usable(conn);
}

TEST_F(loopback, expires_on_time_after_many_calls_were_answered_while_one_waits) {
  start_server();
  auto conn = connect_ok();
  ASSERT_NE(conn, nullptr);
  // One call stays pending throughout, so answered calls' deadlines pile up and get pruned.
  auto long_call = std::make_shared<std::optional<reply_msg>>();
  conn->call(message_kind::request, echo_request("silent", {}), 30s,
             [long_call](reply_msg&& r) { *long_call = std::move(r); });
  for (int i = 0; i < 300; ++i) {
    const auto reply = call(conn, message_kind::request, echo_request("echo", bytes{1}));
    ASSERT_TRUE(reply.has_value());
    ASSERT_TRUE(reply->ok()) << reply->message;
  }
  const auto reply = call(conn, message_kind::request, echo_request("silent", {}), 100ms);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->code, errc::deadline_exceeded);
  EXPECT_FALSE(long_call->has_value());
  EXPECT_EQ(conn->pending_calls(), 1u);
}

TEST_F(loopback, fails_pending_calls_with_unavailable_when_the_server_closes) {
  start_server();
  auto conn = connect_ok();
  ASSERT_NE(conn, nullptr);
  std::vector<std::optional<reply_msg>> replies(3);
  auto shared = std::make_shared<std::vector<std::optional<reply_msg>>>(std::move(replies));
  for (std::size_t i = 0; i < shared->size(); ++i)
    conn->call(message_kind::request, echo_request("silent", {}), 60s,
               [shared, i](reply_msg&& r) { (*shared)[i] = std::move(r); });
  ASSERT_TRUE(run_until(io_, [handled = handled_] { return *handled == 3; }));
  server_->stop();
  ASSERT_TRUE(run_until(io_, [shared] {
    return std::all_of(shared->begin(), shared->end(), [](const auto& r) { return r.has_value(); });
  }));
  for (const auto& r : *shared) EXPECT_EQ(r->code, errc::unavailable) << r->message;
  EXPECT_FALSE(conn->is_open());
  // A call on the closed connection fails the same way, never synchronously.
  const auto late = call(conn, message_kind::request, echo_request("echo", {}));
  ASSERT_TRUE(late.has_value());
  EXPECT_EQ(late->code, errc::unavailable);
}

// What a streaming call saw, for the stream tests.
struct stream_outcome {
  std::vector<int> items;
  std::optional<reply_msg> reply;
  std::uint32_t held = 0;  // items received and not acked yet
  std::uint32_t most_held = 0;
};

request_msg stream_request(std::string rpc, int count, std::uint32_t credit) {
  auto request = echo_request(std::move(rpc), cluster::pack_bytes(count));
  request.credit = credit;
  return request;
}

// Starts a streaming call whose consumer acks every `ack_every` items (0: never by itself).
std::uint64_t start_stream_call(const connection_ptr& conn, const request_msg& request,
                                std::shared_ptr<stream_outcome> out, std::uint32_t ack_every,
                                milliseconds timeout = 5s) {
  auto id = std::make_shared<std::uint64_t>(0);
  *id = conn->call_stream(
      message_kind::request, request, request.credit, timeout,
      [out, id, ack_every,
       weak = std::weak_ptr<cluster::connection>(conn)](std::vector<bytes>&& items) {
        for (const auto& item : items)
          out->items.push_back(cluster::unpack_bytes<int>(item).value());
        out->held += static_cast<std::uint32_t>(items.size());
        out->most_held = std::max(out->most_held, out->held);
        auto c = weak.lock();
        if (ack_every > 0 && out->held >= ack_every && c) {
          c->ack(*id, out->held);
          out->held = 0;
        }
      },
      [out](reply_msg&& r) { out->reply = std::move(r); });
  return *id;
}

TEST_F(loopback, a_streaming_call_gets_its_items_in_order_within_the_credit_then_the_reply) {
  start_server();
  auto conn = connect_ok();
  ASSERT_NE(conn, nullptr);
  auto out = std::make_shared<stream_outcome>();
  start_stream_call(conn, stream_request("stream", 1000, 8), out, 4);
  ASSERT_TRUE(run_until(io_, [out] { return out->reply.has_value(); }));
  ASSERT_TRUE(out->reply->ok()) << out->reply->message;
  EXPECT_EQ(cluster::unpack_bytes<int>(out->reply->payload).value(), 1000);
  ASSERT_EQ(out->items.size(), 1000u);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(out->items[static_cast<std::size_t>(i)], i);
  EXPECT_LE(out->most_held, 8u);
  EXPECT_GE(acks_seen_, 1000 / 8);
  EXPECT_EQ(conn->pending_calls(), 0u);
  expect_usable(conn);
}

TEST_F(loopback, a_consumer_that_does_not_ack_holds_the_producer_at_its_credit) {
  start_server();
  auto conn = connect_ok();
  ASSERT_NE(conn, nullptr);
  auto out = std::make_shared<stream_outcome>();
  // A wait shorter than the test: the call must not time out while the consumer holds back.
  const auto id = start_stream_call(conn, stream_request("stream", 100, 10), out, 0, 200ms);
  ASSERT_TRUE(run_until(io_, [out] { return out->items.size() == 10; }));
  io_.restart();
  io_.run_for(500ms);
  EXPECT_EQ(out->items.size(), 10u) << "the producer went past the credit";
  EXPECT_FALSE(out->reply.has_value()) << "timed out while the consumer held the credit";
  conn->ack(id, 90);
  ASSERT_TRUE(run_until(io_, [out] { return out->reply.has_value(); }));
  EXPECT_TRUE(out->reply->ok()) << out->reply->message;
  EXPECT_EQ(out->items.size(), 100u);
}

TEST_F(loopback, a_stream_that_sends_nothing_while_it_has_credit_times_out) {
  start_server();
  auto conn = connect_ok();
  ASSERT_NE(conn, nullptr);
  auto out = std::make_shared<stream_outcome>();
  // "silent" never answers: the wait for the first item runs out, and the callee is told.
  auto request = echo_request("silent", {});
  conn->call_stream(
      message_kind::request, request, 4, 150ms, [out](std::vector<bytes>&&) {},
      [out](reply_msg&& r) { out->reply = std::move(r); });
  ASSERT_TRUE(run_until(io_, [out] { return out->reply.has_value(); }));
  EXPECT_EQ(out->reply->code, errc::deadline_exceeded);
  ASSERT_TRUE(run_until(io_, [this] { return !interrupts_seen_.empty(); }));
  expect_usable(conn);
}

TEST_F(loopback, an_interrupt_reaches_the_callee_and_the_call_ends_with_its_reply) {
  start_server();
  auto conn = connect_ok();
  ASSERT_NE(conn, nullptr);
  auto out = std::make_shared<stream_outcome>();
  const auto id = start_stream_call(conn, stream_request("stream", 100, 5), out, 0);
  ASSERT_TRUE(run_until(io_, [out] { return out->items.size() == 5; }));
  conn->interrupt(id);
  ASSERT_TRUE(run_until(io_, [out] { return out->reply.has_value(); }));
  EXPECT_EQ(out->reply->code, errc::cancelled);
  EXPECT_EQ(interrupts_seen_, std::vector<std::uint64_t>{id});
  // An interrupt or ack for a call that ended sends nothing.
  conn->interrupt(id);
  conn->ack(id, 5);
  expect_usable(conn);
  EXPECT_EQ(interrupts_seen_.size(), 1u);
  EXPECT_EQ(acks_seen_, 0);
}

TEST_F(loopback, a_chunk_past_the_credit_ends_the_stream_with_invalid_request) {
  start_server();
  auto conn = connect_ok();
  ASSERT_NE(conn, nullptr);
  auto out = std::make_shared<stream_outcome>();
  start_stream_call(conn, stream_request("stream-overrun", 10, 3), out, 0);
  ASSERT_TRUE(run_until(io_, [out] { return out->reply.has_value(); }));
  EXPECT_EQ(out->reply->code, errc::invalid_request) << out->reply->message;
  EXPECT_TRUE(out->items.empty());
  ASSERT_TRUE(run_until(io_, [this] { return interrupts_seen_.size() == 1; }));
  expect_usable(conn);
}

TEST_F(loopback, a_chunk_for_an_id_nobody_waits_for_is_dropped) {
  start_server();
  auto conn = connect_ok();
  ASSERT_NE(conn, nullptr);
  auto out = std::make_shared<stream_outcome>();
  start_stream_call(conn, stream_request("stream-stray", 3, 0), out, 0);
  ASSERT_TRUE(run_until(io_, [out] { return out->reply.has_value(); }));
  EXPECT_TRUE(out->reply->ok()) << out->reply->message;
  EXPECT_EQ(out->items, (std::vector<int>{0, 1, 2}));
  // A plain call gets no items either: a chunk for it is dropped, its reply still counts.
  expect_usable(conn);
}

TEST_F(loopback, counts_every_frame_both_ways_once_the_connections_go_quiet) {
  auto& registry = cluster::metrics::default_registry();
  auto& received = registry.counter_of("cluster_net_received_frames_total", "");
  auto& sent = registry.counter_of("cluster_net_sent_frames_total", "");
  // Before any connection of this test: earlier tests' connections are closed and counted.
  const auto received_before = received.value();
  const auto sent_before = sent.value();
  start_server();
  auto conn = connect_ok();
  ASSERT_NE(conn, nullptr);
  for (int i = 0; i < 10; ++i) expect_usable(conn);
  // Client and server are both in this process, so every frame one sends the other receives:
  // the handshake, 10 requests and 10 replies, counted without a further read on either side.
  EXPECT_TRUE(run_until(
      io_, [&] { return received.value() - received_before == sent.value() - sent_before; }, 2s))
      << "received " << received.value() - received_before << ", sent "
      << sent.value() - sent_before;
  EXPECT_GE(sent.value() - sent_before, 20u);
}

TEST_F(loopback, answers_a_ping_with_a_pong_of_the_same_id) {
  start_server();
  auto peer = raw_handshaken();
  peer->send(cluster::encode_frame(message_kind::ping, 4242, cluster::empty_msg{}));
  ASSERT_TRUE(peer->wait_frames(2));
  const auto frames = peer->frames();
  EXPECT_EQ(frames[1].kind, static_cast<std::uint32_t>(message_kind::pong));
  EXPECT_EQ(frames[1].id, 4242u);
  EXPECT_FALSE(peer->closed());
  EXPECT_EQ(*handled_, 0);  // the connection answers pings itself
}

TEST_F(loopback, closes_a_connection_sending_random_bytes_and_keeps_serving_others) {
  cluster::server_options options = default_options();
  options.limits.frame_body_timeout = 200ms;
  start_server(options);
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> byte(0, 255);
  for (int round = 0; round < 8; ++round) {
    auto peer = raw_connected();
    std::string garbage(static_cast<std::size_t>(64 + round * 97), '\0');
    for (char& c : garbage) c = static_cast<char>(byte(rng));
    // Some rounds announce a small body, so the decoder rather than the size check rejects it.
    if (round % 2 == 1) {
      garbage[0] = 0;
      garbage[1] = 0;
      garbage[2] = 0;
      garbage[3] = 40;
    }
    peer->send(garbage);
    EXPECT_TRUE(peer->wait_closed()) << "round " << round;
  }
  EXPECT_EQ(*handled_, 0);
  auto conn = connect_ok();
  ASSERT_NE(conn, nullptr);
  expect_usable(conn);
}

TEST_F(loopback, refuses_a_4_gb_length_prefix_with_frame_too_large_and_closes) {
  start_server();
  auto peer = raw_connected();
  peer->send(std::string("\xff\xff\xff\xff", 4));
  ASSERT_TRUE(peer->wait_closed());
  const auto frames = peer->frames();
  ASSERT_EQ(frames.size(), 1u);
  expect_reply(frames[0], 0, errc::frame_too_large);

  // The same after the handshake.
  auto later = raw_handshaken();
  later->send(std::string("\xff\xff\xff\xff", 4));
  ASSERT_TRUE(later->wait_closed());
  const auto later_frames = later->frames();
  ASSERT_EQ(later_frames.size(), 2u);
  expect_reply(later_frames[1], 0, errc::frame_too_large);
}

TEST_F(loopback, closes_a_stalled_half_frame_after_the_body_timeout_without_affecting_others) {
  cluster::server_options options = default_options();
  options.limits.frame_body_timeout = 200ms;
  start_server(options);
  auto good = connect_ok();
  ASSERT_NE(good, nullptr);
  auto stalled = raw_handshaken();
  std::string half("\x00\x00\x00\x64", 4);  // announces 100 bytes
  half.append(10, '\x90');
  stalled->send(half);
  // While it stalls, the other client is served.
  expect_usable(good);
  ASSERT_TRUE(stalled->wait_closed());
  EXPECT_EQ(stalled->frames().size(), 1u);  // only the hello_ack: a stall is closed silently
  expect_usable(good);
  ASSERT_TRUE(run_until(io_, [this] { return server_->connection_count() == 1; }));
}

TEST_F(loopback, refuses_a_first_message_that_is_not_hello_with_handshake_required) {
  start_server();
  auto peer = raw_connected();
  peer->send(cluster::encode_frame(message_kind::request, 17, echo_request("echo", {})));
  ASSERT_TRUE(peer->wait_closed());
  const auto frames = peer->frames();
  ASSERT_EQ(frames.size(), 1u);
  expect_reply(frames[0], 17, errc::handshake_required);
  EXPECT_EQ(*handled_, 0);
}

TEST_F(loopback, refuses_a_hello_of_another_protocol_version) {
  start_server();
  auto peer = raw_connected();
  peer->send(cluster::encode_frame(message_kind::hello, 3, client_hello(99)));
  ASSERT_TRUE(peer->wait_closed());
  const auto frames = peer->frames();
  ASSERT_EQ(frames.size(), 1u);
  expect_reply(frames[0], 3, errc::unsupported_version);

  const auto result = connect(client_hello(99));
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().code, errc::unsupported_version);
  EXPECT_NE(result.error().message.find("UnsupportedVersion"), std::string::npos)
      << result.error().message;
}

TEST_F(loopback, refuses_a_hello_of_the_wrong_shape_as_malformed) {
  start_server();
  auto peer = raw_connected();
  peer->send(cluster::encode_frame(message_kind::hello, 5, hello_with_string_version{}));
  ASSERT_TRUE(peer->wait_closed());
  const auto frames = peer->frames();
  ASSERT_EQ(frames.size(), 1u);
  expect_reply(frames[0], 5, errc::malformed_frame);
}

TEST_F(loopback, closes_a_connection_that_sends_no_hello_within_the_handshake_timeout) {
  cluster::server_options options = default_options();
  options.limits.handshake_timeout = 200ms;
  start_server(options);
  auto silent = raw_connected();
  ASSERT_TRUE(silent->wait_closed());
  EXPECT_TRUE(silent->frames().empty());
  // A prompt client is unaffected by the short timeout.
  auto conn = connect_ok();
  ASSERT_NE(conn, nullptr);
  expect_usable(conn);
}

TEST_F(loopback, passes_an_unknown_kind_to_the_handler_and_stays_usable) {
  start_server();
  auto conn = connect_ok();
  ASSERT_NE(conn, nullptr);
  const auto reply = call(conn, static_cast<message_kind>(77), echo_request("echo", {}));
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->code, errc::unknown_kind);
  EXPECT_EQ(reply->message, "kind 77");
  EXPECT_EQ(*handled_, 1);
  expect_usable(conn);
}

TEST_F(loopback, keeps_the_connection_open_after_a_request_of_the_wrong_shape) {
  start_server();
  auto conn = connect_ok();
  ASSERT_NE(conn, nullptr);
  auto reply = std::make_shared<std::optional<reply_msg>>();
  conn->call(message_kind::request, malformed_request{}, 5s,
             [reply](reply_msg&& r) { *reply = std::move(r); });
  ASSERT_TRUE(run_until(io_, [reply] { return reply->has_value(); }));
  EXPECT_EQ((*reply)->code, errc::invalid_request);
  EXPECT_FALSE((*reply)->message.empty());
  expect_usable(conn);
}

TEST_F(loopback, answers_a_second_hello_with_invalid_request_and_stays_open) {
  start_server();
  auto peer = raw_handshaken();
  peer->send(cluster::encode_frame(message_kind::hello, 2, client_hello()));
  ASSERT_TRUE(peer->wait_frames(2));
  expect_reply(peer->frames()[1], 2, errc::invalid_request);
  peer->send(cluster::encode_frame(message_kind::ping, 3, cluster::empty_msg{}));
  ASSERT_TRUE(peer->wait_frames(3));
  EXPECT_EQ(peer->frames()[2].kind, static_cast<std::uint32_t>(message_kind::pong));
}

TEST_F(loopback, delivers_a_reply_of_the_wrong_shape_as_malformed_frame) {
  start_server();
  auto conn = connect_ok();
  ASSERT_NE(conn, nullptr);
  const auto reply = call(conn, message_kind::request, echo_request("bad-reply", {}));
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->code, errc::malformed_frame);
  EXPECT_NE(reply->message.find("wrong shape"), std::string::npos) << reply->message;
  EXPECT_EQ(conn->pending_calls(), 0u);
  expect_usable(conn);
}

// A handler may close its own connection: close() must not free the running handler.
TEST_F(loopback, lets_a_handler_close_its_own_connection) {
  start_server();
  auto doomed = connect_ok();
  auto other = connect_ok();
  ASSERT_NE(doomed, nullptr);
  ASSERT_NE(other, nullptr);
  const auto reply = call(doomed, message_kind::request, echo_request("close", {}));
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->code, errc::unavailable);
  EXPECT_EQ(*handled_, 1);
  expect_usable(other);
}

TEST_F(loopback, reports_a_refused_connection_as_unavailable_naming_the_address) {
  // A port that was free a moment ago: bind it, note it, release it.
  std::uint16_t closed_port = 0;
  {
    tcp::acceptor acceptor(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    closed_port = acceptor.local_endpoint().port();
  }
  const auto result = connect(client_hello(), closed_port);
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().code, errc::unavailable);
  EXPECT_NE(
      result.error().message.find("cannot connect to 127.0.0.1:" + std::to_string(closed_port)),
      std::string::npos)
      << result.error().message;
}

TEST_F(loopback, reports_a_peer_that_never_acknowledges_hello_as_timed_out) {
  // Accepts but never speaks: the handshake can only end by connect_to's timeout.
  tcp::acceptor acceptor(io_, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  tcp::socket accepted(io_);
  acceptor.async_accept(accepted, [](const cluster::error_code&) {});
  const auto result = connect(client_hello(), acceptor.local_endpoint().port(), 200ms);
  ASSERT_FALSE(result.has_value());
  EXPECT_EQ(result.error().code, errc::unavailable);
  EXPECT_NE(result.error().message.find("timed out"), std::string::npos) << result.error().message;
}

// Over max_connections the server answers TooManyRequests, then closes.
TEST_F(loopback, refuses_connections_over_max_connections_with_too_many_requests) {
  cluster::server_options options = default_options();
  options.max_connections = 1;
  start_server(options);
  auto first = connect_ok();
  ASSERT_NE(first, nullptr);
  ASSERT_TRUE(run_until(io_, [this] { return server_->connection_count() == 1; }));
  auto peer = raw_connected();
  ASSERT_TRUE(peer->wait_closed());
  const auto frames = peer->frames();
  ASSERT_EQ(frames.size(), 1u);
  expect_reply(frames[0], 0, errc::too_many_requests);
  expect_usable(first);
}

// A peer that does not read is closed once max_queued_bytes are queued for it; the calls it
// had pending fail Unavailable, and other peers are served throughout.
TEST_F(loopback, closes_a_peer_that_does_not_read_once_its_queue_passes_max_queued_bytes) {
  cluster::server_options options = default_options();
  options.limits.max_queued_bytes = 1024 * 1024;
  start_server(options);
  auto good = connect_ok();
  ASSERT_NE(good, nullptr);
  auto deaf = std::make_unique<raw_peer>(io_);
  ASSERT_TRUE(deaf->connect(port_, /*reading=*/false));
  deaf->send(cluster::encode_frame(message_kind::hello, 1, client_hello()));
  deaf->send(cluster::encode_frame(message_kind::request, 2, echo_request("hold", {})));
  ASSERT_TRUE(run_until(io_, [this] { return held_.size() == 1; }));
  const connection_ptr server_side = held_.front().conn;

  // The server calls the deaf peer with 64 KiB requests until the connection closes; the
  // kernel's socket buffers take a few MiB first, so there is no fixed count.
  struct outcome {
    int sent = 0;
    int unavailable = 0;
    int other = 0;
  };
  auto result = std::make_shared<outcome>();
  const request_msg push = echo_request("push", big_payload(64 * 1024));
  constexpr int most = 2048;  // 128 MiB: far past any kernel buffer
  ASSERT_TRUE(run_until(
      io_,
      [&] {
        for (int i = 0; i < 16 && server_side->is_open() && result->sent < most; ++i) {
          ++result->sent;
          server_side->call(message_kind::request, push, 60s, [result](reply_msg&& r) {
            ++(r.code == errc::unavailable ? result->unavailable : result->other);
          });
        }
        return !server_side->is_open() || result->sent >= most;
      },
      20s));
  ASSERT_FALSE(server_side->is_open()) << result->sent << " calls queued without a close";
  ASSERT_TRUE(run_until(io_, [&] { return result->unavailable + result->other == result->sent; }));
  EXPECT_EQ(result->other, 0);
  EXPECT_EQ(server_side->pending_calls(), 0u);
  ASSERT_TRUE(run_until(io_, [this] { return server_->connection_count() == 1; }));
  expect_usable(good);
  // A reading peer receiving the same volume through replies is not closed.
  for (int i = 0; i < 64; ++i) {
    const auto reply = call(good, message_kind::request, echo_request("echo", push.payload));
    ASSERT_TRUE(reply.has_value());
    ASSERT_TRUE(reply->ok()) << reply->message;
  }
}

// A client that sends nothing for idle_timeout is closed; a proxy, a client that keeps
// talking and a client waiting for a reply are not.
TEST_F(loopback, closes_an_idle_client_after_the_idle_timeout_and_only_that_one) {
  cluster::server_options options = default_options();
  options.limits.idle_timeout = 300ms;
  start_server(options);
  const auto started = cluster::steady_clock::now();
  auto idle = connect_ok();
  auto chatty = connect_ok();
  auto waiting = connect_ok();
  auto proxy = connect(client_hello(cluster::protocol_version, "proxy"));
  ASSERT_NE(idle, nullptr);
  ASSERT_NE(chatty, nullptr);
  ASSERT_NE(waiting, nullptr);
  ASSERT_TRUE(proxy.has_value()) << proxy.error().message;
  auto waited = std::make_shared<std::optional<reply_msg>>();
  waiting->call(message_kind::request, echo_request("silent", {}), 30s,
                [waited](reply_msg&& r) { *waited = std::move(r); });
  auto last_echo = started;
  ASSERT_TRUE(run_until(io_, [&] {
    if (cluster::steady_clock::now() - last_echo > 50ms) {
      last_echo = cluster::steady_clock::now();
      chatty->call(message_kind::request, echo_request("echo", {}), 5s, [](reply_msg&&) {});
    }
    return !idle->is_open();
  }));
  // The others were connected about as long as the idle client.
  EXPECT_GE(cluster::steady_clock::now() - started, 300ms);
  EXPECT_TRUE(chatty->is_open());
  EXPECT_TRUE(waiting->is_open());
  EXPECT_FALSE(waited->has_value());
  EXPECT_TRUE(proxy.value()->is_open());
  expect_usable(chatty);
  expect_usable(proxy.value());
}

TEST_F(loopback, an_idle_timeout_of_zero_keeps_idle_clients) {
  cluster::server_options options = default_options();
  options.limits.idle_timeout = milliseconds(0);
  options.limits.frame_body_timeout = 200ms;
  start_server(options);
  auto idle = connect_ok();
  ASSERT_NE(idle, nullptr);
  // A stalled frame on another connection marks time: it is closed after 200 ms.
  auto stalled = raw_handshaken();
  stalled->send(std::string("\x00\x00\x00\x64", 4));
  ASSERT_TRUE(stalled->wait_closed());
  expect_usable(idle);
}

TEST(host_port, parses_ipv4_and_bracketed_ipv6_addresses) {
  const auto v4 = cluster::parse_host_port("127.0.0.1:80");
  ASSERT_TRUE(v4.has_value());
  EXPECT_EQ(v4->host, "127.0.0.1");
  EXPECT_EQ(v4->port, 80);
  EXPECT_EQ(v4->to_string(), "127.0.0.1:80");

  const auto v6 = cluster::parse_host_port("[::1]:80");
  ASSERT_TRUE(v6.has_value());
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 80);

  const auto top = cluster::parse_host_port("runner.internal:65535");
  ASSERT_TRUE(top.has_value());
  EXPECT_EQ(top->port, 65535);
}

TEST(host_port, rejects_a_missing_host_or_a_bad_port) {
  for (const char* text :
       {"nohost", "h:", "h:99999", "h:65536", "h:x1", "h:1x", ":80", "", "[::1]", "h:-1", "h: 80"})
    EXPECT_FALSE(cluster::parse_host_port(text).has_value()) << "'" << text << "' was accepted";
}
