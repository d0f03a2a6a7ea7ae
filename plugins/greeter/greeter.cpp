// Greeter: the seed's entity. `Greet` is persisted, `GreetVolatile` is not.
#include <cluster/sdk.hpp>

struct Greet {
  struct Request {
    std::string name;
    MSGPACK_DEFINE_MAP(name);
  };
  struct Reply {
    std::string message;
    MSGPACK_DEFINE_MAP(message);
  };
};

class Greeter {
 public:
  Greet::Reply greet(const Greet::Request& request, cluster::context& ctx) {
    return {"Hello, " + request.name + "! from " + std::string(ctx.entity_id()) + " Greeter " +
            std::to_string(ctx.shard())};
  }
};

CLUSTER_PLUGIN(cluster::plugin("greeter").version("1.0.0"),
               cluster::entity<Greeter>("Greeter")
                   .rpc<Greet>("Greet", &Greeter::greet, cluster::persisted)
                   .rpc<Greet>("GreetVolatile", &Greeter::greet))
