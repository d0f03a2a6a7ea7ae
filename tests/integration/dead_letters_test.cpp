// Poison messages with the real binaries on a real PostgreSQL, plugins in the runner's own
// process (runner.isolation "none"): a persisted call whose handler aborts kills every
// runner that runs it. Runners are restarted the way a supervisor would (ECS, scripts/dev);
// after storage.max_attempts the message is dead-lettered, its caller gets the error, the
// other entities answer throughout, and `clusterctl dead-letters` lists, replays and drops
// it. Skipped without CLUSTER_TEST_PG_URL. Every wait is for an event with a deadline.
#include <unistd.h>

#include <atomic>
#include <fstream>
#include <iostream>

#include "process_cluster.hpp"

namespace cluster::testing {
namespace {

using namespace std::chrono_literals;
using json = nlohmann::json;

class dead_letters : public pg_cluster_test {
 protected:
  void SetUp() override {
    pg_cluster_test::SetUp();
    if (IsSkipped()) return;
    start_manager();
    for (int n = 1; n <= runners; ++n) start_runner_with_faulty(n);
    start_proxy();
    ASSERT_TRUE(ready(runners));
  }

  /// Plugins in the runner (isolation "none"): an abort in a handler ends the runner.
  void start_runner_with_faulty(int n) {
    start_runner(n, {"--set",
                     "runner.plugins=" + std::string(CLUSTER_PLUGIN_DIR) + "," +
                         CLUSTER_TEST_PLUGIN_DIR + "/libprobe_plugin.so," + CLUSTER_FAULTY_PLUGIN,
                     "--set", "runner.isolation=none"});
  }

  /// Restarts the runners that died (a supervisor's job); how many it restarted.
  int supervise() {
    int restarted = 0;
    for (int n = 1; n <= runners; ++n) {
      auto it = slots.find("runner-" + std::to_string(n));
      if (it != slots.end() && it->second->running()) continue;
      start_runner_with_faulty(n);
      ++restarted;
    }
    return restarted;
  }

  std::string call(const std::string& args, int& code, int timeout_ms = 2000) {
    return run_command(std::string(CLUSTER_BIN_DIR) + "/clusterctl --proxy 127.0.0.1:" +
                           std::to_string(proxy_port) + " --timeout-ms " +
                           std::to_string(timeout_ms) + " call " + args + " 2>&1",
                       code);
  }
  std::string manager_ctl(const std::string& args, int& code) {
    return run_command(std::string(CLUSTER_BIN_DIR) + "/clusterctl --manager 127.0.0.1:" +
                           std::to_string(manager_port) + " " + args + " 2>&1",
                       code);
  }
  json list_dead_letters() {
    int code = 0;
    const auto out = manager_ctl("dead-letters list --json", code);
    EXPECT_EQ(code, 0) << out;
    return json::parse(out, nullptr, false);
  }

  /// Retries `args` (a persisted call with a primary key, as its caller would) while
  /// restarting the runners it kills, until its answer contains `wanted`. The answer, and
  /// in `crashes` how many runners were restarted.
  std::string call_until(const std::string& args, const std::string& wanted, int& crashes,
                         std::chrono::seconds limit = 120s) {
    std::string out;
    const bool answered = wait_for(
        [&] {
          crashes += supervise();
          int code = 0;
          out = call(args, code);
          return out.find(wanted) != std::string::npos;
        },
        limit);
    EXPECT_TRUE(answered) << "no '" << wanted << "' for " << args << "; last answer: " << out;
    crashes += supervise();
    return out;
  }

  /// Volatile and persisted calls to other entities still answer.
  void expect_others_answer(const std::string& tag) {
    int code = 0;
    std::string out;
    EXPECT_TRUE(wait_for(
        [&] {
          supervise();
          out = call("Faulty y Who '{}'", code, 5000);
          return code == 0;
        },
        60s))
        << tag << ": Faulty/y Who: " << out;
    out =
        call("--key " + tag + " Probe bystander Append '{\"sender\":\"" + tag + "\",\"value\":1}'",
             code, 30000);
    EXPECT_EQ(code, 0) << tag << ": a persisted Probe call failed: " << out;
  }

  static constexpr int runners = 2;
};

TEST_F(dead_letters, a_message_that_kills_its_runner_is_dead_lettered_after_three_attempts) {
  // Persisted calls stored before the poison must all run.
  int code = 0;
  for (int n = 0; n < 5; ++n) {
    const auto out = call("--key before-" + std::to_string(n) + " Probe bystander Append " +
                              "'{\"sender\":\"before\",\"value\":" + std::to_string(n) + "}'",
                          code, 30000);
    ASSERT_EQ(code, 0) << out;
  }
  const auto start = std::chrono::steady_clock::now();
  int crashes = 0;
  const auto answer = call_until("--key poison Faulty x Crash '{\"mode\":\"abort\"}'",
                                 "dead-lettered after 3 attempts", crashes);
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(
                        std::chrono::steady_clock::now() - start)
                        .count();
  std::cout << "dead-lettered after " << crashes << " runner crashes, " << took << " ms\n";
  EXPECT_NE(answer.find("Defect"), std::string::npos) << answer;
  EXPECT_NE(answer.find("the runner running it stopped"), std::string::npos) << answer;
  EXPECT_GE(crashes, 2) << "each attempt killed a runner";
  EXPECT_LE(crashes, 3) << "no attempt after the third";

  const auto letters = list_dead_letters();
  ASSERT_TRUE(letters.is_array());
  ASSERT_EQ(letters.size(), 1u) << letters.dump();
  const auto& letter = letters[0];
  EXPECT_EQ(letter["entity_type"], "Faulty");
  EXPECT_EQ(letter["entity_id"], "x");
  EXPECT_EQ(letter["rpc"], "Crash");
  EXPECT_EQ(letter["primary_key"], "poison");
  EXPECT_EQ(letter["attempts"], 3);
  EXPECT_EQ(letter["last_failure"], "the runner running it stopped");

  // The cluster serves everything else, the poison is not run again, and a later caller
  // with its key gets the stored error at once.
  ASSERT_TRUE(ready(runners));
  expect_others_answer("after-poison");
  auto again = call("--key poison Faulty x Crash '{\"mode\":\"abort\"}'", code);
  EXPECT_NE(code, 0);
  EXPECT_NE(again.find("dead-lettered after 3 attempts"), std::string::npos) << again;
  EXPECT_EQ(supervise(), 0) << "a runner died after the message was dead-lettered";
  std::ifstream log(run_log);
  std::set<std::string> ran;
  for (std::string line; std::getline(log, line);) ran.insert(line);
  for (int n = 0; n < 5; ++n)
    EXPECT_TRUE(ran.count("before:" + std::to_string(n))) << "stored call " << n << " never ran";

  // Dropped: the listing forgets it, its callers keep the error.
  const auto id = std::to_string(letter["id"].get<std::int64_t>());
  auto dropped = manager_ctl("dead-letters drop " + id, code);
  EXPECT_EQ(code, 0) << dropped;
  EXPECT_TRUE(list_dead_letters().empty());
  again = call("--key poison Faulty x Crash '{\"mode\":\"abort\"}'", code);
  EXPECT_NE(again.find("dead-lettered after 3 attempts"), std::string::npos) << again;
  dropped = manager_ctl("dead-letters drop " + id, code);
  EXPECT_NE(code, 0);
  EXPECT_NE(dropped.find("no dead letter " + id), std::string::npos) << dropped;
}

TEST_F(dead_letters, a_replayed_dead_letter_runs_again_once_its_fault_is_gone) {
  const auto marker = (dir / "crash-while-this-exists").string();
  std::ofstream(marker) << "crash\n";
  const std::string args = "--key transient Faulty z CrashWhile '{\"path\":\"" + marker + "\"}'";
  int crashes = 0;
  call_until(args, "dead-lettered after 3 attempts", crashes);
  auto letters = list_dead_letters();
  ASSERT_EQ(letters.size(), 1u) << letters.dump();
  const auto id = std::to_string(letters[0]["id"].get<std::int64_t>());
  ASSERT_TRUE(ready(runners));

  // The fault is fixed; the operator replays the message; its caller's retry gets the reply
  // of the new run instead of the error.
  std::filesystem::remove(marker);
  int code = 0;
  const auto replayed = manager_ctl("dead-letters replay " + id, code);
  ASSERT_EQ(code, 0) << replayed;
  const auto answer = call_until(args, "\"mode\":\"ok\"", crashes, 60s);
  EXPECT_NE(answer.find("\"pid\""), std::string::npos) << answer;
  EXPECT_TRUE(list_dead_letters().empty());
  const auto unknown = manager_ctl("dead-letters replay " + id, code);
  EXPECT_NE(code, 0) << "replayed twice: " << unknown;
  expect_others_answer("after-replay");
}

/// The same with runner.isolation = "process": the plugin's process dies, the runner stays.
class dead_letters_isolated : public pg_cluster_test {
 protected:
  void SetUp() override {
    pg_cluster_test::SetUp();
    if (IsSkipped()) return;
    start_manager();
    runner_pid =
        start_runner(
            1, {"--set",
                "runner.plugins=" + std::string(CLUSTER_PLUGIN_DIR) + "," + CLUSTER_FAULTY_PLUGIN,
                "--set", "runner.isolation=process", "--set",
                std::string("runner.plugin_host=") + CLUSTER_BIN_DIR + "/cluster-plugin-host"})
            .pid();
    start_proxy();
    ASSERT_TRUE(ready(1));
  }
  std::string call(const std::string& args, int& code) {
    return run_command(std::string(CLUSTER_BIN_DIR) +
                           "/clusterctl --proxy 127.0.0.1:" + std::to_string(proxy_port) +
                           " --timeout-ms 30000 call " + args + " 2>&1",
                       code);
  }
  long runner_pid = 0;
};

TEST_F(dead_letters_isolated,
       a_crashing_persisted_call_is_retried_then_dead_lettered_while_its_caller_waits) {
  int code = 0;
  // One call: its caller waits through every attempt and gets the dead letter's reply.
  const auto start = std::chrono::steady_clock::now();
  const auto answer = call("--key poison Faulty x Crash '{\"mode\":\"abort\"}'", code);
  std::cout << "dead-lettered in "
            << std::chrono::duration_cast<std::chrono::milliseconds>(
                   std::chrono::steady_clock::now() - start)
                   .count()
            << " ms: " << answer;
  EXPECT_NE(code, 0);
  EXPECT_NE(answer.find("Defect: dead-lettered after 3 attempts: "), std::string::npos) << answer;
  EXPECT_EQ(answer.find("the runner running it stopped"), std::string::npos)
      << "the last failure is the plugin's crash: " << answer;
  EXPECT_TRUE(slots.at("runner-1")->running()) << "the runner died with its plugin";
  EXPECT_EQ(slots.at("runner-1")->pid(), runner_pid);
  const auto counter = call("Counter c1 Increment '{\"by\":1}'", code);
  EXPECT_EQ(code, 0) << counter;
  std::string who;
  EXPECT_TRUE(wait_for(
      [&] {
        who = call("Faulty y Who '{}'", code);
        return code == 0;
      },
      30s))
      << who;

  // A fault that goes away before the attempts run out: the caller gets the real reply.
  const auto marker = (dir / "crash-while-this-exists").string();
  std::ofstream(marker) << "crash\n";
  // Attempts the runner saw cut short so far (its log has one line for each).
  const auto cut_short = [this] {
    std::ifstream log(dir / "runner-1.log");
    std::size_t count = 0;
    for (std::string line; std::getline(log, line);)
      count += line.find("; counting the attempt") != std::string::npos ? 1 : 0;
    return count;
  };
  const auto before = cut_short();
  EXPECT_GE(before, 3u) << "the poison's attempts were cut short";
  std::atomic<bool> crashed{false};
  std::thread fix([&] {
    // Fixed once the first attempt was cut short, well before the attempts run out (reruns
    // wait 100 ms, then 200 ms).
    crashed = wait_for([&] { return cut_short() > before; }, 30s);
    std::filesystem::remove(marker);
  });
  const auto transient =
      call("--key transient Faulty z CrashWhile '{\"path\":\"" + marker + "\"}'", code);
  fix.join();
  EXPECT_EQ(code, 0) << transient;
  EXPECT_NE(transient.find("\"mode\":\"ok\""), std::string::npos) << transient;
  EXPECT_TRUE(crashed) << "the first attempt did not crash";
}

class dead_letters_memory : public process_cluster_test {};

TEST_F(dead_letters_memory, a_manager_on_the_memory_backend_says_dead_letters_need_postgres) {
  start_manager();
  std::string out;
  ASSERT_EQ(clusterctl_wait("manager", 30s, out), 0) << out;
  int code = 0;
  out = run_command(std::string(CLUSTER_BIN_DIR) + "/clusterctl --manager 127.0.0.1:" +
                        std::to_string(manager_port) + " dead-letters list 2>&1",
                    code);
  EXPECT_NE(code, 0);
  EXPECT_NE(out.find("InvalidRequest: dead letters need the postgres storage backend"),
            std::string::npos)
      << out;
}

}  // namespace
}  // namespace cluster::testing
