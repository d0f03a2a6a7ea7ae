#pragma once
// The one HTTP ⇄ entity RPC mapping, shared by `cluster-gateway` and the Lambda bootstrap.
//
//   GET  /                                  → Greeter/Test/Greet {"name":"John"} (the seed call)
//   POST /<EntityType>/<entityId>/<Rpc>     → that RPC with the JSON body (empty body = {})
//
// Replies are JSON; errors are always `{"error": "<Name>", "message": "..."}` with a status
// that says whose fault it was (see `status_for`). Payloads travel as MessagePack,
// converted from and to JSON with nlohmann-json.

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cluster/gateway/proxy_client.hpp"
#include "cluster/protocol/messages.hpp"
#include "cluster/protocol/validate.hpp"

namespace cluster::gateway {

/// An HTTP request as the handler needs it, whatever transport brought it.
struct http_request {
  std::string method;  ///< e.g. "GET", "POST" (case-sensitive, as HTTP says)
  std::string target;  ///< raw path, optionally followed by `?query` (ignored)
  std::string body;
};

/// An HTTP response whose body is always JSON (`content-type: application/json`).
struct http_response {
  unsigned status = 200;
  std::string body;
  /// Headers besides content-type, e.g. `allow` on a 405.
  std::vector<std::pair<std::string, std::string>> headers;
};

struct handler_options {
  /// Bodies larger than this are refused with 413 before any parsing.
  std::size_t max_body_bytes = 1024 * 1024;
  /// The decoded path segments are checked against these (InvalidRequest, 400) before any
  /// call: `cluster.max_id_bytes` and the fixed name bound.
  request_limits limits{};
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

/// Parses method, path and body into a cluster request; never touches the network. The path
/// segments are percent-decoded and then validated (validate_request): an entity id that is
/// not UTF-8, holds a NUL or is too long is answered 400 InvalidRequest here.
route_result route(const http_request& request, const handler_options& options = {});

/// Turns the proxy's reply into the HTTP response.
http_response to_http_response(const reply_msg& reply);

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
  awaitable<http_response> handle(http_request request, milliseconds timeout);

  const handler_options& options() const { return options_; }

 private:
  proxy_client& proxy_;
  handler_options options_;
};

}  // namespace cluster::gateway
