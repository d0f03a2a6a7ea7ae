#pragma once
// Bounds the time one plugin callback may run on the runner's thread (isolation "none").
//
// A handler that never returns holds the runner's only thread: nothing else runs, the
// manager moves the shards away and the runner stays frozen. With no process to kill but
// its own, the runner ends itself (after logging which handler did it), so that a
// supervisor (ECS, scripts/dev) restarts it and the message's attempt is counted. Run
// plugins with runner.isolation = "process" to lose only the plugin's process instead.
//
// Thread: `enter`/`leave` on the runner's thread (two relaxed stores and a copy of the
// label); the watching thread only reads.

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string_view>
#include <thread>

namespace cluster::host {

class handler_watch {
 public:
  /// `timeout` 0: watches nothing and starts no thread.
  explicit handler_watch(std::chrono::milliseconds timeout);
  ~handler_watch();
  handler_watch(const handler_watch&) = delete;
  handler_watch& operator=(const handler_watch&) = delete;

  bool enabled() const { return timeout_.count() > 0; }
  /// Plugin code starts running for "<type>/<id> <rpc>".
  void enter(std::string_view type, std::string_view id, std::string_view rpc);
  void leave() { since_ns_.store(0, std::memory_order_release); }

 private:
  void watch();

  std::chrono::milliseconds timeout_;
  std::atomic<std::int64_t> since_ns_{0};  // 0: outside plugin code
  // Written before since_ns_ is set; read only once the handler has been stuck for the whole
  // timeout, when nothing writes it.
  char label_[256] = {};
  std::mutex mutex_;
  std::condition_variable stop_;
  bool stopping_ = false;
  std::thread thread_;
};

}  // namespace cluster::host
