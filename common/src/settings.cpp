#include "cluster/common/settings.hpp"

#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

namespace cluster {

void common_settings::declare(std::vector<config_section>& sections) {
  sections.emplace_back("cluster");
  sections.back()
      .key("storage", &storage)
      .key("max_frame_bytes", &max_frame_bytes)
      .key("handshake_timeout_ms", &handshake_timeout);
  sections.emplace_back("log");
  sections.back().key("level", &log_level);
}

connection_limits common_settings::limits() const {
  connection_limits limits;
  limits.decode.max_frame_bytes = max_frame_bytes;
  limits.handshake_timeout = handshake_timeout;
  return limits;
}

void setup_logging(const std::string& name, const std::string& level) {
  const auto parsed = spdlog::level::from_str(level);
  if (parsed == spdlog::level::off && level != "off")
    throw config_error("log.level: unknown level '" + level + "'");
  auto logger = spdlog::stderr_color_mt(name);
  logger->set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%n] %v");
  logger->set_level(parsed);
  spdlog::set_default_logger(logger);
}

}  // namespace cluster
