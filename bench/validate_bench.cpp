// validate_request, which the proxy, every runner and the gateway run on every call.
#include <benchmark/benchmark.h>

#include "cluster/protocol/validate.hpp"

namespace {

using namespace cluster;

request_msg typical_request() {
  request_msg request;
  request.entity_type = "Greeter";
  request.entity_id = "user-1234567890-abcdef";
  request.rpc = "Greet";
  request.primary_key = "order-2024-000123456";
  return request;
}

void validate_ascii_request(benchmark::State& state) {
  const auto request = typical_request();
  const request_limits limits;
  for (auto _ : state) benchmark::DoNotOptimize(validate_request(request, limits).has_value());
}
BENCHMARK(validate_ascii_request);

void validate_non_ascii_request(benchmark::State& state) {
  auto request = typical_request();
  request.entity_id = "h\xc3\xa9llo-\xf0\x9f\x98\x80-user-12345";  // é and an emoji
  const request_limits limits;
  for (auto _ : state) benchmark::DoNotOptimize(validate_request(request, limits).has_value());
}
BENCHMARK(validate_non_ascii_request);

void validate_request_with_deliver_at(benchmark::State& state) {
  auto request = typical_request();
  request.deliver_at_ms = 1'700'000'000'000;
  const request_limits limits;
  for (auto _ : state) benchmark::DoNotOptimize(validate_request(request, limits).has_value());
}
BENCHMARK(validate_request_with_deliver_at);

}  // namespace
