// cluster_launch (the library the fixture links) and cluster-launch (the tool scripts/dev
// runs): starting with a log, exit statuses, recognising a PID, stopping with SIGTERM and
// SIGKILL, pid files that must never get a stranger killed.
#include "cluster/launch/launch.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <thread>

#include "child_process.hpp"
#include "cluster/process/config.hpp"

namespace cluster::testing {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

const std::string shell = "/bin/sh";
const std::string launcher = std::string(CLUSTER_BIN_DIR) + "/cluster-launch";

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

class launch_test : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = fs::temp_directory_path() /
          ("cluster-launch-" + std::to_string(::getpid()) + "-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir);
    fs::create_directories(dir);
  }
  void TearDown() override {
    if (!HasFailure()) fs::remove_all(dir);
  }
  launch::child spawn(const std::string& script, const std::string& log = "") {
    auto started = launch::child::spawn({shell, {"-c", script}, log, false});
    EXPECT_TRUE(started.has_value()) << started.error().message;
    return std::move(started).value();
  }
  // Runs cluster-launch with the test's run and log folders.
  std::string tool(const std::string& args, int& status) {
    return run_command(launcher + " --run-dir " + (dir / "run").string() + " --log-dir " +
                           (dir / "logs").string() + " " + args + " 2>&1",
                       status);
  }
  fs::path dir;
};

TEST_F(launch_test, a_child_writes_to_its_log_and_reports_how_it_ended) {
  const auto log = (dir / "out.log").string();
  auto exits = spawn("echo to-stdout; echo to-stderr >&2; read line; exit 3", log);
  EXPECT_EQ(exits.wait(10s), std::optional<int>(3));  // stdin is /dev/null: read returns
  EXPECT_FALSE(exits.running());
  EXPECT_EQ(read_file(log), "to-stdout\nto-stderr\n");
  auto killed = spawn("exec sleep 60");
  EXPECT_TRUE(killed.running());
  EXPECT_EQ(killed.wait(0ms), std::nullopt);
  EXPECT_EQ(killed.stop(SIGKILL, 10s), std::optional<int>(128 + SIGKILL));
}

TEST_F(launch_test, a_program_that_cannot_run_is_a_clear_failure) {
  auto missing = launch::child::spawn({(dir / "no-such-program").string(), {}, "", false});
  ASSERT_FALSE(missing.has_value());
  EXPECT_NE(missing.error().message.find("no-such-program: No such file or directory"),
            std::string::npos)
      << missing.error().message;
}

TEST_F(launch_test, a_pid_is_recognised_only_while_it_runs_the_same_command_line) {
  auto sleeper = launch::child::spawn({"/bin/sleep", {"60"}, "", false});
  ASSERT_TRUE(sleeper.has_value());
  const auto pid = sleeper.value().pid();
  EXPECT_TRUE(launch::wait_runs(pid, {"/bin/sleep", "60"}, 10s));
  EXPECT_TRUE(launch::runs(pid, {"/bin/sleep", "60"}));
  EXPECT_FALSE(launch::runs(pid, {"/bin/sleep", "61"}));
  EXPECT_FALSE(launch::runs(pid, {"/bin/true", "60"}));
  sleeper.value().stop(SIGTERM, 10s);
  EXPECT_FALSE(launch::runs(pid, {"/bin/sleep", "60"}));
  EXPECT_EQ(launch::command_line(pid), std::nullopt);
}

TEST_F(launch_test, stop_all_escalates_to_sigkill_only_for_what_ignores_sigterm) {
  auto polite = spawn("exec sleep 60");
  // The shell says "ready" once its trap is set, so SIGTERM cannot arrive before it.
  const auto ready = (dir / "ready").string();
  auto stubborn = spawn("trap '' TERM; : > " + ready + "; while :; do sleep 1; done");
  launch::exit_watch started;
  auto marker = spawn("while [ ! -e " + ready + " ]; do sleep 0.05; done");
  started.add(marker.pid());
  ASSERT_EQ(started.wait_any(10s), std::optional<std::size_t>(0));
  const auto outcomes =
      launch::stop_all({polite.pid(), stubborn.pid(), 999999999}, SIGTERM, 1s, 10s);
  ASSERT_EQ(outcomes.size(), 3u);
  EXPECT_EQ(outcomes[0], launch::stop_outcome::exited);
  EXPECT_EQ(outcomes[1], launch::stop_outcome::killed);
  EXPECT_EQ(outcomes[2], launch::stop_outcome::exited);  // no such process
  EXPECT_EQ(polite.wait(10s), std::optional<int>(128 + SIGTERM));
  EXPECT_EQ(stubborn.wait(10s), std::optional<int>(128 + SIGKILL));
}

TEST_F(launch_test, exit_watch_wakes_up_when_one_of_its_processes_ends) {
  auto lasting = spawn("exec sleep 60");
  auto brief = spawn("exec sleep 1");
  launch::exit_watch watch;
  watch.add(lasting.pid());
  watch.add(brief.pid());
  EXPECT_EQ(watch.wait_any(0ms), std::nullopt);
  EXPECT_EQ(watch.wait_any(30s), std::optional<std::size_t>(1));
  lasting.stop(SIGKILL, 10s);
}

TEST_F(launch_test, the_tool_keeps_pid_files_and_logs_and_stops_by_name) {
  int status = 0;
  const auto log = dir / "logs" / "sleeper.log";
  fs::create_directories(log.parent_path());
  std::ofstream(log) << "previous run\n";
  auto out = tool("start --rotate-log sleeper -- /bin/sleep 60", status);
  ASSERT_EQ(status, 0) << out;
  const auto pid = parse_number<pid_t>(out.substr(0, out.find('\n')));
  ASSERT_TRUE(pid) << out;
  EXPECT_EQ(read_file(dir / "run" / "sleeper.pid"), std::to_string(*pid) + "\n");
  EXPECT_EQ(read_file(dir / "run" / "sleeper.cmdline"), std::string("/bin/sleep\0"
                                                                    "60\0",
                                                                    14));
  EXPECT_EQ(read_file(dir / "logs" / "sleeper.log.1"), "previous run\n");
  EXPECT_NE(read_file(log).find(": /bin/sleep 60\n"), std::string::npos) << read_file(log);
  EXPECT_TRUE(launch::runs(*pid, {"/bin/sleep", "60"}));

  out = tool("pid sleeper", status);
  EXPECT_EQ(status, 0);
  EXPECT_EQ(out, std::to_string(*pid) + "\n");
  out = tool("start sleeper -- /bin/sleep 60", status);
  EXPECT_EQ(status, 1);
  EXPECT_NE(out.find("sleeper is already running (pid " + std::to_string(*pid) + ")"),
            std::string::npos)
      << out;

  out = tool("--tag dev stop --timeout-s 10 sleeper absent", status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_EQ(out, "dev: stopping sleeper (pid " + std::to_string(*pid) + ")\n");
  EXPECT_FALSE(launch::runs(*pid, {"/bin/sleep", "60"}));
  EXPECT_FALSE(fs::exists(dir / "run" / "sleeper.pid"));
  tool("pid sleeper", status);
  EXPECT_EQ(status, 1);
}

TEST_F(launch_test, a_stale_pid_file_never_gets_another_process_signalled) {
  int status = 0;
  fs::create_directories(dir / "run");
  // This test's own PID, recorded for another command line.
  std::ofstream(dir / "run" / "ghost.pid") << ::getpid() << "\n";
  std::ofstream(dir / "run" / "ghost.cmdline") << std::string(
      "/bin/sleep\0"
      "60\0",
      14);
  auto out = tool("pid ghost", status);
  EXPECT_EQ(status, 1) << out;
  out = tool("stop ghost", status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("ghost is not running (removing stale pid file)"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir / "run" / "ghost.pid"));
  // Still here, so nothing was sent; and bad input is refused, not guessed at.
  out = tool("start ../escape -- /bin/true", status);
  EXPECT_EQ(status, 1) << out;
  EXPECT_NE(out.find("invalid name '../escape'"), std::string::npos) << out;
  out = tool("stop --timeout-s soon ghost", status);
  EXPECT_EQ(status, 2) << out;
  out = tool("start nothing -- " + (dir / "missing").string(), status);
  EXPECT_EQ(status, 1) << out;
  EXPECT_NE(out.find("No such file or directory"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir / "run" / "nothing.pid"));
}

// --- supervision (start --supervise) ------------------------------------------------------

class supervise_test : public launch_test {
 protected:
  // NAME.state as the supervisor last wrote it (an empty object when there is none).
  nlohmann::json state(const std::string& name) {
    auto json = nlohmann::json::parse(read_file(dir / "run" / (name + ".state")), nullptr, false);
    return json.is_object() ? json : nlohmann::json::object();
  }
  pid_t program_pid(const std::string& name) { return state(name).value("pid", 0); }
  // Waits until the supervised program runs with a PID other than `old`; its PID, or 0.
  pid_t next_pid(const std::string& name, pid_t old) {
    pid_t now = 0;
    const bool changed = wait_until(
        [&] {
          now = program_pid(name);
          return now > 0 && now != old;
        },
        20s);
    return changed ? now : 0;
  }
  bool wait_until(const std::function<bool()>& done, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(10ms);
    }
    return true;
  }
  pid_t start_supervised(const std::string& args) {
    int status = 0;
    const auto out = tool("start --supervise " + args, status);
    EXPECT_EQ(status, 0) << out;
    return parse_number<pid_t>(out.substr(0, out.find('\n'))).value_or(0);
  }
  // The waits the supervisor announced ("... restarting in N ms"), in order.
  std::vector<long> announced_backoffs(const std::string& name) {
    std::vector<long> waits;
    const std::string log = read_file(dir / "logs" / (name + ".log"));
    const std::string marker = "restarting in ";
    for (auto at = log.find(marker); at != std::string::npos; at = log.find(marker, at + 1))
      waits.push_back(std::stol(log.substr(at + marker.size())));
    return waits;
  }
};

TEST_F(supervise_test, a_killed_program_comes_back_with_a_new_pid_and_its_restarts_counted) {
  const pid_t first = start_supervised("--backoff-ms 50 crasher -- /bin/sleep 60");
  ASSERT_GT(first, 0);
  EXPECT_TRUE(launch::runs(first, {"/bin/sleep", "60"}));
  int status = 0;
  EXPECT_EQ(tool("pid crasher", status), std::to_string(first) + "\n");
  auto out = tool("status --json crasher", status);
  EXPECT_EQ(status, 0) << out;
  auto json = nlohmann::json::parse(out, nullptr, false)["crasher"];
  EXPECT_EQ(json["state"], "running") << out;
  EXPECT_EQ(json["pid"], first);
  EXPECT_EQ(json["restarts"], 0);
  EXPECT_TRUE(json["last_exit"].is_null());
  const pid_t supervisor = json["supervisor"].get<pid_t>();
  EXPECT_NE(supervisor, first);

  ASSERT_EQ(::kill(first, SIGKILL), 0);
  const pid_t second = next_pid("crasher", first);
  ASSERT_GT(second, 0);
  EXPECT_TRUE(launch::runs(second, {"/bin/sleep", "60"}));
  EXPECT_EQ(state("crasher")["restarts"], 1);
  EXPECT_EQ(state("crasher")["last_exit"], "exit by SIGKILL");

  ASSERT_EQ(::kill(second, SIGABRT), 0);
  const pid_t third = next_pid("crasher", second);
  ASSERT_GT(third, 0);
  out = tool("status crasher", status);
  EXPECT_EQ(out, "crasher: running, pid " + std::to_string(third) + ", supervised by pid " +
                     std::to_string(supervisor) + ", 2 restarts, last exit by SIGABRT\n");
  const auto log = read_file(dir / "logs" / "crasher.log");
  EXPECT_NE(log.find("restarted after exit by SIGKILL (restart 1)\n"), std::string::npos) << log;
  EXPECT_NE(log.find("restarted after exit by SIGABRT (restart 2)\n"), std::string::npos) << log;

  // Stopping the supervisor stops its program; nothing is restarted.
  out = tool("--tag dev stop --timeout-s 10 crasher", status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_EQ(out, "dev: stopping crasher (pid " + std::to_string(supervisor) + ", running pid " +
                     std::to_string(third) + ")\n");
  EXPECT_FALSE(launch::runs(third, {"/bin/sleep", "60"}));
  EXPECT_EQ(launch::command_line(supervisor), std::nullopt);
  EXPECT_FALSE(fs::exists(dir / "run" / "crasher.pid"));
  EXPECT_FALSE(fs::exists(dir / "run" / "crasher.state"));
  out = tool("status crasher", status);
  EXPECT_EQ(status, 1);
  EXPECT_EQ(out, "crasher: stopped\n");
}

TEST_F(supervise_test,
       the_wait_between_restarts_doubles_up_to_its_limit_and_resets_after_a_long_run) {
  // Each run lasts ~0.3 s (flaky) or ~0.6 s (steady): shorter than --reset-after-ms for
  // "flaky", well past it for "steady" (a loaded machine delays when a run is seen to start).
  ASSERT_GT(start_supervised("--backoff-ms 100 --max-backoff-ms 400 --reset-after-ms 60000 flaky"
                             " -- /bin/sh -c 'sleep 0.3; exit 3'"),
            0);
  ASSERT_GT(start_supervised("--backoff-ms 100 --max-backoff-ms 400 --reset-after-ms 250 steady"
                             " -- /bin/sh -c 'sleep 0.6; exit 3'"),
            0);
  ASSERT_TRUE(wait_until(
      [&] {
        return state("flaky").value("restarts", 0) >= 4 &&
               state("steady").value("restarts", 0) >= 4;
      },
      30s))
      << read_file(dir / "logs" / "flaky.log");
  const auto flaky = announced_backoffs("flaky");
  ASSERT_GE(flaky.size(), 4u);
  EXPECT_EQ(std::vector<long>(flaky.begin(), flaky.begin() + 4),
            (std::vector<long>{100, 200, 400, 400}));
  for (long wait : announced_backoffs("steady")) EXPECT_EQ(wait, 100);
  EXPECT_EQ(state("flaky")["last_exit"], "exit with status 3");

  // A stop between two runs ends the supervisor at once.
  int status = 0;
  const auto out = tool("stop --timeout-s 10 flaky steady", status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_EQ(tool("status flaky steady", status), "flaky: stopped\nsteady: stopped\n");
}

TEST_F(supervise_test,
       stop_kills_a_program_that_ignores_sigterm_and_one_left_without_its_supervisor) {
  const auto ready = (dir / "ready").string();
  const pid_t stubborn = start_supervised("stubborn -- /bin/sh -c \"trap '' TERM; : > " + ready +
                                          "; while :; do sleep 1; done\"");
  ASSERT_GT(stubborn, 0);
  ASSERT_TRUE(wait_until([&] { return fs::exists(ready); }, 10s));
  int status = 0;
  const pid_t supervisor =
      nlohmann::json::parse(tool("status --json stubborn", status))["stubborn"]["supervisor"]
          .get<pid_t>();
  auto out = tool("stop --timeout-s 1 stubborn", status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_NE(out.find("did not stop within 1s; sent SIGKILL"), std::string::npos) << out;
  EXPECT_EQ(launch::command_line(stubborn), std::nullopt);
  EXPECT_EQ(launch::command_line(supervisor), std::nullopt);

  // The supervisor killed from outside leaves its program running: stop still ends it.
  const pid_t orphan = start_supervised("orphan -- /bin/sleep 60");
  ASSERT_GT(orphan, 0);
  const pid_t its_supervisor =
      nlohmann::json::parse(tool("status --json orphan", status))["orphan"]["supervisor"]
          .get<pid_t>();
  ASSERT_EQ(::kill(its_supervisor, SIGKILL), 0);
  ASSERT_TRUE(wait_until([&] { return !launch::command_line(its_supervisor); }, 10s));
  EXPECT_EQ(tool("status orphan", status),
            "orphan: running, pid " + std::to_string(orphan) + ", 0 restarts\n");
  out = tool("stop --timeout-s 10 orphan", status);
  EXPECT_EQ(status, 0) << out;
  EXPECT_FALSE(launch::runs(orphan, {"/bin/sleep", "60"}));
}

TEST_F(supervise_test, a_program_that_cannot_start_is_reported_at_once) {
  int status = 0;
  const auto out = tool("start --supervise nothing -- " + (dir / "missing").string(), status);
  EXPECT_EQ(status, 1) << out;
  EXPECT_NE(out.find("ended at once"), std::string::npos) << out;
  EXPECT_NE(read_file(dir / "logs" / "nothing.log").find("No such file or directory"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(dir / "run" / "nothing.pid"));
  EXPECT_NE(tool("start --supervise --backoff-ms 0 x -- /bin/true", status).find("--backoff-ms"),
            std::string::npos);
  EXPECT_EQ(status, 2);
}

}  // namespace
}  // namespace cluster::testing
