// cluster-lambda: the AWS Lambda custom runtime (see gateway/README.md).
#include "cluster/gateway/lambda_runtime.hpp"

int main() {
  cluster::gateway::lambda_runtime runtime(cluster::gateway::lambda_settings::from_environment());
  return runtime.run();
}
