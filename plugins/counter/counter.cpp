// Counter: a durable value per entity, kept as its state. `Increment` is persisted: its
// effect on the value counts once even when a crash makes it run twice.
#include <cluster/sdk.hpp>

struct CounterState {
  std::int64_t value = 0;
  MSGPACK_DEFINE_MAP(value);
};

struct Increment {
  struct Request {
    std::int64_t by = 1;
    MSGPACK_DEFINE_MAP(by);
  };
  struct Reply {
    std::int64_t value = 0;
    MSGPACK_DEFINE_MAP(value);
  };
};

struct Get {
  using Request = cluster::empty;
  using Reply = Increment::Reply;
};

class Counter : public cluster::stateful<CounterState> {
 public:
  Increment::Reply increment(const Increment::Request& request, cluster::context&) {
    state().value += request.by;
    return {state().value};
  }
  Get::Reply get(const Get::Request&, cluster::context&) { return {state().value}; }
};

CLUSTER_PLUGIN(cluster::entity<Counter>("Counter")
                   .rpc<Increment>("Increment", &Counter::increment, cluster::persisted)
                   .rpc<Get>("Get", &Counter::get, cluster::read_only))
