#pragma once
// cluster-manager: the runner registry and the shard assignment of every shard group.
//
// Owns, on the process's single io_context thread: the protocol server, the registry of
// live runners (each bound to its registration connection), the assignment per group,
// the subscribers that get every new snapshot, and the manager store.

#include <memory>
#include <set>

#include "cluster/common/server.hpp"
#include "cluster/common/settings.hpp"
#include "cluster/common/storage.hpp"
#include "cluster/manager/assignment.hpp"

namespace cluster::manager {

struct manager_config {
  common_settings common;
  std::string host = "127.0.0.1";
  std::uint16_t port = 8080;
  std::uint32_t shards_per_group = 300;
  /// After a restart, runners known from storage keep their shards this long while they
  /// reconnect, so a manager restart moves nothing.
  milliseconds reconnect_grace{10000};

  std::vector<config_section> sections();
};

class manager {
 public:
  manager(asio::io_context& io, manager_config config, std::unique_ptr<manager_store> store);
  manager(const manager&) = delete;
  manager& operator=(const manager&) = delete;

  /// Restores state from the store and listens. Throws on start-up failure.
  void start();
  void stop();

  std::uint16_t port() const { return server_.port(); }
  /// The current snapshot (what subscribers last got).
  assignment_snapshot snapshot() const;

 private:
  struct runner_entry {
    register_runner_msg registration;
    std::weak_ptr<connection> conn;
    bool restored = false;  // known from storage, not yet registered again
  };

  void on_message(const connection_ptr& conn, envelope&& env);
  void on_disconnect(const connection_ptr& conn);
  void register_runner(const connection_ptr& conn, std::uint64_t id, register_runner_msg&& msg);
  void remove_runner(const std::string& address, const std::string& why);
  /// Recomputes every group's assignment and pushes the snapshot if anything changed.
  void rebalance_all(bool force_publish);
  void publish();

  asio::io_context& io_;
  manager_config config_;
  std::unique_ptr<manager_store> store_;
  server server_;
  std::map<std::string, runner_entry> runners_;  // by address
  std::map<std::string, shard_owners> groups_;   // group → owners
  std::map<std::string, entity_type_info> entity_types_;
  std::vector<std::weak_ptr<connection>> subscribers_;
  std::uint64_t version_ = 0;
  asio::steady_timer grace_timer_;
};

}  // namespace cluster::manager
