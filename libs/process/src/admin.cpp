#include "cluster/process/admin.hpp"

#include "cluster/metrics/metrics.hpp"
#include "cluster/security/access.hpp"

namespace cluster {

admin_endpoint::admin_endpoint(asio::io_context& io, admin_settings settings, std::string process,
                               std::function<result<void>()> readiness)
    : io_(io),
      settings_(std::move(settings)),
      process_(std::move(process)),
      readiness_(std::move(readiness)),
      server_(io) {
  metrics::collect_process_metrics(metrics::default_registry());
  server_.route("/metrics", [](const http::request&) -> awaitable<http::response> {
    co_return http::response{
        200, "text/plain; version=0.0.4; charset=utf-8", metrics::default_registry().render(), {}};
  });
  server_.route("/healthz", [](const http::request&) -> awaitable<http::response> {
    co_return http::response{200, "text/plain; charset=utf-8", "ok\n", {}};
  });
  server_.route("/readyz", [this](const http::request&) -> awaitable<http::response> {
    if (stopping_) co_return http::response{503, "text/plain; charset=utf-8", "stopping\n", {}};
    const auto ready = readiness_ ? readiness_() : result<void>(success());
    if (!ready)
      co_return http::response{
          503, "text/plain; charset=utf-8", "not ready: " + ready.error().message + "\n", {}};
    co_return http::response{200, "text/plain; charset=utf-8", "ready\n", {}};
  });
  if (!settings_.token.empty()) {
    server_.guard([digest = security::digest_of_token(settings_.token), open = open_prefixes_](
                      const http::request& req) -> std::optional<http::response> {
      const std::string_view target(req.target().data(), req.target().size());
      const auto path = http::path_of(target);
      if (path == "/healthz" || path == "/readyz") return std::nullopt;
      for (const auto& prefix : *open)
        if (path == prefix || (path.size() > prefix.size() && path.rfind(prefix, 0) == 0 &&
                               path[prefix.size()] == '/'))
          return std::nullopt;
      std::string presented;
      if (auto it = req.find(boost::beast::http::field::authorization); it != req.end())
        if (auto token =
                security::bearer_token_of(std::string_view(it->value().data(), it->value().size())))
          presented = std::string(*token);
      if (presented.empty()) presented = http::query_value(target, "token");
      if (!presented.empty() && security::token_matches(presented, digest)) return std::nullopt;
      return http::response{
          401, "text/plain; charset=utf-8", "unauthorized\n", {{"WWW-Authenticate", "Bearer"}}};
    });
  }
}

admin_endpoint::~admin_endpoint() {
  *alive_ = false;
  server_.close();
}

void admin_endpoint::start() {
  server_.listen(settings_.host, settings_.port);
  asio::co_spawn(io_, probe_loop(), asio::detached);
}

std::string admin_endpoint::address() const {
  const auto endpoint = server_.local_endpoint();
  return endpoint.address().to_string() + ":" + std::to_string(endpoint.port());
}

awaitable<void> admin_endpoint::probe_loop() {
  // How late a 100 ms timer fires: what a handler that blocks the loop costs everyone else.
  auto& lag = metrics::default_registry().gauge_of(
      "cluster_event_loop_lag_seconds",
      "How late the event loop ran a 100 ms timer, last probe, in seconds.");
  const auto alive = alive_;
  while (*alive) {
    const auto before = steady_clock::now();
    if (!co_await sleep_for(milliseconds(100)) || !*alive) break;
    const auto late = steady_clock::now() - before - milliseconds(100);
    lag.set(std::chrono::duration<double>(late).count());
  }
}

}  // namespace cluster
