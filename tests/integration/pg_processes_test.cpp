// The real binaries on a real PostgreSQL: crashes under persisted load, manager restarts,
// scheduled delivery and deduplication. Skipped without CLUSTER_TEST_PG_URL.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "child_process.hpp"
#include "cluster/common/postgres.hpp"
#include "cluster_fixture.hpp"

namespace cluster::testing {
namespace {

using namespace std::chrono_literals;
const std::string bin = CLUSTER_BIN_DIR;

std::string pg_url() {
  const char* url = std::getenv("CLUSTER_TEST_PG_URL");
  return url ? url : "";
}

class pg_processes : public ::testing::Test {
 protected:
  void SetUp() override {
    if (pg_url().empty())
      GTEST_SKIP() << "CLUSTER_TEST_PG_URL is not set (run through scripts/dev test)";
    const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    dir = std::filesystem::temp_directory_path() /
          ("cluster-pg-" + std::to_string(::getpid()) + "-" + name);
    std::filesystem::create_directories(dir);
    prefix = "p" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
    manager_port = free_port();
    proxy_port = free_port();
    for (int i = 0; i < 2; ++i) runner_ports.push_back(free_port());
    run_log = (dir / "runs.log").string();
    ::setenv("CLUSTER_PROBE_RUN_LOG", run_log.c_str(), 1);
  }
  void TearDown() override {
    children.clear();
    if (!HasFailure() && !dir.empty()) std::filesystem::remove_all(dir);
  }

  std::vector<std::string> storage() const {
    return {"--set", "cluster.storage=postgres",       "--set", "storage.url=" + pg_url(),
            "--set", "storage.table_prefix=" + prefix, "--set", "storage.poll_interval_ms=200"};
  }
  child_process& start(const std::string& name, const std::string& program,
                       std::vector<std::string> args) {
    auto log = (dir / (name + ".log")).string();
    slots[name] = std::make_unique<child_process>(bin + "/" + program, args, log);
    return *slots[name];
  }
  child_process& start_manager() {
    auto args = storage();
    args.insert(args.end(), {"--set", "manager.port=" + std::to_string(manager_port)});
    return start("manager", "cluster-manager", args);
  }
  child_process& start_runner(int n) {
    auto args = storage();
    args.insert(args.end(), {"--set", "runner.name=runner-" + std::to_string(n), "--set",
                             "runner.port=" + std::to_string(runner_ports[n - 1]), "--set",
                             "runner.manager=127.0.0.1:" + std::to_string(manager_port), "--set",
                             "runner.plugins=" + std::string(CLUSTER_PLUGIN_DIR) + "," +
                                 CLUSTER_TEST_PLUGIN_DIR + "/libprobe_plugin.so"});
    return start("runner-" + std::to_string(n), "cluster-runner", args);
  }
  child_process& start_proxy() {
    return start("proxy", "cluster-proxy",
                 {"--set", "proxy.port=" + std::to_string(proxy_port), "--set",
                  "proxy.manager=127.0.0.1:" + std::to_string(manager_port), "--set",
                  "proxy.request_timeout_ms=30000"});
  }
  nlohmann::json status() {
    int code = 0;
    auto out = run_command(bin + "/clusterctl --manager 127.0.0.1:" + std::to_string(manager_port) +
                               " status --json 2>/dev/null",
                           code);
    return code == 0 ? nlohmann::json::parse(out, nullptr, false) : nlohmann::json();
  }
  bool wait_for(const std::function<bool()>& done, std::chrono::milliseconds timeout = 30s) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (!done()) {
      if (std::chrono::steady_clock::now() > deadline) return false;
      std::this_thread::sleep_for(50ms);
    }
    return true;
  }
  bool ready(std::size_t runners) {
    return wait_for([&] {
      auto s = status();
      if (!s.is_object() || s["runners"].size() != runners || s["unassigned_shards"] != 0)
        return false;
      for (const auto& r : s["runners"])
        if (!r["healthy"].get<bool>()) return false;
      return true;
    });
  }
  std::string clusterctl(const std::string& args, int& code) {
    return run_command(bin + "/clusterctl --proxy 127.0.0.1:" + std::to_string(proxy_port) +
                           " --timeout-ms 30000 " + args + " 2>&1",
                       code);
  }
  std::map<std::string, std::string> shard_owners() {
    pg::connection conn(pg_url());
    auto rows = conn.exec("SELECT shard_group || '/' || shard, owner FROM " + prefix + "_shards");
    std::map<std::string, std::string> out;
    for (int r = 0; r < rows.rows(); ++r) out[rows.text(r, 0)] = rows.text(r, 1);
    return out;
  }

  static inline int counter = 0;
  std::filesystem::path dir;
  std::string prefix, run_log;
  std::uint16_t manager_port = 0, proxy_port = 0;
  std::vector<std::uint16_t> runner_ports;
  std::map<std::string, std::unique_ptr<child_process>> slots;
  std::vector<std::unique_ptr<child_process>> children;  // ended ones, kept for their exit codes
};

// Sends `total` persisted Appends over `clients` connections (at most `window` in flight
// each); `midway` runs once half of them were answered.
struct load_result {
  std::size_t ok = 0;
  std::map<std::string, std::size_t> failures;
};
load_result persisted_load(std::uint16_t proxy_port, int clients, int total, int window,
                           const std::function<void()>& midway) {
  asio::io_context io;
  load_result result;
  std::vector<connection_ptr> conns;
  for (int c = 0; c < clients; ++c) {
    bool done = false;
    asio::co_spawn(
        io,
        [port = proxy_port, out = &conns, finished = &done]() -> awaitable<void> {
          hello_msg hello{protocol_version, "client", "load"};
          const connection_limits limits;
          connection::message_handler ignore = [](const connection_ptr&, envelope&&) {};
          std::function<void()> on_close;
          auto connect = connect_to(host_port{"127.0.0.1", port}, hello, limits, milliseconds(5000),
                                    ignore, on_close);
          auto connected = co_await std::move(connect);
          out->push_back(connected.conn);
          *finished = true;
        },
        asio::detached);
    run_until(io, [&] { return done; });
  }
  int sent = 0, answered = 0;
  bool midway_done = false;
  std::function<void(int)> send_next = [&](int c) {
    if (sent >= total || !conns[c]) return;
    const int n = sent++;
    auto request = make_request("Probe", "load-" + std::to_string(n % 97), "Append",
                                {{"sender", "c"}, {"value", n}});
    request.primary_key = "key-" + std::to_string(n);
    request.timeout_ms = 60000;
    conns[c]->call(message_kind::request, request, milliseconds(61000), [&, c](reply_msg&& reply) {
      ++answered;
      if (reply.ok()) {
        ++result.ok;
      } else {
        ++result.failures[reply.error + ": " + reply.message];
      }
      send_next(c);
    });
  };
  for (int c = 0; c < clients; ++c)
    for (int w = 0; w < window; ++w) send_next(c);
  run_until(
      io,
      [&] {
        if (!midway_done && answered >= total / 3) {
          midway_done = true;
          midway();
        }
        return answered >= total;
      },
      milliseconds(180000));
  for (auto& conn : conns)
    if (conn) conn->close();
  run_until(
      io, [] { return false; }, milliseconds(50));
  return result;
}

TEST_F(pg_processes, answer_every_persisted_call_when_a_runner_is_killed) {
  start_manager();
  start_runner(1);
  start_runner(2);
  start_proxy();
  ASSERT_TRUE(ready(2));
  auto result = persisted_load(proxy_port, 8, 1000, 8, [&] {
    // kill -9 the runner owning the most shards, then bring it back.
    auto s = status();
    std::string victim = "runner-1";
    int most = -1;
    for (const auto& r : s["runners"])
      if (r["shards"].get<int>() > most) {
        most = r["shards"].get<int>();
        victim = r["name"].get<std::string>();
      }
    slots[victim]->stop(SIGKILL, 5s);
    children.push_back(std::move(slots[victim]));
    start_runner(victim == "runner-1" ? 1 : 2);
  });
  EXPECT_EQ(result.ok, 1000u);
  for (const auto& [failure, count] : result.failures) ADD_FAILURE() << count << " × " << failure;
  // Every message ran at least once; reruns only for what was in flight at the kill.
  std::ifstream log(run_log);
  std::map<std::string, int> runs;
  for (std::string line; std::getline(log, line);) ++runs[line];
  int reruns = 0;
  for (int n = 0; n < 1000; ++n) {
    const int count = runs["c:" + std::to_string(n)];
    EXPECT_GE(count, 1) << "message " << n << " never ran";
    reruns += std::max(0, count - 1);
  }
  EXPECT_LE(reruns, 64);
  pg::connection conn(pg_url());
  EXPECT_EQ(conn.exec("SELECT count(*) FROM " + prefix + "_messages WHERE processed").integer(0, 0),
            1000);
}

TEST_F(pg_processes, restart_the_manager_without_moving_a_shard) {
  start_manager();
  start_runner(1);
  start_runner(2);
  start_proxy();
  ASSERT_TRUE(ready(2));
  const auto before = shard_owners();
  ASSERT_EQ(before.size(), 300u);
  slots["manager"]->stop(SIGKILL, 5s);
  children.push_back(std::move(slots["manager"]));
  start_manager();
  ASSERT_TRUE(ready(2));
  std::this_thread::sleep_for(500ms);
  EXPECT_EQ(shard_owners(), before);
  int code = 0;
  auto out = clusterctl("call Greeter Test Greet '{\"name\":\"John\"}'", code);
  EXPECT_EQ(code, 0) << out;
}

TEST_F(pg_processes, deliver_a_scheduled_message_after_its_runner_restarts) {
  start_manager();
  start_runner(1);
  start_runner(2);
  start_proxy();
  ASSERT_TRUE(ready(2));
  const auto deliver_at =
      std::chrono::duration_cast<milliseconds>(std::chrono::system_clock::now().time_since_epoch())
          .count() +
      3000;
  std::string out;
  int code = -1;
  std::thread caller([&] {
    out = clusterctl("call --key sched-1 --deliver-at-ms " + std::to_string(deliver_at) +
                         " Probe scheduled Stamp '{}'",
                     code);
  });
  std::this_thread::sleep_for(700ms);
  // Kill whichever runner holds the entity, then start it again.
  for (const std::string victim : {"runner-1", "runner-2"}) {
    slots[victim]->stop(SIGKILL, 5s);
    children.push_back(std::move(slots[victim]));
    start_runner(victim == "runner-1" ? 1 : 2);
    ASSERT_TRUE(ready(2));
  }
  caller.join();
  ASSERT_EQ(code, 0) << out;
  EXPECT_GE(nlohmann::json::parse(out)["at_ms"].get<std::int64_t>(), deliver_at);
}

TEST_F(pg_processes, return_the_stored_reply_for_a_repeated_primary_key) {
  start_manager();
  start_runner(1);
  start_proxy();
  ASSERT_TRUE(ready(1));
  int code = 0;
  const auto first = clusterctl("call --key inc-1 Counter dedup Increment '{\"by\":5}'", code);
  ASSERT_EQ(code, 0) << first;
  const auto second = clusterctl("call --key inc-1 Counter dedup Increment '{\"by\":5}'", code);
  ASSERT_EQ(code, 0) << second;
  EXPECT_EQ(first, second);
  EXPECT_EQ(nlohmann::json::parse(second)["value"], 5);
  const auto got = clusterctl("call Counter dedup Get '{}'", code);
  EXPECT_EQ(nlohmann::json::parse(got)["value"], 5);
}

}  // namespace
}  // namespace cluster::testing
