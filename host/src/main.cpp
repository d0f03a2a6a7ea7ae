#include <spdlog/spdlog.h>

#include "cluster/host/runner.hpp"
#include "cluster/process/process.hpp"

int main(int argc, char** argv) {
  cluster::host::runner_config config;
  if (auto exit_code = cluster::configure_process(argc, argv, "cluster-runner", config.sections()))
    return *exit_code;
  try {
    cluster::setup_logging(config.name, config.common.log_level);
    cluster::asio::io_context io(1);
    cluster::host::runner runner(io, config);
    runner.start();
    return cluster::run_until_signal(
        io, [&runner] { runner.stop(); }, [&runner] { return runner.stopped(); },
        config.shutdown_timeout + cluster::milliseconds(5000));
  } catch (const std::exception& e) {
    spdlog::critical("cluster-runner failed to start: {}", e.what());
    return 1;
  }
}
