#include "cluster/net/server.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

namespace cluster {

server::server(asio::io_context& io, server_options options, connection::message_handler on_message)
    : io_(io), options_(std::move(options)), on_message_(std::move(on_message)), acceptor_(io) {}

server::~server() {
  *alive_ = false;
  stop_accepting();
}

std::uint16_t server::listen() {
  const tcp::endpoint endpoint(asio::ip::make_address(options_.host), options_.port);
  acceptor_.open(endpoint.protocol());
  acceptor_.set_option(tcp::acceptor::reuse_address(true));
  acceptor_.bind(endpoint);
  acceptor_.listen(asio::socket_base::max_listen_connections);
  port_ = acceptor_.local_endpoint().port();
  asio::co_spawn(io_, accept_loop(alive_), asio::detached);
  return port_;
}

awaitable<void> server::accept_loop(std::shared_ptr<bool> alive) {
  while (*alive && acceptor_.is_open()) {
    error_code ec;
    tcp::socket socket = co_await acceptor_.async_accept(asio::redirect_error(use_awaitable, ec));
    if (!*alive) co_return;
    if (ec) {
      if (ec == asio::error::operation_aborted || !acceptor_.is_open()) break;
      // Out of descriptors and the like: back off instead of spinning.
      spdlog::warn("accept failed: {}", ec.message());
      co_await sleep_for(milliseconds(50));
      if (!*alive) co_return;
      continue;
    }
    if (connections_.size() >= options_.max_connections) {
      spdlog::warn("refusing a connection: {} connections open (limit)", connections_.size());
      auto refused = std::make_shared<connection>(std::move(socket), options_.limits, false);
      refused->send_reply(0, reply_msg::failure(errc::too_many_requests, "too many connections"));
      refused->close_after_flush();
      continue;
    }
    auto conn = std::make_shared<connection>(std::move(socket), options_.limits, true);
    conn->allowed = options_.allowed;
    if (!options_.reserved_for_roles.empty())
      conn->admit = [this](const std::string& role) { return admits(role); };
    connections_.insert(conn);
    conn->start(on_message_, [this, alive, weak = std::weak_ptr<connection>(conn)] {
      if (!*alive) return;
      if (auto closed = weak.lock()) {
        connections_.erase(closed);
        if (on_disconnect) on_disconnect(closed);
      }
    });
  }
}

bool server::admits(const std::string& role) const {
  if (options_.reserved_for_roles.count(role)) return true;
  const std::size_t client_share = options_.max_connections - options_.max_connections / 4;
  const auto clients = std::count_if(connections_.begin(), connections_.end(), [&](const auto& c) {
    return !c->peer_role.empty() && !options_.reserved_for_roles.count(c->peer_role);
  });
  return static_cast<std::size_t>(clients) < client_share;
}

void server::stop_accepting() {
  error_code ignored;
  acceptor_.close(ignored);
}

void server::close_after_flush() {
  stop_accepting();
  auto open = connections_;
  for (const auto& conn : open) conn->close_after_flush();
}

void server::stop() {
  stop_accepting();
  auto open = connections_;
  for (const auto& conn : open) conn->close();
  connections_.clear();
}

}  // namespace cluster
