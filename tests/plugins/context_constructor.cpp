// Chatty: its constructor takes the context, logs through it and reads the clock and its
// address, the way the SDK documents; the runner must give it a working context.
#include <cluster/sdk.hpp>

struct Hello {
  using Request = cluster::empty;
  struct Reply {
    std::string created_for;
    std::int64_t created_at_ms = 0;
    std::int32_t created_in_shard = 0;
    MSGPACK_DEFINE_MAP(created_for, created_at_ms, created_in_shard);
  };
};

class Chatty {
 public:
  explicit Chatty(cluster::context& ctx)
      : created_for_(ctx.entity_id()), created_at_ms_(ctx.now_ms()), shard_(ctx.shard()) {
    ctx.log_info("activating " + created_for_ + " in group " + std::string(ctx.shard_group()));
  }
  Hello::Reply hello(const Hello::Request&, cluster::context&) {
    return {created_for_, created_at_ms_, shard_};
  }

 private:
  std::string created_for_;
  std::int64_t created_at_ms_;
  std::int32_t shard_;
};

CLUSTER_PLUGIN(cluster::entity<Chatty>("Chatty").rpc<Hello>("Hello", &Chatty::hello))
