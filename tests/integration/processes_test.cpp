// The real binaries as separate processes: manager, two runners, proxy and clusterctl.
#include <gtest/gtest.h>
#include <signal.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "child_process.hpp"

namespace cluster::testing {
namespace {

using namespace std::chrono_literals;
const std::string bin = CLUSTER_BIN_DIR;

class processes : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = std::filesystem::temp_directory_path() /
          ("cluster-processes-" + std::to_string(::getpid()) + "-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir);
    manager_port = free_port();
    proxy_port = free_port();
    manager = "127.0.0.1:" + std::to_string(manager_port);
    proxy = "127.0.0.1:" + std::to_string(proxy_port);
  }
  void TearDown() override {
    children.clear();  // SIGTERM, then SIGKILL, by PID
    if (!HasFailure()) std::filesystem::remove_all(dir);
  }

  child_process& start(const std::string& name, const std::string& program,
                       std::vector<std::string> args) {
    children.push_back(std::make_unique<child_process>(bin + "/" + program, args,
                                                       (dir / (name + ".log")).string()));
    return *children.back();
  }
  child_process& start_manager() {
    std::vector<std::string> args{"--set", "manager.port=" + std::to_string(manager_port)};
    args.insert(args.end(), storage_args.begin(), storage_args.end());
    return start("manager", "cluster-manager", args);
  }
  /// Runner n listens on a fixed port so that a restarted runner keeps its address.
  child_process& start_runner(int n) {
    while (runner_ports.size() < static_cast<std::size_t>(n)) runner_ports.push_back(free_port());
    std::vector<std::string> args{"--set",
                                  "runner.name=runner-" + std::to_string(n),
                                  "--set",
                                  "runner.port=" + std::to_string(runner_ports[n - 1]),
                                  "--set",
                                  "runner.manager=" + manager,
                                  "--set",
                                  "runner.plugins=" + std::string(CLUSTER_PLUGIN_DIR) + "," +
                                      CLUSTER_TEST_PLUGIN_DIR + "/libprobe_plugin.so"};
    args.insert(args.end(), storage_args.begin(), storage_args.end());
    return start("runner-" + std::to_string(n), "cluster-runner", args);
  }
  child_process& start_proxy() {
    return start(
        "proxy", "cluster-proxy",
        {"--set", "proxy.port=" + std::to_string(proxy_port), "--set", "proxy.manager=" + manager});
  }
  std::string clusterctl(const std::string& args, int& status) {
    return run_command(
        bin + "/clusterctl --manager " + manager + " --proxy " + proxy + " " + args + " 2>&1",
        status);
  }
  nlohmann::json status_json() {
    int status = 0;
    const auto out = clusterctl("status --json", status);
    if (status != 0) return nullptr;
    return nlohmann::json::parse(out, nullptr, false);
  }
  bool wait_for(const std::function<bool()>& done, std::chrono::milliseconds timeout = 20s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(50ms);
    }
    return true;
  }
  bool cluster_ready(std::size_t runners) {
    return wait_for([&] {
      const auto s = status_json();
      return s.is_object() && s["runners"].size() == runners && s["unassigned_shards"] == 0;
    });
  }

  std::filesystem::path dir;
  std::uint16_t manager_port = 0, proxy_port = 0;
  std::string manager, proxy;
  std::vector<std::unique_ptr<child_process>> children;
  std::vector<std::string> storage_args;
  std::vector<std::uint16_t> runner_ports;
};

TEST_F(processes, serve_the_seed_call_and_spread_entities_over_both_runners) {
  start_manager();
  start_runner(1);
  start_runner(2);
  start_proxy();
  ASSERT_TRUE(cluster_ready(2));
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
  const auto s = status_json();
  ASSERT_EQ(s["runners"].size(), 2u);
  for (const auto& runner : s["runners"]) EXPECT_EQ(runner["shards"], 150);
  EXPECT_EQ(s["storage"], "memory");
}

TEST_F(processes, clusterctl_exits_non_zero_with_a_one_line_error) {
  start_manager();
  start_runner(1);
  start_proxy();
  ASSERT_TRUE(cluster_ready(1));
  int status = 0;
  auto out = clusterctl("call Greeter Test NoSuchRpc '{}'", status);
  EXPECT_NE(status, 0);
  EXPECT_EQ(out.rfind("error: UnknownRpc:", 0), 0u) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1);
  out = clusterctl("call Greeter Test Greet '{not json'", status);
  EXPECT_NE(status, 0);
  EXPECT_EQ(out.rfind("error: InvalidJson:", 0), 0u) << out;
}

TEST_F(processes, stop_cleanly_on_sigterm_and_hand_shards_to_the_survivor) {
  start_manager();
  auto& first = start_runner(1);
  start_runner(2);
  start_proxy();
  ASSERT_TRUE(cluster_ready(2));
  EXPECT_EQ(first.stop(SIGTERM, 10s), std::optional<int>(0));
  ASSERT_TRUE(cluster_ready(1));
  int status = 0;
  const auto out = clusterctl("call Counter c Increment '{\"by\":3}'", status);
  EXPECT_EQ(status, 0) << out;
  for (auto& child : children) {
    if (child->running()) {
      EXPECT_EQ(child->stop(SIGTERM, 10s), std::optional<int>(0));
    }
  }
}

TEST_F(processes, refuse_a_configuration_with_an_unknown_key) {
  auto& bad = start("bad", "cluster-manager", {"--set", "manager.no_such_key=1"});
  EXPECT_EQ(bad.stop(0, 10s), std::optional<int>(2));
  std::ifstream log(dir / "bad.log");
  const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("manager.no_such_key"), std::string::npos) << text;
}

}  // namespace
}  // namespace cluster::testing
