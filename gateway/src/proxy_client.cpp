#include "cluster/gateway/proxy_client.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace cluster::gateway {

proxy_client::proxy_client(asio::any_io_executor executor, proxy_client_options options)
    : executor_(std::move(executor)), options_(std::move(options)), connect_done_(executor_) {}

proxy_client::~proxy_client() { close(); }

void proxy_client::close() {
  if (conn_) conn_->close();
  conn_.reset();
}

awaitable<result<connection_ptr>> proxy_client::connection(milliseconds timeout) {
  if (connected()) co_return conn_;
  if (connecting_) {
    // Someone else is connecting: wait for that attempt (bounded by its own timeout).
    error_code ec;
    co_await connect_done_.async_wait(asio::redirect_error(use_awaitable, ec));
    if (connected()) co_return conn_;
    co_return failure{errc::unavailable, last_connect_error_.empty() ? "cannot connect to the proxy"
                                                                     : last_connect_error_};
  }
  connecting_ = true;
  connect_done_.expires_at(steady_clock::time_point::max());
  const hello_msg hello{protocol_version, "client", options_.name};
  // Pushes are not expected from a proxy; replies are matched by the connection itself.
  const connection::message_handler ignore = [](const connection_ptr&, envelope&&) {};
  std::function<void()> on_close = [address = options_.proxy.to_string()] {
    spdlog::debug("connection to proxy {} closed", address);
  };
  const auto connect_timeout =
      std::max(milliseconds(1), std::min(timeout, options_.connect_timeout));
  auto connect =
      connect_to(options_.proxy, hello, options_.limits, connect_timeout, ignore, on_close);
  auto connected = co_await std::move(connect);
  connecting_ = false;
  conn_ = connected ? connected.value() : nullptr;
  last_connect_error_ = connected ? "" : connected.error().message;
  connect_done_.cancel();
  if (connected) {
    spdlog::info("connected to proxy {}", options_.proxy.to_string());
  } else {
    spdlog::warn("{}", connected.error().message);
  }
  co_return connected;
}

awaitable<reply_msg> proxy_client::call(request_msg request, milliseconds timeout) {
  const auto deadline = steady_clock::now() + timeout;
  auto open = connection(timeout);
  auto conn = co_await std::move(open);
  if (!conn)
    co_return reply_msg::failure(errc::unavailable, "proxy unreachable: " + conn.error().message);
  const auto remaining = std::chrono::duration_cast<milliseconds>(deadline - steady_clock::now());
  if (remaining <= milliseconds(0))
    co_return reply_msg::failure(errc::deadline_exceeded, "deadline passed while connecting");
  // The proxy gets slightly less time than we wait, so its own DeadlineExceeded (which
  // says where the time went) normally arrives before our local one.
  const auto margin = std::min(remaining / 10, milliseconds(100));
  request.timeout_ms =
      static_cast<std::uint32_t>(std::max(milliseconds(1), remaining - margin).count());
  auto send = conn.value()->async_call(message_kind::request, request, remaining);
  auto reply = co_await std::move(send);
  co_return reply;
}

namespace {

constexpr milliseconds snapshot_max_age{2000};
constexpr milliseconds snapshot_min_age{1000};
constexpr milliseconds snapshot_fetch_timeout{500};

bool streams_in(const assignment_snapshot& snapshot, const request_msg& request) {
  const auto* type = snapshot.find_entity_type(request.entity_type);
  const auto* rpc = type ? type->find_rpc(request.rpc) : nullptr;
  return rpc != nullptr && rpc->stream;
}

}  // namespace

awaitable<void> proxy_client::refresh_snapshot(milliseconds timeout) {
  if (refreshing_) co_return;
  refreshing_ = true;
  auto open_conn = connection(timeout);
  auto conn = co_await std::move(open_conn);
  if (conn) {
    // Short: a call waits for this, and an unanswered question must not eat its deadline.
    const auto wait = std::min(timeout, snapshot_fetch_timeout);
    auto ask = conn.value()->async_call(message_kind::get_status, empty_msg{}, wait);
    auto reply = co_await std::move(ask);
    if (reply.ok()) {
      auto decoded = unpack_bytes<assignment_snapshot>(reply.payload);
      if (decoded) snapshot_ = std::move(decoded).value();
    }
  }
  snapshot_at_ = steady_clock::now();
  refreshing_ = false;
}

awaitable<bool> proxy_client::streams(const request_msg& request, milliseconds timeout) {
  const auto age = steady_clock::now() - snapshot_at_;
  const bool known = snapshot_.find_entity_type(request.entity_type) != nullptr;
  if (known && age < snapshot_max_age) co_return streams_in(snapshot_, request);
  if (known) {
    // Answer from what is known; the next requests see the fresher snapshot.
    asio::co_spawn(executor_, refresh_snapshot(timeout), asio::detached);
    co_return streams_in(snapshot_, request);
  }
  if (age >= snapshot_min_age) {
    auto refresh = refresh_snapshot(timeout);
    co_await std::move(refresh);
  }
  co_return streams_in(snapshot_, request);
}

}  // namespace cluster::gateway
