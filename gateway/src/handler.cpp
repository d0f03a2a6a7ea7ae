#include "cluster/gateway/handler.hpp"

#include <nlohmann/json.hpp>

namespace cluster::gateway {

namespace {

using json = nlohmann::json;

// The call the seed's `curl /` makes, kept here so GET / works against any cluster
// that has the example Greeter plugin.
request_msg seed_call() {
  request_msg request;
  request.entity_type = "Greeter";
  request.entity_id = "Test";
  request.rpc = "Greet";
  const auto packed = json::to_msgpack(json{{"name", "John"}});
  request.payload.assign(packed.begin(), packed.end());
  return request;
}

route_result answer(http_response response) {
  route_result result;
  result.response = std::move(response);
  return result;
}

http_response method_not_allowed(std::string_view method, std::string_view allowed) {
  auto response =
      error_response(405, "MethodNotAllowed",
                     std::string(method) + " is not allowed here; use " + std::string(allowed));
  response.headers.emplace_back("allow", std::string(allowed));
  return response;
}

std::vector<std::string_view> split_path(std::string_view path) {
  std::vector<std::string_view> segments;
  std::size_t start = 1;  // the path starts with '/'
  while (start <= path.size()) {
    const auto slash = path.find('/', start);
    const auto end = slash == std::string_view::npos ? path.size() : slash;
    segments.push_back(path.substr(start, end - start));
    start = end + 1;
  }
  return segments;
}

bool is_blank(std::string_view text) {
  return text.find_first_not_of(" \t\r\n") == std::string_view::npos;
}

http_response unauthorized(std::string_view message, std::string_view challenge) {
  auto response = error_response(401, "Unauthorized", message);
  response.headers.emplace_back("www-authenticate", std::string(challenge));
  return response;
}

std::string_view trimmed(std::string_view text) {
  while (!text.empty() && (text.front() == ' ' || text.front() == '\t')) text.remove_prefix(1);
  while (!text.empty() && (text.back() == ' ' || text.back() == '\t')) text.remove_suffix(1);
  return text;
}

// Checks `Authorization: Bearer <token>` (the scheme in any case, RFC 7235), or, when the
// Authorization header carries something else (a SigV4 signature behind an AWS_IAM function
// URL), `X-Gateway-Token: <token>`, against the configured token's digest (in constant time:
// security::token_matches). The token itself is never logged nor echoed.
std::optional<http_response> refuse_without_token(const http_request& request,
                                                  const token_digest& expected) {
  const auto bearer = security::bearer_token_of(request.authorization);
  if (!bearer && request.gateway_token.empty())
    return unauthorized(
        "this gateway needs the header 'Authorization: Bearer <token>' (or 'X-Gateway-Token: "
        "<token>' beside another Authorization)",
        "Bearer");
  const auto token = bearer ? *bearer : trimmed(request.gateway_token);
  if (!security::token_matches(token, expected))
    return unauthorized("the bearer token is not valid", "Bearer error=\"invalid_token\"");
  return std::nullopt;
}

http_response not_exposed(std::string_view type, std::string_view rpc) {
  return error_response(
      403, "Forbidden",
      std::string(type) + "/" + std::string(rpc) + " is not exposed to HTTP (gateway.expose)");
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// `?discard=1` (or `discard=true`) among the query's parameters.
bool wants_discard(std::string_view target) {
  const auto question = target.find('?');
  if (question == std::string_view::npos) return false;
  auto query = target.substr(question + 1);
  while (!query.empty()) {
    const auto amp = query.find('&');
    const auto param = query.substr(0, amp);
    if (param == "discard=1" || param == "discard=true") return true;
    if (amp == std::string_view::npos) break;
    query.remove_prefix(amp + 1);
  }
  return false;
}

}  // namespace

http_response error_response(unsigned status, std::string_view error, std::string_view message) {
  http_response response;
  response.status = status;
  // Replace invalid UTF-8 (a path segment, an error from elsewhere) instead of throwing.
  response.body = json{{"error", error}, {"message", message}}.dump(-1, ' ', false,
                                                                    json::error_handler_t::replace);
  return response;
}

unsigned status_for(errc code) {
  switch (code) {
    case errc::ok:
      return 200;
    case errc::unknown_entity_type:
    case errc::unknown_rpc:
      return 404;
    case errc::bad_payload:
    case errc::invalid_request:
      return 400;
    case errc::application_error:
      return 422;
    case errc::frame_too_large:
      return 413;
    case errc::mailbox_full:
    case errc::too_many_requests:
      return 429;
    case errc::defect:
      return 500;
    case errc::cancelled:
      return 499;  // the caller went away (nginx's "client closed request")
    case errc::not_owner:
    case errc::deadline_exceeded:
    case errc::no_runner:
    case errc::unavailable:
    case errc::shutting_down:
    case errc::storage_error:
    case errc::state_conflict:  // runners answer NotOwner for it; retriable all the same
      return 503;
    case errc::malformed_frame:
    case errc::unsupported_version:
    case errc::unknown_kind:
    case errc::handshake_required:
    // The proxy refused this gateway's own cluster credentials: a deployment error.
    case errc::unauthorized:
    case errc::forbidden:
      // The proxy and this process disagree about the protocol: not the caller's fault.
      return 502;
  }
  return 502;
}

std::optional<std::string> url_decode(std::string_view segment) {
  std::string out;
  out.reserve(segment.size());
  for (std::size_t i = 0; i < segment.size(); ++i) {
    if (segment[i] != '%') {
      out.push_back(segment[i]);
      continue;
    }
    if (i + 2 >= segment.size()) return std::nullopt;
    const int high = hex_value(segment[i + 1]);
    const int low = hex_value(segment[i + 2]);
    if (high < 0 || low < 0) return std::nullopt;
    out.push_back(static_cast<char>(high * 16 + low));
    i += 2;
  }
  return out;
}

route_result route(const http_request& request, const handler_options& options) {
  if (options.bearer_token)
    if (auto refused = refuse_without_token(request, *options.bearer_token))
      return answer(std::move(*refused));
  std::string_view path = request.target;
  path = path.substr(0, path.find('?'));
  if (path.empty() || path.front() != '/')
    return answer(error_response(404, "NotFound", "no route for '" + std::string(path) + "'"));

  if (path == "/") {
    if (request.method != "GET") return answer(method_not_allowed(request.method, "GET"));
    route_result result;
    result.call = seed_call();
    result.call->traceparent = request.traceparent;
    if (!options.expose.allows(result.call->entity_type, result.call->rpc))
      return answer(not_exposed(result.call->entity_type, result.call->rpc));
    return result;
  }

  const auto segments = split_path(path);
  bool well_formed = segments.size() == 3;
  for (const auto segment : segments) well_formed = well_formed && !segment.empty();
  if (!well_formed)
    return answer(error_response(
        404, "NotFound",
        "no route for '" + std::string(path) + "'; use POST /<EntityType>/<entityId>/<Rpc>"));
  if (request.method != "POST") return answer(method_not_allowed(request.method, "POST"));

  std::optional<std::string> parts[3];
  for (std::size_t i = 0; i < 3; ++i) {
    parts[i] = url_decode(segments[i]);
    if (!parts[i])
      return answer(error_response(400, "BadRequest",
                                   "malformed percent-encoding in '" + std::string(path) + "'"));
  }
  route_result result;
  result.call.emplace();
  result.call->entity_type = std::move(*parts[0]);
  result.call->entity_id = std::move(*parts[1]);
  result.call->rpc = std::move(*parts[2]);
  // Decoded first: %FF is one invalid byte, answered here rather than by the cluster.
  if (auto valid = validate_request(*result.call, options.limits); !valid)
    return answer(error_response(400, to_string(errc::invalid_request), valid.error().message));
  if (!options.expose.allows(result.call->entity_type, result.call->rpc))
    return answer(not_exposed(result.call->entity_type, result.call->rpc));
  if (request.body.size() > options.max_body_bytes)
    return answer(
        error_response(413, "PayloadTooLarge",
                       "the body exceeds " + std::to_string(options.max_body_bytes) + " bytes"));
  json payload = json::object();
  if (!is_blank(request.body)) {
    // The parser itself is iterative, but converting a tree to MessagePack recurses: deeper
    // bodies are refused rather than allowed to exhaust the stack.
    constexpr int max_json_depth = 64;
    bool too_deep = false;
    const json::parser_callback_t limit_depth = [&too_deep](int depth, json::parse_event_t, json&) {
      if (depth <= max_json_depth) return true;
      too_deep = true;
      return false;
    };
    payload = json::parse(request.body, limit_depth, false);
    if (too_deep)
      return answer(error_response(
          400, "InvalidJson",
          "the request body nests deeper than " + std::to_string(max_json_depth) + " levels"));
    if (payload.is_discarded())
      return answer(error_response(400, "InvalidJson", "the request body is not valid JSON"));
  }

  const auto packed = json::to_msgpack(payload);
  result.call->payload.assign(packed.begin(), packed.end());
  result.call->discard = wants_discard(request.target);
  result.call->traceparent = request.traceparent;
  return result;
}

std::optional<trace::span> trace_call(request_msg& call, std::string_view hop) {
  auto& tracer = trace::default_tracer();
  const auto incoming = trace::parse(call.traceparent);
  const auto parent = incoming ? *incoming : trace::start_trace(tracer.sample_ratio());
  auto span = tracer.start_span(parent, std::string(hop) + " " + call.entity_type + "." + call.rpc,
                                trace::span_kind::server);
  if (span) {
    span->attributes.emplace_back("cluster.entity_type", call.entity_type);
    span->attributes.emplace_back("cluster.rpc", call.rpc);
    call.traceparent = span->child_traceparent();
  } else {
    call.traceparent = parent.traceparent();
  }
  return span;
}

void finish_span(std::optional<trace::span>& span, unsigned status) {
  if (!span) return;
  span->attributes.emplace_back("http.response.status_code", std::to_string(status));
  span->error = status >= 500;
  trace::default_tracer().finish(std::move(*span));
  span.reset();
}

http_response to_http_response(const reply_msg& reply, bool discarded) {
  if (discarded && reply.ok()) return http_response{202, R"({"accepted":true})", {}};
  if (!reply.ok()) {
    const std::string name = reply.error.empty() ? std::string(to_string(reply.code)) : reply.error;
    auto response = error_response(status_for(reply.code), name, reply.message);
    if (reply.code == errc::application_error && !reply.payload.empty()) {
      // Typed application errors may carry details; pass them on when they are MessagePack.
      auto details = json::from_msgpack(reply.payload, true, false);
      if (!details.is_discarded()) {
        auto body = json::parse(response.body);
        body["details"] = std::move(details);
        response.body = body.dump(-1, ' ', false, json::error_handler_t::replace);
      }
    }
    return response;
  }
  http_response response;
  if (reply.payload.empty()) {
    response.body = "null";
    return response;
  }
  const auto value = json::from_msgpack(reply.payload, true, false);
  if (value.is_discarded())
    return error_response(502, "BadReply", "the entity's reply is not valid MessagePack");
  // MessagePack strings need not be UTF-8; JSON text must be.
  response.body = value.dump(-1, ' ', false, json::error_handler_t::replace);
  return response;
}

handler::handler(proxy_client& proxy, handler_options options) : proxy_(proxy), options_(options) {}

awaitable<http_response> handler::handle(http_request request, milliseconds timeout) {
  auto routed = route(request, options_);
  if (!routed.call) co_return std::move(routed.response);
  if (timeout > milliseconds(0)) {
    auto streams = proxy_.streams(*routed.call, timeout);
    if (co_await std::move(streams))
      co_return error_response(400, "StreamingNotSupported",
                               routed.call->entity_type + "/" + routed.call->rpc +
                                   " streams its reply; call it through cluster-gateway");
  }
  auto call = handle_routed(std::move(routed), timeout);
  co_return co_await std::move(call);
}

awaitable<http_response> handler::handle_routed(route_result routed, milliseconds timeout) {
  // Refused before any call (404, 405, 401, ...): its answer is already made.
  if (!routed.call) co_return std::move(routed.response);
  if (timeout <= milliseconds(0))
    co_return error_response(503, "DeadlineExceeded", "no time left to call the cluster");
  const bool discarded = routed.call->discard;
  auto span = trace_call(*routed.call, "gateway");
  const trace::scoped_trace_id logged(trace::trace_id_of(routed.call->traceparent));
  auto call = proxy_.call(std::move(*routed.call), timeout);
  const auto reply = co_await std::move(call);
  auto response = to_http_response(reply, discarded);
  finish_span(span, response.status);
  co_return response;
}

}  // namespace cluster::gateway
