#include "cluster/host/handler_watch.hpp"

#include <spdlog/spdlog.h>

#include <cstdlib>
#include <cstring>

#include "cluster/host/host_services.hpp"

namespace cluster::host {

handler_watch::handler_watch(std::chrono::milliseconds timeout) : timeout_(timeout) {
  if (enabled()) thread_ = std::thread([this] { watch(); });
}

handler_watch::~handler_watch() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  stop_.notify_all();
  thread_.join();
}

void handler_watch::enter(std::string_view type, std::string_view id, std::string_view rpc) {
  if (!enabled()) return;
  // "<type>/<id> <rpc>", cut to the buffer.
  std::size_t at = 0;
  const auto put = [&](std::string_view part) {
    const std::size_t n = std::min(part.size(), sizeof(label_) - 1 - at);
    std::memcpy(label_ + at, part.data(), n);
    at += n;
  };
  put(type);
  put("/");
  put(id);
  put(" ");
  put(rpc);
  label_[at] = '\0';
  since_ns_.store(monotonic_ns(), std::memory_order_release);
}

void handler_watch::watch() {
  const auto period =
      std::clamp(timeout_ / 10, std::chrono::milliseconds(10), std::chrono::milliseconds(500));
  const auto limit = std::chrono::nanoseconds(timeout_).count();
  std::unique_lock lock(mutex_);
  std::int64_t last_wake = monotonic_ns();
  std::int64_t resumed = 0;  // when the process last came back from a stop (SIGSTOP, a VM pause)
  while (!stop_.wait_for(lock, period, [this] { return stopping_; })) {
    const std::int64_t now = monotonic_ns();
    // A wake-up far later than asked for: the whole process was stopped, the handler too.
    // Its time counts from the resumption.
    if (now - last_wake > 2 * std::chrono::nanoseconds(period).count() + 50'000'000) resumed = now;
    last_wake = now;
    const std::int64_t since = since_ns_.load(std::memory_order_acquire);
    if (since == 0 || now - std::max(since, resumed) <= limit) continue;
    spdlog::critical(
        "{} ran past runner.handler_timeout_ms ({} ms) on the runner's thread; the runner "
        "stops itself (runner.isolation = \"process\" would stop only the plugin's process)",
        label_, timeout_.count());
    spdlog::default_logger()->flush();
    std::abort();
  }
}

}  // namespace cluster::host
