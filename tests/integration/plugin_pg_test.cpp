// Pushed plugins on PostgreSQL: stored in the cluster's database, so a restarted manager
// still has them and a runner started afterwards (a new ECS task) fetches them, with no
// shared disk. The real binaries and a real database (CLUSTER_TEST_PG_URL).
#include <gtest/gtest.h>
#include <signal.h>

#include <nlohmann/json.hpp>

#include "process_cluster.hpp"

namespace cluster::testing {
namespace {

using namespace std::chrono_literals;
const std::string plugin_dir = CLUSTER_PLUGIN_DIR;

class plugin_pg : public pg_cluster_test {
 protected:
  std::string ctl(const std::string& args, int& code) {
    return clusterctl("--manager 127.0.0.1:" + std::to_string(manager_port) + " " + args, code);
  }
  /// Runner name → state of plugin `name` on it, from `clusterctl plugin list --json`.
  std::map<std::string, std::string> states_of(const std::string& name) {
    int code = 0;
    const auto listed = nlohmann::json::parse(ctl("plugin list --json", code), nullptr, false);
    std::map<std::string, std::string> states;
    if (code != 0 || !listed.is_array()) return states;
    for (const auto& plugin : listed)
      if (plugin["name"] == name)
        for (const auto& runner : plugin["runners"]) states[runner["name"]] = runner["state"];
    return states;
  }
};

TEST_F(plugin_pg, a_pushed_plugin_survives_a_manager_restart_and_reaches_a_later_runner) {
  start_manager();
  const std::vector<std::string> greeter_only = {"--set",
                                                 "runner.plugins=" + plugin_dir + "/libgreeter.so"};
  start_runner(1, greeter_only);
  start_proxy();
  ASSERT_TRUE(ready(1));
  int code = 0;
  auto out = ctl("plugin push " + plugin_dir + "/libcounter.so", code);
  ASSERT_EQ(code, 0) << out;
  ASSERT_TRUE(wait_for(
      [&] {
        return states_of("Counter") == std::map<std::string, std::string>{{"runner-1", "loaded"}};
      },
      5s));

  // The manager restarts: the plugin comes back from the database, not from its memory.
  ASSERT_TRUE(end("manager", SIGTERM).has_value());
  start_manager();
  start_runner(2, greeter_only);
  ASSERT_TRUE(wait_for(
      [&] {
        return states_of("Counter") ==
               std::map<std::string, std::string>{{"runner-1", "loaded"}, {"runner-2", "loaded"}};
      },
      20s))
      << ctl("plugin list", code);
  ASSERT_TRUE(ready(2));
  for (int i = 0; i < 4; ++i) {
    out = ctl("call Counter stored-" + std::to_string(i) + " Increment '{\"by\":3}'", code);
    ASSERT_EQ(code, 0) << out;
    EXPECT_EQ(nlohmann::json::parse(out)["value"], 3) << out;
  }
}

}  // namespace
}  // namespace cluster::testing
