// cluster-launch: scripts/dev's process supervisor, on the library the multi-process tests
// link (cluster/launch/launch.hpp).
//
//   cluster-launch [--run-dir DIR] [--log-dir DIR] [--tag TEXT] start [--rotate-log] NAME --
//   PROGRAM [ARG...] cluster-launch [--run-dir DIR] pid NAME cluster-launch [--run-dir DIR] [--tag
//   TEXT] stop [--timeout-s N] NAME...
//
// Bookkeeping per NAME: RUN_DIR/NAME.pid (the PID, one line), RUN_DIR/NAME.cmdline (its
// command line, NUL-separated: a PID counts as NAME only while it runs exactly that command,
// so a stale pid file never gets a stranger killed) and LOG_DIR/NAME.log (the previous one in
// NAME.log.1 after --rotate-log).

#include <signal.h>

#include <CLI/CLI.hpp>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>

#include "cluster/launch/launch.hpp"
#include "cluster/process/config.hpp"

namespace {

namespace fs = std::filesystem;
using namespace cluster;
using namespace cluster::launch;

std::string tag = "cluster-launch";

void say(const std::string& text) { std::cerr << tag << ": " << text << "\n"; }
void warn(const std::string& text) { std::cerr << tag << ": warning: " << text << "\n"; }
int fail(const std::string& text) {
  std::cerr << tag << ": error: " << text << "\n";
  return 1;
}

struct record {
  pid_t pid = -1;
  std::vector<std::string> argv;
};

class registry {
 public:
  registry(fs::path run_dir, fs::path log_dir)
      : run_dir_(std::move(run_dir)), log_dir_(std::move(log_dir)) {}

  fs::path pid_file(const std::string& name) const { return run_dir_ / (name + ".pid"); }
  fs::path cmdline_file(const std::string& name) const { return run_dir_ / (name + ".cmdline"); }
  fs::path log_file(const std::string& name) const { return log_dir_ / (name + ".log"); }

  bool has_pid_file(const std::string& name) const {
    std::error_code error;
    return fs::exists(pid_file(name), error);
  }

  // What the files say about NAME; nullopt when they are missing or unreadable.
  std::optional<record> read(const std::string& name) const {
    std::ifstream pid_in(pid_file(name));
    std::string line;
    if (!std::getline(pid_in, line)) return std::nullopt;
    auto pid = parse_number<pid_t>(line);
    if (!pid || *pid <= 0) return std::nullopt;
    std::ifstream cmd_in(cmdline_file(name), std::ios::binary);
    const std::string text((std::istreambuf_iterator<char>(cmd_in)),
                           std::istreambuf_iterator<char>());
    record r{*pid, {}};
    for (std::size_t start = 0; start < text.size();) {
      auto end = text.find('\0', start);
      if (end == std::string::npos) end = text.size();
      r.argv.emplace_back(text, start, end - start);
      start = end + 1;
    }
    return r;
  }

  // The PID of NAME if it runs the command it was started with.
  std::optional<pid_t> running(const std::string& name) const {
    auto r = read(name);
    if (r && runs(r->pid, r->argv)) return r->pid;
    return std::nullopt;
  }

  void forget(const std::string& name) const {
    std::error_code error;
    fs::remove(pid_file(name), error);
    fs::remove(cmdline_file(name), error);
  }

  result<void> write(const std::string& name, const record& r) const {
    std::string cmdline;
    for (const auto& arg : r.argv) {
      cmdline += arg;
      cmdline += '\0';
    }
    if (auto written = write_atomically(cmdline_file(name), cmdline); !written) return written;
    return write_atomically(pid_file(name), std::to_string(r.pid) + "\n");
  }

 private:
  static result<void> write_atomically(const fs::path& path, const std::string& text) {
    const auto temporary = path.string() + ".tmp";
    {
      std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
      out << text;
      if (!out.flush()) return failure{errc::unavailable, "cannot write " + temporary};
    }
    std::error_code error;
    fs::rename(temporary, path, error);
    if (error)
      return failure{errc::unavailable, "cannot write " + path.string() + ": " + error.message()};
    return success();
  }

  fs::path run_dir_, log_dir_;
};

bool valid_name(const std::string& name) {
  return !name.empty() && name[0] != '.' &&
         name.find_first_not_of(
             "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") ==
             std::string::npos;
}

std::string now_text() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%d %H:%M:%S", &local);
  return text;
}

int start(const registry& reg, const std::string& name, std::vector<std::string> command,
          bool rotate) {
  if (auto pid = reg.running(name))
    return fail(name + " is already running (pid " + std::to_string(*pid) + ")");
  std::error_code error;
  // Absolute, so that the identity check (/proc/PID/exe against argv[0]) holds from any cwd.
  command.front() = fs::absolute(command.front(), error).string();
  const auto log = reg.log_file(name).string();
  if (rotate) {
    if (auto rotated = rotate_log(log); !rotated) return fail(rotated.error().message);
  }
  {
    std::ofstream header(log, std::ios::app);
    header << "=== " << now_text() << ":";
    for (const auto& arg : command) header << " " << arg;
    header << "\n";
    if (!header.flush()) return fail("cannot write " + log);
  }
  spawn_options options;
  options.program = command.front();
  options.args.assign(command.begin() + 1, command.end());
  options.log_file = log;
  // Its own session: closing the terminal or Ctrl-C in it later does not reach the server.
  options.new_session = true;
  auto started = child::spawn(options);
  if (!started) return fail(started.error().message);
  const pid_t pid = started.value().pid();
  // From here on `pid NAME` and `stop NAME` recognise it (unless it already exited).
  wait_runs(pid, command, milliseconds(1000));
  if (auto written = reg.write(name, {pid, command}); !written) {
    stop_all({pid}, SIGKILL, milliseconds(5000));
    return fail(written.error().message);
  }
  std::cout << pid << "\n";
  return 0;
}

int stop(const registry& reg, const std::vector<std::string>& names, long timeout_s) {
  std::vector<std::string> stopping;
  std::vector<pid_t> pids;
  for (const auto& name : names) {
    if (!reg.has_pid_file(name)) continue;
    auto pid = reg.running(name);
    if (!pid) {
      say(name + " is not running (removing stale pid file)");
      reg.forget(name);
      continue;
    }
    say("stopping " + name + " (pid " + std::to_string(*pid) + ")");
    stopping.push_back(name);
    pids.push_back(*pid);
  }
  const auto outcomes = stop_all(pids, SIGTERM, std::chrono::seconds(timeout_s));
  int rc = 0;
  for (std::size_t i = 0; i < pids.size(); ++i) {
    const auto who = stopping[i] + " (pid " + std::to_string(pids[i]) + ")";
    if (outcomes[i] == stop_outcome::killed) {
      warn(who + " did not stop within " + std::to_string(timeout_s) + "s; sent SIGKILL");
    } else if (outcomes[i] == stop_outcome::survived) {
      warn(who + " is still running after SIGKILL");
      rc = 1;
      continue;  // keep its pid file: it still runs
    }
    reg.forget(stopping[i]);
  }
  return rc;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Starts, finds and stops the local cluster's processes (scripts/dev)",
               "cluster-launch"};
  std::string run_dir = ".local/run", log_dir = ".local/logs";
  app.add_option("--run-dir", run_dir, "pid and command-line files (default .local/run)");
  app.add_option("--log-dir", log_dir, "logs (default .local/logs)");
  app.add_option("--tag", tag, "prefix of the messages on stderr");
  app.require_subcommand(1, 1);

  auto* start_cmd = app.add_subcommand(
      "start",
      "start PROGRAM in its own session, output appended to LOG_DIR/NAME.log; prints the PID");
  std::string name;
  std::vector<std::string> command;
  bool rotate = false;
  start_cmd->add_flag("--rotate-log", rotate, "move NAME.log to NAME.log.1 first");
  start_cmd->add_option("name", name, "the process's name")->required();
  start_cmd->add_option("command", command, "-- PROGRAM [ARG...]")->required();

  auto* pid_cmd = app.add_subcommand("pid", "print NAME's PID if it runs (exit 1 if it does not)");
  pid_cmd->add_option("name", name, "the process's name")->required();

  auto* stop_cmd = app.add_subcommand(
      "stop", "SIGTERM to every NAME at once, SIGKILL to those left after the timeout");
  std::vector<std::string> names;
  long timeout_s = 15;
  stop_cmd->add_option_function<std::string>(
      "--timeout-s",
      [&](const std::string& text) {
        auto value = parse_number<long>(text);
        if (!value || *value < 0 || *value > 86400)
          throw CLI::ValidationError("--timeout-s", "'" + text + "' is not a number of seconds");
        timeout_s = *value;
      },
      "seconds between SIGTERM and SIGKILL (default 15)");
  stop_cmd->add_option("names", names, "the processes' names")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  for (const auto& n : names.empty() ? std::vector<std::string>{name} : names)
    if (!valid_name(n)) return fail("invalid name '" + n + "' (letters, digits, '.', '_', '-')");

  const registry reg(run_dir, log_dir);
  std::error_code error;
  fs::create_directories(run_dir, error);
  if (error) return fail("cannot create " + run_dir + ": " + error.message());
  if (*start_cmd) {
    fs::create_directories(log_dir, error);
    if (error) return fail("cannot create " + log_dir + ": " + error.message());
    return start(reg, name, command, rotate);
  }
  if (*pid_cmd) {
    auto pid = reg.running(name);
    if (!pid) return 1;
    std::cout << *pid << "\n";
    return 0;
  }
  return stop(reg, names, timeout_s);
}
