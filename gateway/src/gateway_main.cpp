// cluster-gateway: HTTP ⇄ entity RPC on a local port (see gateway/README.md).
#include "cluster/gateway/gateway.hpp"
#include "cluster/process/process.hpp"

int main(int argc, char** argv) {
  return cluster::run_process<cluster::gateway::gateway>(argc, argv, "cluster-gateway");
}
