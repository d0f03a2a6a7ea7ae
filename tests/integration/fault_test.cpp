// Fault tolerance with the real binaries on a real PostgreSQL, under continuous load:
// runners killed and restarted, SIGTERM rolling restarts, the manager away, the database
// restarted. Skipped without CLUSTER_TEST_PG_URL. No timing is asserted: the recovery times
// are printed for the benchmark notes, the assertions are about answers and owners, and
// every wait is for an event (a number of answered calls, a reply) with a deadline.
#include <signal.h>

#include <fstream>
#include <random>
#include <set>

#include "cluster/storage-pg/postgres.hpp"
#include "process_cluster.hpp"

namespace cluster::testing {
namespace {

using namespace std::chrono_literals;

class faults : public pg_cluster_test {
 protected:
  void start_cluster(int runners) {
    start_manager();
    for (int n = 1; n <= runners; ++n) start_runner(n);
    start_proxy();
    ASSERT_TRUE(ready(static_cast<std::size_t>(runners)));
  }

  /// Every persisted call answered OK ran at least once (CLUSTER_PROBE_RUN_LOG).
  void expect_every_acknowledged_append_ran(std::size_t sent) {
    std::ifstream log(run_log);
    std::set<std::string> ran;
    for (std::string line; std::getline(log, line);) ran.insert(line);
    std::size_t missing = 0;
    for (std::size_t n = 0; n < sent; n += 2)
      if (!ran.count("c:" + std::to_string(n))) ++missing;
    EXPECT_EQ(missing, 0u) << missing << " acknowledged persisted calls never ran";
  }

  void expect_no_failures(const load_generator::result& result) {
    EXPECT_GT(result.ok, 0u);
    for (const auto& [failure, count] : result.failures) ADD_FAILURE() << count << " × " << failure;
    for (const auto& problem : overlapping_owners(owner_log)) ADD_FAILURE() << problem;
  }
};

TEST_F(faults, kill_a_random_runner_five_times_under_persisted_load) {
  start_cluster(3);
  load_generator load(proxy_port, {});
  std::mt19937 random(std::random_device{}());
  for (int round = 0; round < 5; ++round) {
    ASSERT_TRUE(load.wait_answered(load.answered() + 200, 60s));
    const int victim = std::uniform_int_distribution<int>(1, 3)(random);
    end("runner-" + std::to_string(victim), SIGKILL, 5s);
    const auto recovered = time_until_all_answer(proxy_port, 40, 60s);
    std::cout << "round " << round << ": killed runner-" << victim << ", 40 entities answered "
              << recovered << " ms later\n";
    start_runner(victim);
    ASSERT_TRUE(ready(3)) << "round " << round;
  }
  ASSERT_TRUE(load.wait_answered(load.answered() + 200, 60s));
  const auto result = load.stop();
  std::cout << result.ok << " calls answered, " << result.persisted_ok << " persisted\n";
  expect_no_failures(result);
  expect_every_acknowledged_append_ran(result.sent);
}

TEST_F(faults, sigterm_rolling_restart_of_every_runner_then_the_manager_fails_no_call) {
  start_cluster(2);
  load_generator load(proxy_port, {});
  ASSERT_TRUE(load.wait_answered(200, 60s));
  for (int n = 1; n <= 2; ++n) {
    const std::string name = "runner-" + std::to_string(n);
    EXPECT_EQ(end(name, SIGTERM), 0) << name << " did not stop cleanly";
    start_runner(n);
    ASSERT_TRUE(ready(2));
    ASSERT_TRUE(load.wait_answered(load.answered() + 200, 60s));
  }
  EXPECT_EQ(end("manager", SIGTERM), 0);
  start_manager();
  ASSERT_TRUE(ready(2));
  ASSERT_TRUE(load.wait_answered(load.answered() + 200, 60s));
  const auto result = load.stop();
  expect_no_failures(result);
  expect_every_acknowledged_append_ran(result.sent);
}

TEST_F(faults, the_manager_away_for_ten_seconds_fails_no_call) {
  start_cluster(2);
  load_generator load(proxy_port, {});
  ASSERT_TRUE(load.wait_answered(200, 60s));
  end("manager", SIGKILL, 5s);
  const auto gone = std::chrono::steady_clock::now();
  // Calls go on without the manager: soon after it went, and still after ten seconds.
  EXPECT_TRUE(load.wait_answered(load.answered() + 100, 60s))
      << "calls stalled once the manager was away";
  std::this_thread::sleep_until(gone + 10s);  // the outage lasts ten seconds at least
  EXPECT_TRUE(load.wait_answered(load.answered() + 100, 60s))
      << "calls stalled after ten seconds without the manager";
  start_manager();
  ASSERT_TRUE(ready(2));
  ASSERT_TRUE(load.wait_answered(load.answered() + 200, 60s));
  const auto result = load.stop();
  expect_no_failures(result);
}

TEST_F(faults, a_database_restart_refuses_persisted_calls_clearly_and_recovers) {
  const auto pg_dir = dir / "pg";
  const std::string script = std::string(CLUSTER_SOURCE_DIR) + "/tests/support/private-pg.sh";
  int code = 0;
  auto url = run_command(script + " start " + pg_dir.string(), code);
  ASSERT_EQ(code, 0) << "cannot start a private PostgreSQL";
  url.erase(url.find_last_not_of("\n") + 1);
  pg_url = url;
  const auto port = url.substr(url.rfind(':') + 1, url.rfind('/') - url.rfind(':') - 1);
  start_cluster(2);
  load_generator load(proxy_port, {});
  ASSERT_TRUE(load.wait_answered(200, 60s));
  run_command(script + " stop " + pg_dir.string(), code);
  ASSERT_EQ(code, 0);
  // The runners notice: a persisted call is refused with StorageError, while volatile calls
  // go on being answered.
  std::string out;
  EXPECT_TRUE(wait_for(
      [&] {
        out = clusterctl("call Probe during-outage Append '{\"sender\":\"during\",\"value\":1}'",
                         code);
        return code != 0 && out.find("StorageError") != std::string::npos;
      },
      60s))
      << "persisted calls were not refused without the database: " << out;
  out = clusterctl("call Probe during-outage Echo '{\"text\":\"still here\"}'", code);
  EXPECT_EQ(code, 0) << "volatile calls fail without the database: " << out;
  EXPECT_TRUE(load.wait_answered(load.answered() + 50, 60s))
      << "calls stalled without the database";
  run_command(script + " start " + pg_dir.string() + " " + port, code);
  ASSERT_EQ(code, 0) << "cannot restart the private PostgreSQL on port " << port;
  // Persisted calls work again by themselves.
  EXPECT_TRUE(wait_for(
      [&] {
        out = clusterctl("call Probe after-restart Append '{\"sender\":\"after\",\"value\":1}'",
                         code);
        return code == 0;
      },
      60s))
      << out;
  ASSERT_TRUE(load.wait_answered(load.answered() + 200, 60s));
  const auto result = load.stop();
  std::cout << result.ok << " calls answered\n";
  for (const auto& [failure, count] : result.failures) {
    std::cout << count << " × " << failure << "\n";
    EXPECT_EQ(failure.rfind("Append StorageError", 0), 0u)
        << "only persisted calls may fail, with StorageError: " << failure;
  }
  for (const auto& name : {"manager", "runner-1", "runner-2", "proxy"})
    EXPECT_TRUE(slots.at(name)->running()) << name << " died with the database";
  for (const auto& problem : overlapping_owners(owner_log)) ADD_FAILURE() << problem;
  run_command(script + " stop " + pg_dir.string(), code);
}

}  // namespace
}  // namespace cluster::testing
