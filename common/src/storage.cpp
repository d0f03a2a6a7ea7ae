#include "cluster/common/storage.hpp"

#include <stdexcept>

namespace cluster {

std::unique_ptr<manager_store> make_manager_store(const std::string& backend) {
  if (backend == "memory") return std::make_unique<memory_manager_store>();
  throw std::runtime_error("storage backend '" + backend +
                           "' is not available in this build (supported: memory)");
}

}  // namespace cluster
