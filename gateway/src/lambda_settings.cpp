// The Lambda's configuration: the gateway's keys through the processes' loader. Part of
// the gateway library (tests read it) and compiled into cluster-lambda.
#include "cluster/gateway/lambda_runtime.hpp"
#include "cluster/process/config.hpp"
#include "cluster/process/settings.hpp"

namespace cluster::gateway {

lambda_settings lambda_settings::from_environment(
    const std::function<const char*(const char*)>& getenv) {
  lambda_settings settings;
  if (const char* api = getenv("AWS_LAMBDA_RUNTIME_API"); api != nullptr)
    settings.runtime_api = api;
  // The proxy's own names mean "listen here": a Lambda configured with them would quietly
  // call the default address instead.
  for (const char* listen_name : {"CLUSTER_PROXY_HOST", "CLUSTER_PROXY_PORT"}) {
    if (getenv(listen_name) != nullptr) {
      settings.init_error = std::string(listen_name) +
                            " is where a cluster-proxy listens; the Lambda calls the proxy "
                            "named by CLUSTER_GATEWAY_PROXY (host:port)";
      return settings;
    }
  }
  auto links = sst_link_settings(getenv);
  if (!links) {
    settings.init_error = links.error().message;
    return settings;
  }
  config_sources sources;
  sources.links = std::move(links.value());
  sources.getenv = getenv;
  auto sections = settings.gateway.sections();
  if (auto loaded = load_config(sources, sections, all_config_sections()); !loaded) {
    settings.init_error = loaded.error().message;
    return settings;
  }
  const auto proxy = parse_host_port(settings.gateway.proxy);
  if (!proxy || proxy->port == 0 || proxy->host.empty()) {
    settings.init_error = "gateway.proxy (CLUSTER_GATEWAY_PROXY): expected host:port, got '" +
                          settings.gateway.proxy + "'";
  } else if (settings.gateway.request_timeout <= milliseconds(0)) {
    settings.init_error =
        "gateway.request_timeout_ms (CLUSTER_GATEWAY_REQUEST_TIMEOUT_MS) must be positive";
  } else if (auto handling = settings.gateway.handler_settings(); !handling) {
    settings.init_error = handling.error().message + " (CLUSTER_GATEWAY_EXPOSE)";
  } else if (auto secured = settings.gateway.common.prepare_security(role::client); !secured) {
    settings.init_error = secured.error().message;
  }
  return settings;
}

}  // namespace cluster::gateway
