// Two entity types backed by one C++ class, each with its own RPC table: a call to one
// type must run that type's handler. Also names and versions the plugin.
#include <cluster/sdk.hpp>

struct Who {
  using Request = cluster::empty;
  struct Reply {
    std::string handler;
    std::string entity_type;
    MSGPACK_DEFINE_MAP(handler, entity_type);
  };
};

class Twin {
 public:
  Who::Reply left(const Who::Request&, cluster::context& ctx) {
    return {"left", std::string(ctx.entity_type())};
  }
  Who::Reply right(const Who::Request&, cluster::context& ctx) {
    return {"right", std::string(ctx.entity_type())};
  }
  Who::Reply extra(const Who::Request&, cluster::context& ctx) {
    return {"extra", std::string(ctx.entity_type())};
  }
};

// Right declares one RPC more, before Who, so the same name has another index in each type.
CLUSTER_PLUGIN(cluster::plugin("twins").version("1.2.0"),
               cluster::entity<Twin>("LeftTwin").rpc<Who>("Who", &Twin::left),
               cluster::entity<Twin>("RightTwin")
                   .group("twins")
                   .rpc<Who>("Extra", &Twin::extra)
                   .rpc<Who>("Who", &Twin::right, cluster::persisted))
