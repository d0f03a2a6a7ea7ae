// cluster-proxy: routes thin clients' requests to the runners that own their shards.
#include "cluster/process/process.hpp"
#include "cluster/proxy/proxy.hpp"

int main(int argc, char** argv) {
  return cluster::run_process<cluster::proxy::proxy>(argc, argv, "cluster-proxy");
}
