// Needs a function no library defines (built without -Wl,--no-undefined): with RTLD_NOW
// the runner refuses the file at load instead of failing on the first call of Lookup.
#include <cluster/sdk.hpp>

// Default visibility: a hidden undefined symbol would already fail the link.
extern "C" __attribute__((visibility("default"))) int cluster_test_symbol_that_does_not_exist(int);

struct Lookup {
  using Request = cluster::empty;
  struct Reply {
    int value = 0;
    MSGPACK_DEFINE_MAP(value);
  };
};

class Dangling {
 public:
  Lookup::Reply lookup(const Lookup::Request&, cluster::context&) {
    return {cluster_test_symbol_that_does_not_exist(1)};
  }
};

CLUSTER_PLUGIN(cluster::entity<Dangling>("Dangling").rpc<Lookup>("Lookup", &Dangling::lookup))
