#include "cluster/host/plugin_watcher.hpp"

#include <spdlog/spdlog.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace cluster::host {

namespace {
constexpr std::uint32_t watched_events =
    IN_CLOSE_WRITE | IN_MOVED_TO | IN_DELETE | IN_MOVED_FROM | IN_MODIFY | IN_DELETE_SELF;
}

plugin_watcher::plugin_watcher(asio::io_context& io, milliseconds quiet, settled_handler on_settled)
    : io_(io), quiet_(quiet), on_settled_(std::move(on_settled)), buffer_(64 * 1024) {
  fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
  if (fd_ >= 0) stream_ = std::make_unique<asio::posix::stream_descriptor>(io_, fd_);
}

plugin_watcher::~plugin_watcher() { stop(); }

result<void> plugin_watcher::watch(const std::filesystem::path& dir, const std::string& file_name) {
  if (fd_ < 0) return failure{errc::unavailable, std::string("inotify: ") + std::strerror(errno)};
  const int wd = ::inotify_add_watch(fd_, dir.c_str(), watched_events | IN_ONLYDIR);
  if (wd < 0)
    return failure{errc::unavailable, "cannot watch " + dir.string() + ": " + std::strerror(errno)};
  auto& f = folders_[wd];  // the same folder twice gets the same descriptor
  f.dir = dir;
  if (file_name.empty()) {
    f.every = true;
  } else {
    f.only.insert(file_name);
  }
  spdlog::info("watching {} for {}", dir.string(),
               f.every ? std::string("plugin files") : "changes of " + file_name);
  return success();
}

void plugin_watcher::start() {
  if (stream_ && !stopped_) read();
}

void plugin_watcher::stop() {
  stopped_ = true;
  for (auto& [file, timer] : pending_) timer->cancel();
  pending_.clear();
  if (stream_) {
    error_code ignored;
    stream_->close(ignored);  // closes the inotify descriptor
    stream_.reset();
  } else if (fd_ >= 0) {
    ::close(fd_);
  }
  fd_ = -1;
}

bool plugin_watcher::wanted(const folder& f, const std::string& name) const {
  if (name.empty() || name.front() == '.') return false;
  if (std::filesystem::path(name).extension() != ".so") return false;
  return f.every || f.only.count(name) > 0;
}

std::vector<std::filesystem::path> plugin_watcher::scan() const {
  std::vector<std::filesystem::path> files;
  for (const auto& [wd, f] : folders_) {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(f.dir, ec))
      if (entry.is_regular_file(ec) && wanted(f, entry.path().filename().string()))
        files.push_back(entry.path());
  }
  return files;
}

void plugin_watcher::read() {
  stream_->async_read_some(asio::buffer(buffer_), [this](const error_code& ec, std::size_t size) {
    if (stopped_ || ec == asio::error::operation_aborted) return;
    if (ec) {
      spdlog::error(
          "reading plugin folder events failed ({}); plugin files are no longer "
          "watched",
          ec.message());
      return;
    }
    std::size_t at = 0;
    while (at + sizeof(inotify_event) <= size) {
      inotify_event event;
      std::memcpy(&event, buffer_.data() + at, sizeof event);
      const std::size_t next = at + sizeof(inotify_event) + event.len;
      if (next > size) break;  // the kernel writes whole events only
      std::string name;
      if (event.len > 0) name = std::string(buffer_.data() + at + sizeof(inotify_event));
      handle(event.wd, event.mask, name);
      at = next;
    }
    if (!stopped_) read();
  });
}

void plugin_watcher::handle(int wd, std::uint32_t mask, const std::string& name) {
  if (mask & IN_Q_OVERFLOW) {
    spdlog::warn("plugin folder events were dropped (inotify queue overflow); looking again");
    if (on_overflow) on_overflow();
    return;
  }
  auto it = folders_.find(wd);
  if (it == folders_.end()) return;
  if (mask & (IN_IGNORED | IN_DELETE_SELF)) {
    spdlog::warn("plugin folder {} is gone; no longer watched", it->second.dir.string());
    folders_.erase(it);
    return;
  }
  if (!wanted(it->second, name)) return;
  const auto file = it->second.dir / name;
  if (mask & IN_MODIFY) {
    // Being written: it counts once it is closed (IN_CLOSE_WRITE settles it again).
    if (auto pending = pending_.find(file); pending != pending_.end()) {
      pending->second->cancel();
      pending_.erase(pending);
    }
    return;
  }
  spdlog::debug("plugin file {}: {}", file.string(),
                (mask & IN_CLOSE_WRITE) ? "written"
                : (mask & IN_MOVED_TO)  ? "moved in"
                : (mask & IN_DELETE)    ? "deleted"
                                        : "moved away");
  settle(file);
}

void plugin_watcher::settle(const std::filesystem::path& file) {
  auto& timer = pending_[file];
  if (timer) {
    timer->expires_after(quiet_);  // cancels the earlier wait: quiet starts again
  } else {
    timer = std::make_unique<asio::steady_timer>(io_, quiet_);
  }
  timer->async_wait([this, file](const error_code& ec) {
    if (ec || stopped_) return;  // cancelled (a newer event, or stop): this may be gone
    pending_.erase(file);
    std::error_code exists_ec;
    const bool present = std::filesystem::is_regular_file(file, exists_ec);
    on_settled_(file, present);
  });
}

}  // namespace cluster::host
