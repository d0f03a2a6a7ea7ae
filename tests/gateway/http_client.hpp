#pragma once
// A small HTTP/1.1 client for the gateway tests: Beast over a real loopback socket, run on
// the test's io_context with `run_until` (so it shares the thread with the cluster).

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "cluster_fixture.hpp"

namespace cluster::testing {

namespace beast = boost::beast;
namespace http = beast::http;

struct http_exchange {
  std::string method = "GET";
  std::string target = "/";
  std::string body;
  std::string authorization;  ///< the Authorization header; empty: none
  std::string gateway_token;  ///< the X-Gateway-Token header; empty: none
};

struct http_result {
  unsigned status = 0;  ///< 0 when the exchange failed (see `error`)
  std::string body;
  std::string content_type;
  std::string allow;
  std::string www_authenticate;
  bool keep_alive = false;
  std::string error;

  /// The body as JSON (discarded value when it is not JSON).
  nlohmann::json json() const { return nlohmann::json::parse(body, nullptr, false); }
};

namespace detail {

// Shared with the coroutine, which may outlive a caller that gave up waiting.
struct session_state {
  std::vector<http_result> results;
  bool done = false;
};

inline awaitable<void> run_exchanges(std::uint16_t port, std::vector<http_exchange> exchanges,
                                     std::shared_ptr<session_state> state) {
  auto executor = co_await asio::this_coro::executor;
  beast::tcp_stream stream(executor);
  beast::flat_buffer buffer;
  error_code ec;
  const tcp::endpoint endpoint(asio::ip::make_address("127.0.0.1"), port);
  co_await stream.async_connect(endpoint, asio::redirect_error(use_awaitable, ec));
  for (const auto& exchange : exchanges) {
    http_result result;
    if (ec) {
      result.error = ec.message();
      state->results.push_back(result);
      continue;
    }
    http::request<http::string_body> request{http::string_to_verb(exchange.method), exchange.target,
                                             11};
    if (request.method() == http::verb::unknown) request.method_string(exchange.method);
    request.set(http::field::host, "127.0.0.1");
    if (!exchange.authorization.empty())
      request.set(http::field::authorization, exchange.authorization);
    if (!exchange.gateway_token.empty()) request.set("X-Gateway-Token", exchange.gateway_token);
    if (!exchange.body.empty() || request.method() == http::verb::post) {
      request.set(http::field::content_type, "application/json");
      request.body() = exchange.body;
    }
    request.keep_alive(true);
    request.prepare_payload();
    co_await http::async_write(stream, request, asio::redirect_error(use_awaitable, ec));
    http::response_parser<http::string_body> parser;
    parser.body_limit(64 * 1024 * 1024);
    if (!ec)
      co_await http::async_read(stream, buffer, parser, asio::redirect_error(use_awaitable, ec));
    if (ec) {
      result.error = ec.message();
    } else {
      auto& response = parser.get();
      result.status = response.result_int();
      result.body = response.body();
      result.content_type = std::string(response[http::field::content_type]);
      result.allow = std::string(response[http::field::allow]);
      result.www_authenticate = std::string(response[http::field::www_authenticate]);
      result.keep_alive = response.keep_alive();
    }
    state->results.push_back(result);
  }
  stream.socket().close(ec);
  state->done = true;
}

}  // namespace detail

/// Sends `exchanges` one after the other on one keep-alive connection to 127.0.0.1:`port`.
inline std::vector<http_result> http_session(asio::io_context& io, std::uint16_t port,
                                             const std::vector<http_exchange>& exchanges,
                                             milliseconds timeout = milliseconds(20000)) {
  auto state = std::make_shared<detail::session_state>();
  asio::co_spawn(io, detail::run_exchanges(port, exchanges, state), asio::detached);
  if (!run_until(
          io, [&state] { return state->done; }, timeout))
    return {};
  return state->results;
}

/// One request on a fresh connection; status 0 when it failed.
inline http_result http_call(asio::io_context& io, std::uint16_t port, const std::string& method,
                             const std::string& target, const std::string& body = "",
                             milliseconds timeout = milliseconds(20000)) {
  auto results = http_session(io, port, {http_exchange{method, target, body}}, timeout);
  if (results.empty()) {
    http_result failed;
    failed.error = "no response in time";
    return failed;
  }
  return results.front();
}

/// True when `result` is a JSON error body with string fields "error" and "message".
inline bool is_error_body(const http_result& result) {
  const auto body = result.json();
  return body.is_object() && body.contains("error") && body["error"].is_string() &&
         body.contains("message") && body["message"].is_string();
}

}  // namespace cluster::testing
