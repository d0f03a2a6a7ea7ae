#include "cluster/proxy/proxy.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "cluster/trace/trace.hpp"

namespace cluster::proxy {

std::vector<config_section> proxy_config::sections() {
  std::vector<config_section> sections;
  common.declare(sections);
  sections.emplace_back("proxy");
  common.declare_admin(sections.back());
  sections.back()
      .key("host", &host)
      .key("port", &port)
      .key("manager", &manager)
      .key("request_timeout_ms", &request_timeout)
      .key("effect_host", &effect_host)
      .key("effect_port", &effect_port)
      .key("effect_serialization", &effect_serialization)
      .key("effect_token", &effect_token)
      .key("effect_expose", &effect_expose)
      .key("effect_rpcs", &effect_rpcs);
  return sections;
}

namespace {

// docs/security.md "Permissions": every role but the manager may call through the proxy.
std::shared_ptr<const permissions> proxy_permissions() {
  const role_mask callers = mask_of(role::client, role::admin, role::proxy, role::runner);
  auto allowed = std::make_shared<permissions>(callers);
  allowed->allow(message_kind::request, callers)
      .allow(message_kind::get_status, callers)
      .allow(message_kind::interrupt, callers)
      .allow(message_kind::stream_ack, callers);
  return allowed;
}

/// The token file `clusterctl keys init` does not write but `scripts/dev` and deployments
/// may: one line, the token.
std::string read_token_file(const std::string& file) {
  std::ifstream in(file);
  std::string token;
  std::getline(in, token);
  while (!token.empty() && (token.back() == '\r' || token.back() == ' ')) token.pop_back();
  return token;
}

}  // namespace

effect_listener_options proxy::effect_options() const {
  effect_listener_options options;
  options.host = effect_host();
  options.port = config_.effect_port;
  auto framing = parse_effect_framing(config_.effect_serialization);
  if (!framing)
    throw config_error("proxy.effect_serialization: expected auto, ndjson or msgpack, got '" +
                       config_.effect_serialization + "'");
  options.framing = *framing;
  auto expose = security::expose_list::parse(config_.effect_expose, "proxy.effect_expose");
  if (!expose) throw config_error(expose.error().message);
  options.expose = std::move(expose).value();
  std::string token = config_.effect_token;
  const auto& security = config_.common.security;
  if (token.empty() && !security.credentials_dir.empty()) {
    const auto file = security.credentials_dir + "/effect.token";
    if (std::filesystem::exists(file)) token = read_token_file(file);
  }
  const bool authenticating =
      config_.common.security_prepared && config_.common.security_prepared->authenticate;
  if (!token.empty()) {
    options.token = security::digest_of_token(token);
  } else if (authenticating) {
    throw config_error(
        "proxy.effect_port is set but no token is: set proxy.effect_token (or write it to "
        "<security.credentials_dir>/effect.token); the Effect RPC listener needs one while "
        "components authenticate");
  }
  options.max_message_bytes = config_.common.max_frame_bytes;
  options.max_connections = config_.common.max_connections;
  options.max_in_flight = config_.common.max_in_flight;
  options.max_queued_bytes = config_.common.max_queued_bytes;
  options.request_timeout = config_.request_timeout;
  options.limits = config_.common.request_limits();
  return options;
}

proxy::proxy(asio::io_context& io, proxy_config config)
    : io_(io),
      config_(std::move(config)),
      server_(
          io,
          server_options{config_.host,
                         config_.port,
                         config_.common.max_connections,
                         config_.common.limits(),
                         {},
                         proxy_permissions()},
          [this](const connection_ptr& conn, envelope&& env) { on_message(conn, std::move(env)); }),
      router_(io, router_options{"proxy", "proxy", config_.common.limits()}),
      in_flight_(io.get_executor()),
      limits_(config_.common.request_limits()) {
  server_.on_disconnect = [this](const connection_ptr& conn) { caller_gone(conn); };
}

proxy::caller_state& proxy::state_of(const connection_ptr& conn) {
  if (!conn->attachment) conn->attachment = std::make_shared<caller_state>();
  return *static_cast<caller_state*>(conn->attachment.get());
}

routed_request* proxy::find_routed(const connection_ptr& conn, std::uint64_t id) {
  if (!conn->attachment) return nullptr;
  return static_cast<caller_state*>(conn->attachment.get())->routed.find(id);
}

void proxy::caller_gone(const connection_ptr& conn) {
  if (!conn->attachment) return;
  // Nobody waits for their replies: stop what runs for nothing. Persisted requests run on
  // (they are stored, and a retry with their key gets the outcome).
  for (auto* request : static_cast<caller_state*>(conn->attachment.get())->routed.all())
    if (!router_.is_persisted(request->request.entity_type, request->request.rpc))
      router_.interrupt(*request);
}

void proxy::start() {
  auto manager_address = parse_host_port(config_.manager);
  if (!manager_address)
    throw config_error("proxy.manager: expected host:port, got '" + config_.manager + "'");
  server_.listen();
  if (config_.effect_port != 0) {
    auto tags = effect_tags::make(config_.effect_rpcs);
    if (!tags) throw config_error(tags.error().message);
    effect_ = std::make_unique<effect_listener>(io_, router_, in_flight_, effect_options(),
                                                std::move(tags).value());
    effect_->listen();
    spdlog::info("proxy: Effect RPC on {}:{} ({})", effect_host(), effect_->port(),
                 config_.effect_serialization);
  }
  manager_client_options options;
  options.manager = *manager_address;
  options.hello = hello_msg{protocol_version, "proxy", "proxy"};
  options.limits = config_.common.limits();
  manager_ = std::make_unique<manager_client>(
      io_, options, [this](const assignment_snapshot& snapshot) { router_.update(snapshot); });
  manager_->start();
  spdlog::info("proxy listening on {}:{}", config_.host, server_.port());
}

void proxy::stop(std::function<void()> on_stopped) {
  if (on_stopped) on_stopped_.push_back(std::move(on_stopped));
  if (stopped_ && server_.connection_count() == 0) notify_stopped();
  if (stopping_) return;
  stopping_ = true;
  server_.stop_accepting();
  if (effect_) effect_->stop_accepting();
  if (manager_) manager_->stop();
  in_flight_.close([this] {
    // Every reply is queued: close each connection once it is written.
    stopped_ = true;
    server_.on_disconnect = [this](const connection_ptr& conn) {
      caller_gone(conn);
      if (server_.connection_count() == 0) notify_stopped();
    };
    server_.close_after_flush();
    if (effect_) effect_->close_after_flush();
    if (server_.connection_count() == 0) notify_stopped();
  });
}

void proxy::notify_stopped() {
  for (auto& callback : on_stopped_) asio::post(io_, std::move(callback));
  on_stopped_.clear();
}

void proxy::on_message(const connection_ptr& conn, envelope&& env) {
  switch (static_cast<message_kind>(env.kind)) {
    case message_kind::request: {
      auto request = env.as<request_msg>();
      if (!request) {
        conn->send_reply(
            env.id, reply_msg::failure(errc::invalid_request,
                                       "request has the wrong shape: " + request.error().message));
        return;
      }
      if (auto valid = validate_request(request.value(), limits_); !valid) {
        conn->send_reply(env.id, reply_msg::failure(std::move(valid).error()));
        return;
      }
      if (stopping_) {
        conn->send_reply(env.id, reply_msg::failure(errc::shutting_down, "proxy is stopping"));
        return;
      }
      if (conn->in_flight >= conn->limits().max_in_flight) {
        conn->send_reply(env.id,
                         reply_msg::failure(errc::too_many_requests,
                                            "too many requests in flight on this connection"));
        return;
      }
      forward(conn, env.id, std::move(request).value());
      return;
    }
    case message_kind::interrupt:
      if (auto* routed = find_routed(conn, env.id)) router_.interrupt(*routed);
      return;
    case message_kind::stream_ack: {
      auto ack = env.as<stream_ack_msg>();
      auto* routed = find_routed(conn, env.id);
      if (ack && routed) router_.ack(*routed, ack.value().credit);
      return;
    }
    case message_kind::get_status:
      // Thin clients ask the proxy; it answers from its latest snapshot.
      conn->send_reply(env.id, reply_msg::success(pack_bytes(router_.snapshot())));
      return;
    default:
      conn->send_reply(
          env.id, reply_msg::failure(errc::unknown_kind, "the proxy does not handle message kind " +
                                                             std::to_string(env.kind)));
  }
}

result<void> proxy::readiness() const {
  if (stopping_) return failure{errc::shutting_down, "stopping"};
  if (router_.snapshot().version == 0)
    return failure{errc::unavailable, "no assignment from the manager yet"};
  return success();
}

void proxy::forward(const connection_ptr& conn, std::uint64_t id, request_msg request) {
  const auto received = steady_clock::now();
  auto* series = request_metrics_.repeated(request.entity_type, request.rpc);
  if (series == nullptr) {
    const auto& types = router_.snapshot().entity_types;
    const auto type = std::find_if(types.begin(), types.end(), [&](const entity_type_info& t) {
      return t.name == request.entity_type;
    });
    series = type != types.end() && type->find_rpc(request.rpc) != nullptr
                 ? &request_metrics_.of(request.entity_type, request.rpc)
                 : &request_metrics_.unknown();
  }
  // A caller's trace is continued (the gateway and the Lambda start one per HTTP call); a
  // request without one stays without: starting traces here would cost every call.
  const trace::scoped_trace_id logged(trace::trace_id_of(request.traceparent));
  const auto span =
      trace::start_server_span(request.traceparent, "proxy", request.entity_type, request.rpc);
  if (span) request.traceparent = span->child_traceparent();
  ++conn->in_flight;
  const auto timeout = request.timeout_ms > 0
                           ? std::min(milliseconds(request.timeout_ms), config_.request_timeout * 6)
                           : config_.request_timeout;
  router_.route(
      std::move(request), received + timeout,
      [this, conn, id, series, received, span,
       hold = in_flight_.hold()](reply_msg&& reply) mutable {
        request_metrics_.record(*series, static_cast<std::uint32_t>(reply.code),
                                to_string(reply.code), steady_clock::now() - received);
        trace::finish_server_span(span, reply.ok() ? "" : to_string(reply.code));
        --conn->in_flight;
        conn->send_reply(id, reply);
        hold.release();
      },
      state_of(conn).routed, conn, id);
}

}  // namespace cluster::proxy
