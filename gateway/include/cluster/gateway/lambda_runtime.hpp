#pragma once
// cluster-lambda: an AWS Lambda custom runtime (the `bootstrap` of `provided.al2023`)
// that serves Function URL invocations with the gateway's handler.
//
// Loop: GET /2018-06-01/runtime/invocation/next (no client timeout), handle the event,
// POST …/invocation/<id>/response, or …/invocation/<id>/error when the event cannot be
// served; a start-up failure is posted to /2018-06-01/runtime/init/error.
//
// Thread: one io_context on the calling thread; `run` returns when SIGTERM/SIGINT arrives
// or the Runtime API fails for good.

#include <functional>
#include <string>

#include "cluster/gateway/gateway.hpp"
#include "cluster/net/asio.hpp"

namespace cluster::gateway {

/// What the runtime needs, from the environment Lambda gives the process.
struct lambda_settings {
  std::string runtime_api;  ///< AWS_LAMBDA_RUNTIME_API, host:port (required)
  /// The gateway's keys through the processes' configuration loader (config.hpp), from
  /// the environment: CLUSTER_GATEWAY_PROXY (host:port of the proxy to call; without it
  /// the SST link SST_RESOURCE_ProxyServer, else 127.0.0.1:3333),
  /// CLUSTER_GATEWAY_REQUEST_TIMEOUT_MS, CLUSTER_GATEWAY_MAX_BODY_BYTES, CLUSTER_LOG_LEVEL
  /// and the [cluster] connection limits. The HTTP listener keys are not used.
  gateway_config gateway;
  /// Why the configuration cannot be used (empty: it can); `run` posts it to init/error.
  std::string init_error;

  /// Reads and checks the variables above; never throws.
  static lambda_settings from_environment(const std::function<const char*(const char*)>& getenv =
                                              [](const char* name) { return std::getenv(name); });
};

class lambda_runtime {
 public:
  explicit lambda_runtime(lambda_settings settings);

  /// Serves invocations until stopped; returns the process exit code (non-zero after a
  /// start-up failure, which is also posted to init/error when the Runtime API is known).
  int run();

 private:
  lambda_settings settings_;
};

}  // namespace cluster::gateway
