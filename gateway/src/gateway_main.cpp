// cluster-gateway: HTTP ⇄ entity RPC on a local port (see gateway/README.md).
#include <spdlog/spdlog.h>

#include "cluster/gateway/gateway.hpp"
#include "cluster/process/process.hpp"

int main(int argc, char** argv) {
  cluster::gateway::gateway_config config;
  if (auto exit_code = cluster::configure_process(argc, argv, "cluster-gateway", config.sections()))
    return *exit_code;
  try {
    cluster::setup_logging("gateway", config.common.log_level);
    cluster::asio::io_context io(1);
    cluster::gateway::gateway gateway(io, config);
    gateway.start();
    return cluster::run_until_signal(
        io, [&gateway] { gateway.stop(); }, [&gateway] { return gateway.idle(); });
  } catch (const std::exception& e) {
    spdlog::critical("cluster-gateway failed to start: {}", e.what());
    return 1;
  }
}
