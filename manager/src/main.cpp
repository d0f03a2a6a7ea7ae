// cluster-manager: the runner registry and the shard assignment of every shard group.
#include "cluster/manager/manager.hpp"
#include "cluster/process/process.hpp"
#include "cluster/storage-pg/stores.hpp"

int main(int argc, char** argv) {
  using cluster::manager::manager;
  using cluster::manager::manager_config;
  return cluster::run_process<manager>(
      argc, argv, "cluster-manager",
      {.make = [](cluster::asio::io_context& io, const manager_config& config) {
        return std::make_unique<manager>(io, config,
                                         cluster::make_manager_store(config.common.storage));
      }});
}
