#pragma once
// Settings every process shares: the `[cluster]` and `[log]` sections.

#include <string>

#include "cluster/common/config.hpp"
#include "cluster/common/connection.hpp"

namespace cluster {

struct common_settings {
  std::string storage = "memory";
  std::uint32_t max_frame_bytes = 8 * 1024 * 1024;
  milliseconds handshake_timeout{5000};
  std::string log_level = "info";

  /// Adds the `[cluster]` and `[log]` sections to `sections`.
  void declare(std::vector<config_section>& sections);
  connection_limits limits() const;
};

/// Configures spdlog's default logger for process `name` at `level`; throws config_error.
void setup_logging(const std::string& name, const std::string& level);

}  // namespace cluster
