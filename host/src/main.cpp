// cluster-runner: hosts entity plugins and serves the shards the manager assigns to it.
#include "cluster/host/runner.hpp"
#include "cluster/process/process.hpp"

int main(int argc, char** argv) {
  using cluster::host::runner;
  using cluster::host::runner_config;
  return cluster::run_process<runner>(
      argc, argv, "cluster-runner",
      {.logger = [](const runner_config& config) { return config.name; },
       // The runner's own shutdown_timeout bounds the drain; the rest is for closing.
       .drain_timeout =
           [](const runner_config& config) {
             return config.shutdown_timeout + cluster::milliseconds(5000);
           }});
}
