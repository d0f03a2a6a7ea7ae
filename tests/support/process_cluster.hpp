#pragma once
// The real binaries (manager, runners, proxy) as child processes on loopback ports, for
// tests that kill, restart and overload them; plus a load generator that keeps calling the
// proxy from its own thread meanwhile.

#include <gtest/gtest.h>

#include <atomic>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "child_process.hpp"
#include "cluster_fixture.hpp"
#include "test_postgres.hpp"

namespace cluster::testing {

/// Fixture: one scratch folder per test, free ports, and the processes by name
/// ("manager", "proxy", "runner-N"). Children end with the test (SIGTERM, then SIGKILL).
class process_cluster_test : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;

  /// `--set` arguments for the storage every server uses (memory unless `use_postgres`).
  std::vector<std::string> storage() const;
  child_process& start(const std::string& name, const std::string& program,
                       std::vector<std::string> args);
  child_process& start_manager(std::vector<std::string> extra = {});
  child_process& start_runner(int n, std::vector<std::string> extra = {});
  child_process& start_proxy(std::vector<std::string> extra = {});
  /// Ends a process with `signal` and keeps its record (exit status) in `ended`.
  std::optional<int> end(const std::string& name, int signal,
                         std::chrono::milliseconds timeout = std::chrono::seconds(40));

  nlohmann::json status();
  bool wait_for(const std::function<bool()>& done,
                std::chrono::milliseconds timeout = std::chrono::seconds(30));
  /// Exactly `runners` runners registered, all healthy, every shard assigned and balanced
  /// within one (`clusterctl wait`, up to 30 s; its last observation goes to stderr).
  bool ready(std::size_t runners);
  /// Runs `clusterctl wait --timeout-s <timeout> <conditions>` against this cluster's manager
  /// and proxy; its exit status, and what it printed (stdout and stderr) in `output`.
  int clusterctl_wait(const std::string& conditions, std::chrono::seconds timeout,
                      std::string& output);
  /// The name of the runner owning the most shards.
  std::string busiest_runner();
  std::string clusterctl(const std::string& args, int& code);

  bool use_postgres = false;
  std::string pg_url = test_pg_url();  ///< the database the servers use with use_postgres
  std::filesystem::path dir;
  std::string prefix, run_log, owner_log;
  /// The credentials folder every process and clusterctl of the test uses.
  std::string credentials;
  std::uint16_t manager_port = 0, proxy_port = 0;
  std::vector<std::uint16_t> runner_ports;  // runner-N listens on runner_ports[N - 1]
  std::map<std::string, std::unique_ptr<child_process>> slots;
  std::vector<std::unique_ptr<child_process>> ended;
};

/// The same on PostgreSQL (CLUSTER_TEST_PG_URL); skips the test when it is not set.
class pg_cluster_test : public process_cluster_test {
 protected:
  void SetUp() override {
    if (test_pg_url().empty())
      GTEST_SKIP() << "CLUSTER_TEST_PG_URL is not set (run through scripts/dev test)";
    use_postgres = true;
    process_cluster_test::SetUp();
  }
};

/// Calls the proxy continuously from its own thread: `clients` connections with `window`
/// calls in flight each, alternating persisted `Probe.Append` (unique primary keys) and
/// volatile `Probe.Echo` over `entities` ids, until `stop`.
class load_generator {
 public:
  struct options {
    int clients = 4;
    int window = 4;
    int entities = 64;
    bool persisted = true;
    bool volatile_calls = true;
    std::uint32_t timeout_ms = 30000;
  };
  struct result {
    std::size_t sent = 0;
    std::size_t ok = 0;
    std::size_t persisted_ok = 0;
    std::map<std::string, std::size_t> failures;  // "Rpc Code: message" → count
    std::size_t failed() const;
  };

  load_generator(std::uint16_t proxy_port, options opts);
  ~load_generator();
  /// Waits until at least `n` calls were answered (or `timeout` passes).
  bool wait_answered(std::size_t n, std::chrono::milliseconds timeout);
  /// Stops sending, waits for every outstanding call and returns the totals.
  result stop();
  std::size_t answered() const { return answered_; }

 private:
  void run();

  std::uint16_t proxy_port_;
  options options_;
  std::atomic<bool> stopping_{false};
  std::atomic<std::size_t> answered_{0};
  std::mutex mutex_;
  result result_;
  std::thread thread_;
};

/// Milliseconds until `entities` Probe ids (spread over the shards) have all answered an
/// Echo through the proxy (at most `limit`); calls are concurrent with 250 ms deadlines.
/// With a `persisted_tag`, each id must also have answered a persisted Append (primary key
/// "<tag>-<n>", 600 ms deadlines).
std::int64_t time_until_all_answer(std::uint16_t proxy_port, int entities,
                                   std::chrono::milliseconds limit,
                                   const std::string& persisted_tag = {});

/// Every run of Probe.Append from CLUSTER_PROBE_OWNER_LOG: entity → (process, activation)
/// → [first, last] CLOCK_MONOTONIC ns. Reports entities run by two activations at
/// overlapping times (two owners at once), each as one failure line.
std::vector<std::string> overlapping_owners(const std::string& owner_log);

}  // namespace cluster::testing
