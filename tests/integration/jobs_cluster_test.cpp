// Singletons and cron jobs with the real binaries on a real PostgreSQL: the scheduler
// example plugin (a heartbeat singleton, a per-second cron job) appends what it does to
// SCHEDULER_ACTIVITY_FILE ("<pid> <unix ms> <what>"); the tests kill its runners and read
// the file back. Skipped without CLUSTER_TEST_PG_URL.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "process_cluster.hpp"

namespace cluster::testing {
namespace {

using namespace std::chrono_literals;

struct activity {
  pid_t pid = 0;
  std::int64_t at_ms = 0;
  std::string what;  // "start", "beat N", "stop", "tick <scheduled_ms>"
};

std::vector<activity> read_activity(const std::string& file) {
  std::vector<activity> out;
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) {
    std::istringstream fields(line);
    activity a;
    fields >> a.pid >> a.at_ms;
    std::getline(fields >> std::ws, a.what);
    if (a.pid != 0) out.push_back(std::move(a));
  }
  return out;
}

/// One singleton run per process: the time of its first and last line, stopped or not.
struct run_span {
  pid_t pid = 0;
  std::int64_t first_ms = 0;
  std::int64_t last_ms = 0;
  bool stopped = false;
};

std::vector<run_span> singleton_runs(const std::vector<activity>& lines) {
  std::map<pid_t, run_span> by_pid;
  for (const auto& a : lines) {
    if (a.what.rfind("tick ", 0) == 0) continue;
    auto& span = by_pid[a.pid];
    if (span.pid == 0) {
      span.pid = a.pid;
      span.first_ms = a.at_ms;
    }
    span.last_ms = std::max(span.last_ms, a.at_ms);
    if (a.what == "stop") span.stopped = true;
  }
  std::vector<run_span> out;
  for (auto& [pid, span] : by_pid) out.push_back(span);
  std::sort(out.begin(), out.end(),
            [](const run_span& a, const run_span& b) { return a.first_ms < b.first_ms; });
  return out;
}

class jobs_cluster : public pg_cluster_test {
 protected:
  void SetUp() override {
    pg_cluster_test::SetUp();
    if (IsSkipped()) return;
    activity_file = (dir / "activity.log").string();
    ::setenv("SCHEDULER_ACTIVITY_FILE", activity_file.c_str(), 1);
  }
  void TearDown() override {
    pg_cluster_test::TearDown();
    ::unsetenv("SCHEDULER_ACTIVITY_FILE");
  }
  /// A runner with only the scheduler plugin; "none": in the runner's process, so the pid in
  /// the activity file is the runner's.
  child_process& start_jobs_runner(int n, const std::string& isolation = "none") {
    return start_runner(n, {"--set", "runner.plugins=" + std::string(CLUSTER_PLUGIN_DIR) + "/jobs",
                            "--set", "runner.isolation=" + isolation});
  }
  /// The runner (by name) whose process is `pid`, or "".
  std::string runner_of(pid_t pid) {
    for (const auto& [name, child] : slots)
      if (name.rfind("runner-", 0) == 0 && child->pid() == pid) return name;
    return "";
  }
  /// The pid of the singleton's latest run, once it has beaten at least `beats` times.
  std::optional<pid_t> running_singleton(int beats = 2) {
    const auto runs = singleton_runs(read_activity(activity_file));
    if (runs.empty() || runs.back().stopped) return std::nullopt;
    int seen = 0;
    for (const auto& a : read_activity(activity_file))
      if (a.pid == runs.back().pid && a.what.rfind("beat ", 0) == 0) ++seen;
    if (seen < beats) return std::nullopt;
    return runs.back().pid;
  }

  std::string activity_file;
};

TEST_F(jobs_cluster, a_singleton_runs_exactly_once_across_five_kills_of_its_runner) {
  start_manager();
  start_jobs_runner(1);
  start_jobs_runner(2);
  ASSERT_TRUE(ready(2));
  std::set<pid_t> killed;
  for (int round = 0; round < 5; ++round) {
    std::optional<pid_t> running;
    ASSERT_TRUE(wait_for(
        [&] {
          running = running_singleton();
          return running && !killed.count(*running) && !runner_of(*running).empty();
        },
        40s))
        << "round " << round << ": the singleton did not come back";
    const std::string victim = runner_of(*running);
    ASSERT_EQ(end(victim, SIGKILL, 5s), 128 + SIGKILL);
    killed.insert(*running);
    start_jobs_runner(victim == "runner-1" ? 1 : 2);
  }
  std::optional<pid_t> last;
  ASSERT_TRUE(wait_for(
      [&] {
        last = running_singleton();
        return last && !killed.count(*last);
      },
      40s));

  const auto runs = singleton_runs(read_activity(activity_file));
  ASSERT_GE(runs.size(), 6u);
  for (std::size_t i = 1; i < runs.size(); ++i) {
    // A killed run writes no stop line: its last beat bounds it. The next starts only after
    // the lock went with the dead runner's session.
    EXPECT_GT(runs[i].first_ms, runs[i - 1].last_ms)
        << "runs of pid " << runs[i - 1].pid << " and " << runs[i].pid << " overlap";
    // Failover: the manager's health timeout, then the lock and the replay.
    EXPECT_LT(runs[i].first_ms - runs[i - 1].last_ms, 30000)
        << "pid " << runs[i].pid << " took over late";
  }
}

TEST_F(jobs_cluster, a_graceful_stop_ends_the_singletons_run_before_its_shard_moves) {
  start_manager();
  // In a plugin's process: the stop reaches the run through a stop frame.
  start_jobs_runner(1, "process");
  start_jobs_runner(2, "process");
  ASSERT_TRUE(ready(2));
  std::optional<pid_t> first;
  ASSERT_TRUE(wait_for([&] { return (first = running_singleton()).has_value(); }, 40s));
  // The plugin's process is a child of its runner.
  std::string victim;
  {
    std::ifstream stat("/proc/" + std::to_string(*first) + "/stat");
    std::string pid_text, comm, state;
    pid_t parent = 0;
    stat >> pid_text >> comm >> state >> parent;
    victim = runner_of(parent);
  }
  ASSERT_FALSE(victim.empty());
  const auto stopped_at = steady_clock::now();
  EXPECT_EQ(end(victim, SIGTERM, 40s), 0);
  std::optional<pid_t> next;
  ASSERT_TRUE(wait_for(
      [&] {
        next = running_singleton(1);
        return next && *next != *first;
      },
      40s));
  EXPECT_LT(steady_clock::now() - stopped_at, 20s);
  const auto runs = singleton_runs(read_activity(activity_file));
  ASSERT_EQ(runs.size(), 2u);
  EXPECT_EQ(runs[0].pid, *first);
  EXPECT_TRUE(runs[0].stopped) << "the stopped runner's run did not end with its stop line";
  EXPECT_GT(runs[1].first_ms, runs[0].last_ms) << "the next run started before the stop line";
}

TEST_F(jobs_cluster, a_per_second_cron_job_fires_once_per_tick_across_a_runner_kill) {
  start_manager();
  start_jobs_runner(1);
  start_jobs_runner(2);
  start_proxy();
  ASSERT_TRUE(ready(2));
  const auto ticks = [&] {
    std::vector<activity> out;
    for (auto& a : read_activity(activity_file))
      if (a.what.rfind("tick ", 0) == 0) out.push_back(std::move(a));
    return out;
  };
  ASSERT_TRUE(wait_for([&] { return ticks().size() >= 3; }, 40s));
  const pid_t ticking = ticks().back().pid;
  const std::string victim = runner_of(ticking);
  ASSERT_FALSE(victim.empty());
  ASSERT_EQ(end(victim, SIGKILL, 5s), 128 + SIGKILL);
  const std::size_t before = ticks().size();
  start_jobs_runner(victim == "runner-1" ? 1 : 2);
  ASSERT_TRUE(wait_for(
      [&] {
        const auto now = ticks();
        return now.size() >= before + 3 && now.back().pid != ticking;
      },
      60s))
      << "the cron job did not come back after its runner was killed";

  std::map<std::int64_t, int> fired;
  std::int64_t first = 0, last = 0;
  for (const auto& a : ticks()) {
    const std::int64_t scheduled = std::stoll(a.what.substr(5));
    ++fired[scheduled];
    first = first == 0 ? scheduled : std::min(first, scheduled);
    last = std::max(last, scheduled);
    EXPECT_EQ(scheduled % 1000, 0) << "a tick not on a whole second";
    EXPECT_GE(a.at_ms, scheduled) << "tick " << scheduled << " ran before its time";
  }
  for (const auto& [scheduled, count] : fired)
    EXPECT_EQ(count, 1) << "tick " << scheduled << " fired " << count << " times";
  // Before the kill every second ticked; the ticks missed during the failover are run once
  // (run_missed_once: the first of them at once), then every second again.
  std::vector<std::int64_t> gaps;
  for (auto it = fired.begin(); std::next(it) != fired.end(); ++it)
    if (std::next(it)->first - it->first != 1000) gaps.push_back(std::next(it)->first - it->first);
  EXPECT_LE(gaps.size(), 1u) << "more than the one gap of the failover";

  // `clusterctl cron list` shows the runner serving it now, its last run and its next one;
  // and the plugin's singleton, running on one runner.
  int code = 0;
  const auto listed =
      clusterctl("--manager 127.0.0.1:" + std::to_string(manager_port) + " cron list --json", code);
  ASSERT_EQ(code, 0) << listed;
  const auto jobs = nlohmann::json::parse(listed, nullptr, false);
  ASSERT_TRUE(jobs.is_array()) << listed;
  ASSERT_EQ(jobs.size(), 2u) << listed;
  const auto& singleton = jobs[1];
  EXPECT_EQ(singleton["kind"], "singleton") << listed;
  EXPECT_EQ(singleton["name"], "Heartbeat") << listed;
  ASSERT_FALSE(singleton.contains("error")) << listed;
  EXPECT_TRUE(singleton["running"].get<bool>()) << listed;
  const std::string singleton_runner = singleton.value("runner", "");
  EXPECT_TRUE(singleton_runner == "runner-1" || singleton_runner == "runner-2") << listed;
  EXPECT_GE(singleton["starts"].get<int>(), 1) << listed;
  const auto& job = jobs[0];
  EXPECT_EQ(job["kind"], "cron") << listed;
  ASSERT_FALSE(job.contains("error")) << listed;
  ASSERT_TRUE(job.contains("last_run") && job.contains("next_run_ms")) << listed;
  EXPECT_EQ(job["name"], "EverySecond");
  EXPECT_EQ(job["schedule"], "* * * * * *");
  EXPECT_EQ(job["missed"], "run_once");
  const std::string runner = job.value("runner", "");
  EXPECT_TRUE(runner == "runner-1" || runner == "runner-2") << listed;
  ASSERT_TRUE(job["last_run"].is_object()) << listed;
  EXPECT_EQ(job["last_run"]["outcome"], "ok");
  // The file has a tick's line before its reply is stored, the bookkeeping after.
  EXPECT_GE(job["last_run"]["scheduled_ms"].get<std::int64_t>(), last - 2000);
  EXPECT_GT(job["next_run_ms"].get<std::int64_t>(),
            job["last_run"]["scheduled_ms"].get<std::int64_t>());
}

}  // namespace
}  // namespace cluster::testing
