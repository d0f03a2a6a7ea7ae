// The handler's routing and error mapping against a fake proxy: a real cluster::server on
// loopback that answers each request the way a test asks.
#include "cluster/gateway/handler.hpp"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "child_process.hpp"
#include "cluster/net/server.hpp"
#include "cluster_fixture.hpp"

namespace cluster::gateway {
namespace {

using json = nlohmann::json;
using cluster::testing::run_until;
using namespace std::chrono_literals;

json body_json(const http_response& response) { return json::parse(response.body, nullptr, false); }

bool is_error_body(const http_response& response) {
  const auto body = body_json(response);
  return body.is_object() && body.contains("error") && body["error"].is_string() &&
         body.contains("message") && body["message"].is_string();
}

json payload_json(const request_msg& request) {
  return json::from_msgpack(request.payload, true, false);
}

reply_msg json_reply(const json& value) {
  const auto packed = json::to_msgpack(value);
  return reply_msg::success(bytes(packed.begin(), packed.end()));
}

// Answers requests with `answer` (nullopt: never answer) and records them.
class fake_proxy {
 public:
  explicit fake_proxy(asio::io_context& io)
      : server_(io, server_options{},
                [this](const connection_ptr& conn, envelope&& env) { on_message(conn, env); }) {
    port_ = server_.listen();
  }

  std::function<std::optional<reply_msg>(const request_msg&, const connection_ptr&)> answer =
      [](const request_msg&, const connection_ptr&) {
        return json_reply(json{{"ok", true}});
      };
  std::vector<request_msg> requests;

  std::uint16_t port() const { return port_; }
  std::size_t connections() const { return server_.connection_count(); }
  void stop() { server_.stop(); }

 private:
  void on_message(const connection_ptr& conn, const envelope& env) {
    if (env.kind == static_cast<std::uint32_t>(message_kind::get_status)) {
      // The handler asks which RPCs stream: none here.
      conn->send_reply(env.id,
                       reply_msg::success(cluster::pack_bytes(cluster::assignment_snapshot{})));
      return;
    }
    if (env.kind != static_cast<std::uint32_t>(message_kind::request)) return;
    auto request = env.as<request_msg>();
    ASSERT_TRUE(request.has_value());
    requests.push_back(request.value());
    if (auto reply = answer(request.value(), conn)) conn->send_reply(env.id, *reply);
  }

  server server_;
  std::uint16_t port_ = 0;
};

proxy_client_options client_options(std::uint16_t port) {
  proxy_client_options options;
  options.proxy = host_port{"127.0.0.1", port};
  options.name = "handler-test";
  return options;
}

class handler_test : public ::testing::Test {
 protected:
  void TearDown() override {
    client.close();
    proxy.stop();
    run_until(
        io, [] { return false; }, 50ms);
  }

  http_response handle(const std::string& method, const std::string& target,
                       const std::string& body = "", milliseconds timeout = 5000ms) {
    return handle_with(request_handler, http_request{method, target, body}, timeout);
  }
  http_response handle_with(handler& with, http_request request, milliseconds timeout = 5000ms) {
    auto out = std::make_shared<std::optional<http_response>>();
    asio::co_spawn(
        io,
        [handler = &with, request, timeout, out]() -> awaitable<void> {
          auto handling = handler->handle(request, timeout);
          *out = co_await std::move(handling);
        },
        asio::detached);
    EXPECT_TRUE(run_until(
        io, [&out] { return out->has_value(); }, 20000ms));
    return out->value_or(http_response{0, "", {}});
  }

  asio::io_context io;
  fake_proxy proxy{io};
  proxy_client client{io.get_executor(), client_options(proxy.port())};
  handler request_handler{client, handler_options{}};
};

TEST_F(handler_test, get_root_makes_the_seed_call_and_returns_its_reply_as_json) {
  proxy.answer = [](const request_msg&, const connection_ptr&) {
    return json_reply(json{{"message", "Hello, John! from Test Greeter 216"}});
  };
  const auto response = handle("GET", "/");
  EXPECT_EQ(response.status, 200u);
  EXPECT_EQ(body_json(response), (json{{"message", "Hello, John! from Test Greeter 216"}}));
  ASSERT_EQ(proxy.requests.size(), 1u);
  EXPECT_EQ(proxy.requests[0].entity_type, "Greeter");
  EXPECT_EQ(proxy.requests[0].entity_id, "Test");
  EXPECT_EQ(proxy.requests[0].rpc, "Greet");
  EXPECT_EQ(payload_json(proxy.requests[0]), (json{{"name", "John"}}));
}

TEST_F(handler_test, post_calls_the_addressed_rpc_with_the_body_as_messagepack) {
  proxy.answer = [](const request_msg& request, const connection_ptr&) {
    return json_reply(json{{"echo", payload_json(request)}});
  };
  const auto response = handle("POST", "/Greeter/alice/Greet", R"({"name":"Alice","n":[1,2]})");
  EXPECT_EQ(response.status, 200u);
  EXPECT_EQ(body_json(response)["echo"], (json{{"name", "Alice"}, {"n", {1, 2}}}));
  ASSERT_EQ(proxy.requests.size(), 1u);
  EXPECT_EQ(proxy.requests[0].entity_type, "Greeter");
  EXPECT_EQ(proxy.requests[0].entity_id, "alice");
  EXPECT_EQ(proxy.requests[0].rpc, "Greet");
  EXPECT_GT(proxy.requests[0].timeout_ms, 0u);
}

TEST_F(handler_test, path_segments_are_url_decoded_and_the_query_is_ignored) {
  const auto response = handle("POST", "/Greeter/user%2F42%20x/Greet?trace=1", "{}");
  EXPECT_EQ(response.status, 200u);
  ASSERT_EQ(proxy.requests.size(), 1u);
  EXPECT_EQ(proxy.requests[0].entity_id, "user/42 x");
}

TEST_F(handler_test, an_empty_body_is_sent_as_an_empty_object) {
  handle("POST", "/Counter/c/Get", "");
  handle("POST", "/Counter/c/Get", " \r\n");
  ASSERT_EQ(proxy.requests.size(), 2u);
  EXPECT_EQ(payload_json(proxy.requests[0]), json::object());
  EXPECT_EQ(payload_json(proxy.requests[1]), json::object());
}

TEST_F(handler_test, maps_each_failure_code_to_its_http_status_with_an_error_body) {
  const std::pair<errc, unsigned> cases[] = {{errc::unknown_entity_type, 404},
                                             {errc::unknown_rpc, 404},
                                             {errc::bad_payload, 400},
                                             {errc::invalid_request, 400},
                                             {errc::mailbox_full, 429},
                                             {errc::too_many_requests, 429},
                                             {errc::unavailable, 503},
                                             {errc::no_runner, 503},
                                             {errc::shutting_down, 503},
                                             {errc::deadline_exceeded, 503},
                                             {errc::not_owner, 503},
                                             {errc::storage_error, 503},
                                             {errc::defect, 500},
                                             {errc::frame_too_large, 413},
                                             {errc::unknown_kind, 502}};
  for (const auto& [code, status] : cases) {
    proxy.answer = [code = code](const request_msg&, const connection_ptr&) {
      return reply_msg::failure(code, "detail of the failure");
    };
    const auto response = handle("POST", "/Greeter/alice/Greet", "{}");
    EXPECT_EQ(response.status, status) << to_string(code);
    EXPECT_TRUE(is_error_body(response)) << response.body;
    EXPECT_EQ(body_json(response)["error"], std::string(to_string(code)));
    EXPECT_EQ(body_json(response)["message"], "detail of the failure");
  }
}

TEST_F(handler_test, an_application_error_is_422_named_by_the_apps_tag) {
  proxy.answer = [](const request_msg&, const connection_ptr&) {
    reply_msg reply;
    reply.code = errc::application_error;
    reply.error = "InsufficientFunds";
    reply.message = "balance is 3";
    const auto details = json::to_msgpack(json{{"balance", 3}});
    reply.payload.assign(details.begin(), details.end());
    return reply;
  };
  const auto response = handle("POST", "/Account/a/Withdraw", R"({"amount":5})");
  EXPECT_EQ(response.status, 422u);
  EXPECT_EQ(body_json(response)["error"], "InsufficientFunds");
  EXPECT_EQ(body_json(response)["message"], "balance is 3");
  EXPECT_EQ(body_json(response)["details"], (json{{"balance", 3}}));
}

handler_options exposing(const std::vector<std::string>& entries) {
  handler_options options;
  auto list = expose_list::parse(entries);
  EXPECT_TRUE(list.has_value()) << list.error().message;
  if (list) options.expose = std::move(list.value());
  return options;
}

std::string header_of(const http_response& response, const std::string& name) {
  for (const auto& [key, value] : response.headers)
    if (key == name) return value;
  return "";
}

TEST_F(handler_test, a_type_or_rpc_not_exposed_is_403_without_calling_the_proxy) {
  handler limited{client, exposing({"Greeter/Greet", "Counter"})};
  auto response = handle_with(limited, {"POST", "/Greeter/alice/GreetVolatile", "{}"});
  EXPECT_EQ(response.status, 403u) << response.body;
  EXPECT_EQ(body_json(response)["error"], "Forbidden");
  EXPECT_EQ(body_json(response)["message"],
            "Greeter/GreetVolatile is not exposed to HTTP (gateway.expose)");
  response = handle_with(limited, {"POST", "/Calculator/calc/AddCounters", "{}"});
  EXPECT_EQ(response.status, 403u) << response.body;
  // Refused before the body is even read as JSON.
  response = handle_with(limited, {"POST", "/Probe/p/Append", "{not json"});
  EXPECT_EQ(response.status, 403u) << response.body;
  EXPECT_TRUE(proxy.requests.empty()) << "a refused call reached the proxy";

  // What is exposed keeps flowing: a listed RPC, every RPC of a listed type, the seed call.
  EXPECT_EQ(handle_with(limited, {"POST", "/Greeter/alice/Greet", "{}"}).status, 200u);
  EXPECT_EQ(handle_with(limited, {"POST", "/Counter/c/Increment", "{}"}).status, 200u);
  EXPECT_EQ(handle_with(limited, {"POST", "/Counter/c/Get", "{}"}).status, 200u);
  EXPECT_EQ(handle_with(limited, {"GET", "/", ""}).status, 200u);
  EXPECT_EQ(proxy.requests.size(), 4u);

  handler no_greeter{client, exposing({"Counter"})};
  response = handle_with(no_greeter, {"GET", "/", ""});
  EXPECT_EQ(response.status, 403u) << "the seed call is a Greeter call like any other";
  // Names are matched exactly, after percent-decoding.
  EXPECT_EQ(handle_with(no_greeter, {"POST", "/counter/c/Get", "{}"}).status, 403u);
  EXPECT_EQ(handle_with(no_greeter, {"POST", "/Count%65r/c/Get", "{}"}).status, 200u);
}

TEST(expose_list, takes_types_rpcs_and_a_star_and_names_a_malformed_entry) {
  auto list = expose_list::parse({"Greeter", "Counter/Get"});
  ASSERT_TRUE(list.has_value());
  EXPECT_TRUE(list.value().allows("Greeter", "Anything"));
  EXPECT_TRUE(list.value().allows("Counter", "Get"));
  EXPECT_FALSE(list.value().allows("Counter", "Increment"));
  EXPECT_FALSE(list.value().allows("Calculator", "AddCounters"));
  auto all = expose_list::parse({"*"});
  ASSERT_TRUE(all.has_value());
  EXPECT_TRUE(all.value().allows("Anything", "AtAll"));
  auto none = expose_list::parse({});
  ASSERT_TRUE(none.has_value());
  EXPECT_FALSE(none.value().allows("Greeter", "Greet")) << "an empty list exposes nothing";
  for (const std::string bad : {"", "/Get", "Counter/", "A/B/C"}) {
    auto refused = expose_list::parse({"Greeter", bad});
    ASSERT_FALSE(refused.has_value()) << "'" << bad << "' was accepted";
    EXPECT_NE(refused.error().message.find("gateway.expose: '" + bad + "'"), std::string::npos)
        << refused.error().message;
  }
}

TEST_F(handler_test, a_missing_or_wrong_bearer_token_is_401_and_the_right_one_passes) {
  handler_options options;
  options.bearer_token = digest_of_token("s3cret-token");
  handler guarded{client, options};
  const auto expect_unauthorized = [&](const std::string& authorization,
                                       const std::string& challenge,
                                       const std::string& gateway_token = "") {
    const auto response =
        handle_with(guarded, {"POST", "/Greeter/alice/Greet", "{}", authorization, gateway_token});
    EXPECT_EQ(response.status, 401u) << "'" << authorization << "'";
    EXPECT_EQ(body_json(response)["error"], "Unauthorized") << response.body;
    EXPECT_TRUE(is_error_body(response)) << response.body;
    EXPECT_EQ(header_of(response, "www-authenticate"), challenge) << "'" << authorization << "'";
    EXPECT_EQ(response.body.find("s3cret"), std::string::npos) << "the token is echoed";
  };
  expect_unauthorized("", "Bearer");
  expect_unauthorized("Basic czNjcmV0LXRva2Vu", "Bearer");
  expect_unauthorized("Bearer", "Bearer");
  expect_unauthorized("Bearer ", "Bearer error=\"invalid_token\"");
  expect_unauthorized("Bearer wrong", "Bearer error=\"invalid_token\"");
  expect_unauthorized("Bearer s3cret-toke", "Bearer error=\"invalid_token\"");
  expect_unauthorized("Bearer s3cret-token2", "Bearer error=\"invalid_token\"");
  expect_unauthorized("Bearer S3CRET-TOKEN", "Bearer error=\"invalid_token\"");
  // Beside a SigV4 Authorization (an AWS_IAM function URL) the token is X-Gateway-Token.
  const std::string sigv4 =
      "AWS4-HMAC-SHA256 Credential=AKIA/20260101/eu-west-1/lambda/aws4_request";
  expect_unauthorized(sigv4, "Bearer");
  expect_unauthorized(sigv4, "Bearer error=\"invalid_token\"", "wrong");
  // A Bearer credential is the one checked, whatever else comes with it.
  expect_unauthorized("Bearer wrong", "Bearer error=\"invalid_token\"", "s3cret-token");
  // Checked first: an unauthenticated caller learns nothing about paths or exposure.
  const auto unknown = handle_with(guarded, {"GET", "/no/such/path", ""});
  EXPECT_EQ(unknown.status, 401u);
  EXPECT_TRUE(proxy.requests.empty()) << "an unauthenticated call reached the proxy";

  for (const std::string good : {"Bearer s3cret-token", "bearer s3cret-token",
                                 "BEARER   s3cret-token ", "Bearer s3cret-token\t"}) {
    const auto response = handle_with(guarded, {"POST", "/Greeter/alice/Greet", "{}", good});
    EXPECT_EQ(response.status, 200u) << "'" << good << "': " << response.body;
  }
  EXPECT_EQ(handle_with(guarded, {"GET", "/", "", "Bearer s3cret-token"}).status, 200u);
  EXPECT_EQ(handle_with(guarded, {"GET", "/", "", sigv4, "s3cret-token"}).status, 200u);
  EXPECT_EQ(handle_with(guarded, {"GET", "/", "", "", "s3cret-token"}).status, 200u);
  EXPECT_EQ(proxy.requests.size(), 7u);
  // Without a configured token, the header is neither needed nor looked at.
  EXPECT_EQ(handle_with(request_handler, {"GET", "/", "", "Bearer whatever"}).status, 200u);
}

TEST(digest_of_token, is_the_sha256_of_the_token) {
  // echo -n s3cret-token | sha256sum
  const auto digest = digest_of_token("s3cret-token");
  std::string hex;
  for (auto byte : digest) {
    static constexpr char digits[] = "0123456789abcdef";
    hex += digits[byte >> 4];
    hex += digits[byte & 0xf];
  }
  EXPECT_EQ(hex, "a81e611a041b13f078bf8ebe5dab4d4fd63fcc5594661c918bec093a2f416a7e");
}

TEST_F(handler_test, malformed_json_is_400_without_calling_the_cluster) {
  const auto response = handle("POST", "/Greeter/alice/Greet", "{not json");
  EXPECT_EQ(response.status, 400u);
  EXPECT_EQ(body_json(response)["error"], "InvalidJson");
  EXPECT_TRUE(is_error_body(response));
  EXPECT_TRUE(proxy.requests.empty());
}

TEST_F(handler_test, unknown_paths_are_404_and_wrong_methods_405) {
  for (const char* target : {"/Greeter", "/Greeter/alice", "/Greeter/alice/Greet/extra",
                             "/Greeter//Greet", "//", "nopath"}) {
    const auto response = handle("POST", target, "{}");
    EXPECT_EQ(response.status, 404u) << target;
    EXPECT_EQ(body_json(response)["error"], "NotFound") << target;
  }
  auto response = handle("GET", "/Greeter/alice/Greet");
  EXPECT_EQ(response.status, 405u);
  EXPECT_TRUE(is_error_body(response));
  response = handle("DELETE", "/");
  EXPECT_EQ(response.status, 405u);
  EXPECT_TRUE(proxy.requests.empty());
}

TEST_F(handler_test, malformed_percent_encoding_is_400) {
  for (const char* target : {"/Greeter/a%2/Greet", "/Greeter/a%zz/Greet", "/Greeter/a%/Greet"}) {
    const auto response = handle("POST", target, "{}");
    EXPECT_EQ(response.status, 400u) << target;
    EXPECT_TRUE(is_error_body(response));
  }
  EXPECT_TRUE(proxy.requests.empty());
}

TEST_F(handler_test, ids_that_decode_to_invalid_utf8_a_nul_or_too_many_bytes_are_400) {
  const std::pair<std::string, std::string> cases[] = {
      {"/Greeter/%FF/Greet", "entity_id is not valid UTF-8 (byte 0xff at offset 0)"},
      {"/Greeter/ab%C3/Greet", "entity_id is not valid UTF-8 (byte 0xc3 at offset 2)"},
      {"/Greeter/a%00b/Greet", "entity_id contains a NUL byte at offset 1"},
      {"/Gr%E9eter/alice/Greet", "entity_type is not valid UTF-8 (byte 0xe9 at offset 2)"},
      {"/Greeter/alice/Gr%80", "rpc is not valid UTF-8 (byte 0x80 at offset 2)"},
      {"/Greeter/" + std::string(1025, 'x') + "/Greet",
       "entity_id is 1025 bytes long; at most 1024 are allowed"},
  };
  for (const auto& [target, message] : cases) {
    const auto response = handle("POST", target, "{}");
    EXPECT_EQ(response.status, 400u) << target;
    EXPECT_TRUE(is_error_body(response)) << response.body;
    EXPECT_EQ(body_json(response)["error"], "InvalidRequest") << target;
    EXPECT_EQ(body_json(response)["message"], message) << target;
  }
  EXPECT_TRUE(proxy.requests.empty());
  // Percent-encoded UTF-8 is fine: %C3%BC is "ü".
  const auto response = handle("POST", "/Greeter/z%C3%BCrich/Greet", "{}");
  EXPECT_EQ(response.status, 200u);
  ASSERT_EQ(proxy.requests.size(), 1u);
  EXPECT_EQ(proxy.requests[0].entity_id, "z\xC3\xBCrich");
}

TEST(route, checks_ids_against_the_configured_max_id_bytes) {
  handler_options options;
  options.limits.max_id_bytes = 4;
  auto routed = route(http_request{"POST", "/Greeter/abcd/Greet", ""}, options);
  ASSERT_TRUE(routed.call.has_value());
  routed = route(http_request{"POST", "/Greeter/abcde/Greet", ""}, options);
  ASSERT_FALSE(routed.call.has_value());
  EXPECT_EQ(routed.response.status, 400u);
  EXPECT_EQ(body_json(routed.response)["message"],
            "entity_id is 5 bytes long; at most 4 are allowed");
}

TEST_F(handler_test, a_body_over_the_limit_is_413) {
  const std::string big = "\"" + std::string(handler_options{}.max_body_bytes, 'x') + "\"";
  const auto response = handle("POST", "/Greeter/alice/Greet", big);
  EXPECT_EQ(response.status, 413u);
  EXPECT_TRUE(is_error_body(response));
  EXPECT_TRUE(proxy.requests.empty());
}

TEST_F(handler_test, a_reply_that_is_not_messagepack_is_502) {
  proxy.answer = [](const request_msg&, const connection_ptr&) {
    return reply_msg::success(bytes{0xc1});  // 0xc1 is never used in MessagePack
  };
  const auto response = handle("POST", "/Greeter/alice/Greet", "{}");
  EXPECT_EQ(response.status, 502u);
  EXPECT_TRUE(is_error_body(response));
}

TEST_F(handler_test, a_proxy_that_does_not_answer_in_time_is_503) {
  proxy.answer = [](const request_msg&, const connection_ptr&) -> std::optional<reply_msg> {
    return std::nullopt;
  };
  const auto response = handle("POST", "/Greeter/alice/Greet", "{}", 300ms);
  EXPECT_EQ(response.status, 503u);
  EXPECT_EQ(body_json(response)["error"], "DeadlineExceeded");
}

TEST_F(handler_test, reconnects_after_the_proxy_drops_the_connection) {
  int calls = 0;
  proxy.answer = [&calls](const request_msg&,
                          const connection_ptr& conn) -> std::optional<reply_msg> {
    if (++calls == 1) {
      conn->close();  // the proxy goes away mid-call
      return std::nullopt;
    }
    return json_reply(json{{"call", calls}});
  };
  const auto dropped = handle("POST", "/Greeter/alice/Greet", "{}");
  EXPECT_EQ(dropped.status, 503u);
  EXPECT_EQ(body_json(dropped)["error"], "Unavailable");
  const auto retried = handle("POST", "/Greeter/alice/Greet", "{}");
  EXPECT_EQ(retried.status, 200u);
  EXPECT_EQ(body_json(retried)["call"], 2);
}

TEST_F(handler_test, concurrent_calls_share_one_proxy_connection) {
  auto done = std::make_shared<int>(0);
  for (int i = 0; i < 20; ++i) {
    http_request request{"POST", "/Greeter/user-" + std::to_string(i) + "/Greet", "{}"};
    asio::co_spawn(
        io,
        [handler = &request_handler, request, done]() -> awaitable<void> {
          auto handling = handler->handle(request, 5000ms);
          const auto response = co_await std::move(handling);
          if (response.status == 200) ++*done;
        },
        asio::detached);
  }
  ASSERT_TRUE(run_until(
      io, [&done] { return *done == 20; }, 20000ms));
  EXPECT_EQ(proxy.connections(), 1u);
  EXPECT_EQ(proxy.requests.size(), 20u);
}

TEST(proxy_client, an_unreachable_proxy_is_503_unavailable) {
  asio::io_context io;
  proxy_client client(io.get_executor(), client_options(cluster::testing::free_port()));
  handler request_handler(client, handler_options{});
  auto out = std::make_shared<std::optional<http_response>>();
  asio::co_spawn(
      io,
      [handler = &request_handler, out]() -> awaitable<void> {
        http_request request{"GET", "/", ""};
        auto handling = handler->handle(request, 2000ms);
        *out = co_await std::move(handling);
      },
      asio::detached);
  ASSERT_TRUE(run_until(
      io, [&out] { return out->has_value(); }, 20000ms));
  EXPECT_EQ((*out)->status, 503u);
  EXPECT_TRUE(is_error_body(**out));
  EXPECT_EQ(body_json(**out)["error"], "Unavailable");
}

TEST(url_decode, decodes_escapes_and_rejects_broken_ones) {
  EXPECT_EQ(url_decode("a%20b%2Fc%7e"), std::optional<std::string>("a b/c~"));
  EXPECT_EQ(url_decode("plus+stays"), std::optional<std::string>("plus+stays"));
  EXPECT_EQ(url_decode("%"), std::nullopt);
  EXPECT_EQ(url_decode("%4"), std::nullopt);
  EXPECT_EQ(url_decode("%g0"), std::nullopt);
}

}  // namespace
}  // namespace cluster::gateway
