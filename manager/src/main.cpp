#include <spdlog/spdlog.h>

#include "cluster/manager/manager.hpp"
#include "cluster/process/process.hpp"
#include "cluster/storage-pg/stores.hpp"

int main(int argc, char** argv) {
  cluster::manager::manager_config config;
  if (auto exit_code = cluster::configure_process(argc, argv, "cluster-manager", config.sections()))
    return *exit_code;
  try {
    cluster::setup_logging("manager", config.common.log_level);
    cluster::asio::io_context io(1);
    cluster::manager::manager manager(io, config,
                                      cluster::make_manager_store(config.common.storage));
    manager.start();
    return cluster::run_until_signal(
        io, [&manager] { manager.stop(); }, [] { return true; });
  } catch (const std::exception& e) {
    spdlog::critical("cluster-manager failed to start: {}", e.what());
    return 1;
  }
}
