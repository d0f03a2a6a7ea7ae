#pragma once
// cluster-gateway: the HTTP/1.1 front door for local runs and `sst dev`. Serves the same
// handler as the Lambda bootstrap on a local port (Boost.Beast, keep-alive, bounded
// header and body sizes, a read timeout per request).
//
// Lifecycle: `start` binds (port 0 picks a free one) and accepts; `stop` stops accepting,
// closes idle keep-alive connections and lets requests in progress finish (a gate counts
// the connections; `on_stopped` runs and `idle()` holds once the last one closed).
// Thread: everything runs on the process's single io_context thread. The state the
// coroutines use is shared with them, so destroying the object while requests are still
// in flight is safe (they finish or die with the io_context).

#include <memory>

#include "cluster/gateway/handler.hpp"
#include "cluster/process/defaults.hpp"
#include "cluster/process/settings.hpp"

namespace cluster::gateway {

/// `[gateway]` settings of cluster-gateway and of the Lambda, which reads the same keys
/// (`proxy`, `request_timeout_ms`, `max_body_bytes`, `bearer_token`, `expose`; it has no
/// HTTP listener of its own).
struct gateway_config {
  common_settings common;
  std::string host{defaults::host};  ///< where cluster-gateway listens
  std::uint16_t port = defaults::gateway_port;
  std::string proxy = defaults::proxy_address();  ///< host:port of the cluster-proxy to call
  milliseconds request_timeout{10000};            ///< deadline of one cluster call
  /// Time allowed to receive one request (headers and body); also the idle keep-alive limit.
  milliseconds read_timeout{15000};
  std::uint32_t max_body_bytes = 1024 * 1024;
  std::uint32_t max_header_bytes = 16 * 1024;
  /// Every request must carry `Authorization: Bearer <bearer_token>`; empty: no check.
  /// A secret: never logged (the SST link `GatewayToken` sets it).
  std::string bearer_token;
  /// What HTTP may call: "Type" (every RPC of it), "Type/Rpc", or "*" (everything). The
  /// default is the example plugins' entity types.
  std::vector<std::string> expose = {"Greeter", "Counter", "Calculator"};

  /// The handler's options from these settings; a failure names the bad `gateway.expose`
  /// entry.
  result<handler_options> handler_settings() const;

  /// `[gateway]` plus the common `[cluster]` and `[log]` sections.
  std::vector<config_section> sections();
};

class gateway {
 public:
  using config_type = gateway_config;
  /// The role this process's key must prove (security.credentials_dir, security.key_file).
  static constexpr cluster::role security_role = cluster::role::client;
  /// Throws config_error when `config.proxy` is not host:port or `config.expose` has a
  /// malformed entry.
  gateway(asio::io_context& io, gateway_config config);
  ~gateway();
  gateway(const gateway&) = delete;
  gateway& operator=(const gateway&) = delete;

  /// Binds and starts accepting; returns the bound port. Throws on a bind failure.
  std::uint16_t start();
  /// Stops accepting and closes idle connections; requests in progress complete, then
  /// `on_stopped` runs (posted, once per call).
  void stop(std::function<void()> on_stopped);
  void stop() { stop(nullptr); }
  /// True once stopped and no connection is left.
  bool idle() const;
  std::uint16_t port() const;
  /// HTTP connections currently open.
  std::size_t connections() const;
  /// Serving: accepting and not stopping (/readyz). The proxy is dialled per call, so its
  /// absence shows as 503s, not as an unready gateway.
  result<void> readiness() const;

  struct state;  // shared with the session coroutines (gateway.cpp)

 private:
  std::shared_ptr<state> state_;
};

}  // namespace cluster::gateway
