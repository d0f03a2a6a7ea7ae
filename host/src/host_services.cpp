#include "cluster/host/host_services.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <memory>

namespace cluster::host {

void log_for_plugin(std::string_view entity_type, std::string_view entity_id, std::int32_t level,
                    const char* message) {
  const auto spd_level = level <= 0   ? spdlog::level::debug
                         : level == 1 ? spdlog::level::info
                         : level == 2 ? spdlog::level::warn
                                      : spdlog::level::err;
  spdlog::log(spd_level, "{}/{}: {}", entity_type, entity_id, message ? message : "");
}

std::int64_t unix_now_ms() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::int64_t monotonic_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             steady_clock::now().time_since_epoch())
      .count();
}

void fire_after(asio::io_context& io, std::int64_t delay_ms, void (*fire)(void*), void* user) {
  auto timer = std::make_shared<asio::steady_timer>(io);
  timer->expires_after(milliseconds(std::max<std::int64_t>(0, delay_ms)));
  timer->async_wait([timer, fire, user](const error_code&) { fire(user); });
}

void stop_signal::sleep(asio::io_context& io, std::int64_t delay_ms, void (*fire)(void*),
                        void* user) {
  if (requested_) delay_ms = 0;
  auto timer = std::make_shared<asio::steady_timer>(io);
  timer->expires_after(milliseconds(std::max<std::int64_t>(0, delay_ms)));
  // A cancelled wait (the stop) fires too: that is the point.
  timer->async_wait([timer, fire, user](const error_code&) { fire(user); });
  track(timer);
}

void stop_signal::track(const std::shared_ptr<asio::steady_timer>& timer) {
  if (requested_) {
    timer->cancel();
    return;
  }
  std::erase_if(sleeps_, [](const auto& weak) { return weak.expired(); });
  sleeps_.push_back(timer);
}

void stop_signal::request() {
  requested_ = true;
  for (auto& weak : sleeps_)
    if (auto timer = weak.lock()) timer->cancel();
  sleeps_.clear();
}

}  // namespace cluster::host
