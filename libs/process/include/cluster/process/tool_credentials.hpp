#pragma once
// Where the command-line tools (clusterctl, cluster-bench) find their key and trust list,
// so that on a machine set up by `scripts/dev up` they work with no flags.
//
// First that applies, per half (key, trust list):
//   1. the flags (--key-file, --trust-file);
//   2. CLUSTER_SECURITY_KEY / CLUSTER_SECURITY_KEY_FILE, CLUSTER_SECURITY_TRUST /
//      CLUSTER_SECURITY_TRUST_FILE;
//   3. SST link variables: SST_RESOURCE_Cluster<Role>Key (the wanted role first, then any)
//      and SST_RESOURCE_ClusterTrust, as a service container has them;
//   4. the credentials folder: $CLUSTER_SECURITY_CREDENTIALS_DIR, else ./.local/credentials
//      (<role>.key for the wanted role, else client.key; trust).
// TLS: --tls / CLUSTER_SECURITY_TLS, else the folder's `tls` file (what `scripts/dev up`
// chose), else off. CLUSTER_SECURITY_AUTH=false: no credentials at all.

#include <functional>
#include <memory>
#include <string>

#include "cluster/protocol/result.hpp"
#include "cluster/security/security_context.hpp"

namespace cluster {

struct tool_credentials {
  role wanted = role::client;  ///< the role whose key to prefer (admin for admin verbs)
  std::string key_file;
  std::string trust_file;
  std::string tls;
  std::function<const char*(const char*)> getenv = [](const char* n) { return std::getenv(n); };
};

/// Null when no credentials are found (servers with authentication then refuse, saying so)
/// or authentication is switched off; a failure when a key or list is found but unusable.
result<std::shared_ptr<const security_context>> load_tool_credentials(
    const tool_credentials& request);

}  // namespace cluster
