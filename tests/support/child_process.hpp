#pragma once
// Real child processes for multi-process tests: spawned with their output in a file,
// ended by PID (SIGTERM, then SIGKILL if they linger) when the object goes away. Built on
// cluster_launch, the supervisor scripts/dev uses through the cluster-launch tool.

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cluster/launch/launch.hpp"

namespace cluster::testing {

class child_process {
 public:
  /// Starts `program`; throws std::runtime_error (with the reason) if it cannot be executed.
  child_process(const std::string& program, const std::vector<std::string>& args,
                const std::string& log_file);
  ~child_process();
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;

  pid_t pid() const { return child_.pid(); }
  bool running() { return child_.running(); }
  /// Sends `signal` (0: none); returns the exit status if the process ended within `timeout`.
  std::optional<int> stop(int signal, std::chrono::milliseconds timeout) {
    return child_.stop(signal, timeout);
  }

 private:
  launch::child child_;
};

/// Runs a command to completion; its standard output, and its exit status in `status`.
std::string run_command(const std::string& command, int& status);

/// A loopback port that was free a moment ago.
std::uint16_t free_port();

}  // namespace cluster::testing
