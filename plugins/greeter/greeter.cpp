// Greeter: the seed's entity. `Greet` is persisted, `GreetVolatile` is not, `GreetMany`
// streams its greetings.
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

/// `count` greetings, the first at once and then one every `delay_ms`, then how many went out.
struct GreetMany {
  struct Request {
    std::string name;
    std::uint32_t count = 3;
    std::int64_t delay_ms = 0;
    MSGPACK_DEFINE_MAP(name, count, delay_ms);
  };
  struct Item {
    std::string message;
    std::uint32_t index = 0;
    MSGPACK_DEFINE_MAP(message, index);
  };
  struct Reply {
    std::uint32_t count = 0;
    MSGPACK_DEFINE_MAP(count);
  };
};

class Greeter {
 public:
  Greet::Reply greet(const Greet::Request& request, cluster::context& ctx) {
    return {greeting(request.name, ctx)};
  }

  cluster::stream<GreetMany::Item, GreetMany::Reply> greet_many(const GreetMany::Request& request,
                                                                cluster::context& ctx) {
    std::uint32_t sent = 0;
    try {
      for (; sent < request.count; ++sent) {
        if (sent > 0 && request.delay_ms > 0) co_await ctx.sleep_ms(request.delay_ms);
        GreetMany::Item item{greeting(request.name, ctx), sent};
        co_yield item;
      }
    } catch (const cluster::cancelled&) {
      ctx.log_info("GreetMany cancelled after " + std::to_string(sent) + " of " +
                   std::to_string(request.count) + " greetings");
      throw;
    }
    co_return GreetMany::Reply{sent};
  }

 private:
  static std::string greeting(const std::string& name, cluster::context& ctx) {
    return "Hello, " + name + "! from " + std::string(ctx.entity_id()) + " Greeter " +
           std::to_string(ctx.shard());
  }
};

CLUSTER_PLUGIN(cluster::plugin("greeter").version("1.1.0"),
               cluster::entity<Greeter>("Greeter")
                   .rpc<Greet>("Greet", &Greeter::greet, cluster::persisted)
                   .rpc<Greet>("GreetVolatile", &Greeter::greet)
                   .rpc<GreetMany>("GreetMany", &Greeter::greet_many))
