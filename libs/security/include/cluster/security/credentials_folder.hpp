#pragma once
// A credentials folder: <role>.key for every role (mode 0600) and `trust` listing their
// public halves. `clusterctl keys init` and `scripts/dev up` make one; processes read their
// role's key from it (security.credentials_dir), tools the key of the role they act as.

#include <string>

#include "cluster/protocol/result.hpp"
#include "cluster/security/roles.hpp"

namespace cluster {

/// Fails if `dir` already holds a trust list (credentials are never silently replaced).
result<void> write_credentials_folder(const std::string& dir);

std::string credentials_key_path(const std::string& dir, role r);
std::string credentials_trust_path(const std::string& dir);

}  // namespace cluster
