#pragma once
// Settings every process shares: the `[cluster]` and `[log]` sections.

#include <string>

#include "cluster/net/connection.hpp"
#include "cluster/process/config.hpp"
#include "cluster/protocol/validate.hpp"
#include "cluster/storage/storage_settings.hpp"

namespace cluster {

/// The `[trace]` section: which requests record spans and where the spans go.
struct trace_settings {
  /// OTLP/HTTP JSON traces endpoint (`http://host:port/v1/traces`); empty: no export.
  std::string otlp_endpoint;
  /// The share of new traces that record spans (a traceparent that arrives keeps its
  /// caller's choice). Trace ids are logged whether or not a trace records.
  double sample_ratio = 0.01;
  /// `service.name` of the exported spans; empty: the process's name (e.g. "runner").
  std::string service_name;
};

/// A process's admin HTTP endpoint: `<section>.admin_host` and `<section>.admin_port`.
struct admin_settings {
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;  ///< 0: no admin endpoint
  /// When set, everything but /healthz and /readyz needs `Authorization: Bearer <token>`
  /// (or `?token=` for a browser's first visit of the dashboard).
  std::string token;
};

struct common_settings {
  storage_settings storage;
  std::uint32_t max_frame_bytes = 8 * 1024 * 1024;
  milliseconds handshake_timeout{5000};
  /// Once a frame's length arrived, its body must follow within this time.
  milliseconds frame_body_timeout{10000};
  /// Open connections a listening port accepts; more are refused with TooManyRequests.
  std::uint32_t max_connections = 4096;
  /// Requests one connection may have in flight; more are answered TooManyRequests.
  std::uint32_t max_in_flight = 4096;
  /// Bytes queued for a peer that does not read past which its connection is closed.
  std::uint32_t max_queued_bytes = 64 * 1024 * 1024;
  /// A client connection that sends nothing for this long (and waits for no reply) is
  /// closed; 0 keeps idle clients.
  milliseconds idle_timeout{300000};
  /// Longest entity id and primary key a request may carry; longer ones get InvalidRequest.
  std::uint32_t max_id_bytes = 1024;
  std::string log_level = "info";
  /// "text" (a line a person reads) or "json" (one object per line: time, level, process,
  /// message, trace_id).
  std::string log_format = "text";
  trace_settings trace;
  /// Declared by each process in its own section (declare_admin).
  admin_settings admin;
  /// The `[security]` section: this process's key, the trust list, TLS.
  security_settings security;
  /// Built from `security` by prepare_security (run_process does it); null until then, and
  /// null means no authentication (in-process tests build their processes without it).
  std::shared_ptr<const cluster::security_context> security_prepared;

  /// Adds the `[cluster]` and `[log]` sections to `sections`.
  void declare(std::vector<config_section>& sections);
  /// Adds admin_host, admin_port and admin_token to the process's own section.
  void declare_admin(config_section& own);
  /// Adds the `[storage]` section (processes that talk to the database).
  void declare_storage(std::vector<config_section>& sections);
  /// Loads the key and trust list for a process of role `own` (a failure names the setting).
  result<void> prepare_security(role own);
  connection_limits limits() const;
  /// What validate_request checks requests against where they enter this process.
  cluster::request_limits request_limits() const;
};

/// `--set`-style assignments from SST link variables (`SST_RESOURCE_<Name>` holding JSON):
/// Database → storage.*, ShardManager → runner.manager / proxy.manager, ProxyServer →
/// gateway.proxy (what the gateway and the Lambda call), Cluster<Role>Key (`value`) →
/// security.key, ClusterTrust (`value`) → security.trust, GatewayToken (`value`) →
/// gateway.bearer_token, EffectRpcToken (`value`) → proxy.effect_token. The EffectRpc link
/// ({host, port}) is for Effect clients and sets nothing here. A link without a port gets the
/// default port (cluster/process/defaults.hpp). Malformed JSON is a failure naming the
/// variable.
result<std::vector<std::string>> sst_link_settings(
    const std::function<const char*(const char*)>& getenv = [](const char* n) {
      return std::getenv(n);
    });

/// Configures spdlog's default logger for process `name` at `level` (colours on a terminal);
/// an unknown level is a failure naming it.
result<void> setup_logging(const std::string& name, const std::string& level,
                           const std::string& format = "text");

}  // namespace cluster
