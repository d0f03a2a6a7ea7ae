// The shard mapping and the router's owner lookup from an assignment snapshot.
#include <benchmark/benchmark.h>

#include <string>
#include <vector>

#include "cluster/client/router.hpp"
#include "cluster/protocol/shard.hpp"

namespace {

using namespace cluster;

std::vector<std::string> entity_ids(std::size_t n) {
  std::vector<std::string> ids;
  for (std::size_t i = 0; i < n; ++i) ids.push_back("bench-" + std::to_string(i));
  return ids;
}

void shard_for_ascii_id(benchmark::State& state) {
  const auto ids = entity_ids(1000);
  std::size_t i = 0;
  for (auto _ : state) {
    benchmark::DoNotOptimize(shard_for(ids[i++ % ids.size()], default_shards_per_group));
  }
}
BENCHMARK(shard_for_ascii_id);

void shard_for_non_ascii_id(benchmark::State& state) {
  const std::string id = "h\xc3\xa9llo-\xf0\x9f\x98\x80-user-12345";  // é and an emoji
  for (auto _ : state) benchmark::DoNotOptimize(shard_for(id, default_shards_per_group));
}
BENCHMARK(shard_for_non_ascii_id);

// A snapshot like the local cluster's: 300 shards over two runners, three entity types.
assignment_snapshot local_snapshot() {
  assignment_snapshot snapshot;
  snapshot.version = 2;
  snapshot.storage = "memory";
  shard_group_assignment group{"default", 300, {}};
  for (int shard = 0; shard < 300; ++shard)
    group.owners.push_back(shard % 2 == 0 ? "127.0.0.1:34431" : "127.0.0.1:34432");
  snapshot.groups.push_back(group);
  for (const char* type : {"Calculator", "Counter", "Greeter"})
    snapshot.entity_types.push_back(
        entity_type_info{type, "default", {{"Greet", true}, {"GreetVolatile", false}}});
  snapshot.runners.push_back(
      runner_info{"runner-1", "127.0.0.1:34431", {"default"}, "", true, 150});
  snapshot.runners.push_back(
      runner_info{"runner-2", "127.0.0.1:34432", {"default"}, "", true, 150});
  return snapshot;
}

void router_locate(benchmark::State& state) {
  asio::io_context io(1);
  router r(io, router_options{});
  r.update(local_snapshot());
  const auto ids = entity_ids(1000);
  const std::string type = "Greeter";
  const std::string rpc = "GreetVolatile";
  std::size_t i = 0;
  for (auto _ : state) {
    auto located = r.locate(type, ids[i++ % ids.size()], rpc);
    benchmark::DoNotOptimize(located);
  }
}
BENCHMARK(router_locate);

}  // namespace
