#pragma once
// Process supervision, one implementation for scripts/dev (through the cluster-launch tool)
// and the multi-process tests (linked directly): start a program with its output appended
// to a log, tell whether a PID is still the program that was started, stop it with a signal
// and SIGKILL after a timeout. Exits are waited for on a pidfd (poll(2) wakes up when the
// process ends), not by polling /proc; signals go through the same pidfd, so a PID that was
// reused in between is never signalled.
//
// Not thread-safe per object; a `child` belongs to the thread that uses it.

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "cluster/protocol/result.hpp"

namespace cluster::launch {

using std::chrono::milliseconds;

struct spawn_options {
  std::string program;            ///< path of the executable (not searched in PATH)
  std::vector<std::string> args;  ///< argv[1...]
  std::string log_file;           ///< stdout and stderr are appended here; empty: inherited
  bool new_session = false;       ///< setsid(): no controlling terminal, its own process group
};

/// A process this one started. Its exit status is collected when it ends; the destructor
/// only releases the handle (the owner decides whether to stop it first).
class child {
 public:
  /// Starts `options.program`; fails (with errno's text) if it cannot be executed. Standard
  /// input is /dev/null, descriptors above 2 are closed, signal dispositions are defaults.
  static result<child> spawn(const spawn_options& options);

  child(child&& other) noexcept;
  child& operator=(child&& other) noexcept;
  child(const child&) = delete;
  child& operator=(const child&) = delete;
  ~child();

  pid_t pid() const { return pid_; }
  /// Does not block: false once the process ended (its status is then `exit_status()`).
  bool running();
  /// Waits up to `timeout` for the process to end; its exit status (128 + signal when a
  /// signal ended it), or nullopt while it still runs.
  std::optional<int> wait(milliseconds timeout);
  /// Sends `signal` (0: none) if it still runs, then `wait(timeout)`.
  std::optional<int> stop(int signal, milliseconds timeout);
  std::optional<int> exit_status() const { return status_; }
  /// Readable in poll(2) once the process ended; -1 without pidfds.
  int pidfd() const { return pidfd_; }

 private:
  child(pid_t pid, int pidfd) : pid_(pid), pidfd_(pidfd) {}
  bool reap();

  pid_t pid_ = -1;
  int pidfd_ = -1;
  std::optional<int> status_;
};

/// The command line (argv) of a live process, or nullopt when there is no such process or
/// it is a zombie (ended, not yet reaped).
std::optional<std::vector<std::string>> command_line(pid_t pid);

/// True if `pid` is alive and runs `argv`: the same command line and /proc/PID/exe is
/// argv[0] (also when that file was rebuilt since). A stale or reused PID is not.
bool runs(pid_t pid, const std::vector<std::string>& argv);

/// Waits up to `timeout` until `runs(pid, argv)`; false if the process ended first or the
/// time passed. Needed right after `child::spawn`: the kernel lets posix_spawn return once
/// the exec has replaced the child's memory, a moment before /proc shows its new command
/// line.
bool wait_runs(pid_t pid, const std::vector<std::string>& argv, milliseconds timeout);

/// What `stop_all` did to one process.
enum class stop_outcome {
  exited,    ///< ended within the timeout after the first signal (or was already gone)
  killed,    ///< needed SIGKILL
  survived,  ///< still there after SIGKILL (uninterruptible sleep, or not ours to kill)
};

/// Stops processes that need not be children of this one: `signal` to all at once, up to
/// `timeout` (one deadline for all) for them to end, then SIGKILL to the rest and up to
/// `kill_timeout` more. A PID that no longer runs counts as exited.
std::vector<stop_outcome> stop_all(const std::vector<pid_t>& pids, int signal, milliseconds timeout,
                                   milliseconds kill_timeout = milliseconds(5000));

/// Watches processes that need not be children of this one, to wake up as soon as one
/// of them ends (pidfds in poll(2)).
class exit_watch {
 public:
  exit_watch() = default;
  exit_watch(const exit_watch&) = delete;
  exit_watch& operator=(const exit_watch&) = delete;
  ~exit_watch();
  /// Adds `pid`; its index is the number of processes added before it.
  void add(pid_t pid);
  /// The index of a watched process that has ended (ended ones count at once), waiting up
  /// to `timeout` for one to end; nullopt if all still run.
  std::optional<std::size_t> wait_any(milliseconds timeout);

 private:
  std::vector<pid_t> pids_;
  std::vector<int> fds_;  // -1: no pidfd (gone at add(), or pidfds unavailable)
};

/// How a supervised program is restarted after it ends, whatever the cause (as ECS restarts
/// a task): after `first_backoff`, doubling up to `max_backoff` while it keeps ending; a run
/// of at least `reset_after` starts over from `first_backoff`.
struct restart_policy {
  milliseconds first_backoff{500};
  milliseconds max_backoff{10000};
  milliseconds reset_after{30000};
};

/// What a supervisor reports after every change.
struct supervised_state {
  pid_t pid = 0;                 ///< the running program, 0 while it waits to restart it
  unsigned restarts = 0;         ///< restarts after the program ended by itself (crashes)
  std::string last_exit;         ///< how it last ended ("" before the first end), see describe_exit
  milliseconds next_backoff{0};  ///< the wait before the next restart, once it ended
};

/// An exit status as child::wait reports it, in words: "exit by SIGABRT", "exit with status 1".
std::string describe_exit(int status);

/// Runs `program` and restarts it (per `policy`) each time it ends, until SIGTERM, SIGINT or
/// SIGHUP reaches this process: that signal is passed on to the program, which is waited
/// for, and then it returns 0 (at once when it arrives between runs). Blocks those signals in
/// this process (the program starts with none blocked). `report` runs after every start and
/// end; progress lines ("restarted after exit by SIGABRT (restart 2)") go to stderr. Returns
/// 1 without supervising when the program cannot be started the first time.
int supervise(const spawn_options& program, const restart_policy& policy,
              const std::function<void(const supervised_state&)>& report);

/// Moves `log_file` to `log_file.1` (replacing it) if it exists.
result<void> rotate_log(const std::string& log_file);

}  // namespace cluster::launch
