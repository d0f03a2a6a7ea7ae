#pragma once
// The services of cluster_host_api that do not depend on where the entity runs: logging,
// the clock and timers. The runner's entity host (isolation "none") and the plugin host
// (isolation "process") both implement the API with these, so a plugin sees the same
// behaviour in either mode.
//
// Thread: the calling io_context's thread.

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "cluster/net/asio.hpp"

namespace cluster::host {

/// Logs a plugin's message as "<type>/<id>: <message>" at the ABI's level (0 debug, 1 info,
/// 2 warn, 3 error).
void log_for_plugin(std::string_view entity_type, std::string_view entity_id, std::int32_t level,
                    const char* message);

/// Unix time in milliseconds.
std::int64_t unix_now_ms();

/// steady_clock (CLOCK_MONOTONIC: the same in every process) in nanoseconds, for timestamps
/// shared between threads or processes as plain integers.
std::int64_t monotonic_ns();

/// Runs `fire(user)` after `delay_ms` (negative: 0) on `io`, never inside this call.
void fire_after(asio::io_context& io, std::int64_t delay_ms, void (*fire)(void*), void* user);

/// One entity's stop request (cluster_host_api::stop_requested) and the sleeps it cuts
/// short: once requested, pending sleeps fire at once and new ones fire without waiting, so
/// a singleton's run notices the stop without waiting out its pause. The timers own
/// themselves; this keeps weak references only, so it may go before they fire.
class stop_signal {
 public:
  bool requested() const { return requested_; }
  /// `fire_after`, but at once when a stop is (or becomes) requested.
  void sleep(asio::io_context& io, std::int64_t delay_ms, void (*fire)(void*), void* user);
  /// Cuts `timer` short (cancels its wait) on a stop: at once when one is requested. For a
  /// sleep that more than one signal ends (a stop of its entity, a cancel of its request).
  void track(const std::shared_ptr<asio::steady_timer>& timer);
  /// Sets the request and fires the pending sleeps (posted, never inside this call).
  void request();
  /// A new run starts: no stop requested.
  void reset() { requested_ = false; }

 private:
  bool requested_ = false;
  std::vector<std::weak_ptr<asio::steady_timer>> sleeps_;
};

}  // namespace cluster::host
