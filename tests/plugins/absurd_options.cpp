// A plugin whose per-type option is past the runner's bound: the runner refuses the file,
// naming the field.
#include <cluster/sdk.hpp>

struct Nop {
  using Request = cluster::empty;
  using Reply = cluster::empty;
};

class Greedy {
 public:
  Nop::Reply nop(const Nop::Request&, cluster::context&) { return {}; }
};

CLUSTER_PLUGIN(cluster::entity<Greedy>("Greedy").mailbox_capacity(1u << 30).rpc<Nop>("Nop",
                                                                                     &Greedy::nop));
