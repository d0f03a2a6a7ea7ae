#include "cluster/gateway/lambda_event.hpp"

#include <algorithm>
#include <nlohmann/json.hpp>

namespace cluster::gateway {

namespace {
using json = nlohmann::json;

int base64_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '+') return 62;
  if (c == '/') return 63;
  return -1;
}
}  // namespace

std::optional<std::string> base64_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size() / 4 * 3);
  std::uint32_t bits = 0;
  int count = 0;
  bool padding = false;
  for (const char c : text) {
    if (c == ' ' || c == '\n' || c == '\r' || c == '\t') continue;
    if (c == '=') {
      padding = true;
      continue;
    }
    const int value = base64_value(c);
    if (value < 0 || padding) return std::nullopt;  // bad character, or data after '='
    bits = (bits << 6) | static_cast<std::uint32_t>(value);
    if (++count == 4) {
      out.push_back(static_cast<char>((bits >> 16) & 0xff));
      out.push_back(static_cast<char>((bits >> 8) & 0xff));
      out.push_back(static_cast<char>(bits & 0xff));
      bits = 0;
      count = 0;
    }
  }
  if (count == 1) return std::nullopt;  // 6 bits cannot encode a byte
  if (count == 2) out.push_back(static_cast<char>((bits >> 4) & 0xff));
  if (count == 3) {
    out.push_back(static_cast<char>((bits >> 10) & 0xff));
    out.push_back(static_cast<char>((bits >> 2) & 0xff));
  }
  return out;
}

std::optional<http_request> parse_function_url_event(std::string_view event, std::string& error) {
  const auto parsed = json::parse(event, nullptr, false);
  if (!parsed.is_object()) {
    error = "the event is not a JSON object";
    return std::nullopt;
  }
  const auto context = parsed.find("requestContext");
  if (context == parsed.end() || !context->is_object() || !context->contains("http") ||
      !(*context)["http"].is_object() || !(*context)["http"].contains("method") ||
      !(*context)["http"]["method"].is_string()) {
    error =
        "the event has no requestContext.http.method: not a Function URL event "
        "(payload format 2.0)";
    return std::nullopt;
  }
  http_request request;
  request.method = (*context)["http"]["method"].get<std::string>();
  if (const auto path = parsed.find("rawPath"); path != parsed.end() && path->is_string()) {
    request.target = path->get<std::string>();
  } else if (const auto& http = (*context)["http"];
             http.contains("path") && http["path"].is_string()) {
    request.target = http["path"].get<std::string>();  // decoded already; better than nothing
  } else {
    error = "the event has no rawPath";
    return std::nullopt;
  }
  // Function URLs pass header names in lower case; any case is accepted all the same.
  const auto is_named = [](const std::string& name, std::string_view lower_case) {
    return std::equal(
        name.begin(), name.end(), lower_case.begin(), lower_case.end(),
        [](char a, char b) { return (a >= 'A' && a <= 'Z' ? static_cast<char>(a + 32) : a) == b; });
  };
  if (const auto headers = parsed.find("headers"); headers != parsed.end() && headers->is_object())
    for (const auto& [name, value] : headers->items()) {
      if (!value.is_string()) continue;
      if (is_named(name, "authorization")) request.authorization = value.get<std::string>();
      if (is_named(name, "x-gateway-token")) request.gateway_token = value.get<std::string>();
      if (is_named(name, "traceparent")) request.traceparent = value.get<std::string>();
    }
  if (const auto body = parsed.find("body"); body != parsed.end() && body->is_string()) {
    request.body = body->get<std::string>();
    const auto encoded = parsed.find("isBase64Encoded");
    if (encoded != parsed.end() && encoded->is_boolean() && encoded->get<bool>()) {
      auto decoded = base64_decode(request.body);
      if (!decoded) {
        error = "isBase64Encoded is set but the body is not valid base64";
        return std::nullopt;
      }
      request.body = std::move(*decoded);
    }
  }
  return request;
}

std::string function_url_response(const http_response& response) {
  json headers = {{"content-type", "application/json"}};
  for (const auto& [name, value] : response.headers) headers[name] = value;
  return json{{"statusCode", response.status}, {"headers", headers}, {"body", response.body}}.dump(
      -1, ' ', false, json::error_handler_t::replace);
}

std::string lambda_error_body(std::string_view message, std::string_view type) {
  return json{{"errorMessage", message}, {"errorType", type}}.dump(-1, ' ', false,
                                                                   json::error_handler_t::replace);
}

milliseconds invocation_timeout(std::int64_t deadline_unix_ms, std::int64_t now_unix_ms,
                                milliseconds request_timeout, milliseconds safety) {
  if (deadline_unix_ms <= 0) return request_timeout;
  const milliseconds left(deadline_unix_ms - now_unix_ms - safety.count());
  return std::min(left, request_timeout);
}

}  // namespace cluster::gateway
