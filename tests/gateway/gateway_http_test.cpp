// cluster-gateway's application object over real HTTP, in front of the in-process cluster
// (manager, runner with the example plugins, proxy) on one io_context.
#include <gtest/gtest.h>

#include "child_process.hpp"
#include "cluster/gateway/gateway.hpp"
#include "cluster_fixture.hpp"
#include "http_client.hpp"

namespace cluster::testing {
namespace {

using gateway::gateway_config;

class gateway_http : public ::testing::Test {
 protected:
  void SetUp() override {
    cluster.add_runner();
    ASSERT_TRUE(cluster.wait_until_balanced(1));
    gate = start_gateway(cluster.proxy_address());
  }
  void TearDown() override {
    for (auto* g : {&gate, &extra}) {
      if (!*g) continue;
      (*g)->stop();
      EXPECT_TRUE(run_until(cluster.io, [g] { return (*g)->idle(); }));
      g->reset();
    }
  }

  std::unique_ptr<gateway::gateway> start_gateway(
      const std::string& proxy, const std::function<void(gateway_config&)>& tweak = {}) {
    gateway_config config;
    config.port = 0;
    config.proxy = proxy;
    config.request_timeout = milliseconds(5000);
    if (tweak) tweak(config);
    auto started = std::make_unique<gateway::gateway>(cluster.io, config);
    started->start();
    return started;
  }

  http_result call(const std::string& method, const std::string& target,
                   const std::string& body = "") {
    return http_call(cluster.io, gate->port(), method, target, body);
  }

  in_process_cluster cluster;
  std::unique_ptr<gateway::gateway> gate;
  std::unique_ptr<gateway::gateway> extra;
};

TEST_F(gateway_http, get_root_returns_the_seed_greeting) {
  const auto result = call("GET", "/");
  ASSERT_EQ(result.status, 200u) << result.error << result.body;
  EXPECT_EQ(result.content_type, "application/json");
  EXPECT_EQ(result.json()["message"], "Hello, John! from Test Greeter 216");
}

TEST_F(gateway_http, post_returns_the_reply_of_the_addressed_entity) {
  const auto result = call("POST", "/Greeter/alice/Greet", R"({"name":"Alice"})");
  ASSERT_EQ(result.status, 200u) << result.error << result.body;
  const std::string message = result.json().value("message", "");
  EXPECT_EQ(message.rfind("Hello, Alice! from alice Greeter ", 0), 0u) << message;
}

TEST_F(gateway_http, an_unknown_rpc_or_entity_type_is_404_with_error_and_message) {
  auto result = call("POST", "/Greeter/alice/NoSuchRpc", "{}");
  EXPECT_EQ(result.status, 404u) << result.body;
  EXPECT_TRUE(is_error_body(result)) << result.body;
  EXPECT_EQ(result.json()["error"], "UnknownRpc");
  // A type nobody serves is not exposed by default (403); exposing everything asks the cluster.
  EXPECT_EQ(call("POST", "/NoSuchType/x/Greet", "{}").status, 403u);
  extra =
      start_gateway(cluster.proxy_address(), [](gateway_config& config) { config.expose = {"*"}; });
  result = http_call(cluster.io, extra->port(), "POST", "/NoSuchType/x/Greet", "{}");
  EXPECT_EQ(result.status, 404u) << result.body;
  EXPECT_TRUE(is_error_body(result)) << result.body;
  EXPECT_EQ(result.json()["error"], "UnknownEntityType");
}

TEST_F(gateway_http, malformed_json_or_a_payload_the_rpc_cannot_take_is_400) {
  auto result = call("POST", "/Greeter/alice/Greet", "{\"name\":");
  EXPECT_EQ(result.status, 400u) << result.body;
  EXPECT_TRUE(is_error_body(result)) << result.body;
  EXPECT_EQ(result.json()["error"], "InvalidJson");
  result = call("POST", "/Greeter/alice/Greet", R"({"name": 42})");
  EXPECT_EQ(result.status, 400u) << result.body;
  EXPECT_TRUE(is_error_body(result)) << result.body;
}

TEST_F(gateway_http, an_application_error_is_422_with_the_apps_tag) {
  const auto result = call("POST", "/Calculator/calc/AddCounters", "{}");
  EXPECT_EQ(result.status, 422u) << result.body;
  EXPECT_TRUE(is_error_body(result)) << result.body;
  EXPECT_EQ(result.json()["error"], "InvalidArgument");
}

TEST_F(gateway_http, other_paths_are_404_and_wrong_methods_405) {
  auto result = call("GET", "/favicon.ico");
  EXPECT_EQ(result.status, 404u);
  EXPECT_TRUE(is_error_body(result)) << result.body;
  result = call("GET", "/Greeter/alice/Greet");
  EXPECT_EQ(result.status, 405u);
  EXPECT_EQ(result.allow, "POST");
  EXPECT_TRUE(is_error_body(result)) << result.body;
}

TEST_F(gateway_http, keeps_the_connection_alive_between_requests) {
  const auto results = http_session(cluster.io, gate->port(),
                                    {{"GET", "/", ""},
                                     {"POST", "/Counter/kept/Increment", R"({"by":2})"},
                                     {"POST", "/Counter/kept/Increment", R"({"by":3})"}});
  ASSERT_EQ(results.size(), 3u);
  for (const auto& result : results) {
    EXPECT_EQ(result.status, 200u) << result.error << result.body;
    EXPECT_TRUE(result.keep_alive);
  }
  EXPECT_EQ(results[2].json()["value"], 5) << results[2].body;
}

TEST_F(gateway_http, refuses_a_missing_or_wrong_bearer_token_and_serves_the_right_one) {
  extra = start_gateway(cluster.proxy_address(),
                        [](gateway_config& config) { config.bearer_token = "http-s3cret"; });
  // One keep-alive connection: refusals do not close it, and legitimate calls keep flowing.
  const auto results =
      http_session(cluster.io, extra->port(),
                   {{"POST", "/Greeter/alice/Greet", R"({"name":"Alice"})", ""},
                    {"POST", "/Greeter/alice/Greet", R"({"name":"Alice"})", "Bearer http-s3cret"},
                    {"POST", "/Greeter/alice/Greet", R"({"name":"Alice"})", "Bearer wrong"},
                    {"GET", "/", "", "Basic aHR0cC1zM2NyZXQ="},
                    {"GET", "/", "", "Bearer http-s3cret"},
                    {"GET", "/", "", "AWS4-HMAC-SHA256 Credential=x", "http-s3cret"}});
  ASSERT_EQ(results.size(), 6u);
  for (const std::size_t refused : {0u, 2u, 3u}) {
    EXPECT_EQ(results[refused].status, 401u) << refused << ": " << results[refused].body;
    EXPECT_TRUE(is_error_body(results[refused])) << results[refused].body;
    EXPECT_EQ(results[refused].json()["error"], "Unauthorized");
    EXPECT_EQ(results[refused].www_authenticate.rfind("Bearer", 0), 0u)
        << results[refused].www_authenticate;
    EXPECT_TRUE(results[refused].keep_alive);
  }
  EXPECT_EQ(results[1].status, 200u) << results[1].body;
  EXPECT_EQ(results[1].json().value("message", "").rfind("Hello, Alice!", 0), 0u)
      << results[1].body;
  EXPECT_EQ(results[4].status, 200u) << results[4].body;
  EXPECT_EQ(results[5].status, 200u)
      << "X-Gateway-Token beside a SigV4 Authorization: " << results[5].body;
  // The gateway without a token configured is unaffected.
  EXPECT_EQ(call("GET", "/").status, 200u);
}

TEST_F(gateway_http, a_call_not_exposed_is_403_and_never_reaches_the_cluster) {
  extra = start_gateway(cluster.proxy_address(),
                        [](gateway_config& config) { config.expose = {"Counter/Get"}; });
  const auto results = http_session(cluster.io, extra->port(),
                                    {{"POST", "/Counter/hidden/Increment", R"({"by":7})"},
                                     {"POST", "/Greeter/alice/Greet", R"({"name":"Alice"})"},
                                     {"GET", "/", ""},
                                     {"POST", "/Counter/hidden/Get", "{}"}});
  ASSERT_EQ(results.size(), 4u);
  for (const std::size_t refused : {0u, 1u, 2u}) {
    EXPECT_EQ(results[refused].status, 403u) << refused << ": " << results[refused].body;
    EXPECT_EQ(results[refused].json()["error"], "Forbidden");
  }
  ASSERT_EQ(results[3].status, 200u) << results[3].body;
  EXPECT_EQ(results[3].json()["value"], 0) << "the refused Increment ran";
  // The default gateway exposes the example plugins' types only.
  auto probe = call("POST", "/Probe/p/Append", R"({"sender":"s","value":1})");
  EXPECT_EQ(probe.status, 403u) << probe.body;
  EXPECT_EQ(call("POST", "/Counter/hidden/Increment", R"({"by":1})").json()["value"], 1);
}

TEST_F(gateway_http, refuses_to_start_with_a_malformed_expose_entry) {
  gateway_config config;
  config.port = 0;
  config.proxy = cluster.proxy_address();
  config.expose = {"Greeter", "Counter/"};
  EXPECT_THROW(std::make_unique<gateway::gateway>(cluster.io, config), config_error);
}

TEST_F(gateway_http, a_body_over_the_limit_is_413) {
  extra = start_gateway(cluster.proxy_address(),
                        [](gateway_config& config) { config.max_body_bytes = 1024; });
  const std::string big = R"({"name":")" + std::string(4096, 'x') + R"("})";
  const auto result = http_call(cluster.io, extra->port(), "POST", "/Greeter/alice/Greet", big);
  EXPECT_EQ(result.status, 413u) << result.error;
  EXPECT_TRUE(is_error_body(result)) << result.body;
}

TEST_F(gateway_http, a_malformed_http_request_is_400) {
  // Raw bytes: Beast's client would not send this.
  auto reply = std::make_shared<std::string>();
  auto done = std::make_shared<bool>(false);
  asio::co_spawn(
      cluster.io,
      [port = gate->port(), reply, done]() -> awaitable<void> {
        tcp::socket socket(co_await asio::this_coro::executor);
        error_code ec;
        const tcp::endpoint endpoint(asio::ip::make_address("127.0.0.1"), port);
        co_await socket.async_connect(endpoint, asio::redirect_error(use_awaitable, ec));
        const std::string garbage = "GET / HTTP/1.1\r\nBad Header Without Colon\r\n\r\n";
        if (!ec)
          co_await asio::async_write(socket, asio::buffer(garbage),
                                     asio::redirect_error(use_awaitable, ec));
        std::array<char, 4096> chunk{};
        while (!ec) {
          const auto n = co_await socket.async_read_some(asio::buffer(chunk),
                                                         asio::redirect_error(use_awaitable, ec));
          reply->append(chunk.data(), n);
        }
        *done = true;
      },
      asio::detached);
  ASSERT_TRUE(run_until(cluster.io, [&done] { return *done; }));
  EXPECT_EQ(reply->rfind("HTTP/1.1 400", 0), 0u) << *reply;
  EXPECT_NE(reply->find("\"error\""), std::string::npos) << *reply;
}

TEST_F(gateway_http, answers_503_when_the_proxy_is_unreachable) {
  extra = start_gateway("127.0.0.1:" + std::to_string(free_port()));
  const auto result = http_call(cluster.io, extra->port(), "GET", "/");
  EXPECT_EQ(result.status, 503u) << result.error;
  EXPECT_TRUE(is_error_body(result)) << result.body;
  EXPECT_EQ(result.json()["error"], "Unavailable");
}

TEST_F(gateway_http, stop_closes_idle_keep_alive_connections) {
  // An idle keep-alive connection from a client that never sends again.
  auto socket = std::make_shared<tcp::socket>(cluster.io);
  socket->connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), gate->port()));
  ASSERT_TRUE(run_until(cluster.io, [this] { return gate->connections() == 1; }));
  gate->stop();
  EXPECT_TRUE(run_until(cluster.io, [this] { return gate->idle(); }));
  EXPECT_EQ(gate->connections(), 0u);
}

}  // namespace
}  // namespace cluster::testing
