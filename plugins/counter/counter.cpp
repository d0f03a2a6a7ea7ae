// Counter: in-memory state per entity. `Increment` is persisted, `Get` is not.
#include <cluster/sdk.hpp>

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

class Counter {
 public:
  Increment::Reply increment(const Increment::Request& request, cluster::context&) {
    value_ += request.by;
    return {value_};
  }
  Get::Reply get(const Get::Request&, cluster::context&) { return {value_}; }

 private:
  std::int64_t value_ = 0;
};

CLUSTER_PLUGIN(cluster::entity<Counter>("Counter")
                   .rpc<Increment>("Increment", &Counter::increment, cluster::persisted)
                   .rpc<Get>("Get", &Counter::get))
