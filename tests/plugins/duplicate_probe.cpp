// Declares entity type "Probe" again: the runner must refuse this file.
#include <cluster/sdk.hpp>

struct Ping {
  using Request = cluster::empty;
  using Reply = cluster::empty;
};

class Impostor {
 public:
  Ping::Reply ping(const Ping::Request&, cluster::context&) { return {}; }
};

CLUSTER_PLUGIN(cluster::entity<Impostor>("Probe").rpc<Ping>("Ping", &Impostor::ping))
