// Function URL events (payload format 2.0) to handler requests and back.
#include "cluster/gateway/lambda_event.hpp"

#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>

#include "cluster/gateway/lambda_runtime.hpp"

namespace cluster::gateway {
namespace {

using json = nlohmann::json;
using namespace std::chrono_literals;

json url_event(const std::string& method, const std::string& path) {
  return {{"version", "2.0"},
          {"routeKey", "$default"},
          {"rawPath", path},
          {"rawQueryString", ""},
          {"headers", {{"content-type", "application/json"}}},
          {"requestContext", {{"http", {{"method", method}, {"path", path}}}}},
          {"isBase64Encoded", false}};
}

TEST(lambda_event, parses_method_raw_path_and_body) {
  auto event = url_event("POST", "/Greeter/a%20b/Greet");
  event["body"] = R"({"name":"Alice"})";
  std::string error;
  const auto request = parse_function_url_event(event.dump(), error);
  ASSERT_TRUE(request.has_value()) << error;
  EXPECT_EQ(request->method, "POST");
  EXPECT_EQ(request->target, "/Greeter/a%20b/Greet");  // decoded later, once, by the router
  EXPECT_EQ(request->body, R"({"name":"Alice"})");
}

TEST(lambda_event, passes_the_authorization_header_in_any_case) {
  auto event = url_event("GET", "/");
  std::string error;
  auto request = parse_function_url_event(event.dump(), error);
  ASSERT_TRUE(request.has_value()) << error;
  EXPECT_EQ(request->authorization, "");
  event["headers"]["authorization"] = "Bearer t0ken";
  request = parse_function_url_event(event.dump(), error);
  ASSERT_TRUE(request.has_value()) << error;
  EXPECT_EQ(request->authorization, "Bearer t0ken");
  event["headers"].erase("authorization");
  event["headers"]["Authorization"] = "Bearer other";
  request = parse_function_url_event(event.dump(), error);
  ASSERT_TRUE(request.has_value()) << error;
  EXPECT_EQ(request->authorization, "Bearer other");
  EXPECT_EQ(request->gateway_token, "");
  event["headers"]["x-gateway-token"] = "t0ken";
  request = parse_function_url_event(event.dump(), error);
  ASSERT_TRUE(request.has_value()) << error;
  EXPECT_EQ(request->gateway_token, "t0ken");
}

// Only `vars`, and no cluster authentication (these tests never connect).
std::function<const char*(const char*)> lambda_env(std::map<std::string, std::string> vars) {
  vars.emplace("CLUSTER_SECURITY_AUTH", "false");
  return [vars = std::move(vars)](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
}

// The Lambda's own path: its settings from the environment, a Function URL event, the route.
route_result route_event(const handler_options& options, const std::string& method,
                         const std::string& path, const std::string& authorization) {
  auto event = url_event(method, path);
  if (!authorization.empty()) event["headers"]["authorization"] = authorization;
  event["body"] = "{}";
  std::string error;
  const auto request = parse_function_url_event(event.dump(), error);
  EXPECT_TRUE(request.has_value()) << error;
  return route(request.value_or(http_request{}), options);
}

TEST(lambda_event, a_configured_lambda_refuses_bad_tokens_and_unexposed_rpcs_before_any_call) {
  const auto settings = lambda_settings::from_environment(
      lambda_env({{"AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"},
                  {"CLUSTER_GATEWAY_BEARER_TOKEN", "lambda-token"},
                  {"CLUSTER_GATEWAY_EXPOSE", "Greeter/Greet,Counter"}}));
  ASSERT_EQ(settings.init_error, "");
  auto options = settings.gateway.handler_settings();
  ASSERT_TRUE(options.has_value()) << options.error().message;

  auto routed = route_event(options.value(), "POST", "/Greeter/a/Greet", "");
  EXPECT_FALSE(routed.call.has_value());
  EXPECT_EQ(routed.response.status, 401u);
  routed = route_event(options.value(), "POST", "/Greeter/a/Greet", "Bearer not-it");
  EXPECT_FALSE(routed.call.has_value());
  EXPECT_EQ(routed.response.status, 401u);
  routed = route_event(options.value(), "POST", "/Greeter/a/GreetVolatile", "Bearer lambda-token");
  EXPECT_FALSE(routed.call.has_value());
  EXPECT_EQ(routed.response.status, 403u);
  EXPECT_EQ(json::parse(routed.response.body)["error"], "Forbidden");

  // Legitimate calls go to the cluster.
  routed = route_event(options.value(), "POST", "/Greeter/a/Greet", "Bearer lambda-token");
  ASSERT_TRUE(routed.call.has_value()) << routed.response.body;
  EXPECT_EQ(routed.call->rpc, "Greet");
  routed = route_event(options.value(), "POST", "/Counter/c/Increment", "Bearer lambda-token");
  EXPECT_TRUE(routed.call.has_value()) << routed.response.body;
  routed = route_event(options.value(), "GET", "/", "Bearer lambda-token");
  EXPECT_TRUE(routed.call.has_value()) << routed.response.body;
}

TEST(lambda_event, an_unconfigured_lambda_exposes_the_example_types_without_a_token) {
  const auto settings =
      lambda_settings::from_environment(lambda_env({{"AWS_LAMBDA_RUNTIME_API", "127.0.0.1:9001"}}));
  ASSERT_EQ(settings.init_error, "");
  EXPECT_EQ(settings.gateway.expose,
            (std::vector<std::string>{"Greeter", "Counter", "Calculator"}));
  auto options = settings.gateway.handler_settings();
  ASSERT_TRUE(options.has_value());
  EXPECT_FALSE(options.value().bearer_token.has_value());
  for (const char* path : {"/Greeter/a/Greet", "/Counter/c/Get", "/Calculator/x/AddCounters"})
    EXPECT_TRUE(route_event(options.value(), "POST", path, "").call.has_value()) << path;
  const auto probe = route_event(options.value(), "POST", "/Probe/p/Append", "");
  EXPECT_FALSE(probe.call.has_value());
  EXPECT_EQ(probe.response.status, 403u);
}

TEST(lambda_event, decodes_a_base64_body) {
  auto event = url_event("POST", "/Greeter/bob/Greet");
  event["body"] = "eyJuYW1lIjoiQm9iIn0=";
  event["isBase64Encoded"] = true;
  std::string error;
  const auto request = parse_function_url_event(event.dump(), error);
  ASSERT_TRUE(request.has_value()) << error;
  EXPECT_EQ(request->body, R"({"name":"Bob"})");
}

TEST(lambda_event, a_get_without_body_has_an_empty_body) {
  std::string error;
  const auto request = parse_function_url_event(url_event("GET", "/").dump(), error);
  ASSERT_TRUE(request.has_value()) << error;
  EXPECT_EQ(request->method, "GET");
  EXPECT_EQ(request->target, "/");
  EXPECT_TRUE(request->body.empty());
}

TEST(lambda_event, refuses_events_that_are_not_function_url_events) {
  std::string error;
  EXPECT_FALSE(parse_function_url_event("not json", error).has_value());
  EXPECT_FALSE(error.empty());
  EXPECT_FALSE(parse_function_url_event(R"({"Records": []})", error).has_value());
  EXPECT_NE(error.find("requestContext.http.method"), std::string::npos) << error;
  auto bad_base64 = url_event("POST", "/a/b/c");
  bad_base64["body"] = "***";
  bad_base64["isBase64Encoded"] = true;
  EXPECT_FALSE(parse_function_url_event(bad_base64.dump(), error).has_value());
}

TEST(lambda_event, formats_the_function_url_response) {
  http_response response;
  response.status = 405;
  response.body = R"({"error":"MethodNotAllowed","message":"m"})";
  response.headers.emplace_back("allow", "POST");
  const auto formatted = json::parse(function_url_response(response));
  EXPECT_EQ(formatted["statusCode"], 405);
  EXPECT_EQ(formatted["headers"]["content-type"], "application/json");
  EXPECT_EQ(formatted["headers"]["allow"], "POST");
  EXPECT_EQ(formatted["body"], response.body);
}

TEST(lambda_event, formats_error_bodies) {
  const auto body = json::parse(lambda_error_body("went wrong", "InvalidEvent"));
  EXPECT_EQ(body, (json{{"errorMessage", "went wrong"}, {"errorType", "InvalidEvent"}}));
}

TEST(lambda_event, the_call_deadline_keeps_a_safety_margin_and_the_request_timeout) {
  EXPECT_EQ(invocation_timeout(10'000, 5'000, 10'000ms), 4'800ms);
  EXPECT_EQ(invocation_timeout(100'000, 5'000, 10'000ms), 10'000ms);
  EXPECT_LE(invocation_timeout(5'100, 5'000, 10'000ms).count(), 0);
  EXPECT_EQ(invocation_timeout(0, 5'000, 7'000ms), 7'000ms);  // no deadline header
}

TEST(base64, decodes_padded_and_unpadded_text) {
  EXPECT_EQ(base64_decode("YWJj"), std::optional<std::string>("abc"));
  EXPECT_EQ(base64_decode("YWI="), std::optional<std::string>("ab"));
  EXPECT_EQ(base64_decode("YWI"), std::optional<std::string>("ab"));
  EXPECT_EQ(base64_decode("YQ=="), std::optional<std::string>("a"));
  EXPECT_EQ(base64_decode(""), std::optional<std::string>(""));
  EXPECT_EQ(base64_decode("Y"), std::nullopt);
  EXPECT_EQ(base64_decode("YQ==YQ"), std::nullopt);
  EXPECT_EQ(base64_decode("Y!=="), std::nullopt);
}

}  // namespace
}  // namespace cluster::gateway
