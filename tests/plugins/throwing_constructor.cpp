// Fragile: its constructor throws, so every activation fails; the runner must survive.
#include <cluster/sdk.hpp>
#include <stdexcept>

struct Touch {
  using Request = cluster::empty;
  using Reply = cluster::empty;
};

class Fragile {
 public:
  Fragile() { throw std::runtime_error("cannot activate"); }
  Touch::Reply touch(const Touch::Request&, cluster::context&) { return {}; }
};

CLUSTER_PLUGIN(cluster::entity<Fragile>("Fragile").rpc<Touch>("Touch", &Fragile::touch))
