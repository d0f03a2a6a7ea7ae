// One place for defaults (cluster/process/defaults.hpp): every process's config starts
// from it, and the Lambda reads the gateway's keys through the shared loader.

#include "cluster/process/defaults.hpp"

#include <gtest/gtest.h>

#include <map>
#include <string>

#include "cluster/gateway/gateway.hpp"
#include "cluster/gateway/lambda_runtime.hpp"
#include "cluster/host/runner.hpp"
#include "cluster/manager/manager.hpp"
#include "cluster/proxy/proxy.hpp"

namespace cluster {
namespace {

TEST(defaults, are_the_documented_ports) {
  EXPECT_EQ(defaults::manager_port, 8080);
  EXPECT_EQ(defaults::proxy_port, 3333);
  EXPECT_EQ(defaults::runner_port, 34431);
  EXPECT_EQ(defaults::gateway_port, 8787);
  EXPECT_EQ(defaults::manager_address(), "127.0.0.1:8080");
  EXPECT_EQ(defaults::proxy_address(), "127.0.0.1:3333");
}

TEST(defaults, seed_every_process_config_with_listen_and_connect_addresses_apart) {
  const manager::manager_config manager;
  EXPECT_EQ(manager.host, "127.0.0.1");
  EXPECT_EQ(manager.port, defaults::manager_port);

  const host::runner_config runner;
  EXPECT_EQ(runner.host, "127.0.0.1");
  EXPECT_EQ(runner.port, defaults::runner_port);
  EXPECT_EQ(runner.manager, defaults::manager_address());

  const proxy::proxy_config proxy;
  EXPECT_EQ(proxy.port, defaults::proxy_port);
  EXPECT_EQ(proxy.manager, defaults::manager_address());

  const gateway::gateway_config gateway;
  EXPECT_EQ(gateway.port, defaults::gateway_port);
  EXPECT_EQ(gateway.proxy, defaults::proxy_address());
  EXPECT_EQ(gateway::proxy_client_options{}.proxy.to_string(), defaults::proxy_address());
}

// An environment with only the given variables (and authentication off unless they say).
std::function<const char*(const char*)> fake_env(std::map<std::string, std::string> vars) {
  vars.emplace("CLUSTER_SECURITY_AUTH", "false");
  return [vars = std::move(vars)](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
}

TEST(lambda_settings, call_the_default_proxy_without_configuration) {
  const auto settings = gateway::lambda_settings::from_environment(
      fake_env({{"AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"}}));
  EXPECT_EQ(settings.init_error, "");
  EXPECT_EQ(settings.runtime_api, "127.0.0.1:9001");
  EXPECT_EQ(settings.gateway.proxy, defaults::proxy_address());
  EXPECT_EQ(settings.gateway.request_timeout, milliseconds(10000));
}

TEST(lambda_settings, read_the_proxy_from_the_sst_link_and_gateway_proxy_over_it) {
  const std::string link = R"({"host":"proxy.internal","port":3334})";
  auto settings =
      gateway::lambda_settings::from_environment(fake_env({{"SST_RESOURCE_ProxyServer", link}}));
  EXPECT_EQ(settings.init_error, "");
  EXPECT_EQ(settings.gateway.proxy, "proxy.internal:3334");

  settings = gateway::lambda_settings::from_environment(
      fake_env({{"SST_RESOURCE_ProxyServer", R"({"host":"proxy.internal"})"}}));
  EXPECT_EQ(settings.gateway.proxy, "proxy.internal:3333") << "a link without a port";

  settings = gateway::lambda_settings::from_environment(
      fake_env({{"SST_RESOURCE_ProxyServer", link},
                {"CLUSTER_GATEWAY_PROXY", "10.0.0.7:4000"},
                {"CLUSTER_GATEWAY_REQUEST_TIMEOUT_MS", "2500"},
                {"CLUSTER_GATEWAY_MAX_BODY_BYTES", "4096"},
                {"CLUSTER_LOG_LEVEL", "debug"}}));
  EXPECT_EQ(settings.init_error, "");
  EXPECT_EQ(settings.gateway.proxy, "10.0.0.7:4000");
  EXPECT_EQ(settings.gateway.request_timeout, milliseconds(2500));
  EXPECT_EQ(settings.gateway.max_body_bytes, 4096u);
  EXPECT_EQ(settings.gateway.common.log_level, "debug");
}

TEST(lambda_settings, need_a_key_unless_authentication_is_off) {
  const auto without =
      gateway::lambda_settings::from_environment(fake_env({{"CLUSTER_SECURITY_AUTH", "true"}}));
  EXPECT_NE(without.init_error.find("security.credentials_dir"), std::string::npos)
      << without.init_error;
  const auto key = signing_key::generate();
  const auto with = gateway::lambda_settings::from_environment(
      fake_env({{"CLUSTER_SECURITY_AUTH", "true"},
                {"SST_RESOURCE_ClusterClientKey", R"({"value":")" + key.to_text() + R"("})"},
                {"SST_RESOURCE_ClusterTrust",
                 R"({"value":"client=)" + to_base64(key.public_half()) + R"("})"}}));
  EXPECT_EQ(with.init_error, "");
  ASSERT_NE(with.gateway.common.security_prepared, nullptr);
  EXPECT_EQ(with.gateway.common.security_prepared->own_role, role::client);
}

TEST(lambda_settings, refuse_bad_values_naming_the_variable) {
  const std::map<std::string, std::string> cases = {
      {"CLUSTER_GATEWAY_PROXY", "no-port"},
      {"CLUSTER_GATEWAY_REQUEST_TIMEOUT_MS", "soon"},
      {"CLUSTER_PROXY_HOST", "10.0.0.7"},  // the proxy's listen address, not ours
      {"CLUSTER_PROXY_PORT", "3333"},
      {"SST_RESOURCE_ProxyServer", "{not json"},
      {"CLUSTER_GATEWAY_EXPOSE", "Greeter,Counter/"},
  };
  for (const auto& [name, value] : cases) {
    const auto settings = gateway::lambda_settings::from_environment(fake_env({{name, value}}));
    EXPECT_NE(settings.init_error.find(name), std::string::npos)
        << name << "=" << value << " gave: '" << settings.init_error << "'";
  }
  const auto zero = gateway::lambda_settings::from_environment(
      fake_env({{"CLUSTER_GATEWAY_REQUEST_TIMEOUT_MS", "0"}}));
  EXPECT_NE(zero.init_error.find("CLUSTER_GATEWAY_REQUEST_TIMEOUT_MS"), std::string::npos)
      << zero.init_error;
  const auto port_zero = gateway::lambda_settings::from_environment(
      fake_env({{"CLUSTER_GATEWAY_PROXY", "127.0.0.1:0"}}));
  EXPECT_NE(port_zero.init_error.find("CLUSTER_GATEWAY_PROXY"), std::string::npos)
      << port_zero.init_error;
}

}  // namespace
}  // namespace cluster
