// Its declaration throws while the entry builds it (as a plugin reading settings that are
// missing would): the runner must refuse the file with the exception's message.
#include <cluster/sdk.hpp>
#include <stdexcept>

struct Nop {
  using Request = cluster::empty;
  using Reply = cluster::empty;
};

class Unreachable {
 public:
  Nop::Reply nop(const Nop::Request&, cluster::context&) { return {}; }
};

namespace {
std::string type_name_from_settings() {
  throw std::runtime_error("the plugin's settings file is missing");
}
}  // namespace

CLUSTER_PLUGIN(
    cluster::entity<Unreachable>(type_name_from_settings()).rpc<Nop>("Nop", &Unreachable::nop))
