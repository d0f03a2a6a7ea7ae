#pragma once
// Routes entity requests to the runner that owns their shard, from the latest assignment
// snapshot, over one pooled multiplexed connection per runner. Retries requests that
// never ran (not owner, no runner, unreachable, shutting down) until their deadline.
//
// Used by the proxy and by runners (entity-to-entity calls). Single-threaded.

#include <map>
#include <variant>

#include "cluster/common/connection.hpp"

namespace cluster {

struct router_options {
  std::string name = "router";  ///< sent in hello
  std::string role = "proxy";
  connection_limits limits;
  milliseconds connect_timeout{1000};
  milliseconds retry_min{5};
  milliseconds retry_max{200};
};

/// Where an entity lives according to the current snapshot.
struct entity_location {
  std::string group;
  std::int32_t shard = 0;
  std::string owner;  ///< runner address, empty when unassigned
};

/// A unique primary key for a persisted request that came without one.
std::string generated_request_key();

class router {
 public:
  router(asio::io_context& io, router_options options);
  router(const router&) = delete;
  router& operator=(const router&) = delete;

  void update(assignment_snapshot snapshot);
  const assignment_snapshot& snapshot() const { return snapshot_; }

  /// Locates an entity; an error reply for an unknown type or RPC (empty rpc: not checked).
  std::variant<entity_location, reply_msg> locate(const std::string& entity_type,
                                                  const std::string& entity_id,
                                                  const std::string& rpc) const;

  /// Sends `request` to its owner and returns the reply; retries retriable failures
  /// with backoff until `deadline`, then answers deadline_exceeded with the last cause.
  awaitable<reply_msg> route(request_msg request, steady_clock::time_point deadline);

  /// Runners serve their own shards without a network hop.
  std::function<bool(const std::string& owner)> is_local;
  std::function<awaitable<reply_msg>(request_msg, steady_clock::time_point)> deliver_locally;

  /// Closes pooled connections.
  void stop();

 private:
  awaitable<connection_ptr> connection_to(const std::string& address,
                                          steady_clock::time_point deadline, std::string& error);

  asio::io_context& io_;
  router_options options_;
  assignment_snapshot snapshot_;
  std::map<std::string, connection_ptr> pool_;
  // One connect at a time per runner; others wait on its timer.
  std::map<std::string, std::shared_ptr<asio::steady_timer>> connecting_;
};

}  // namespace cluster
