#include <spdlog/spdlog.h>

#include "cluster/process/process.hpp"
#include "cluster/proxy/proxy.hpp"

int main(int argc, char** argv) {
  cluster::proxy::proxy_config config;
  if (auto exit_code = cluster::configure_process(argc, argv, "cluster-proxy", config.sections()))
    return *exit_code;
  try {
    cluster::setup_logging("proxy", config.common.log_level);
    cluster::asio::io_context io(1);
    cluster::proxy::proxy proxy(io, config);
    proxy.start();
    return cluster::run_until_signal(
        io, [&proxy] { proxy.stop(); }, [&proxy] { return proxy.in_flight() == 0; });
  } catch (const std::exception& e) {
    spdlog::critical("cluster-proxy failed to start: {}", e.what());
    return 1;
  }
}
