#pragma once
// The one HTTP ⇄ entity RPC mapping, shared by `cluster-gateway` and the Lambda bootstrap.
//
//   GET  /                                  → Greeter/Test/Greet {"name":"John"} (the seed call)
//   POST /<EntityType>/<entityId>/<Rpc>     → that RPC with the JSON body (empty body = {});
//                                             `?discard=1`: fire and forget (202 once accepted)
//
// Replies are JSON; errors are always `{"error": "<Name>", "message": "..."}` with a status
// that says whose fault it was (see `status_for`). Payloads travel as MessagePack,
// converted from and to JSON with nlohmann-json.
//
// Before any of that: a configured bearer token must be presented (401 otherwise), and a
// call must name an entity type or RPC that is exposed to HTTP (403 otherwise); neither
// reaches the proxy.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cluster/gateway/proxy_client.hpp"
#include "cluster/protocol/messages.hpp"
#include "cluster/protocol/validate.hpp"
#include "cluster/security/access.hpp"
#include "cluster/trace/trace.hpp"

namespace cluster::gateway {

/// An HTTP request as the handler needs it, whatever transport brought it.
struct http_request {
  std::string method;  ///< e.g. "GET", "POST" (case-sensitive, as HTTP says)
  std::string target;  ///< raw path, optionally followed by `?query` (only `discard=1` counts)
  std::string body;
  std::string authorization;  ///< the `Authorization` header's value; empty when absent
  /// The `X-Gateway-Token` header's value: the bearer token where `Authorization` holds
  /// something else (a SigV4 signature for an AWS_IAM function URL); empty when absent.
  std::string gateway_token;
  /// The W3C `traceparent` header; empty when absent (the call then starts a trace).
  std::string traceparent;
};

/// An HTTP response whose body is always JSON (`content-type: application/json`).
struct http_response {
  unsigned status = 200;
  std::string body;
  /// Headers besides content-type, e.g. `allow` on a 405.
  std::vector<std::pair<std::string, std::string>> headers;
};

// `gateway.expose` and the bearer token's digest: the same rules as the proxy's Effect
// RPC listener (cluster/security/access.hpp).
using security::digest_of_token;
using security::expose_list;
using security::token_digest;

struct handler_options {
  /// Bodies larger than this are refused with 413 before any parsing.
  std::size_t max_body_bytes = 1024 * 1024;
  /// The decoded path segments are checked against these (InvalidRequest, 400) before any
  /// call: `cluster.max_id_bytes` and the fixed name bound.
  request_limits limits{};
  /// `gateway.bearer_token` as its digest; nullopt: requests need no token.
  std::optional<token_digest> bearer_token;
  /// `gateway.expose`. Everything here; the gateway's configuration defaults to the example
  /// plugins' types (gateway_config::expose).
  expose_list expose = expose_list::everything();
};

/// A JSON error response `{"error": error, "message": message}`.
http_response error_response(unsigned status, std::string_view error, std::string_view message);

/// HTTP status for a failed reply's code (200 for `ok`).
unsigned status_for(errc code);

/// What a request asks for: a cluster call, or (when `call` is empty) `response` right away.
struct route_result {
  std::optional<request_msg> call;
  http_response response;
};

/// Parses method, path and body into a cluster request; never touches the network. In order:
/// the bearer token (401 Unauthorized with `www-authenticate: Bearer`), the path and method
/// (404, 405), the percent-decoded segments, validated (validate_request: an entity id that
/// is not UTF-8, holds a NUL or is too long is 400 InvalidRequest), the exposure of the
/// type and RPC (403 Forbidden), then the body (413, 400 InvalidJson).
route_result route(const http_request& request, const handler_options& options = {});

/// Turns the proxy's reply into the HTTP response. A discarded call's acceptance is 202
/// `{"accepted":true}`.
http_response to_http_response(const reply_msg& reply, bool discarded = false);

/// Continues the call's trace (its traceparent, from the HTTP header) or starts one, sets
/// the trace id of log lines while `logged` lives, and returns the span of this hop when the
/// trace records; the call's traceparent then names that span as the parent.
std::optional<trace::span> trace_call(request_msg& call, std::string_view hop);
/// Ends a span of trace_call with the HTTP status it answered.
void finish_span(std::optional<trace::span>& span, unsigned status);

/// Decodes one percent-encoded path segment; nullopt when an escape is malformed.
std::optional<std::string> url_decode(std::string_view segment);

/// Routes a request, calls the cluster through `proxy` and maps the reply.
///
/// Holds a reference to `proxy`, which must outlive every `handle` in progress. Runs on the
/// proxy client's executor.
class handler {
 public:
  handler(proxy_client& proxy, handler_options options);

  /// Never throws; `timeout` bounds the cluster call (connecting included).
  /// Build the awaitable in its own statement (GCC 12 coroutine temporaries).
  /// A streaming RPC is refused here (400 StreamingNotSupported): only cluster-gateway serves
  /// streams, through `route` and its own writer.
  awaitable<http_response> handle(http_request request, milliseconds timeout);
  /// The call part of `handle`, for a request already routed (and known not to stream).
  awaitable<http_response> handle_routed(route_result routed, milliseconds timeout);

  proxy_client& proxy() { return proxy_; }

  const handler_options& options() const { return options_; }

 private:
  proxy_client& proxy_;
  handler_options options_;
};

}  // namespace cluster::gateway
