// Frame encoding and decoding of the two frames every call costs: a request and its reply.
#include <benchmark/benchmark.h>

#include "cluster/protocol/codec.hpp"

namespace {

using namespace cluster;

request_msg sample_request() {
  request_msg request;
  request.entity_type = "Greeter";
  request.entity_id = "bench-123";
  request.rpc = "GreetVolatile";
  request.payload = pack_bytes(std::map<std::string, std::string>{{"name", "bench"}});
  request.timeout_ms = 10000;
  return request;
}

reply_msg sample_reply() {
  return reply_msg::success(pack_bytes(
      std::map<std::string, std::string>{{"message", "Hello, bench! from bench-123 Greeter 42"}}));
}

void codec_encode_request(benchmark::State& state) {
  const auto request = sample_request();
  std::uint64_t id = 1;
  for (auto _ : state) {
    auto out = encode_frame(message_kind::request, id++, request);
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(codec_encode_request);

void codec_encode_reply(benchmark::State& state) {
  const auto reply = sample_reply();
  std::uint64_t id = 1;
  for (auto _ : state) {
    auto out = encode_frame(message_kind::reply, id++, reply);
    benchmark::DoNotOptimize(out.data());
  }
}
BENCHMARK(codec_encode_reply);

// decode_envelope (bounded unpack) plus conversion of the fields, as a receiver does.
template <class Msg>
void decode(benchmark::State& state, message_kind kind, const Msg& msg) {
  const auto frame = encode_frame(kind, 7, msg);
  const char* body = frame.data() + frame_header_size;
  const std::size_t size = frame.size() - frame_header_size;
  const decode_limits limits;
  for (auto _ : state) {
    auto env = decode_envelope(body, size, limits);
    auto fields = env.value().template as<Msg>();
    benchmark::DoNotOptimize(fields);
  }
  state.SetBytesProcessed(static_cast<std::int64_t>(state.iterations() * size));
}

void codec_decode_request(benchmark::State& state) {
  decode(state, message_kind::request, sample_request());
}
BENCHMARK(codec_decode_request);

void codec_decode_reply(benchmark::State& state) {
  decode(state, message_kind::reply, sample_reply());
}
BENCHMARK(codec_decode_reply);

}  // namespace
