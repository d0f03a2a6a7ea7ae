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

}  // namespace
}  // namespace cluster::testing
