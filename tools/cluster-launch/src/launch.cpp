#include "cluster/launch/launch.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <thread>

extern char** environ;

namespace cluster::launch {

namespace {

using clock = std::chrono::steady_clock;

std::string errno_text(int error) { return std::strerror(error); }

// Raw system calls: glibc 2.36's <sys/pidfd.h> declares the wrappers without C linkage.
// A pidfd for `pid`, or -1 when the process is gone (ESRCH) or pidfds are unavailable.
int open_pidfd(pid_t pid) {
  return pid > 0 ? static_cast<int>(::syscall(SYS_pidfd_open, pid, 0)) : -1;
}

int pidfd_signal(int fd, int signal) {
  return static_cast<int>(::syscall(SYS_pidfd_send_signal, fd, signal, nullptr, 0));
}

// Waits until `fd` (a pidfd) is readable, i.e. its process ended, or `deadline` passes.
bool wait_readable(int fd, clock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::ceil<milliseconds>(deadline - clock::now());
    pollfd entry{fd, POLLIN, 0};
    const int ready =
        ::poll(&entry, 1, static_cast<int>(std::max<milliseconds::rep>(left.count(), 0)));
    if (ready > 0) return true;
    if (ready == 0) return false;
    if (errno != EINTR) return false;
  }
}

// Alive and not a zombie, judged from /proc (the fallback when a pidfd cannot be had).
bool alive(pid_t pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
  const auto paren = text.rfind(')');
  return paren != std::string::npos && paren + 2 < text.size() && text[paren + 2] != 'Z';
}

int decode_status(int raw) {
  if (WIFEXITED(raw)) return WEXITSTATUS(raw);
  if (WIFSIGNALED(raw)) return 128 + WTERMSIG(raw);
  return -1;
}

}  // namespace

result<child> child::spawn(const spawn_options& options) {
  std::vector<std::string> argv_storage{options.program};
  argv_storage.insert(argv_storage.end(), options.args.begin(), options.args.end());
  std::vector<char*> argv;
  argv.reserve(argv_storage.size() + 1);
  for (auto& arg : argv_storage) argv.push_back(arg.data());
  argv.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  if (!options.log_file.empty()) {
    posix_spawn_file_actions_addopen(&actions, 1, options.log_file.c_str(),
                                     O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
  }
  // Inherited descriptors (a caller's lock file, test sockets) must not outlive the caller.
  posix_spawn_file_actions_addclosefrom_np(&actions, 3);

  posix_spawnattr_t attributes;
  posix_spawnattr_init(&attributes);
  sigset_t none, defaults;
  sigemptyset(&none);
  sigfillset(&defaults);
  posix_spawnattr_setsigmask(&attributes, &none);
  // A non-interactive shell starts background jobs with SIGINT and SIGQUIT ignored; the
  // servers must see the signals they are sent.
  posix_spawnattr_setsigdefault(&attributes, &defaults);
  short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
  if (options.new_session) flags |= POSIX_SPAWN_SETSID;
  posix_spawnattr_setflags(&attributes, flags);

  pid_t pid = -1;
  // glibc's posix_spawn reports a failed exec (missing file, no permission) as its result.
  const int rc =
      ::posix_spawn(&pid, options.program.c_str(), &actions, &attributes, argv.data(), environ);
  posix_spawnattr_destroy(&attributes);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0)
    return failure{errc::unavailable, "cannot start " + options.program + ": " + errno_text(rc)};
  return child(pid, open_pidfd(pid));
}

child::child(child&& other) noexcept
    : pid_(std::exchange(other.pid_, -1)),
      pidfd_(std::exchange(other.pidfd_, -1)),
      status_(other.status_) {}

child& child::operator=(child&& other) noexcept {
  if (this != &other) {
    if (pidfd_ >= 0) ::close(pidfd_);
    pid_ = std::exchange(other.pid_, -1);
    pidfd_ = std::exchange(other.pidfd_, -1);
    status_ = other.status_;
  }
  return *this;
}

child::~child() {
  if (pidfd_ >= 0) ::close(pidfd_);
}

bool child::reap() {
  if (status_) return true;
  if (pid_ <= 0) return true;
  int raw = 0;
  const pid_t done = ::waitpid(pid_, &raw, WNOHANG);
  if (done == pid_) {
    status_ = decode_status(raw);
    return true;
  }
  if (done < 0 && errno == ECHILD) {  // reaped elsewhere: ended, status unknown
    status_ = -1;
    return true;
  }
  return false;
}

bool child::running() { return !reap(); }

std::optional<int> child::wait(milliseconds timeout) {
  const auto deadline = clock::now() + timeout;
  while (!reap()) {
    if (clock::now() >= deadline) return std::nullopt;
    if (pidfd_ >= 0) {
      if (!wait_readable(pidfd_, deadline)) return reap() ? status_ : std::nullopt;
    } else {
      std::this_thread::sleep_for(milliseconds(10));  // no pidfd: nothing to wait on
    }
  }
  return status_;
}

std::optional<int> child::stop(int signal, milliseconds timeout) {
  if (signal != 0 && running()) {
    if (pidfd_ < 0 || pidfd_signal(pidfd_, signal) != 0) ::kill(pid_, signal);
  }
  return wait(timeout);
}

std::optional<std::vector<std::string>> command_line(pid_t pid) {
  if (pid <= 0 || !alive(pid)) return std::nullopt;
  std::ifstream file("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
  if (!file) return std::nullopt;
  const std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (text.empty()) return std::nullopt;  // kernel threads and exiting processes
  std::vector<std::string> argv;
  std::size_t start = 0;
  while (start < text.size()) {
    auto end = text.find('\0', start);
    if (end == std::string::npos) end = text.size();
    argv.emplace_back(text, start, end - start);
    start = end + 1;
  }
  return argv;
}

bool runs(pid_t pid, const std::vector<std::string>& argv) {
  if (argv.empty()) return false;
  const auto actual = command_line(pid);
  if (!actual || *actual != argv) return false;
  std::error_code error;
  auto exe = std::filesystem::read_symlink("/proc/" + std::to_string(pid) + "/exe", error).string();
  if (error) return false;
  // The binary was rebuilt (replaced) while the process ran.
  if (constexpr std::string_view deleted = " (deleted)"; exe.ends_with(deleted))
    exe.resize(exe.size() - deleted.size());
  const auto expected = std::filesystem::weakly_canonical(argv.front(), error);
  return !error && exe == expected.string();
}

bool wait_runs(pid_t pid, const std::vector<std::string>& argv, milliseconds timeout) {
  const auto deadline = clock::now() + timeout;
  for (;;) {
    if (runs(pid, argv)) return true;
    if (!alive(pid) || clock::now() >= deadline) return false;
    // The window lasts microseconds: there is no event to wait for, so look again soon.
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
}

std::vector<stop_outcome> stop_all(const std::vector<pid_t>& pids, int signal, milliseconds timeout,
                                   milliseconds kill_timeout) {
  std::vector<stop_outcome> outcomes(pids.size(), stop_outcome::exited);
  std::vector<int> fds(pids.size(), -1);
  std::vector<bool> watched(pids.size(), false);
  for (std::size_t i = 0; i < pids.size(); ++i) {
    fds[i] = open_pidfd(pids[i]);
    // ESRCH: already gone. Any other failure (no pidfds): fall back to kill(2) and /proc.
    watched[i] = fds[i] >= 0 || (errno != ESRCH && alive(pids[i]));
  }
  auto send = [&](std::size_t i, int sig) {
    if (fds[i] >= 0) {
      pidfd_signal(fds[i], sig);
    } else {
      ::kill(pids[i], sig);
    }
  };
  auto ended = [&](std::size_t i, clock::time_point deadline) {
    if (fds[i] >= 0) return wait_readable(fds[i], deadline);
    while (alive(pids[i])) {
      if (clock::now() >= deadline) return false;
      std::this_thread::sleep_for(milliseconds(20));
    }
    return true;
  };
  for (std::size_t i = 0; i < pids.size(); ++i)
    if (watched[i]) send(i, signal);
  const auto deadline = clock::now() + timeout;
  std::vector<std::size_t> lingering;
  for (std::size_t i = 0; i < pids.size(); ++i)
    if (watched[i] && !ended(i, deadline)) lingering.push_back(i);
  for (auto i : lingering) send(i, SIGKILL);
  const auto kill_deadline = clock::now() + kill_timeout;
  for (auto i : lingering)
    outcomes[i] = ended(i, kill_deadline) ? stop_outcome::killed : stop_outcome::survived;
  for (int fd : fds)
    if (fd >= 0) ::close(fd);
  return outcomes;
}

exit_watch::~exit_watch() {
  for (int fd : fds_)
    if (fd >= 0) ::close(fd);
}

void exit_watch::add(pid_t pid) {
  pids_.push_back(pid);
  fds_.push_back(open_pidfd(pid));
}

std::optional<std::size_t> exit_watch::wait_any(milliseconds timeout) {
  const auto deadline = clock::now() + timeout;
  for (;;) {
    std::vector<pollfd> entries;
    std::vector<std::size_t> polled;
    bool fallback = false;
    for (std::size_t i = 0; i < pids_.size(); ++i) {
      if (fds_[i] >= 0) {
        entries.push_back({fds_[i], POLLIN, 0});
        polled.push_back(i);
      } else if (!alive(pids_[i])) {
        return i;
      } else {
        fallback = true;  // alive without a pidfd: look again shortly
      }
    }
    auto left = std::chrono::ceil<milliseconds>(deadline - clock::now());
    if (fallback) left = std::min(left, milliseconds(50));
    const int ready = ::poll(entries.data(), entries.size(),
                             static_cast<int>(std::max<milliseconds::rep>(left.count(), 0)));
    if (ready > 0)
      for (std::size_t k = 0; k < entries.size(); ++k)
        if (entries[k].revents != 0) return polled[k];
    if (ready < 0 && errno != EINTR) return std::nullopt;
    if (clock::now() >= deadline) return std::nullopt;
  }
}

std::string describe_exit(int status) {
  if (status > 128 && status < 128 + NSIG) {
    const char* name = ::sigabbrev_np(status - 128);
    if (name != nullptr) return std::string("exit by SIG") + name;
    return "exit by signal " + std::to_string(status - 128);
  }
  if (status < 0) return "exit (status unknown)";
  return "exit with status " + std::to_string(status);
}

namespace {

std::string stamp() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%d %H:%M:%S", &local);
  return std::string("=== ") + text + ": ";
}

// Waits up to `deadline` for a stop signal on `signals` (a signalfd) or, with `pidfd` >= 0,
// for that process to end; the signal's number, or 0.
int wait_stop_or_exit(int signals, int pidfd, std::optional<clock::time_point> deadline) {
  for (;;) {
    int timeout_ms = -1;
    if (deadline) {
      const auto left = std::chrono::ceil<milliseconds>(*deadline - clock::now());
      timeout_ms = static_cast<int>(std::max<milliseconds::rep>(left.count(), 0));
    }
    pollfd entries[2] = {{signals, POLLIN, 0}, {pidfd, POLLIN, 0}};
    const int ready = ::poll(entries, pidfd >= 0 ? 2 : 1, timeout_ms);
    if (ready < 0 && errno == EINTR) continue;
    if (ready > 0 && entries[0].revents != 0) {
      signalfd_siginfo info{};
      if (::read(signals, &info, sizeof info) == static_cast<ssize_t>(sizeof info))
        return static_cast<int>(info.ssi_signo);
      continue;
    }
    return 0;  // the process ended, the time is up, or poll failed
  }
}

}  // namespace

int supervise(const spawn_options& program, const restart_policy& policy,
              const std::function<void(const supervised_state&)>& report) {
  sigset_t stops;
  sigemptyset(&stops);
  for (int signal : {SIGTERM, SIGINT, SIGHUP}) sigaddset(&stops, signal);
  ::sigprocmask(SIG_BLOCK, &stops, nullptr);
  const int signals = ::signalfd(-1, &stops, SFD_CLOEXEC);
  if (signals < 0) {
    std::cerr << stamp() << "cannot supervise: signalfd: " << errno_text(errno) << std::endl;
    return 1;
  }
  supervised_state state;
  milliseconds backoff = policy.first_backoff;
  int stop_signal = 0;
  for (bool first = true;; first = false) {
    auto started = child::spawn(program);
    if (!started && first) {
      std::cerr << stamp() << started.error().message << std::endl;
      ::close(signals);
      return 1;
    }
    if (!started) {
      state.last_exit = started.error().message;
      std::cerr << stamp() << "could not restart (" << state.last_exit << "); next try in "
                << backoff.count() << " ms" << std::endl;
    } else {
      auto& running = started.value();
      state.pid = running.pid();
      if (!first) {
        ++state.restarts;
        std::cerr << stamp() << "restarted after " << state.last_exit << " (restart "
                  << state.restarts << ")" << std::endl;
      }
      report(state);
      const auto began = clock::now();
      // No pidfd (very old kernels): look at the child every 50 ms.
      while (running.running()) {
        stop_signal = wait_stop_or_exit(
            signals, running.pidfd(),
            running.pidfd() >= 0
                ? std::nullopt
                : std::optional<clock::time_point>(clock::now() + milliseconds(50)));
        if (stop_signal != 0) break;
      }
      if (stop_signal != 0) {
        // A deliberate stop: pass it on and wait as long as the program takes (whoever
        // stops us escalates to SIGKILL for both).
        running.stop(stop_signal, std::chrono::hours(24 * 365));
        break;
      }
      const auto ran = std::chrono::duration_cast<milliseconds>(clock::now() - began);
      if (ran >= policy.reset_after) backoff = policy.first_backoff;
      state.pid = 0;
      state.last_exit = describe_exit(running.exit_status().value_or(-1));
      std::cerr << stamp() << state.last_exit << " after " << ran.count() << " ms; restarting in "
                << backoff.count() << " ms" << std::endl;
    }
    state.next_backoff = backoff;
    report(state);
    stop_signal = wait_stop_or_exit(signals, -1, clock::now() + backoff);
    if (stop_signal != 0) break;
    backoff = std::min(backoff * 2, policy.max_backoff);
  }
  state.pid = 0;
  state.next_backoff = milliseconds(0);
  report(state);
  ::close(signals);
  return 0;
}

result<void> rotate_log(const std::string& log_file) {
  std::error_code error;
  if (!std::filesystem::exists(log_file, error)) return success();
  std::filesystem::rename(log_file, log_file + ".1", error);
  if (error)
    return failure{errc::unavailable, "cannot rotate " + log_file + ": " + error.message()};
  return success();
}

}  // namespace cluster::launch
