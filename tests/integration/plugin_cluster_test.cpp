// Plugins across the cluster with the real binaries: runners of one group holding different
// plugins (a rollout), and plugins pushed to the cluster with `clusterctl plugin`.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "process_cluster.hpp"

namespace cluster::testing {
namespace {

using namespace std::chrono_literals;
const std::string bin = CLUSTER_BIN_DIR;
const std::string plugin_dir = CLUSTER_PLUGIN_DIR;

class plugin_cluster : public process_cluster_test {
 protected:
  /// clusterctl against this cluster's manager and proxy.
  std::string ctl(const std::string& args, int& code) {
    return clusterctl("--manager 127.0.0.1:" + std::to_string(manager_port) + " " + args, code);
  }

  /// `plugin list --json`: name → runner name → state on that runner.
  std::map<std::string, std::map<std::string, std::string>> plugin_states() {
    int code = 0;
    const auto out = ctl("plugin list --json", code);
    std::map<std::string, std::map<std::string, std::string>> states;
    const auto listed = nlohmann::json::parse(out, nullptr, false);
    if (code != 0 || !listed.is_array()) return states;
    for (const auto& plugin : listed) {
      auto& runners = states[plugin["name"].get<std::string>()];
      for (const auto& runner : plugin["runners"])
        runners[runner["name"].get<std::string>()] = runner["state"].get<std::string>();
    }
    return states;
  }

  /// Waits until plugin `name` is loaded on exactly `runners`; the milliseconds it took.
  std::optional<std::int64_t> until_loaded(const std::string& name,
                                           const std::map<std::string, std::string>& runners,
                                           std::chrono::milliseconds limit) {
    const auto started = std::chrono::steady_clock::now();
    if (!wait_for([&] { return plugin_states()[name] == runners; }, limit)) return std::nullopt;
    return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() -
                                                                 started)
        .count();
  }

  /// The shards each runner owns, by name, from `clusterctl status --json`.
  std::map<std::string, int> shards_by_runner() {
    std::map<std::string, int> shards;
    const auto s = status();
    if (!s.is_object()) return shards;
    for (const auto& runner : s["runners"]) shards[runner["name"]] = runner["shards"];
    return shards;
  }
};

TEST_F(plugin_cluster, a_type_only_one_runner_has_is_never_answered_unknown_entity_type) {
  start_manager();
  start_runner(1);
  // runner-2 is behind in a rollout: it has Greeter only, no Counter.
  start_runner(2, {"--set", "runner.plugins=" + plugin_dir + "/libgreeter.so"});
  start_proxy();
  ASSERT_TRUE(wait_for([&] { return shards_by_runner().size() == 2; }));
  // At once, while Counter is new (manager.plugin_settle_ms) and runner-2 still owns half of
  // the shards: calls to its shards wait for them to move instead of failing.
  int code = 0;
  for (int i = 0; i < 24; ++i) {
    const auto out =
        clusterctl("call Counter rollout-" + std::to_string(i) + " Increment '{\"by\":1}'", code);
    ASSERT_EQ(code, 0) << "call " << i << ": " << out;
    EXPECT_EQ(nlohmann::json::parse(out)["value"], 1) << out;
  }
  ASSERT_TRUE(wait_for([&] {
    return shards_by_runner() == std::map<std::string, int>{{"runner-1", 300}, {"runner-2", 0}};
  }));
  // A type no runner has is still refused at once.
  const auto out = clusterctl("call NoSuchType x Get '{}'", code);
  EXPECT_EQ(code, 1);
  EXPECT_EQ(out.rfind("error: UnknownEntityType:", 0), 0u) << out;
}

TEST_F(plugin_cluster, a_pushed_plugin_loads_on_every_runner_including_one_started_later) {
  start_manager();
  // Both runners start with Greeter only; Counter comes by push.
  const std::vector<std::string> greeter_only = {"--set",
                                                 "runner.plugins=" + plugin_dir + "/libgreeter.so"};
  start_runner(1, greeter_only);
  start_runner(2, greeter_only);
  start_proxy();
  ASSERT_TRUE(ready(2));
  int code = 0;
  auto out = ctl("call Counter pushed Increment '{\"by\":1}'", code);
  EXPECT_EQ(code, 1);
  EXPECT_EQ(out.rfind("error: UnknownEntityType:", 0), 0u) << out;

  out = ctl("plugin push " + plugin_dir + "/libcounter.so", code);
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("stored plugin Counter"), std::string::npos) << out;
  EXPECT_NE(out.find("entity types Counter"), std::string::npos) << out;
  const auto loaded = until_loaded("Counter", {{"runner-1", "loaded"}, {"runner-2", "loaded"}}, 5s);
  ASSERT_TRUE(loaded.has_value()) << ctl("plugin list", code);
  std::cerr << "pushed plugin loaded on both runners after " << *loaded << " ms\n";
  for (int i = 0; i < 6; ++i) {
    out = ctl("call Counter pushed-" + std::to_string(i) + " Increment '{\"by\":2}'", code);
    ASSERT_EQ(code, 0) << out;
    EXPECT_EQ(nlohmann::json::parse(out)["value"], 2) << out;
  }
  out = ctl("plugin list", code);
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("runner-1  loaded"), std::string::npos) << out;

  // A runner started afterwards (a new ECS task) fetches it too.
  start_runner(3, greeter_only);
  const auto late = until_loaded(
      "Counter", {{"runner-1", "loaded"}, {"runner-2", "loaded"}, {"runner-3", "loaded"}}, 15s);
  ASSERT_TRUE(late.has_value()) << ctl("plugin list", code);
  std::cerr << "runner-3 loaded the pushed plugin " << *late << " ms after it was started\n";

  // rm: every runner unloads it, and Counter is unknown again.
  out = ctl("plugin rm Counter", code);
  ASSERT_EQ(code, 0) << out;
  ASSERT_TRUE(wait_for([&] { return plugin_states().empty(); }, 5s));
  ASSERT_TRUE(wait_for(
      [&] {
        const auto s = status();
        if (!s.is_object()) return false;
        for (const auto& runner : s["runners"])
          for (const auto& plugin : runner["plugins"])
            if (plugin["name"] == "Counter") return false;
        return true;
      },
      10s));
  ASSERT_TRUE(wait_for(
      [&] {
        const auto answer = ctl("call Counter pushed Get '{}'", code);
        return code == 1 && answer.rfind("error: UnknownEntityType:", 0) == 0;
      },
      10s));
}

TEST_F(plugin_cluster,
       a_push_without_the_admin_key_is_forbidden_and_a_file_that_does_not_load_is_refused) {
  start_manager();
  start_proxy();
  int code = 0;
  auto out =
      ctl("--key-file " + credentials + "/client.key plugin push " + plugin_dir + "/libcounter.so",
          code);
  EXPECT_EQ(code, 1) << out;
  EXPECT_EQ(out.rfind("error: Forbidden:", 0), 0u) << out;
  // Not a plugin at all: clusterctl says why the runners would refuse it, and sends nothing.
  out = ctl("plugin push " + std::string(CLUSTER_TEST_PLUGIN_DIR) + "/libnot_a_plugin.so", code);
  EXPECT_EQ(code, 1) << out;
  EXPECT_NE(out.find("the plugin does not load"), std::string::npos) << out;
  out = ctl("plugin list --json", code);
  ASSERT_EQ(code, 0) << out;
  EXPECT_EQ(nlohmann::json::parse(out), nlohmann::json::array()) << out;
}

}  // namespace
}  // namespace cluster::testing
