// The entity mailbox path of a runner: entity_host::deliver of a volatile Greeter call to
// an active entity, the plugin's handler, and the reply callback.
#include <benchmark/benchmark.h>

#include "cluster/host/entity_host.hpp"
#include "cluster/protocol/codec.hpp"
#include "cluster/protocol/shard.hpp"

namespace {

using namespace cluster;

// range(0): distinct entities the calls cycle through (all activated before timing).
void mailbox_greet_volatile(benchmark::State& state) {
  asio::io_context io(1);
  host::entity_registry registry;
  if (auto loaded = registry.load_file(CLUSTER_PLUGIN_DIR "/libgreeter.so"); !loaded) {
    state.SkipWithError(loaded.error().message.c_str());
    return;
  }
  const auto* type = registry.find("Greeter");
  const auto rpc = type->rpc_index("GreetVolatile");
  host::entity_host entities(io, host::entity_host_options{},
                             [](request_msg, host::entity_host::reply_callback done) {
                               done(reply_msg::failure(errc::unavailable, "no calls out here"));
                             });
  std::vector<host::entity_address> addresses;
  for (std::int64_t i = 0; i < state.range(0); ++i) {
    const std::string id = "bench-" + std::to_string(i);
    addresses.push_back(host::entity_address{type, id, shard_for(id, default_shards_per_group)});
  }
  request_msg request;
  request.entity_type = "Greeter";
  request.rpc = "GreetVolatile";
  request.payload = pack_bytes(std::map<std::string, std::string>{{"name", "bench"}});
  const auto deadline = steady_clock::now() + std::chrono::hours(1);
  std::size_t replies = 0;
  const auto deliver = [&](const host::entity_address& address) {
    request.entity_id = address.entity_id;
    entities.deliver(address, *rpc, request, deadline, [&replies](reply_msg&& reply) {
      benchmark::DoNotOptimize(reply);
      ++replies;
    });
    io.poll();  // the entity's next-message step is posted
  };
  for (const auto& address : addresses) deliver(address);  // activate them all
  std::size_t i = 0;
  for (auto _ : state) deliver(addresses[i++ % addresses.size()]);
  if (replies != addresses.size() + state.iterations()) state.SkipWithError("a reply is missing");
  state.SetItemsProcessed(state.iterations());
  entities.stop();
  io.poll();
}
BENCHMARK(mailbox_greet_volatile)->Arg(1)->Arg(1000);

}  // namespace
