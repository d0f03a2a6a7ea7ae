#pragma once
// Where the cluster's processes listen and whom they call when nothing says otherwise: the
// one place these defaults are written down. The config structs, the SST link mapping,
// the Lambda and the command-line tools all read them from here; config/local.toml,
// sst.config.ts and the scripts repeat the numbers (other languages) and say so.

#include <cstdint>
#include <string>
#include <string_view>

namespace cluster::defaults {

/// Every process listens on loopback unless configured otherwise (containers set 0.0.0.0).
inline constexpr std::string_view host = "127.0.0.1";

inline constexpr std::uint16_t manager_port = 8080;
inline constexpr std::uint16_t proxy_port = 3333;
/// The first runner's port; scripts/dev and the runner task count up from it.
inline constexpr std::uint16_t runner_port = 34431;
inline constexpr std::uint16_t gateway_port = 8787;

/// "host:port" of `port` on the default host.
inline std::string local_address(std::uint16_t port) {
  return std::string(host) + ":" + std::to_string(port);
}
/// What runners and proxies call when `runner.manager` / `proxy.manager` is not set.
inline std::string manager_address() { return local_address(manager_port); }
/// What the gateway, the Lambda and cluster-bench call when no proxy is configured.
inline std::string proxy_address() { return local_address(proxy_port); }

}  // namespace cluster::defaults
