// A request/reply round trip through two `connection`s over loopback TCP, in one thread:
// the client encodes, the server decodes the request and encodes a reply, the client
// decodes it. Measures the connection layer's CPU cost per message (syscalls included).
#include <benchmark/benchmark.h>

#include "cluster/net/server.hpp"

namespace {

using namespace cluster;

class loopback_pair {
 public:
  loopback_pair()
      : reply_(reply_msg::success(
            pack_bytes(std::map<std::string, std::string>{{"message", "Hello, bench!"}}))),
        server_(io_, server_options{}, [this](const connection_ptr& conn, envelope&& env) {
          // Decode as a proxy or runner would, then answer.
          auto request = env.as<request_msg>();
          benchmark::DoNotOptimize(request);
          conn->send_reply(env.id, reply_);
        }) {
    const auto port = server_.listen();
    asio::co_spawn(
        io_,
        [this, port]() -> awaitable<void> {
          hello_msg hello{protocol_version, "client", "microbench"};
          const connection_limits limits;
          connection::message_handler ignore = [](const connection_ptr&, envelope&&) {};
          std::function<void()> on_close;
          auto connect = connect_to(host_port{"127.0.0.1", port}, hello, limits, milliseconds(3000),
                                    ignore, on_close);
          auto connected = co_await std::move(connect);
          client_ = connected ? connected.value() : nullptr;
          connect_done_ = true;
        },
        asio::detached);
    while (!connect_done_) io_.run_one();
    request_.entity_type = "Greeter";
    request_.entity_id = "bench-1";
    request_.rpc = "GreetVolatile";
    request_.payload = pack_bytes(std::map<std::string, std::string>{{"name", "bench"}});
  }

  ~loopback_pair() {
    if (client_) client_->close();
    server_.stop();
    io_.run_for(std::chrono::milliseconds(200));
  }

  bool connected() const { return client_ != nullptr; }

  /// Sends `depth` calls at once and runs the loop until every reply is in.
  void calls(std::size_t depth) {
    std::size_t left = depth;
    for (std::size_t i = 0; i < depth; ++i)
      client_->call(message_kind::request, request_, milliseconds(5000),
                    [&left](reply_msg&& reply) {
                      benchmark::DoNotOptimize(reply);
                      --left;
                    });
    while (left > 0) io_.run_one();
  }

 private:
  asio::io_context io_{1};
  reply_msg reply_;
  server server_;
  connection_ptr client_;
  bool connect_done_ = false;
  request_msg request_;
};

// range(0): calls in flight per batch (1: pure round trips; more: pipelined).
void connection_round_trip(benchmark::State& state) {
  loopback_pair pair;
  if (!pair.connected()) {
    state.SkipWithError("cannot connect over loopback");
    return;
  }
  const auto depth = static_cast<std::size_t>(state.range(0));
  for (auto _ : state) pair.calls(depth);
  state.SetItemsProcessed(state.iterations() * state.range(0));
}
BENCHMARK(connection_round_trip)->Arg(1)->Arg(16)->Arg(64);

}  // namespace
