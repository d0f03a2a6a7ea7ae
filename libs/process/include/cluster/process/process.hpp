#pragma once
// What every process's main() shares: command line, configuration, logging, signals.

#include <functional>
#include <optional>
#include <string>

#include "cluster/net/asio.hpp"
#include "cluster/process/config.hpp"

namespace cluster {

/// Loads `sections` from the command line, file and environment and sets up logging.
/// Returns an exit code when the process should end now (--help, bad configuration).
std::optional<int> configure_process(int argc, char** argv, const std::string& process_name,
                                     std::vector<config_section> sections);

/// Runs `io` on this thread until SIGTERM or SIGINT, then calls `stop` and keeps running
/// until `drained()` holds or `drain_timeout` passes. Returns the process exit code.
int run_until_signal(asio::io_context& io, const std::function<void()>& stop,
                     const std::function<bool()>& drained,
                     milliseconds drain_timeout = milliseconds(5000));

}  // namespace cluster
