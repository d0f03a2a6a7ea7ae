#pragma once
// cluster-proxy: the private RPC endpoint of thin clients. Routes each request to the
// runner owning its shard and retries across rebalances until the request's deadline.
// Stateless apart from the latest assignment snapshot; run as many as needed.
//
// Owns, on the process's single io_context thread: the server, the manager client and
// the router with its pooled runner connections.

#include <map>
#include <memory>

#include "cluster/client/manager_client.hpp"
#include "cluster/client/router.hpp"
#include "cluster/metrics/rpc_metrics.hpp"
#include "cluster/net/server.hpp"
#include "cluster/process/defaults.hpp"
#include "cluster/process/gate.hpp"
#include "cluster/process/settings.hpp"
#include "cluster/proxy/effect_listener.hpp"

namespace cluster::proxy {

struct proxy_config {
  common_settings common;
  std::string host{defaults::host};
  std::uint16_t port = defaults::proxy_port;
  std::string manager = defaults::manager_address();
  milliseconds request_timeout{10000};
  // The Effect RPC listener (docs/effect-rpc.md); port 0 leaves it off.
  std::string effect_host;  ///< empty: `host`
  std::uint16_t effect_port = 0;
  std::string effect_serialization = "auto";
  /// The bearer token Effect clients present; empty: `<credentials_dir>/effect.token`.
  std::string effect_token;
  std::vector<std::string> effect_expose{"*"};
  std::map<std::string, std::string> effect_rpcs;  ///< tag → "Type.Rpc"

  std::vector<config_section> sections();
};

class proxy {
 public:
  using config_type = proxy_config;
  /// The role this process's key must prove (security.key_file).
  static constexpr cluster::role security_role = cluster::role::proxy;
  proxy(asio::io_context& io, proxy_config config);
  proxy(const proxy&) = delete;
  proxy& operator=(const proxy&) = delete;

  void start();
  /// Graceful stop: refuses new requests (ShuttingDown), leaves the manager, lets routed
  /// requests finish, then closes client connections once their replies are written and
  /// runs `on_stopped` (posted, once per call).
  void stop(std::function<void()> on_stopped);
  void stop() { stop(nullptr); }
  std::uint16_t port() const { return server_.port(); }
  /// The Effect RPC listener's port; 0 when it is off.
  std::uint16_t effect_port() const { return effect_ ? effect_->port() : 0; }
  const assignment_snapshot& snapshot() const { return router_.snapshot(); }
  std::size_t in_flight() const { return in_flight_.count(); }
  /// Serving: not stopping, and the manager's assignment arrived (/readyz).
  result<void> readiness() const;

 private:
  void on_message(const connection_ptr& conn, envelope&& env);
  void forward(const connection_ptr& conn, std::uint64_t id, request_msg request);
  // What the proxy keeps per caller connection (its attachment): the requests it routes
  // for it, which its interrupts and stream acks address by id.
  struct caller_state {
    routed_set routed;
  };
  static caller_state& state_of(const connection_ptr& conn);
  static routed_request* find_routed(const connection_ptr& conn, std::uint64_t id);
  /// A caller's connection closed: its volatile requests are interrupted.
  void caller_gone(const connection_ptr& conn);
  void notify_stopped();
  /// The Effect listener's options from the configuration (a failure names the setting).
  effect_listener_options effect_options() const;
  std::string effect_host() const {
    return config_.effect_host.empty() ? config_.host : config_.effect_host;
  }

  asio::io_context& io_;
  proxy_config config_;
  server server_;
  router router_;
  std::unique_ptr<manager_client> manager_;
  std::unique_ptr<effect_listener> effect_;
  gate in_flight_;  // routed requests not answered yet; a stop waits for them
  request_limits limits_;
  bool stopping_ = false;
  bool stopped_ = false;
  std::vector<std::function<void()>> on_stopped_;
  metrics::rpc_metrics request_metrics_{
      metrics::default_registry(), "cluster_proxy_requests_total",
      "Requests the proxy answered, by entity type, RPC and result code.",
      "cluster_proxy_request_duration_seconds",
      "Time from a request's arrival at the proxy to its reply (routing, retries, the runner), "
      "in seconds."};
};

}  // namespace cluster::proxy
