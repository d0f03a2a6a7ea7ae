// cluster-launch: scripts/dev's process supervisor, on the library the multi-process tests
// link (cluster/launch/launch.hpp).
//
//   cluster-launch [--run-dir DIR] [--log-dir DIR] [--tag TEXT] start [--rotate-log]
//       [--supervise [--backoff-ms N] [--max-backoff-ms N] [--reset-after-ms N]]
//       NAME -- PROGRAM [ARG...]
//   cluster-launch [--run-dir DIR] pid NAME
//   cluster-launch [--run-dir DIR] status [--json] NAME...
//   cluster-launch [--run-dir DIR] [--tag TEXT] stop [--timeout-s N] NAME...
//
// Bookkeeping per NAME: RUN_DIR/NAME.pid (the PID, one line), RUN_DIR/NAME.cmdline (its
// command line, NUL-separated: a PID counts as NAME only while it runs exactly that command,
// so a stale pid file never gets a stranger killed) and LOG_DIR/NAME.log (the previous one in
// NAME.log.1 after --rotate-log). With --supervise those files describe the supervisor (this
// tool, `supervise NAME -- PROGRAM...`), which restarts PROGRAM whenever it ends and keeps
// RUN_DIR/NAME.state: the program's current PID, its restarts and how it last ended.

#include <signal.h>

#include <CLI/CLI.hpp>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <nlohmann/json.hpp>

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

  fs::path state_file(const std::string& name) const { return run_dir_ / (name + ".state"); }

  void forget(const std::string& name) const {
    std::error_code error;
    fs::remove(pid_file(name), error);
    fs::remove(cmdline_file(name), error);
    fs::remove(state_file(name), error);
  }

  result<void> write_state(const std::string& name, const supervised_state& state) const {
    const nlohmann::json json = {{"pid", state.pid},
                                 {"restarts", state.restarts},
                                 {"last_exit", state.last_exit},
                                 {"next_backoff_ms", state.next_backoff.count()}};
    return write_atomically(state_file(name), json.dump() + "\n");
  }

  std::optional<supervised_state> read_state(const std::string& name) const {
    std::ifstream in(state_file(name));
    auto json = nlohmann::json::parse(in, nullptr, false);
    if (!json.is_object()) return std::nullopt;
    supervised_state state;
    state.pid = json.value("pid", 0);
    state.restarts = json.value("restarts", 0u);
    state.last_exit = json.value("last_exit", "");
    state.next_backoff = milliseconds(json.value("next_backoff_ms", 0));
    return state;
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

// The supervisor's command line: this tool with `supervise`, the program after "--".
std::optional<std::vector<std::string>> supervised_command(const std::vector<std::string>& argv) {
  const auto dashes = std::find(argv.begin(), argv.end(), "--");
  if (dashes == argv.end() || std::find(argv.begin(), dashes, "supervise") == dashes)
    return std::nullopt;
  std::error_code error;
  if (argv.empty() ||
      fs::weakly_canonical(argv.front(), error) != fs::weakly_canonical("/proc/self/exe", error))
    return std::nullopt;
  return std::vector<std::string>(dashes + 1, argv.end());
}

// What runs as NAME: the process itself or, supervised, the supervisor and its program.
struct live {
  std::optional<pid_t> process;     // the program serving as NAME, if it runs
  std::optional<pid_t> supervisor;  // its supervisor, if NAME is supervised and it runs
  std::optional<supervised_state> state;
};

live find_live(const registry& reg, const std::string& name) {
  live out;
  auto r = reg.read(name);
  if (!r) return out;
  const auto program = supervised_command(r->argv);
  if (!program) {
    if (runs(r->pid, r->argv)) out.process = r->pid;
    return out;
  }
  if (runs(r->pid, r->argv)) out.supervisor = r->pid;
  out.state = reg.read_state(name);
  // Also when the supervisor itself was killed: its program may still run, orphaned.
  if (out.state && out.state->pid > 0 && runs(out.state->pid, *program))
    out.process = out.state->pid;
  return out;
}

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

struct supervise_flags {
  bool on = false;
  restart_policy policy;
};

int start(const registry& reg, const std::string& name, std::vector<std::string> command,
          bool rotate, const supervise_flags& supervised, const fs::path& run_dir,
          const fs::path& log_dir) {
  if (const auto now = find_live(reg, name); now.process || now.supervisor)
    return fail(name + " is already running (pid " +
                std::to_string(now.supervisor ? *now.supervisor : *now.process) + ")");
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
  std::vector<std::string> launched = command;
  if (supervised.on) {
    // This tool again, as the program's supervisor (in the session the program shares).
    const auto self = fs::read_symlink("/proc/self/exe", error);
    if (error) return fail("cannot find this program: " + error.message());
    launched = {self.string(),
                "--run-dir",
                fs::absolute(run_dir, error).string(),
                "--log-dir",
                fs::absolute(log_dir, error).string(),
                "--tag",
                tag,
                "supervise",
                "--backoff-ms",
                std::to_string(supervised.policy.first_backoff.count()),
                "--max-backoff-ms",
                std::to_string(supervised.policy.max_backoff.count()),
                "--reset-after-ms",
                std::to_string(supervised.policy.reset_after.count()),
                name,
                "--"};
    launched.insert(launched.end(), command.begin(), command.end());
  }
  spawn_options options;
  options.program = launched.front();
  options.args.assign(launched.begin() + 1, launched.end());
  options.log_file = log;
  // Its own session: closing the terminal or Ctrl-C in it later does not reach the server.
  options.new_session = true;
  auto started = child::spawn(options);
  if (!started) return fail(started.error().message);
  const pid_t pid = started.value().pid();
  // From here on `pid NAME` and `stop NAME` recognise it (unless it already exited).
  wait_runs(pid, launched, milliseconds(1000));
  if (auto written = reg.write(name, {pid, launched}); !written) {
    stop_all({pid}, SIGKILL, milliseconds(5000));
    return fail(written.error().message);
  }
  if (!supervised.on) {
    std::cout << pid << "\n";
    return 0;
  }
  // The program's PID, once the supervisor started it and it shows its command line.
  auto& supervisor = started.value();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    if (const auto state = reg.read_state(name);
        state && state->pid > 0 && runs(state->pid, command)) {
      std::cout << state->pid << "\n";
      return 0;
    }
    if (supervisor.wait(milliseconds(2))) {
      reg.forget(name);
      return fail("the supervisor of " + name + " ended at once (see " + log + ")");
    }
  }
  return fail("the supervisor of " + name + " did not start it within 10 s (see " + log + ")");
}

int run_supervisor(const registry& reg, const std::string& name,
                   const std::vector<std::string>& command, const restart_policy& policy) {
  spawn_options program;
  program.program = command.front();
  program.args.assign(command.begin() + 1, command.end());
  program.log_file = reg.log_file(name).string();
  const int rc = supervise(program, policy, [&](const supervised_state& state) {
    if (auto written = reg.write_state(name, state); !written) warn(written.error().message);
  });
  return rc;
}

int status(const registry& reg, const std::vector<std::string>& names, bool json) {
  nlohmann::json out = nlohmann::json::object();
  int rc = 0;
  for (const auto& name : names) {
    const auto now = find_live(reg, name);
    const char* what = now.process ? "running" : now.supervisor ? "restarting" : "stopped";
    if (!now.process && !now.supervisor) rc = 1;
    const auto state = now.state.value_or(supervised_state{});
    if (json) {
      nlohmann::json entry = {{"state", what}};
      if (now.process) entry["pid"] = *now.process;
      if (now.state) {
        entry["supervisor"] = now.supervisor ? nlohmann::json(*now.supervisor) : nullptr;
        entry["restarts"] = state.restarts;
        entry["last_exit"] =
            state.last_exit.empty() ? nlohmann::json() : nlohmann::json(state.last_exit);
      }
      out[name] = entry;
      continue;
    }
    std::cout << name << ": " << what;
    if (now.process) std::cout << ", pid " << *now.process;
    if (now.supervisor) std::cout << ", supervised by pid " << *now.supervisor;
    if (now.state) {
      std::cout << ", " << state.restarts << (state.restarts == 1 ? " restart" : " restarts");
      if (!state.last_exit.empty()) std::cout << ", last " << state.last_exit;
      if (!now.process && now.supervisor)
        std::cout << ", next try within " << state.next_backoff.count() << " ms";
    }
    std::cout << "\n";
  }
  if (json) std::cout << out.dump() << "\n";
  return rc;
}

int stop(const registry& reg, const std::vector<std::string>& names, long timeout_s) {
  std::vector<std::string> stopping;
  std::vector<pid_t> pids;
  std::vector<std::optional<pid_t>> programs;  // a supervisor's program, killed with it
  for (const auto& name : names) {
    if (!reg.has_pid_file(name)) continue;
    const auto now = find_live(reg, name);
    if (!now.process && !now.supervisor) {
      say(name + " is not running (removing stale pid file)");
      reg.forget(name);
      continue;
    }
    // A supervisor passes SIGTERM on to its program and ends after it; a program whose
    // supervisor is gone is stopped directly.
    const pid_t pid = now.supervisor ? *now.supervisor : *now.process;
    say("stopping " + name + " (pid " + std::to_string(pid) +
        (now.supervisor && now.process ? ", running pid " + std::to_string(*now.process) : "") +
        ")");
    stopping.push_back(name);
    pids.push_back(pid);
    programs.push_back(now.supervisor ? now.process : std::nullopt);
  }
  const auto outcomes = stop_all(pids, SIGTERM, std::chrono::seconds(timeout_s));
  int rc = 0;
  for (std::size_t i = 0; i < pids.size(); ++i) {
    const auto who = stopping[i] + " (pid " + std::to_string(pids[i]) + ")";
    if (outcomes[i] != stop_outcome::exited && programs[i]) {
      // The supervisor was killed before its program ended: end the program too.
      if (stop_all({*programs[i]}, SIGKILL, milliseconds(5000))[0] == stop_outcome::survived) {
        warn(stopping[i] + "'s program (pid " + std::to_string(*programs[i]) +
             ") is still running after SIGKILL");
        rc = 1;
        continue;
      }
    }
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
  supervise_flags supervised;
  start_cmd->add_flag("--supervise", supervised.on,
                      "restart PROGRAM whenever it ends (a supervisor process keeps NAME.state)");
  // Bounded: a day at most, so no clock arithmetic overflows.
  const auto add_duration = [](CLI::App* cmd, const char* flag, milliseconds& into,
                               const char* help) {
    cmd->add_option_function<std::string>(
        flag,
        [flag, &into](const std::string& text) {
          auto value = parse_number<long>(text);
          if (!value || *value < 1 || *value > 86'400'000)
            throw CLI::ValidationError(flag, "'" + text + "' is not a number of milliseconds");
          into = milliseconds(*value);
        },
        help);
  };
  const auto add_policy = [&](CLI::App* cmd) {
    add_duration(cmd, "--backoff-ms", supervised.policy.first_backoff,
                 "wait before the first restart (default 500), doubling while it keeps ending");
    add_duration(cmd, "--max-backoff-ms", supervised.policy.max_backoff,
                 "longest wait between restarts (default 10000)");
    add_duration(cmd, "--reset-after-ms", supervised.policy.reset_after,
                 "a run this long resets the wait to --backoff-ms (default 30000)");
  };
  add_policy(start_cmd);

  auto* supervise_cmd = app.add_subcommand(
      "supervise", "(what start --supervise runs) run PROGRAM and restart it whenever it ends");
  supervise_cmd->group("");  // internal: not listed in --help
  add_policy(supervise_cmd);
  supervise_cmd->add_option("name", name, "the process's name")->required();
  supervise_cmd->add_option("command", command, "-- PROGRAM [ARG...]")->required();

  auto* status_cmd = app.add_subcommand(
      "status",
      "state, PID, supervisor, restarts and last exit of each NAME (exit 1 if one is "
      "not running)");
  bool json = false;
  status_cmd->add_flag("--json", json, "one line of JSON: {NAME: {state, pid, ...}}");
  std::vector<std::string> status_names;
  status_cmd->add_option("names", status_names, "the processes' names")->required();

  auto* pid_cmd = app.add_subcommand(
      "pid", "print NAME's PID if it runs, a supervised program's own (exit 1 if it does not)");
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
  if (!status_names.empty()) names = status_names;
  for (const auto& n : names.empty() ? std::vector<std::string>{name} : names)
    if (!valid_name(n)) return fail("invalid name '" + n + "' (letters, digits, '.', '_', '-')");

  const registry reg(run_dir, log_dir);
  std::error_code error;
  fs::create_directories(run_dir, error);
  if (error) return fail("cannot create " + run_dir + ": " + error.message());
  if (*start_cmd) {
    fs::create_directories(log_dir, error);
    if (error) return fail("cannot create " + log_dir + ": " + error.message());
    return start(reg, name, command, rotate, supervised, run_dir, log_dir);
  }
  if (*supervise_cmd) return run_supervisor(reg, name, command, supervised.policy);
  if (*status_cmd) return status(reg, names, json);
  if (*pid_cmd) {
    // Supervised: the program's PID (none while it waits to be restarted).
    const auto pid = find_live(reg, name).process;
    if (!pid) return 1;
    std::cout << *pid << "\n";
    return 0;
  }
  return stop(reg, names, timeout_s);
}
