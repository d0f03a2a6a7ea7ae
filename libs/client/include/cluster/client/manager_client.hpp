#pragma once
// Keeps a connection to the manager: registers (runners), subscribes to assignment
// snapshots and reconnects with backoff. While the manager is away the last snapshot
// stays in force, so routing goes on.
//
// Lifecycle: `start` spawns the loop on the io_context; `stop` ends it. Single-threaded.

#include <optional>

#include "cluster/net/connection.hpp"

namespace cluster {

struct manager_client_options {
  host_port manager;
  hello_msg hello;
  std::optional<register_runner_msg> registration;  ///< set by runners
  milliseconds connect_timeout{2000};
  milliseconds backoff_min{50};
  milliseconds backoff_max{2000};
  connection_limits limits;
};

class manager_client {
 public:
  using snapshot_handler = std::function<void(const assignment_snapshot&)>;
  manager_client(asio::io_context& io, manager_client_options options,
                 snapshot_handler on_snapshot);
  manager_client(const manager_client&) = delete;
  manager_client& operator=(const manager_client&) = delete;

  void start();
  void stop();
  /// Asks the manager to move this runner's shards away now (graceful stop).
  awaitable<reply_msg> unregister(milliseconds timeout);
  bool connected() const { return conn_ && conn_->is_open(); }
  bool registered() const { return registered_; }
  /// When the registration of the current connection was sent (valid while `registered()`):
  /// a snapshot on that connection reflects the manager's view after that moment.
  steady_clock::time_point registered_at() const { return registered_at_; }
  /// Is the connection open, with something heard from the manager (its pings, at least)
  /// within `window`?
  bool heard_within(milliseconds window) const {
    return connected() && steady_clock::now() - conn_->last_heard() <= window;
  }
  /// Drops the connection (if any) and connects, registers and subscribes again at once:
  /// a runner that was frozen re-establishes its membership this way.
  void reconnect();
  /// Replaces the registration (a runner's plugins changed): sent again at once on the live
  /// connection, where the manager replaces what it knew of this runner, and on every
  /// reconnect from now on. Updates made while one is in flight are sent after it, the
  /// latest only.
  void update_registration(register_runner_msg registration);

 private:
  awaitable<void> run();
  awaitable<void> send_updates();

  asio::io_context& io_;
  manager_client_options options_;
  snapshot_handler on_snapshot_;
  connection_ptr conn_;
  bool stopped_ = false;
  bool registered_ = false;
  steady_clock::time_point registered_at_{};
  std::uint64_t registration_version_ = 0;  // bumped by update_registration
  std::uint64_t sent_version_ = 0;          // the version the manager has (or was sent)
  bool updating_ = false;
  std::shared_ptr<asio::steady_timer> wake_;  // cancelled when the connection closes or on stop
};

}  // namespace cluster
