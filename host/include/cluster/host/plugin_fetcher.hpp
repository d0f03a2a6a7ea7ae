#pragma once
// Fetches the plugins stored in the cluster (clusterctl plugin push) into the runner's
// plugin cache, where the runner's watcher loads them.
//
// On every assignment snapshot the runner hands over `pushed_plugins`. For each one this
// runner does not hold at that sha256, the fetcher asks the manager for its bytes
// (fetch_plugin, in chunks, over a connection of its own), checks the sha256, writes
// `<cache_dir>/incoming/<name>.tmp` and renames it to `<cache_dir>/pushed/<name>.so` (a
// complete file appears at once). A file in `pushed/` the snapshot no longer lists is
// deleted (the runner drains and unloads it). Failures are logged and retried with backoff.
//
// Lifecycle: created by the runner at start, `update` on every snapshot, `stop` on the
// runner's stop. Single-threaded (the runner's io_context); the work runs in one coroutine
// that keeps the fetcher's state alive until it ends.

#include <filesystem>
#include <memory>

#include "cluster/net/connection.hpp"

namespace cluster::host {

struct plugin_fetcher_options {
  std::filesystem::path cache_dir;  ///< incoming/ and pushed/ beneath it
  host_port manager;
  hello_msg hello;  ///< role runner
  connection_limits limits;
  milliseconds call_timeout{10000};  ///< connecting, and each chunk
  milliseconds retry_min{100};
  milliseconds retry_max{5000};
};

class plugin_fetcher {
 public:
  plugin_fetcher(asio::io_context& io, plugin_fetcher_options options);
  ~plugin_fetcher();
  plugin_fetcher(const plugin_fetcher&) = delete;
  plugin_fetcher& operator=(const plugin_fetcher&) = delete;

  /// The plugins the cluster stores now (the latest snapshot's pushed_plugins). Nothing is
  /// deleted before the first call.
  void update(const std::vector<stored_plugin>& pushed);
  /// Ends the work: a fetch in progress is abandoned (its .tmp stays until the next one).
  void stop();

  /// Files written to pushed/ since the start (tests and logs).
  std::size_t fetched() const;
  /// The last failure of a fetch, empty after a success.
  std::string last_error() const;

  struct state;

 private:
  std::shared_ptr<state> state_;
};

}  // namespace cluster::host
