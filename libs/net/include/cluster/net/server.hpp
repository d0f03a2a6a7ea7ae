#pragma once
// Accepts protocol connections on one port and hands their messages to one handler.
//
// Lifecycle: `listen` binds (port 0 picks a free one), `stop` stops accepting and closes
// every connection. Runs on the process's single io_context thread.

#include <set>

#include "cluster/net/connection.hpp"

namespace cluster {

struct server_options {
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;
  std::size_t max_connections = 1024;
  connection_limits limits;
  /// Roles of the cluster's own processes (e.g. runner, proxy). When set, a quarter of
  /// max_connections is kept for them: connections of any other role (clients) are refused
  /// at hello once they hold the other three quarters, so a flood of idle clients cannot
  /// lock a runner out of the manager.
  std::set<std::string> reserved_for_roles;
  /// Who may connect and send which kinds (null: everyone everything).
  std::shared_ptr<const permissions> allowed;
};

class server {
 public:
  server(asio::io_context& io, server_options options, connection::message_handler on_message);
  /// Stops accepting; handlers still queued for it then do nothing. Connections still open
  /// stay open (call `stop` first to close them) but no longer report to it.
  ~server();
  server(const server&) = delete;
  server& operator=(const server&) = delete;

  /// Binds and starts accepting; returns the bound port. Throws on bind failure (start-up).
  std::uint16_t listen();
  /// Stops accepting new connections; existing ones stay open.
  void stop_accepting();
  /// Stops accepting and closes every connection.
  void stop();
  /// Stops accepting and closes every connection once what it queued is written.
  void close_after_flush();
  std::size_t connection_count() const { return connections_.size(); }
  std::uint16_t port() const { return port_; }
  /// Runs when a connection closes (after its pending calls failed).
  std::function<void(const connection_ptr&)> on_disconnect;

 private:
  /// `alive` is a copy of alive_ in the coroutine frame: the server may be gone before the
  /// loop starts or when an accept completes.
  awaitable<void> accept_loop(std::shared_ptr<bool> alive);
  /// May one more peer with this role (just past its hello) stay?
  bool admits(const std::string& role) const;

  asio::io_context& io_;
  server_options options_;
  connection::message_handler on_message_;
  tcp::acceptor acceptor_;
  std::set<connection_ptr> connections_;
  std::uint16_t port_ = 0;
  // False once destroyed: the accept loop and the connections' close handlers hold a copy
  // and may resume after the server is gone.
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace cluster
