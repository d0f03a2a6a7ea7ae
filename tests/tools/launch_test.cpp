// cluster_launch (the library the fixture links) and cluster-launch (the tool scripts/dev
// runs): starting with a log, exit statuses, recognising a PID, stopping with SIGTERM and
// SIGKILL, pid files that must never get a stranger killed.
#include "cluster/launch/launch.hpp"

#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

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

}  // namespace
}  // namespace cluster::testing
