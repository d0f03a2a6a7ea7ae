// fingerprint_of, which every persisted call pays once (on the PostgreSQL store's worker
// thread, or in the memory store's persist on the runner's thread).
#include <benchmark/benchmark.h>

#include "cluster/storage/request_fingerprint.hpp"

namespace {

using namespace cluster;

request_msg request_with_payload(std::size_t payload_bytes) {
  request_msg request;
  request.entity_type = "Greeter";
  request.entity_id = "user-1234567890-abcdef";
  request.rpc = "Greet";
  request.primary_key = "order-2024-000123456";
  request.payload.assign(payload_bytes, 0xa5);
  return request;
}

void request_fingerprint_of(benchmark::State& state) {
  const auto request = request_with_payload(static_cast<std::size_t>(state.range(0)));
  for (auto _ : state) benchmark::DoNotOptimize(fingerprint_of(request));
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations()) * state.range(0));
}
// A Greet {"name":"Alice"} payload is 12 bytes; 1 KiB and 64 KiB show the per-byte cost.
BENCHMARK(request_fingerprint_of)->Arg(12)->Arg(1024)->Arg(64 * 1024);

}  // namespace
