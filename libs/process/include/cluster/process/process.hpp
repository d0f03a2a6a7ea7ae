#pragma once
// What every process's main() shares: command line, configuration, logging, signals, and
// the graceful stop. A main is one call:
//
//   int main(int argc, char** argv) {
//     return cluster::run_process<cluster::proxy::proxy>(argc, argv, "cluster-proxy");
//   }
//
// Thread: everything runs on the calling thread, which runs the process's one io_context.

#include <spdlog/spdlog.h>

#include <concepts>
#include <cstdio>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>

#include "cluster/net/asio.hpp"
#include "cluster/process/admin.hpp"
#include "cluster/process/config.hpp"
#include "cluster/process/settings.hpp"
#include "cluster/protocol/assert.hpp"
#include "cluster/trace/trace.hpp"

namespace cluster {

/// What `run_process` needs of an application object (runner, manager, proxy, gateway):
/// a config type with `common` settings and `sections()`, the role its key must prove
/// (`security_role`), `start()` (throws on a start-up
/// failure) and a graceful `stop(on_stopped)` that calls `on_stopped` exactly once, on the
/// io thread and never inside `stop`, when in-flight work has drained.
template <class App>
concept process_app = requires(App& app, typename App::config_type& config,
                               std::function<void()> on_stopped) {
  { config.sections() } -> std::same_as<std::vector<config_section>>;
  config.common.log_level;
  { App::security_role } -> std::convertible_to<role>;
  app.start();
  app.stop(std::move(on_stopped));
};

/// Per-process choices; every member has a default.
template <class App>
struct process_hooks {
  using config_type = typename App::config_type;
  /// Builds the application; default `App(io, config)` (required when that does not exist).
  std::function<std::unique_ptr<App>(asio::io_context&, const config_type&)> make;
  /// The logger's name; default the program name without "cluster-" (e.g. "proxy").
  std::function<std::string(const config_type&)> logger;
  /// How long a stop may take before the io_context is stopped anyway; default 5 s.
  std::function<milliseconds(const config_type&)> drain_timeout;
};

/// Loads `sections` from the command line, file and environment. Returns an exit code when
/// the process should end now: 0 after --help (usage and every key with its default and
/// variable on stdout), 2 for a bad command line or configuration (on stderr).
std::optional<int> configure_process(int argc, char** argv, const std::string& process_name,
                                     std::vector<config_section> sections);

/// Runs `io` on this thread until SIGTERM or SIGINT, then calls `stop(on_stopped)` and keeps
/// running until `on_stopped` runs or `drain_timeout` passes. Returns the exit code: 0 after
/// a signal, 1 when `io` ran out of work or threw.
int run_until_signal(asio::io_context& io,
                     const std::function<void(std::function<void()> on_stopped)>& stop,
                     milliseconds drain_timeout);

/// configure → logging → io_context → App → tracer and admin endpoint (when admin_port is set:
/// /metrics, /healthz, /readyz from App::readiness(), routes from
/// App::admin_routes(admin_endpoint&)) → start → run until a signal → stop → exit code (1 when the
/// configuration cannot be used or start() throws).
template <process_app App>
int run_process(int argc, char** argv, const std::string& process_name,
                process_hooks<App> hooks = {}) {
  typename App::config_type config;
  if (auto exit_code = configure_process(argc, argv, process_name, config.sections()))
    return *exit_code;
  std::string logger = process_name;
  if (logger.rfind("cluster-", 0) == 0) logger.erase(0, 8);
  if (hooks.logger) logger = hooks.logger(config);
  if (auto logging = setup_logging(logger, config.common.log_level, config.common.log_format);
      !logging) {
    std::fprintf(stderr, "%s: configuration error: %s\n", process_name.c_str(),
                 logging.error().message.c_str());
    return 2;
  }
  if (auto secured = config.common.prepare_security(App::security_role); !secured) {
    std::fprintf(stderr, "%s: configuration error: %s\n", process_name.c_str(),
                 secured.error().message.c_str());
    return 2;
  }
  try {
    asio::io_context io(1);
    std::unique_ptr<App> app;
    if (hooks.make) {
      app = hooks.make(io, config);
    } else if constexpr (std::is_constructible_v<App, asio::io_context&,
                                                 const typename App::config_type&>) {
      app = std::make_unique<App>(io, config);
    }
    CLUSTER_ASSERT(app != nullptr, "run_process: this App needs process_hooks::make");
    const auto& trace_config = config.common.trace;
    trace::default_tracer().start(
        io, {trace_config.service_name.empty() ? process_name : trace_config.service_name,
             trace_config.otlp_endpoint, trace_config.sample_ratio});
    std::unique_ptr<admin_endpoint> admin;
    if (config.common.admin.port != 0) {
      std::function<result<void>()> readiness;
      if constexpr (requires { app->readiness(); }) readiness = [&app] { return app->readiness(); };
      admin = std::make_unique<admin_endpoint>(io, config.common.admin, logger, readiness);
      if constexpr (requires { app->admin_routes(*admin); }) app->admin_routes(*admin);
      admin->start();
      spdlog::info("admin endpoint on http://{}", admin->address());
    }
    app->start();
    const int exit_code = run_until_signal(
        io,
        [&app, &admin](std::function<void()> on_stopped) {
          if (admin) admin->stopping();
          app->stop(std::move(on_stopped));
        },
        hooks.drain_timeout ? hooks.drain_timeout(config) : milliseconds(5000));
    trace::default_tracer().stop();
    return exit_code;
  } catch (const std::exception& e) {  // start-up failures: a bad address, a port in use
    spdlog::critical("{} failed to start: {}", process_name, e.what());
    return 1;
  }
}

}  // namespace cluster
