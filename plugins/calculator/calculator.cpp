// Calculator: an entity that calls other entities inside its handler. `AddCounters`
// reads two Counter entities (wherever they live) without blocking the runner, and
// `Record` keeps a running total of what it was asked.
#include <cluster/sdk.hpp>

struct CounterValue {
  std::int64_t value = 0;
  MSGPACK_DEFINE_MAP(value);
};

struct AddCounters {
  struct Request {
    std::string left;
    std::string right;
    MSGPACK_DEFINE_MAP(left, right);
  };
  struct Reply {
    std::int64_t sum = 0;
    std::int64_t calls = 0;
    MSGPACK_DEFINE_MAP(sum, calls);
  };
};

class Calculator {
 public:
  cluster::task<AddCounters::Reply> add_counters(const AddCounters::Request& request,
                                                 cluster::context& ctx) {
    if (request.left.empty() || request.right.empty())
      throw cluster::app_error("InvalidArgument", "left and right counter ids are required");
    const auto left =
        co_await ctx.call<CounterValue>("Counter", request.left, "Get", cluster::empty{});
    const auto right =
        co_await ctx.call<CounterValue>("Counter", request.right, "Get", cluster::empty{});
    ++calls_;
    co_return AddCounters::Reply{left.value + right.value, calls_};
  }

 private:
  std::int64_t calls_ = 0;
};

CLUSTER_PLUGIN(cluster::entity<Calculator>("Calculator")
                   .rpc<AddCounters>("AddCounters", &Calculator::add_counters))
