// Hello: an entity plugin built against the installed ClusterSDK.
#include "hello.hpp"

#ifndef HELLO_VERSION
#define HELLO_VERSION "0.0.0"
#endif

namespace hello {

class Hello {
 public:
  Greet::Reply greet(const Greet::Request& request, cluster::context& ctx) {
    if (request.name.empty()) throw cluster::app_error("EmptyName", "say who to greet");
    return {greeting(request.name, ctx), HELLO_VERSION, ++greeted_};
  }

  cluster::task<GreetLater::Reply> greet_later(const GreetLater::Request& request,
                                               cluster::context& ctx) {
    co_await ctx.sleep_ms(request.delay_ms);
    co_return GreetLater::Reply{greeting(request.name, ctx), ctx.now_ms()};
  }

  cluster::task<Welcome::Reply> welcome(const Welcome::Request& request, cluster::context& ctx) {
    const Send::Request mail{request.email, "Welcome, " + request.name};
    // The key makes the Mailer deduplicate: a replay of this message sends no second mail.
    const std::string key = "welcome:" + std::string(ctx.entity_id()) + ":" + request.email;
    const auto sent =
        co_await ctx.call<Send::Reply>("Mailer", request.email, "Send", mail, key.c_str());
    co_return Welcome::Reply{greeting(request.name, ctx), sent.mail_id};
  }

 private:
  static std::string greeting(const std::string& name, cluster::context& ctx) {
    return "Hello, " + name + "! from " + std::string(ctx.entity_id()) + " (hello " +
           HELLO_VERSION + ")";
  }
  std::int64_t greeted_ = 0;
};

}  // namespace hello

CLUSTER_PLUGIN(cluster::plugin("hello").version(HELLO_VERSION),
               cluster::entity<hello::Hello>("Hello")
                   .rpc<hello::Greet>("Greet", &hello::Hello::greet, cluster::persisted)
                   .rpc<hello::Greet>("GreetVolatile", &hello::Hello::greet)
                   .rpc<hello::GreetLater>("GreetLater", &hello::Hello::greet_later)
                   .rpc<hello::Welcome>("Welcome", &hello::Hello::welcome, cluster::persisted))
