#pragma once
// A real manager on loopback, driven by real connections on the test thread's io_context:
// the fixture of the tests of what the manager accepts and publishes.

#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <vector>

#include "cluster/manager/manager.hpp"
#include "cluster_fixture.hpp"

namespace cluster::testing {

using namespace std::chrono_literals;

class manager_fixture : public ::testing::Test {
 protected:
  ~manager_fixture() override {
    for (auto& conn : connections_)
      if (conn) conn->close();
    if (manager_) manager_->stop();
    run_until(
        io_, [] { return false; }, 50ms);
  }

  static manager::manager_config default_config() {
    manager::manager_config config;
    config.host = "127.0.0.1";
    config.port = 0;
    config.probe_timeout = 100ms;
    config.rebalance_interval = 0ms;
    config.max_moves_per_rebalance = 1000;
    return config;
  }

  void start(manager::manager_config config = default_config(),
             std::unique_ptr<manager_store> store = std::make_unique<memory_manager_store>()) {
    manager_ = std::make_unique<manager::manager>(io_, std::move(config), std::move(store));
    manager_->start();
  }

  std::string address() const { return "127.0.0.1:" + std::to_string(manager_->port()); }

  /// A connection to the manager whose hello claims `role`; `on_push` gets what the manager
  /// sends unasked (assignment snapshots).
  connection_ptr connect_as(const std::string& role, connection::message_handler on_push = {}) {
    auto conn = testing::connect_as(io_, address(), role, std::move(on_push));
    EXPECT_NE(conn, nullptr) << "cannot connect to the manager as " << role;
    connections_.push_back(conn);
    return conn;
  }

  template <class Fields>
  reply_msg call(const connection_ptr& conn, message_kind kind, const Fields& fields) {
    std::optional<reply_msg> reply;
    conn->call(kind, fields, 5000ms, [&](reply_msg&& r) { reply = std::move(r); });
    EXPECT_TRUE(run_until(io_, [&] { return reply.has_value(); }));
    return reply ? *reply : reply_msg::failure(errc::defect, "no reply");
  }

  /// A runner's connection, registered with `registration`.
  connection_ptr join(const register_runner_msg& registration) {
    auto conn = connect_as("runner");
    const auto reply = call(conn, message_kind::register_runner, registration);
    EXPECT_TRUE(reply.ok()) << reply.error << ": " << reply.message;
    return conn;
  }

  /// get_status over a client connection, as `clusterctl status` asks it.
  result<assignment_snapshot> status() {
    auto conn = connect_as("client");
    const auto reply = call(conn, message_kind::get_status, empty_msg{});
    conn->close();
    if (!reply.ok()) return failure{reply.code, reply.message};
    return unpack_bytes<assignment_snapshot>(reply.payload);
  }

  asio::io_context io_;
  std::unique_ptr<manager::manager> manager_;
  std::vector<connection_ptr> connections_;
};

}  // namespace cluster::testing
