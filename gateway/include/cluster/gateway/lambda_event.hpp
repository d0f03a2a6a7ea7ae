#pragma once
// Translation between AWS Lambda Function URL invocations (payload format 2.0) and the
// handler's HTTP types. Pure functions: no I/O, unit-tested without Lambda.

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "cluster/gateway/handler.hpp"

namespace cluster::gateway {

/// Safety margin kept between the cluster call's deadline and the invocation's: time to
/// post the response before Lambda ends the invocation.
inline constexpr milliseconds lambda_deadline_safety{200};

/// Parses a Function URL event: `requestContext.http.method`, `rawPath`, `body`
/// (base64-decoded when `isBase64Encoded`). Headers and the query string do not affect
/// routing. Nullopt, with the reason in `error`, when `event` is not such an event.
std::optional<http_request> parse_function_url_event(std::string_view event, std::string& error);

/// The invocation response for a Function URL:
/// `{"statusCode": N, "headers": {"content-type": "application/json", ...}, "body": "<json>"}`.
std::string function_url_response(const http_response& response);

/// The body of `/invocation/<id>/error` and `/init/error`: `{"errorMessage", "errorType"}`.
std::string lambda_error_body(std::string_view message, std::string_view type);

/// Decodes standard base64 (padding optional, whitespace ignored); nullopt when malformed.
std::optional<std::string> base64_decode(std::string_view text);

/// Time the cluster call may take: min(deadline − safety − now, request_timeout); zero or
/// less when the invocation has no time left. A deadline of 0 (unknown) gives request_timeout.
milliseconds invocation_timeout(std::int64_t deadline_unix_ms, std::int64_t now_unix_ms,
                                milliseconds request_timeout,
                                milliseconds safety = lambda_deadline_safety);

}  // namespace cluster::gateway
