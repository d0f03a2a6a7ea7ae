// Plugin isolation with the real binaries: a runner with runner.isolation = "process" runs
// the faulty plugin (built out of tree) in a cluster-plugin-host child. A handler that
// segfaults, aborts, loops or allocates without bound fails only its own request, with a
// Defect naming the plugin, what happened and the request; the runner stays up and every
// other entity keeps answering, and the plugin's next process serves its entities again.
#include <signal.h>

#include <fstream>

#include "process_cluster.hpp"

namespace cluster::testing {
namespace {

using namespace std::chrono_literals;

class isolation : public process_cluster_test {
 protected:
  void start_cluster(std::vector<std::string> runner_settings, const char* mode = "process") {
    start_manager();
    std::vector<std::string> args = {
        "--set", "runner.plugins=" + std::string(CLUSTER_PLUGIN_DIR) + "," + CLUSTER_FAULTY_PLUGIN,
        "--set", std::string("runner.isolation=") + mode,
        "--set", std::string("runner.plugin_host=") + CLUSTER_BIN_DIR + "/cluster-plugin-host"};
    for (auto& setting : runner_settings) {
      args.push_back("--set");
      args.push_back(setting);
    }
    runner_pid = start_runner(1, args).pid();
    start_proxy();
    ASSERT_TRUE(ready(1));
  }

  std::string call(const std::string& arguments) {
    int code = 0;
    return clusterctl("call " + arguments, code);
  }

  /// The pid of the process that runs Faulty entities (from Who), or 0 when the call fails.
  long plugin_pid(const std::string& id) {
    const auto reply = call("Faulty " + id + " Who '{}'");
    const auto json = nlohmann::json::parse(reply, nullptr, false);
    return json.is_object() && json.contains("pid") ? json["pid"].get<long>() : 0;
  }

  /// Runs `mode` in a volatile handler and checks what its caller, the runner and the other
  /// entities see.
  void expect_contained(const std::string& mode, const std::string& expected_error) {
    const long before = plugin_pid("bystander");
    ASSERT_GT(before, 0);
    ASSERT_NE(before, runner_pid) << "the plugin runs in the runner's process";
    const auto reply = call("Faulty victim CrashVolatile '{\"mode\":\"" + mode + "\"}'");
    EXPECT_NE(reply.find("Defect"), std::string::npos) << reply;
    EXPECT_NE(reply.find(expected_error), std::string::npos) << reply;
    // The runner is the same process, and entities of other plugins never noticed.
    EXPECT_TRUE(slots.at("runner-1")->running());
    EXPECT_NE(call("Counter c1 Increment '{\"by\":1}'").find("value"), std::string::npos);
    // The plugin's entities answer again, from its next process, within the restart backoff.
    long after = 0;
    EXPECT_TRUE(wait_for([&] { return (after = plugin_pid("bystander")) > 0; }, 10s));
    EXPECT_NE(after, before) << "the plugin's process was not replaced";
    EXPECT_NE(call("Faulty victim CrashVolatile '{\"mode\":\"ok\"}'").find("\"ok\""),
              std::string::npos);
  }

  long runner_pid = 0;
};

TEST_F(isolation, a_segfaulting_handler_fails_only_its_own_request) {
  start_cluster({});
  expect_contained("segfault",
                   "plugin libfaulty.so crashed: SIGSEGV while running Faulty/victim "
                   "CrashVolatile");
}

TEST_F(isolation, an_aborting_handler_fails_only_its_own_request) {
  start_cluster({});
  expect_contained("abort",
                   "plugin libfaulty.so crashed: SIGABRT while running Faulty/victim "
                   "CrashVolatile");
}

TEST_F(isolation, a_handler_past_its_time_is_killed_with_its_process) {
  start_cluster({"runner.handler_timeout_ms=500"});
  expect_contained("loop",
                   "plugin libfaulty.so killed: Faulty/victim CrashVolatile ran past "
                   "runner.handler_timeout_ms (500 ms)");
}

TEST_F(isolation, a_handler_over_the_memory_limit_is_killed_with_its_process) {
  start_cluster({"runner.plugin_memory_limit_mb=256"});
  expect_contained("alloc",
                   "plugin libfaulty.so killed: over runner.plugin_memory_limit_mb (256 MB");
}

TEST_F(isolation, requests_in_flight_in_a_crashed_process_fail_and_the_rest_are_served) {
  start_cluster({});
  // Entities of the plugin called while the crash happens either answer or fail with the
  // crash's Defect; none is lost and none waits until its deadline.
  std::vector<std::thread> callers;
  std::atomic<int> answered{0}, crashed{0}, other{0};
  for (int i = 0; i < 4; ++i)
    callers.emplace_back([&, i] {
      for (int n = 0; n < 20; ++n) {
        const auto reply = call("Faulty e" + std::to_string(i) + " Who '{}'");
        if (reply.find("\"pid\"") != std::string::npos) {
          ++answered;
        } else if (reply.find("PluginCrashed") != std::string::npos ||
                   reply.find("crashed") != std::string::npos) {
          ++crashed;
        } else {
          ++other;
          ADD_FAILURE() << reply;
        }
      }
    });
  for (int round = 0; round < 3; ++round)
    call("Faulty victim CrashVolatile '{\"mode\":\"segfault\"}'");
  for (auto& caller : callers) caller.join();
  EXPECT_EQ(other.load(), 0);
  EXPECT_GT(answered.load(), 0);
  EXPECT_TRUE(slots.at("runner-1")->running());
}

TEST_F(isolation, without_isolation_a_handler_past_its_time_ends_the_runner_and_says_why) {
  start_cluster({"runner.handler_timeout_ms=500"}, "none");
  EXPECT_EQ(plugin_pid("w"), runner_pid);  // the plugin runs in the runner
  const auto reply = call("Faulty stuck CrashVolatile '{\"mode\":\"loop\"}'");
  // Nothing could stop the handler but the end of its process: the runner's own.
  const auto status = slots.at("runner-1")->stop(0, std::chrono::seconds(20));
  ASSERT_TRUE(status.has_value()) << "the runner still runs";
  EXPECT_EQ(*status, 128 + SIGABRT);
  std::ifstream log(dir / "runner-1.log");
  const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("Faulty/stuck CrashVolatile ran past runner.handler_timeout_ms (500 ms)"),
            std::string::npos)
      << text;
}

}  // namespace
}  // namespace cluster::testing
