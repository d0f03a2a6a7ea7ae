// The real binaries as separate processes: manager, runners, proxy, gateway and clusterctl
// (its calls, its errors and `clusterctl wait`, met and timed out).
#include <gtest/gtest.h>
#include <signal.h>

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

#include "process_cluster.hpp"

namespace cluster::testing {
namespace {

using namespace std::chrono_literals;
const std::string bin = CLUSTER_BIN_DIR;

class processes : public process_cluster_test {
 protected:
  child_process& start_gateway(std::uint16_t port) {
    return start(
        "gateway", "cluster-gateway",
        {"--set", "gateway.host=127.0.0.1", "--set", "gateway.port=" + std::to_string(port),
         "--set", "gateway.proxy=127.0.0.1:" + std::to_string(proxy_port)});
  }
  std::string log(const std::string& name) {
    std::ifstream in(dir / (name + ".log"));
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }
};

TEST_F(processes, serve_the_seed_call_and_spread_entities_over_both_runners) {
  start_manager();
  start_runner(1);
  start_runner(2);
  start_proxy();
  ASSERT_TRUE(ready(2));
  int status = 0;
  auto out = clusterctl("call Greeter Test Greet '{\"name\":\"John\"}'", status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_EQ(nlohmann::json::parse(out)["message"], "Hello, John! from Test Greeter 216");
  std::set<std::string> shards;
  for (int i = 0; i < 60; ++i) {
    out = clusterctl("call Greeter user-" + std::to_string(i) + " GreetVolatile '{\"name\":\"x\"}'",
                     status);
    ASSERT_EQ(status, 0) << out;
    const std::string message = nlohmann::json::parse(out)["message"];
    shards.insert(message.substr(message.rfind(' ') + 1));
  }
  EXPECT_GE(shards.size(), 40u);
  const auto s = process_cluster_test::status();
  ASSERT_EQ(s["runners"].size(), 2u);
  for (const auto& runner : s["runners"]) EXPECT_EQ(runner["shards"], 150);
  EXPECT_EQ(s["storage"], "memory");
}

TEST_F(processes, clusterctl_exits_non_zero_with_a_one_line_error) {
  start_manager();
  start_runner(1);
  start_proxy();
  ASSERT_TRUE(ready(1));
  int status = 0;
  auto out = clusterctl("call Greeter Test NoSuchRpc '{}'", status);
  EXPECT_EQ(status, 1);
  EXPECT_EQ(out.rfind("error: UnknownRpc:", 0), 0u) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1);
  out = clusterctl("call Greeter Test Greet '{not json'", status);
  EXPECT_EQ(status, 1);
  EXPECT_EQ(out.rfind("error: InvalidJson:", 0), 0u) << out;
  // A bad command line is a usage error (2), not a failed call.
  out = clusterctl("call Greeter Test", status);
  EXPECT_EQ(status, 2) << out;
  out = clusterctl("call --deliver-at-ms soon Greeter Test Greet '{}'", status);
  EXPECT_EQ(status, 2) << out;
  EXPECT_NE(out.find("--deliver-at-ms"), std::string::npos) << out;
}

TEST_F(processes, clusterctl_reads_its_addresses_from_the_environment) {
  start_manager();
  start_runner(1);
  start_proxy();
  ASSERT_TRUE(ready(1));
  int status = 0;
  const auto env = "CLUSTER_MANAGER_ADDRESS=127.0.0.1:" + std::to_string(manager_port) +
                   " CLUSTER_PROXY_ADDRESS=127.0.0.1:" + std::to_string(proxy_port) + " ";
  auto out = run_command(env + bin + "/clusterctl status --json 2>&1", status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_EQ(nlohmann::json::parse(out)["manager"], "127.0.0.1:" + std::to_string(manager_port));
  out = run_command(env + bin + "/clusterctl call Counter env Increment '{\"by\":2}' 2>&1", status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_EQ(nlohmann::json::parse(out)["value"], 2);
  // The command line wins over the environment.
  out = run_command(env + bin + "/clusterctl --manager 127.0.0.1:1 status 2>&1", status);
  EXPECT_EQ(status, 1) << out;
}

TEST_F(processes, clusterctl_wait_returns_once_every_condition_holds_and_says_what_it_saw) {
  start_manager();
  start_runner(1);
  start_runner(2);
  start_proxy();
  const auto gateway_port = free_port();
  start_gateway(gateway_port);
  std::string out;
  const int code = clusterctl_wait(
      "manager runners 2 --exactly shards --balanced runner runner-2 "
      "call Greeter Test Greet '{\"name\":\"John\"}' gateway http://127.0.0.1:" +
          std::to_string(gateway_port) + "/",
      60s, out);
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("manager 127.0.0.1:" + std::to_string(manager_port) + " answers"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find("2 healthy runners: runner-1 runner-2"), std::string::npos) << out;
  EXPECT_NE(out.find("300 of 300 shards assigned to healthy runners"), std::string::npos) << out;
  EXPECT_NE(out.find("runner-2 is serving 150 shards"), std::string::npos) << out;
  EXPECT_NE(out.find("{\"message\":\"Hello, John! from Test Greeter 216\"}"), std::string::npos)
      << out;
  EXPECT_NE(out.find("HTTP 200 "), std::string::npos) << out;
  // Met at once when it already holds.
  EXPECT_EQ(clusterctl_wait("runners 1", 5s, out), 0) << out;
}

TEST_F(processes, clusterctl_wait_gives_up_at_its_deadline_with_the_last_observed_state) {
  std::string out;
  // No manager at all.
  EXPECT_EQ(clusterctl_wait("manager", 1s, out), 1) << out;
  EXPECT_EQ(out.rfind("error: Timeout: waited 1s for the manager at 127.0.0.1:", 0), 0u) << out;
  EXPECT_NE(out.find("last observed: manager 127.0.0.1:" + std::to_string(manager_port) +
                     ": Unavailable"),
            std::string::npos)
      << out;

  start_manager();
  start_runner(1);
  start_proxy();
  ASSERT_TRUE(ready(1));
  const auto started = std::chrono::steady_clock::now();
  EXPECT_EQ(clusterctl_wait("runners 2", 2s, out), 1) << out;
  EXPECT_LT(std::chrono::steady_clock::now() - started, 20s);
  EXPECT_NE(out.find("waited 2s for 2 healthy runners; last observed: runner-1 300 shards"),
            std::string::npos)
      << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;

  EXPECT_EQ(clusterctl_wait("runner runner-9", 1s, out), 1) << out;
  EXPECT_NE(out.find("runner-9 is not registered (runner-1 300 shards)"), std::string::npos) << out;

  // Every condition is judged on the same observation: one unmet one fails the wait.
  EXPECT_EQ(clusterctl_wait("shards runner runner-9", 1s, out), 1) << out;
  EXPECT_NE(out.find("runner-9 is not registered"), std::string::npos) << out;

  EXPECT_EQ(clusterctl_wait("call Greeter Test NoSuchRpc '{}'", 1s, out), 1) << out;
  EXPECT_NE(out.find("last observed: UnknownRpc:"), std::string::npos) << out;

  const auto nobody = free_port();
  EXPECT_EQ(clusterctl_wait("gateway http://127.0.0.1:" + std::to_string(nobody) + "/", 1s, out), 1)
      << out;
  EXPECT_NE(out.find("GET http://127.0.0.1:" + std::to_string(nobody) + "/: "), std::string::npos)
      << out;

  EXPECT_EQ(clusterctl_wait("runners two", 1s, out), 2) << out;
  EXPECT_EQ(clusterctl_wait("gateway ftp://x/", 1s, out), 1) << out;
  EXPECT_NE(out.find("is not an http:// URL"), std::string::npos) << out;
}

TEST_F(processes, clusterctl_wait_fails_at_once_when_a_watched_process_ends) {
  start_manager();
  auto& runner = start_runner(1);
  start_proxy();
  ASSERT_TRUE(ready(1));
  const auto runner_pid = runner.pid();
  // Three runners never come; the wait would run for a minute unless the watch ends it.
  auto waiting = launch::child::spawn(
      {bin + "/clusterctl",
       {"--manager", "127.0.0.1:" + std::to_string(manager_port), "wait", "--timeout-s", "60",
        "--watch", "runner-1=" + std::to_string(runner_pid), "runners", "3"},
       (dir / "wait.log").string(),
       false});
  ASSERT_TRUE(waiting.has_value()) << waiting.error().message;
  const auto started = std::chrono::steady_clock::now();
  end("runner-1", SIGKILL);
  EXPECT_EQ(waiting.value().wait(30s), std::optional<int>(1));
  EXPECT_LT(std::chrono::steady_clock::now() - started, 30s);
  const auto out = log("wait");
  EXPECT_NE(out.find("error: Exited: runner-1 (pid " + std::to_string(runner_pid) +
                     ") exited while waiting for 3 healthy runners"),
            std::string::npos)
      << out;
}

TEST_F(processes, stop_cleanly_on_sigterm_and_hand_shards_to_the_survivor) {
  start_manager();
  auto& first = start_runner(1);
  start_runner(2);
  start_proxy();
  ASSERT_TRUE(ready(2));
  EXPECT_EQ(first.stop(SIGTERM, 10s), std::optional<int>(0));
  ASSERT_TRUE(ready(1));
  int status = 0;
  const auto out = clusterctl("call Counter c Increment '{\"by\":3}'", status);
  EXPECT_EQ(status, 0) << out;
  for (auto& [name, child] : slots) {
    if (child->running()) {
      EXPECT_EQ(child->stop(SIGTERM, 10s), std::optional<int>(0)) << name;
    }
  }
}

TEST_F(processes, refuse_a_configuration_with_an_unknown_key) {
  auto& bad = start("bad", "cluster-manager", {"--set", "manager.no_such_key=1"});
  EXPECT_EQ(bad.stop(0, 10s), std::optional<int>(2));
  const auto text = log("bad");
  EXPECT_NE(text.find("manager.no_such_key"), std::string::npos) << text;
}

// The admin verb: the runner stays up, but its shards move to the other runner.
TEST_F(processes, clusterctl_runners_unregister_moves_that_runners_shards_to_the_others) {
  start_manager();
  start_runner(1);
  start_runner(2);
  start_proxy();
  ASSERT_TRUE(ready(2));
  const std::string manager = "--manager 127.0.0.1:" + std::to_string(manager_port) + " ";
  const std::string first = "127.0.0.1:" + std::to_string(runner_ports.at(0));
  int code = 0;
  auto out = clusterctl(manager + "runners unregister " + first, code);
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("runner " + first + " unregistered"), std::string::npos) << out;
  ASSERT_TRUE(wait_for([&] {
    const auto s = status();
    return s.is_object() && s["runners"].size() == 1 && s["runners"][0]["name"] == "runner-2" &&
           s["runners"][0]["shards"] == 300;
  }));
  out = clusterctl("call Greeter Test Greet '{\"name\":\"John\"}'", code);
  EXPECT_EQ(code, 0) << out;
  out = clusterctl(manager + "runners unregister 127.0.0.1:1", code);
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("InvalidRequest: no runner is registered at 127.0.0.1:1"), std::string::npos)
      << out;
}

}  // namespace
}  // namespace cluster::testing
