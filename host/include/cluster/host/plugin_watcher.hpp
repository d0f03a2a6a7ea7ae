#pragma once
// Watches plugin folders (inotify, read through Asio on the runner's loop) and reports each
// `*.so` file once it has settled: written and closed (IN_CLOSE_WRITE) or renamed into the
// folder (IN_MOVED_TO), deleted or renamed away, then quiet for `quiet` (no further event
// for that file). Whether it is there at that moment decides what is reported, so a burst
// (an editor's save, `rm` then `mv`) is one report. Dotfiles and other extensions (a
// writer's temporary names) are ignored.
//
// Thread: the io_context's thread. Lifecycle: `watch` the folders, `start`, `stop` (or
// destroy) before the io_context goes.

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "cluster/net/asio.hpp"
#include "cluster/protocol/result.hpp"

namespace cluster::host {

class plugin_watcher {
 public:
  /// `present`: the file exists (a regular file) once it settled; false: it is gone.
  using settled_handler = std::function<void(const std::filesystem::path& file, bool present)>;

  plugin_watcher(asio::io_context& io, milliseconds quiet, settled_handler on_settled);
  ~plugin_watcher();
  plugin_watcher(const plugin_watcher&) = delete;
  plugin_watcher& operator=(const plugin_watcher&) = delete;

  /// Watches `dir` for every `*.so` file, or only for `file_name` in it (a file named in
  /// runner.plugins). A folder watched both ways watches every file.
  result<void> watch(const std::filesystem::path& dir, const std::string& file_name = {});
  void start();
  void stop();

  /// Runs when the kernel dropped events (its queue overflowed): the caller looks at every
  /// watched folder again (`rescan`).
  std::function<void()> on_overflow;
  /// Every `*.so` file the watched folders hold now (with the same filters).
  std::vector<std::filesystem::path> scan() const;

 private:
  struct folder {
    std::filesystem::path dir;
    std::set<std::string> only;  // empty: every *.so file
    bool every = false;
  };
  void read();
  void handle(int wd, std::uint32_t mask, const std::string& name);
  bool wanted(const folder& f, const std::string& name) const;
  void settle(const std::filesystem::path& file);

  asio::io_context& io_;
  milliseconds quiet_;
  settled_handler on_settled_;
  int fd_ = -1;
  std::unique_ptr<asio::posix::stream_descriptor> stream_;
  std::map<int, folder> folders_;  // by watch descriptor
  std::map<std::filesystem::path, std::unique_ptr<asio::steady_timer>> pending_;
  std::vector<char> buffer_;
  bool stopped_ = false;
};

}  // namespace cluster::host
