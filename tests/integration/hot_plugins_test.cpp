// Plugin files changing under a serving runner: drop-in, swap v1 → v2 under load, removal,
// a broken v2. The real manager, runner and proxy objects on loopback (in_process_cluster),
// plugin files deployed the way an operator does: copied next to the folder, then renamed in.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>

#include "../host/log_capture.hpp"
#include "cluster_fixture.hpp"

namespace cluster::testing {
namespace {

namespace fs = std::filesystem;

std::string versioned_plugin(int major) {
  return std::string(CLUSTER_VERSIONED_PLUGIN_DIR) + "/libversioned_v" + std::to_string(major) +
         "_plugin.so";
}

std::int64_t unix_now_ms() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::int64_t ms_since(steady_clock::time_point start) {
  return std::chrono::duration_cast<milliseconds>(steady_clock::now() - start).count();
}

/// Calls that keep going through the proxy on one connection, all on the test's loop: each
/// answered call is sent again, until `stop`. Every reply is kept with its send time.
class call_load {
 public:
  struct answer {
    std::string type;
    steady_clock::time_point sent;
    reply_msg reply;
  };

  call_load(in_process_cluster& cluster, std::vector<request_msg> requests)
      : cluster_(cluster), requests_(std::move(requests)) {
    conn_ = cluster_.connect(cluster_.proxy_address());
  }

  ~call_load() {
    // Replies must not reach a gone object: close, and let the closed calls be answered.
    stopping_ = true;
    if (conn_) conn_->close();
    run_until(
        cluster_.io, [this] { return idle(); }, milliseconds(5000));
  }
  call_load(const call_load&) = delete;
  call_load& operator=(const call_load&) = delete;

  void start() {
    ASSERT_NE(conn_, nullptr);
    for (std::size_t i = 0; i < requests_.size(); ++i) send(i);
  }
  void stop() { stopping_ = true; }
  bool idle() const { return in_flight_ == 0; }

  std::vector<answer> answers;
  std::vector<std::string> failures() const {
    std::vector<std::string> out;
    for (const auto& a : answers)
      if (!a.reply.ok()) out.push_back(a.type + ": " + a.reply.error + " " + a.reply.message);
    return out;
  }

 private:
  void send(std::size_t i) {
    if (stopping_) return;
    ++in_flight_;
    auto request = requests_[i];
    if (request.persisted) request.primary_key = "load-" + std::to_string(++sequence_);
    const auto sent = steady_clock::now();
    conn_->call(message_kind::request, request, milliseconds(20000),
                [this, i, sent, type = request.entity_type](reply_msg&& reply) {
                  --in_flight_;
                  answers.push_back(answer{type, sent, std::move(reply)});
                  send(i);
                });
  }

  in_process_cluster& cluster_;
  std::vector<request_msg> requests_;
  connection_ptr conn_;
  std::size_t in_flight_ = 0;
  std::uint64_t sequence_ = 0;
  bool stopping_ = false;
};

/// Every test runs with plugins in the runner ("none") and in child processes ("process").
class hot_plugins_test : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/hot-plugins-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    dir = pattern;
    plugins = dir / "plugins";
    fs::create_directories(plugins);
  }
  void TearDown() override {
    cluster.reset();
    std::error_code ignored;
    fs::remove_all(dir, ignored);
  }

  /// Puts `source` into the plugins folder as `name` the way a deploy should: a copy next to
  /// it, then one rename (the watcher sees the file complete).
  void deploy(const std::string& source, const std::string& name = "libversioned.so") {
    const auto staging = dir / ("staging-" + name);
    fs::copy_file(source, staging, fs::copy_options::overwrite_existing);
    fs::rename(staging, plugins / name);
  }

  host::runner& start_runner() {
    cluster = std::make_unique<in_process_cluster>();
    auto& runner = cluster->add_runner([&](host::runner_config& config) {
      config.plugins = {CLUSTER_PLUGIN_DIR, plugins.string()};
      config.plugin_cache_dir = (dir / "cache").string();
      config.isolation = GetParam();
    });
    EXPECT_TRUE(cluster->wait_until_balanced(1));
    return runner;
  }

  /// Calls `request` through the proxy until it succeeds or `limit` passes; the last reply.
  reply_msg call_until_ok(const request_msg& request, milliseconds limit) {
    const auto deadline = steady_clock::now() + limit;
    reply_msg reply;
    do {
      reply = cluster->call(request, milliseconds(2000));
      if (reply.ok()) return reply;
      run_until(
          cluster->io, [] { return false; }, milliseconds(10));
    } while (steady_clock::now() < deadline);
    return reply;
  }

  const plugin_info* plugin_state(host::runner& runner, const std::string& state) {
    plugins_seen = runner.registry().plugins();
    for (const auto& p : plugins_seen)
      if (p.file == (plugins / "libversioned.so").string() && p.state == state) return &p;
    return nullptr;
  }

  fs::path dir, plugins;
  std::unique_ptr<in_process_cluster> cluster;
  std::vector<plugin_info> plugins_seen;
};

request_msg version_call(const std::string& id, const std::string& type = "Versioned") {
  return make_request(type, id, "Version");
}

TEST_P(hot_plugins_test, answers_a_dropped_in_plugin_within_two_seconds_without_failing_others) {
  auto& runner = start_runner();
  ASSERT_EQ(runner.registry().find("Versioned"), nullptr);
  call_load others(*cluster, {make_request("Greeter", "g1", "GreetVolatile", {{"name", "a"}}),
                              make_request("Greeter", "g2", "GreetVolatile", {{"name", "b"}}),
                              make_request("Counter", "c1", "Get")});
  others.start();
  ASSERT_TRUE(run_until(cluster->io, [&] { return others.answers.size() >= 20; }));

  const auto dropped = steady_clock::now();
  deploy(versioned_plugin(1));
  const auto reply = call_until_ok(version_call("first"), milliseconds(5000));
  const auto elapsed = ms_since(dropped);
  ASSERT_TRUE(reply.ok()) << reply.error << " " << reply.message;
  EXPECT_EQ(reply_json(reply)["version"], "1.0.0");
  std::printf("[ measured ] drop-in (%s): %lld ms from the rename to the first answer\n",
              GetParam().c_str(), static_cast<long long>(elapsed));
  EXPECT_LT(elapsed, 2000);

  // The manager learnt the new types from the runner's new registration.
  ASSERT_TRUE(run_until(cluster->io, [&] {
    const auto snap = cluster->manager().snapshot();
    std::size_t found = 0;
    for (const auto& type : snap.entity_types)
      found += type.name == "Versioned" || type.name == "OnlyInV1" ? 1 : 0;
    return found == 2;
  }));
  others.stop();
  ASSERT_TRUE(run_until(cluster->io, [&] { return others.idle(); }));
  EXPECT_EQ(others.failures(), std::vector<std::string>{});
  // What the runner loaded is its own copy, named by the bytes' hash.
  const auto* loaded = plugin_state(runner, "loaded");
  ASSERT_NE(loaded, nullptr);
  EXPECT_TRUE(fs::exists(dir / "cache" / "loaded" / (loaded->sha256 + ".so")));
}

TEST_P(hot_plugins_test, swaps_v1_for_v2_under_load_without_a_failed_call) {
  deploy(versioned_plugin(1));
  auto& runner = start_runner();
  ASSERT_NE(runner.registry().find("OnlyInV1"), nullptr);

  // Stored messages due after the swap: v2 must run them.
  std::vector<std::optional<reply_msg>> stored(4);
  auto client = cluster->connect(cluster->proxy_address());
  ASSERT_NE(client, nullptr);
  for (std::size_t i = 0; i < stored.size(); ++i) {
    auto request =
        make_request("Versioned", "stored-" + std::to_string(i), "Record", {{"note", "due later"}});
    request.persisted = true;
    request.primary_key = "stored-" + std::to_string(i);
    request.deliver_at_ms = unix_now_ms() + 1500;
    client->call(message_kind::request, request, milliseconds(20000),
                 [&stored, i](reply_msg&& reply) { stored[i] = std::move(reply); });
  }
  // Slow calls in flight on v1 when the file is replaced, and a call queued behind each.
  std::vector<std::optional<reply_msg>> slow(4), behind(4);
  for (std::size_t i = 0; i < slow.size(); ++i)
    client->call(message_kind::request,
                 make_request("Versioned", "slow-" + std::to_string(i), "Slow", {{"ms", 700}}),
                 milliseconds(20000),
                 [&slow, i](reply_msg&& reply) { slow[i] = std::move(reply); });
  // Load on the swapped type (volatile and persisted) and on another plugin's types.
  std::vector<request_msg> load_requests;
  for (int i = 0; i < 8; ++i) load_requests.push_back(version_call("v-" + std::to_string(i)));
  for (int i = 0; i < 4; ++i) {
    auto record = make_request("Versioned", "r-" + std::to_string(i), "Record", {{"note", "x"}});
    record.persisted = true;
    load_requests.push_back(record);
  }
  for (int i = 0; i < 4; ++i)
    load_requests.push_back(
        make_request("Greeter", "g-" + std::to_string(i), "GreetVolatile", {{"name", "n"}}));
  call_load load(*cluster, load_requests);
  load.start();
  ASSERT_TRUE(run_until(cluster->io, [&] { return load.answers.size() >= 100; }));
  ASSERT_TRUE(run_until(cluster->io, [&] { return runner.entities().active_entities() >= 8; }));

  const auto replaced = steady_clock::now();
  deploy(versioned_plugin(2));
  // The queued calls go in right behind the slow ones, while v2 loads.
  for (std::size_t i = 0; i < behind.size(); ++i)
    client->call(message_kind::request, version_call("slow-" + std::to_string(i)),
                 milliseconds(20000),
                 [&behind, i](reply_msg&& reply) { behind[i] = std::move(reply); });
  steady_clock::time_point swapped{};
  ASSERT_TRUE(run_until(cluster->io, [&] {
    for (const auto& a : load.answers)
      if (a.reply.ok() && a.type == "Versioned" && reply_json(a.reply)["version"] == "2.0.0") {
        swapped = steady_clock::now();
        return true;
      }
    return false;
  }));
  std::printf(
      "[ measured ] swap (%s): %lld ms from the rename to the first answer by v2\n",
      GetParam().c_str(),
      static_cast<long long>(std::chrono::duration_cast<milliseconds>(swapped - replaced).count()));
  EXPECT_LT(swapped - replaced, milliseconds(2000));
  const auto load_v2_seen = load.answers.size();
  ASSERT_TRUE(run_until(
      cluster->io,
      [&] {
        bool all = load.answers.size() >= load_v2_seen + 200;
        for (const auto* list : {&stored, &slow, &behind})
          for (const auto& r : *list) all = all && r.has_value();
        return all;
      },
      milliseconds(15000)));
  load.stop();
  ASSERT_TRUE(run_until(cluster->io, [&] { return load.idle(); }));

  EXPECT_EQ(load.failures(), std::vector<std::string>{});
  for (std::size_t i = 0; i < slow.size(); ++i) {
    ASSERT_TRUE(slow[i]->ok()) << slow[i]->error << " " << slow[i]->message;
    EXPECT_EQ(reply_json(*slow[i])["version"], "1.0.0") << "in flight: finishes on v1";
    ASSERT_TRUE(behind[i]->ok()) << behind[i]->error << " " << behind[i]->message;
    EXPECT_EQ(reply_json(*behind[i])["version"], "2.0.0") << "queued: waits for v2";
    EXPECT_EQ(reply_json(*behind[i])["served"], 1) << "a new instance on v2";
  }
  for (const auto& r : stored) {
    ASSERT_TRUE(r->ok()) << r->error << " " << r->message;
    EXPECT_EQ(reply_json(*r)["version"], "2.0.0") << "stored before the swap, run after it";
  }
  // Every Versioned call sent once v2 answered was answered by v2.
  for (const auto& a : load.answers) {
    if (a.type == "Versioned" && a.sent > swapped) {
      EXPECT_EQ(reply_json(a.reply)["version"], "2.0.0");
    }
  }
  // The types follow the file: OnlyInV1 went with v1, OnlyInV2 came with v2.
  EXPECT_EQ(runner.registry().find("OnlyInV1"), nullptr);
  EXPECT_EQ(reply_json(call_until_ok(version_call("x", "OnlyInV2"), milliseconds(3000)))["version"],
            "2.0.0");
  // v1 is unloaded once its last instance is gone: only v2 is listed.
  ASSERT_TRUE(run_until(cluster->io, [&] {
    return plugin_state(runner, "draining") == nullptr && plugin_state(runner, "loaded");
  }));
  EXPECT_EQ(plugin_state(runner, "loaded")->version, "2.0.0");
  std::size_t shadows = 0;
  for (const auto& entry : fs::directory_iterator(dir / "cache" / "loaded"))
    shadows += entry.path().extension() == ".so" ? 1 : 0;
  EXPECT_EQ(shadows, 4u) << "v1's copy is removed with it (3 example plugins + v2)";
}

TEST_P(hot_plugins_test, drains_and_unregisters_the_types_of_a_removed_file) {
  deploy(versioned_plugin(1));
  auto& runner = start_runner();
  std::optional<reply_msg> in_flight;
  auto client = cluster->connect(cluster->proxy_address());
  client->call(message_kind::request, make_request("Versioned", "busy", "Slow", {{"ms", 500}}),
               milliseconds(20000), [&](reply_msg&& reply) { in_flight = std::move(reply); });
  ASSERT_TRUE(run_until(cluster->io, [&] { return runner.entities().active_entities() > 0; }));
  fs::remove(plugins / "libversioned.so");
  ASSERT_TRUE(
      run_until(cluster->io, [&] { return runner.registry().find("Versioned") == nullptr; }));
  ASSERT_TRUE(run_until(cluster->io, [&] { return in_flight.has_value(); }));
  ASSERT_TRUE(in_flight->ok()) << in_flight->error << " " << in_flight->message;
  EXPECT_EQ(reply_json(*in_flight)["version"], "1.0.0");
  EXPECT_EQ(cluster->call(version_call("after")).code, errc::unknown_entity_type);
  EXPECT_TRUE(cluster->call(make_request("Greeter", "g", "GreetVolatile", {{"name", "n"}})).ok());
  ASSERT_TRUE(run_until(cluster->io, [&] {
    return plugin_state(runner, "draining") == nullptr && plugin_state(runner, "loaded") == nullptr;
  }));
  // The manager was told: the runner's registration no longer lists the plugin.
  ASSERT_TRUE(run_until(cluster->io, [&] {
    const auto snap = cluster->manager().snapshot();
    for (const auto& p : snap.runners.front().plugins)
      if (p.name == "versioned") return false;
    return true;
  }));
}

TEST_P(hot_plugins_test, keeps_v1_serving_when_v2_does_not_load_and_says_why) {
  deploy(versioned_plugin(1));
  auto& runner = start_runner();
  const std::map<std::string, std::string> broken = {
      {"wrong_abi_plugin", "ABI major version 999"},
      {"throwing_entry_plugin", "entry failed: the plugin's settings file is missing"},
      {"unresolved_symbol_plugin", "undefined symbol"},
  };
  for (const auto& [plugin, why] : broken) {
    log_capture log;
    deploy(test_plugin(plugin));
    ASSERT_TRUE(run_until(cluster->io, [&] { return plugin_state(runner, "failed") != nullptr; }))
        << plugin;
    EXPECT_NE(plugin_state(runner, "failed")->error.find(why), std::string::npos)
        << plugin_state(runner, "failed")->error;
    EXPECT_NE(log.text().find("refused plugin " + (plugins / "libversioned.so").string()),
              std::string::npos)
        << log.text();
    EXPECT_NE(log.text().find("version 1.0.0 keeps serving"), std::string::npos) << log.text();
    const auto reply = cluster->call(version_call("still"));
    ASSERT_TRUE(reply.ok()) << reply.error << " " << reply.message;
    EXPECT_EQ(reply_json(reply)["version"], "1.0.0");
    ASSERT_NE(plugin_state(runner, "loaded"), nullptr);
    // The status the manager shows (clusterctl status) carries the refusal.
    ASSERT_TRUE(run_until(cluster->io, [&] {
      const auto snap = cluster->manager().snapshot();
      for (const auto& p : snap.runners.front().plugins)
        if (p.state == "failed" && p.error.find(why) != std::string::npos) return true;
      return false;
    })) << plugin;
    // Back to v1's bytes: the refusal is gone, nothing is reloaded.
    deploy(versioned_plugin(1));
    ASSERT_TRUE(run_until(cluster->io, [&] { return plugin_state(runner, "failed") == nullptr; }));
  }
}

INSTANTIATE_TEST_SUITE_P(isolation, hot_plugins_test, ::testing::Values("none", "process"),
                         [](const auto& param_info) { return param_info.param; });

}  // namespace
}  // namespace cluster::testing
