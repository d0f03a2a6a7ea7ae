#include "cluster/gateway/gateway.hpp"

#include <spdlog/spdlog.h>

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <set>

#include "cluster/metrics/metrics.hpp"
#include "cluster/process/gate.hpp"

namespace cluster::gateway {

namespace beast = boost::beast;
namespace http = beast::http;

namespace {

constexpr std::size_t max_connections = 1024;
constexpr milliseconds write_timeout{10000};
// After an error response on a connection whose request was not read to the end, keep
// reading (and discarding) for a moment so closing does not reset the connection before
// the client has read the response.
constexpr milliseconds linger_timeout{1000};
constexpr std::size_t linger_max_bytes = 4 * 1024 * 1024;

struct session {
  explicit session(tcp::socket socket) : stream(std::move(socket)) {}
  beast::tcp_stream stream;
  bool busy = false;  // a request is being handled; stop() lets it finish
};

bool is_http_error(const error_code& ec) {
  return &ec.category() == &http::make_error_code(http::error::bad_target).category();
}

}  // namespace

struct gateway::state {
  state(asio::io_context& io_context, gateway_config gateway_settings,
        proxy_client_options proxy_options, handler_options options)
      : io(io_context),
        config(std::move(gateway_settings)),
        acceptor(io_context),
        proxy(io_context.get_executor(), std::move(proxy_options)),
        request_handler(proxy, std::move(options)),
        open(io_context.get_executor()) {}

  asio::io_context& io;
  gateway_config config;
  tcp::acceptor acceptor;
  proxy_client proxy;
  handler request_handler;
  std::uint16_t port = 0;
  bool stopping = false;
  bool stopped = false;
  std::set<std::shared_ptr<session>> sessions;
  // Held by the accept loop and by every session: a stop waits for all of them.
  gate open;
  std::vector<std::function<void()>> on_stopped;

  void notify_stopped() {
    for (auto& callback : on_stopped) asio::post(io, std::move(callback));
    on_stopped.clear();
  }
};

namespace {

using state_ptr = std::shared_ptr<gateway::state>;

// Writes `response`; false when the connection failed.
awaitable<bool> write_response(beast::tcp_stream& stream, const http_response& response,
                               unsigned version, bool keep_alive) {
  http::response<http::string_body> out{static_cast<http::status>(response.status), version};
  out.set(http::field::server, "cluster-gateway");
  out.set(http::field::content_type, "application/json");
  for (const auto& [name, value] : response.headers) out.set(name, value);
  out.keep_alive(keep_alive);
  out.body() = response.body;
  out.prepare_payload();
  error_code ec;
  stream.expires_after(write_timeout);
  co_await http::async_write(stream, out, asio::redirect_error(use_awaitable, ec));
  stream.expires_never();
  co_return !ec;
}

// A streaming RPC's items (docs/protocol.md "Streaming replies") as they come, and its end.
struct stream_events {
  explicit stream_events(const asio::any_io_executor& executor)
      : wake(executor, steady_clock::time_point::max()) {}
  std::vector<bytes> items;
  std::optional<reply_msg> reply;
  bool client_gone = false;
  bool finished = false;    // the response is over: the peer watch stops
  asio::steady_timer wake;  // cancelled when something happened
};

// Reads (and drops) what the HTTP client sends until it closes its end.
void watch_peer(const std::shared_ptr<stream_events>& events, beast::tcp_stream& stream,
                const std::shared_ptr<std::array<char, 512>>& scratch) {
  stream.socket().async_read_some(asio::buffer(*scratch),
                                  [events, &stream, scratch](const error_code& ec, std::size_t) {
                                    if (events->finished) return;
                                    if (!ec) {
                                      watch_peer(events, stream, scratch);
                                      return;
                                    }
                                    events->client_gone = true;
                                    events->wake.cancel();
                                  });
}

// One event line of a streamed response: NDJSON (`{"item":...}`, `{"final":...}`, or the
// error object) or Server-Sent Events (`event: item|end|error` with the JSON as data).
std::string stream_line(bool sse, std::string_view event, const std::string& json_text) {
  if (sse) return "event: " + std::string(event) + "\ndata: " + json_text + "\n\n";
  if (event == "error") return json_text + "\n";
  return "{\"" + std::string(event == "end" ? "final" : "item") + "\":" + json_text + "}\n";
}

// Serves a streaming RPC: waits for its first event (a failure before any item is an
// ordinary JSON error response), then a chunked body with one line per item, written as
// it comes; each item is acked once its chunk is written, so a slow HTTP reader slows the
// producer. The client going away (a failed write, or its end of the connection closing)
// interrupts the stream. The connection closes afterwards. False when it failed.
awaitable<bool> serve_stream(state_ptr self, beast::tcp_stream& stream, request_msg call,
                             unsigned version, bool sse) {
  const auto timeout = self->config.request_timeout;
  auto opening = self->proxy.open(timeout);
  auto conn = co_await std::move(opening);
  if (!conn) {
    auto write = write_response(
        stream, error_response(503, "Unavailable", "proxy unreachable: " + conn.error().message),
        version, false);
    co_return co_await std::move(write);
  }
  auto events = std::make_shared<stream_events>(stream.get_executor());
  const std::uint32_t window = default_stream_credit;
  call.credit = window;
  call.timeout_ms = static_cast<std::uint32_t>(timeout.count());
  const auto id = conn.value()->call_stream(
      message_kind::request, call, window, timeout + milliseconds(500),
      [events](std::vector<bytes>&& items) {
        for (auto& item : items) events->items.push_back(std::move(item));
        events->wake.cancel();
      },
      [events](reply_msg&& reply) {
        events->reply = std::move(reply);
        events->wake.cancel();
      });
  const auto wait = [events]() -> awaitable<void> {
    if (!events->items.empty() || events->reply || events->client_gone) co_return;
    events->wake.expires_at(steady_clock::time_point::max());
    error_code ignored;
    co_await events->wake.async_wait(asio::redirect_error(use_awaitable, ignored));
  };
  auto first = wait();
  co_await std::move(first);
  if (events->items.empty() && events->reply && !events->reply->ok()) {
    auto write = write_response(stream, to_http_response(*events->reply), version, false);
    co_return co_await std::move(write);
  }
  http::response<http::empty_body> head{http::status::ok, version};
  head.set(http::field::server, "cluster-gateway");
  head.set(http::field::content_type, sse ? "text/event-stream" : "application/x-ndjson");
  head.set(http::field::cache_control, "no-cache");
  head.keep_alive(false);
  head.chunked(true);
  http::response_serializer<http::empty_body> serializer{head};
  error_code ec;
  stream.expires_after(write_timeout);
  co_await http::async_write_header(stream, serializer, asio::redirect_error(use_awaitable, ec));
  // The client sends nothing more (the connection closes after this response): a read that
  // ends says it went away, even while no item is being written.
  if (!ec) watch_peer(events, stream, std::make_shared<std::array<char, 512>>());
  bool ended = false;
  while (!ec && !events->client_gone) {
    if (!events->items.empty()) {
      auto items = std::move(events->items);
      events->items.clear();
      std::string body;
      for (const auto& item : items)
        body += stream_line(sse, "item", to_http_response(reply_msg::success(item)).body);
      stream.expires_after(write_timeout);
      co_await asio::async_write(stream, http::make_chunk(asio::buffer(body)),
                                 asio::redirect_error(use_awaitable, ec));
      if (!ec) conn.value()->ack(id, static_cast<std::uint32_t>(items.size()));
      continue;
    }
    if (events->reply) {
      const auto& reply = *events->reply;
      const std::string json_text = to_http_response(reply).body;
      const auto line = stream_line(sse, reply.ok() ? "end" : "error", json_text);
      stream.expires_after(write_timeout);
      co_await asio::async_write(stream, http::make_chunk(asio::buffer(line)),
                                 asio::redirect_error(use_awaitable, ec));
      if (!ec)
        co_await asio::async_write(stream, http::make_chunk_last(),
                                   asio::redirect_error(use_awaitable, ec));
      ended = true;
      break;
    }
    auto next = wait();
    co_await std::move(next);
  }
  stream.expires_never();
  if (!ended) {
    spdlog::debug("HTTP client of a stream went away; interrupting {}/{}", call.entity_type,
                  call.rpc);
    conn.value()->interrupt(id);
  }
  events->finished = true;
  co_return false;
}

// Half-closes, then discards what the client still sends for a bounded time.
awaitable<void> linger_and_close(beast::tcp_stream& stream) {
  error_code ec;
  stream.socket().shutdown(tcp::socket::shutdown_send, ec);
  std::array<char, 16 * 1024> scratch{};
  std::size_t discarded = 0;
  stream.expires_after(linger_timeout);
  while (!ec && discarded < linger_max_bytes) {
    const auto n = co_await stream.async_read_some(asio::buffer(scratch),
                                                   asio::redirect_error(use_awaitable, ec));
    discarded += n;
  }
  stream.socket().close(ec);
}

// The response to a request that could not be read, or nullopt to just close.
std::optional<http_response> read_failure_response(const error_code& ec) {
  if (ec == http::error::body_limit)
    return error_response(413, "PayloadTooLarge", "the request body is too large");
  if (ec == http::error::header_limit)
    return error_response(431, "HeadersTooLarge", "the request headers are too large");
  if (ec == http::error::end_of_stream || ec == http::error::partial_message || !is_http_error(ec))
    return std::nullopt;  // the client went away or timed out: nobody to answer
  return error_response(400, "BadRequest", "malformed HTTP request: " + ec.message());
}

// cluster_gateway_http_requests_total{method, status} and the latency of each answer.
void count_http(std::string_view method, unsigned status, steady_clock::duration took) {
  static auto& requests = metrics::default_registry().counters(
      "cluster_gateway_http_requests_total", "HTTP requests the gateway answered.",
      {"method", "status"}, 200);
  static auto& seconds = metrics::default_registry()
                             .histograms("cluster_gateway_http_request_duration_seconds",
                                         "Time from a request's headers to its answer, in seconds "
                                         "(a stream: to its end).",
                                         {}, metrics::latency_buckets_ns(), 1e9)
                             .with({});
  static constexpr std::string_view known[] = {"GET",  "POST",    "PUT",  "DELETE",
                                               "HEAD", "OPTIONS", "PATCH"};
  std::string_view label = "other";
  for (auto m : known)
    if (m == method) label = m;
  requests.with({label, std::to_string(status)}).inc();
  seconds.observe(std::chrono::duration_cast<std::chrono::nanoseconds>(took));
}

// One connection: read a request, handle it, answer; repeat while keep-alive holds.
awaitable<void> serve(state_ptr self, std::shared_ptr<session> conn, gate::holder hold) {
  beast::flat_buffer buffer;
  const auto& config = self->config;
  bool linger = false;
  while (!self->stopping) {
    http::request_parser<http::string_body> parser;
    parser.header_limit(config.max_header_bytes);
    parser.body_limit(config.max_body_bytes);
    error_code ec;
    // One deadline for the whole request (headers and body): a slow client cannot hold
    // the connection longer than read_timeout per request.
    conn->stream.expires_after(config.read_timeout);
    co_await http::async_read_header(conn->stream, buffer, parser,
                                     asio::redirect_error(use_awaitable, ec));
    if (!ec && parser.get()[http::field::expect] == "100-continue") {
      http::response<http::empty_body> go_on{http::status::continue_, parser.get().version()};
      co_await http::async_write(conn->stream, go_on, asio::redirect_error(use_awaitable, ec));
    }
    if (!ec)
      co_await http::async_read(conn->stream, buffer, parser,
                                asio::redirect_error(use_awaitable, ec));
    conn->stream.expires_never();
    if (ec) {
      if (auto response = read_failure_response(ec)) {
        conn->busy = true;
        auto write = write_response(conn->stream, *response, 11, false);
        co_await std::move(write);
        linger = true;
      }
      break;
    }
    conn->busy = true;
    auto& message = parser.get();
    const bool keep_alive = message.keep_alive();
    const unsigned version = message.version();
    http_request request{std::string(message.method_string()),
                         std::string(message.target()),
                         std::move(message.body()),
                         std::string(message[http::field::authorization]),
                         std::string(message["X-Gateway-Token"]),
                         std::string(message["traceparent"])};
    const auto received = steady_clock::now();
    const std::string method = request.method;
    const std::string target = request.target;
    auto routed = route(request, self->request_handler.options());
    if (routed.call) {
      auto streams = self->proxy.streams(*routed.call, config.request_timeout);
      if (co_await std::move(streams)) {
        const bool sse =
            message[http::field::accept].find("text/event-stream") != std::string_view::npos;
        auto span = trace_call(*routed.call, "gateway");
        auto serving = serve_stream(self, conn->stream, std::move(*routed.call), version, sse);
        co_await std::move(serving);
        finish_span(span, 200);
        count_http(method, 200, steady_clock::now() - received);
        conn->busy = false;
        break;
      }
    }
    auto handling = self->request_handler.handle_routed(std::move(routed), config.request_timeout);
    const auto response = co_await std::move(handling);
    spdlog::debug("{} {} -> {}", method, target, response.status);
    count_http(method, response.status, steady_clock::now() - received);
    auto write = write_response(conn->stream, response, version, keep_alive && !self->stopping);
    const bool written = co_await std::move(write);
    conn->busy = false;
    if (!written || !keep_alive) break;
  }
  if (linger) {
    auto close = linger_and_close(conn->stream);
    co_await std::move(close);
  } else {
    error_code ignored;
    conn->stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    conn->stream.socket().close(ignored);
  }
  self->sessions.erase(conn);
  hold.release();
}

awaitable<void> accept_loop(state_ptr self, gate::holder hold) {
  while (!self->stopping) {
    tcp::socket socket(self->io);
    error_code ec;
    co_await self->acceptor.async_accept(socket, asio::redirect_error(use_awaitable, ec));
    if (self->stopping) break;
    if (ec) {
      // Out of descriptors and the like: back off instead of spinning on the error.
      spdlog::warn("gateway accept failed: {}", ec.message());
      auto pause = sleep_for(milliseconds(50));
      co_await std::move(pause);
      continue;
    }
    if (self->sessions.size() >= max_connections) {
      spdlog::warn("gateway at {} connections; refusing one", max_connections);
      socket.close(ec);
      continue;
    }
    auto conn = std::make_shared<session>(std::move(socket));
    self->sessions.insert(conn);
    asio::co_spawn(self->io, serve(self, conn, self->open.hold()), asio::detached);
  }
  hold.release();
}

}  // namespace

gateway::gateway(asio::io_context& io, gateway_config config) {
  auto proxy_address = parse_host_port(config.proxy);
  if (!proxy_address)
    throw config_error("gateway.proxy: expected host:port, got '" + config.proxy + "'");
  proxy_client_options options;
  options.proxy = *proxy_address;
  options.name = "gateway";
  options.limits = config.common.limits();
  auto handling = config.handler_settings();
  if (!handling) throw config_error(handling.error().message);
  state_ = std::make_shared<state>(io, std::move(config), std::move(options),
                                   std::move(handling.value()));
}

gateway::~gateway() {
  stop();
  state_->proxy.close();
}

std::uint16_t gateway::start() {
  auto& s = *state_;
  tcp::resolver resolver(s.io);
  const auto endpoints =
      resolver.resolve(s.config.host, std::to_string(s.config.port), tcp::resolver::passive);
  if (endpoints.empty()) throw std::runtime_error("gateway.host: cannot resolve " + s.config.host);
  const tcp::endpoint endpoint = *endpoints.begin();
  s.acceptor.open(endpoint.protocol());
  s.acceptor.set_option(tcp::acceptor::reuse_address(true));
  s.acceptor.bind(endpoint);
  s.acceptor.listen(asio::socket_base::max_listen_connections);
  s.port = s.acceptor.local_endpoint().port();
  asio::co_spawn(s.io, accept_loop(state_, s.open.hold()), asio::detached);
  spdlog::info("gateway listening on {}:{}, calling proxy {}", s.config.host, s.port,
               s.config.proxy);
  return s.port;
}

void gateway::stop(std::function<void()> on_stopped) {
  auto& s = *state_;
  if (on_stopped) s.on_stopped.push_back(std::move(on_stopped));
  if (s.stopped) s.notify_stopped();
  if (s.stopping) return;
  s.stopping = true;
  error_code ignored;
  s.acceptor.close(ignored);
  // Idle keep-alive connections would otherwise wait out their read timeout.
  for (const auto& conn : s.sessions)
    if (!conn->busy) conn->stream.socket().close(ignored);
  s.open.close([weak = std::weak_ptr<state>(state_)] {
    if (auto self = weak.lock()) {
      self->stopped = true;
      self->notify_stopped();
    }
  });
}

bool gateway::idle() const { return state_->stopped; }

std::uint16_t gateway::port() const { return state_->port; }

result<void> gateway::readiness() const {
  if (state_->stopping) return failure{errc::shutting_down, "stopping"};
  if (!state_->acceptor.is_open()) return failure{errc::unavailable, "not listening"};
  return success();
}

std::size_t gateway::connections() const { return state_->sessions.size(); }

}  // namespace cluster::gateway
