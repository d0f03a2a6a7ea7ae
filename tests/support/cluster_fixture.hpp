#pragma once
// An in-process cluster on loopback: the real manager, runner and proxy objects on one
// io_context driven by the test thread, each on an ephemeral port.

#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "cluster/host/runner.hpp"
#include "cluster/manager/manager.hpp"
#include "cluster/net/connection.hpp"
#include "cluster/proxy/proxy.hpp"

namespace cluster::testing {

using namespace std::chrono_literals;

/// Runs `io` until `done()` holds or `timeout` passes; returns whether `done()` held.
bool run_until(asio::io_context& io, const std::function<bool()>& done,
               milliseconds timeout = milliseconds(10000));

/// Builds a request whose payload is `payload` encoded as MessagePack.
/// Opens a connection to `address` (host:port) as an admin (the in-process cluster does not
/// authenticate; admin is the one role every port admits, runners included) by running `io`
/// until it is made or `timeout` passes; nullptr on failure.
connection_ptr connect_client(asio::io_context& io, const std::string& address,
                              milliseconds timeout = milliseconds(5000));
/// The same with a hello claiming `role` (runner, proxy, admin...); `on_push` gets what the
/// peer sends unasked (assignment snapshots). nullptr when it cannot connect.
connection_ptr connect_as(asio::io_context& io, const std::string& address, const std::string& role,
                          connection::message_handler on_push = {},
                          milliseconds timeout = milliseconds(5000));

request_msg make_request(const std::string& type, const std::string& id, const std::string& rpc,
                         const nlohmann::json& payload = nlohmann::json::object());

/// Decodes a reply payload as JSON (empty object when it does not decode).
nlohmann::json reply_json(const reply_msg& reply);

/// Path of a test-only plugin file, e.g. test_plugin("probe_plugin").
std::string test_plugin(const std::string& name);

class in_process_cluster {
 public:
  /// Starts a manager and a proxy (`tweak_proxy` edits its config); runners come with
  /// add_runner.
  explicit in_process_cluster(const std::function<void(proxy::proxy_config&)>& tweak_proxy = {});
  ~in_process_cluster();

  asio::io_context io;

  /// Starts a runner with the example plugins and the probe plugin; `tweak` edits its config.
  host::runner& add_runner(const std::function<void(host::runner_config&)>& tweak = {});
  /// Stops runner `index` (it leaves the cluster) and forgets it.
  void stop_runner(std::size_t index);
  std::vector<std::unique_ptr<host::runner>>& runners() { return runners_; }
  manager::manager& manager() { return *manager_; }
  proxy::proxy& proxy() { return *proxy_; }
  std::string manager_address() const;
  std::string proxy_address() const;

  /// Waits until every shard is owned by the `runners` live runners and the proxy and
  /// every runner saw that assignment.
  bool wait_until_balanced(std::size_t runners, milliseconds timeout = milliseconds(10000));

  /// One call through the proxy on the shared client connection.
  reply_msg call(const request_msg& request, milliseconds timeout = milliseconds(10000));
  /// All calls in flight at once on one client connection; replies in request order.
  std::vector<reply_msg> call_all(const std::vector<request_msg>& requests,
                                  milliseconds timeout = milliseconds(20000));
  /// Opens a client connection to any address (nullptr on failure).
  connection_ptr connect(const std::string& address);

 private:
  std::unique_ptr<manager::manager> manager_;
  std::unique_ptr<proxy::proxy> proxy_;
  std::vector<std::unique_ptr<host::runner>> runners_;
  std::vector<std::unique_ptr<host::runner>> stopped_runners_;
  connection_ptr client_;
  int next_runner_ = 1;
};

}  // namespace cluster::testing
