// Fault tolerance with the real binaries on a real PostgreSQL, under continuous load:
// runners killed and restarted, SIGTERM rolling restarts, the manager away, the database
// restarted. Skipped without CLUSTER_TEST_PG_URL. No timing is asserted: the recovery times
// are printed for the benchmark notes, the assertions are about answers and owners, and
// every wait is for an event (a number of answered calls, a reply) with a deadline.
#include <signal.h>

#include <algorithm>
#include <fstream>
#include <iterator>
#include <random>
#include <set>

#include "cluster/storage-pg/postgres.hpp"
#include "process_cluster.hpp"

namespace cluster::testing {
namespace {

using namespace std::chrono_literals;

/// Calls `Faulty/who-<i> Who` for every entity, one call per entity at a time, from its own
/// thread until stopped, and keeps every answer: which process answered and how many
/// messages its activation had seen.
class who_prober {
 public:
  struct answer {
    std::int64_t pid = 0;
    std::int64_t seen = 0;
    steady_clock::time_point sent, received;
  };

  who_prober(std::uint16_t proxy_port, int entities)
      : proxy_port_(proxy_port),
        answers_(static_cast<std::size_t>(entities)),
        sent_(static_cast<std::size_t>(entities)),
        thread_([this] { run(); }) {}
  ~who_prober() { stop(); }

  void stop() {
    stopping_ = true;
    if (thread_.joinable()) thread_.join();
  }
  std::size_t answered() const { return answered_; }
  /// Every entity answered at least once.
  bool all_answered() {
    std::lock_guard lock(mutex_);
    return std::all_of(answers_.begin(), answers_.end(), [](const auto& a) { return !a.empty(); });
  }
  /// Per entity, in the order they came: the answers, and when each call was sent.
  std::vector<std::vector<answer>> answers() {
    std::lock_guard lock(mutex_);
    return answers_;
  }
  std::vector<std::vector<steady_clock::time_point>> sent() {
    std::lock_guard lock(mutex_);
    return sent_;
  }

 private:
  void run() {
    asio::io_context io;
    connection_ptr conn;
    std::vector<std::unique_ptr<asio::steady_timer>> pauses;
    for (std::size_t i = 0; i < answers_.size(); ++i)
      pauses.push_back(std::make_unique<asio::steady_timer>(io));
    std::function<void(std::size_t)> call = [&](std::size_t i) {
      if (stopping_) return;
      if (!conn || !conn->is_open()) {
        conn = connect_client(io, "127.0.0.1:" + std::to_string(proxy_port_), milliseconds(1000));
        if (!conn) {
          pauses[i]->expires_after(milliseconds(100));
          pauses[i]->async_wait([&, i](const error_code&) { call(i); });
          return;
        }
      }
      auto request = make_request("Faulty", "who-" + std::to_string(i), "Who");
      request.timeout_ms = 1000;
      const auto sent = steady_clock::now();
      {
        std::lock_guard lock(mutex_);
        sent_[i].push_back(sent);
      }
      conn->call(message_kind::request, request, milliseconds(1500), [&, i, sent](reply_msg&& r) {
        if (r.ok()) {
          const auto who = reply_json(r);
          std::lock_guard lock(mutex_);
          answers_[i].push_back(answer{who.value("pid", std::int64_t{0}),
                                       who.value("seen", std::int64_t{0}), sent,
                                       steady_clock::now()});
          ++answered_;
        }
        pauses[i]->expires_after(milliseconds(20));
        pauses[i]->async_wait([&, i](const error_code&) { call(i); });
      });
    };
    for (std::size_t i = 0; i < answers_.size(); ++i) call(i);
    run_until(
        io, [&] { return stopping_.load(); }, std::chrono::hours(1));
    if (conn) conn->close();
    for (auto& pause : pauses) pause->cancel();
    run_until(
        io, [] { return false; }, milliseconds(50));
  }

  std::uint16_t proxy_port_;
  std::atomic<bool> stopping_{false};
  std::atomic<std::size_t> answered_{0};
  std::mutex mutex_;
  std::vector<std::vector<answer>> answers_;
  std::vector<std::vector<steady_clock::time_point>> sent_;
  std::thread thread_;
};

class faults : public pg_cluster_test {
 protected:
  void start_cluster(int runners) {
    start_manager();
    for (int n = 1; n <= runners; ++n) start_runner(n);
    start_proxy();
    ASSERT_TRUE(ready(static_cast<std::size_t>(runners)));
  }

  /// Every persisted call answered OK ran at least once (CLUSTER_PROBE_RUN_LOG).
  void expect_every_acknowledged_append_ran(std::size_t sent) {
    std::ifstream log(run_log);
    std::set<std::string> ran;
    for (std::string line; std::getline(log, line);) ran.insert(line);
    std::size_t missing = 0;
    for (std::size_t n = 0; n < sent; n += 2)
      if (!ran.count("c:" + std::to_string(n))) ++missing;
    EXPECT_EQ(missing, 0u) << missing << " acknowledged persisted calls never ran";
  }

  void expect_no_failures(const load_generator::result& result) {
    EXPECT_GT(result.ok, 0u);
    for (const auto& [failure, count] : result.failures) ADD_FAILURE() << count << " × " << failure;
    for (const auto& problem : overlapping_owners(owner_log)) ADD_FAILURE() << problem;
  }
};

TEST_F(faults, kill_a_random_runner_five_times_under_persisted_load) {
  start_cluster(3);
  load_generator load(proxy_port, {});
  std::mt19937 random(std::random_device{}());
  for (int round = 0; round < 5; ++round) {
    ASSERT_TRUE(load.wait_answered(load.answered() + 200, 60s));
    const int victim = std::uniform_int_distribution<int>(1, 3)(random);
    end("runner-" + std::to_string(victim), SIGKILL, 5s);
    const auto recovered = time_until_all_answer(proxy_port, 40, 60s);
    std::cout << "round " << round << ": killed runner-" << victim << ", 40 entities answered "
              << recovered << " ms later\n";
    start_runner(victim);
    ASSERT_TRUE(ready(3)) << "round " << round;
  }
  ASSERT_TRUE(load.wait_answered(load.answered() + 200, 60s));
  const auto result = load.stop();
  std::cout << result.ok << " calls answered, " << result.persisted_ok << " persisted\n";
  expect_no_failures(result);
  expect_every_acknowledged_append_ran(result.sent);
}

TEST_F(faults, sigterm_rolling_restart_of_every_runner_then_the_manager_fails_no_call) {
  start_cluster(2);
  load_generator load(proxy_port, {});
  ASSERT_TRUE(load.wait_answered(200, 60s));
  for (int n = 1; n <= 2; ++n) {
    const std::string name = "runner-" + std::to_string(n);
    EXPECT_EQ(end(name, SIGTERM), 0) << name << " did not stop cleanly";
    start_runner(n);
    ASSERT_TRUE(ready(2));
    ASSERT_TRUE(load.wait_answered(load.answered() + 200, 60s));
  }
  EXPECT_EQ(end("manager", SIGTERM), 0);
  start_manager();
  ASSERT_TRUE(ready(2));
  ASSERT_TRUE(load.wait_answered(load.answered() + 200, 60s));
  const auto result = load.stop();
  expect_no_failures(result);
  expect_every_acknowledged_append_ran(result.sent);
}

TEST_F(faults, the_manager_away_for_ten_seconds_fails_no_call) {
  start_cluster(2);
  load_generator load(proxy_port, {});
  ASSERT_TRUE(load.wait_answered(200, 60s));
  end("manager", SIGKILL, 5s);
  const auto gone = std::chrono::steady_clock::now();
  // Calls go on without the manager: soon after it went, and still after ten seconds.
  EXPECT_TRUE(load.wait_answered(load.answered() + 100, 60s))
      << "calls stalled once the manager was away";
  std::this_thread::sleep_until(gone + 10s);  // the outage lasts ten seconds at least
  EXPECT_TRUE(load.wait_answered(load.answered() + 100, 60s))
      << "calls stalled after ten seconds without the manager";
  start_manager();
  ASSERT_TRUE(ready(2));
  ASSERT_TRUE(load.wait_answered(load.answered() + 200, 60s));
  const auto result = load.stop();
  expect_no_failures(result);
}

TEST_F(faults, a_database_restart_refuses_persisted_calls_clearly_and_recovers) {
  const auto pg_dir = dir / "pg";
  const std::string script = std::string(CLUSTER_SOURCE_DIR) + "/tests/support/private-pg.sh";
  int code = 0;
  auto url = run_command(script + " start " + pg_dir.string(), code);
  ASSERT_EQ(code, 0) << "cannot start a private PostgreSQL";
  url.erase(url.find_last_not_of("\n") + 1);
  pg_url = url;
  const auto port = url.substr(url.rfind(':') + 1, url.rfind('/') - url.rfind(':') - 1);
  start_cluster(2);
  load_generator load(proxy_port, {});
  ASSERT_TRUE(load.wait_answered(200, 60s));
  run_command(script + " stop " + pg_dir.string(), code);
  ASSERT_EQ(code, 0);
  // The runners notice: a persisted call is refused with StorageError, while volatile calls
  // go on being answered.
  std::string out;
  EXPECT_TRUE(wait_for(
      [&] {
        out = clusterctl("call Probe during-outage Append '{\"sender\":\"during\",\"value\":1}'",
                         code);
        return code != 0 && out.find("StorageError") != std::string::npos;
      },
      60s))
      << "persisted calls were not refused without the database: " << out;
  out = clusterctl("call Probe during-outage Echo '{\"text\":\"still here\"}'", code);
  EXPECT_EQ(code, 0) << "volatile calls fail without the database: " << out;
  EXPECT_TRUE(load.wait_answered(load.answered() + 50, 60s))
      << "calls stalled without the database";
  run_command(script + " start " + pg_dir.string() + " " + port, code);
  ASSERT_EQ(code, 0) << "cannot restart the private PostgreSQL on port " << port;
  // Persisted calls work again by themselves.
  EXPECT_TRUE(wait_for(
      [&] {
        out = clusterctl("call Probe after-restart Append '{\"sender\":\"after\",\"value\":1}'",
                         code);
        return code == 0;
      },
      60s))
      << out;
  ASSERT_TRUE(load.wait_answered(load.answered() + 200, 60s));
  const auto result = load.stop();
  std::cout << result.ok << " calls answered\n";
  for (const auto& [failure, count] : result.failures) {
    std::cout << count << " × " << failure << "\n";
    EXPECT_EQ(failure.rfind("Append StorageError", 0), 0u)
        << "only persisted calls may fail, with StorageError: " << failure;
  }
  for (const auto& name : {"manager", "runner-1", "runner-2", "proxy"})
    EXPECT_TRUE(slots.at(name)->running()) << name << " died with the database";
  for (const auto& problem : overlapping_owners(owner_log)) ADD_FAILURE() << problem;
  run_command(script + " stop " + pg_dir.string(), code);
}

TEST_F(faults, a_frozen_runner_is_fenced_and_the_cluster_is_whole_again_once_it_wakes) {
  const std::vector<std::string> plugins{
      "--set", "runner.plugins=" + std::string(CLUSTER_PLUGIN_DIR) + "," + CLUSTER_TEST_PLUGIN_DIR +
                   "/libprobe_plugin.so," + CLUSTER_FAULTY_PLUGIN};
  start_manager();
  for (int n = 1; n <= 2; ++n) start_runner(n, plugins);
  start_proxy();
  ASSERT_TRUE(ready(2));
  std::map<std::int64_t, std::string> runner_of_pid;
  for (const auto& name : {"runner-1", "runner-2"}) runner_of_pid[slots.at(name)->pid()] = name;

  load_generator load(proxy_port, {});
  who_prober who(proxy_port, 16);
  ASSERT_TRUE(load.wait_answered(200, 60s));
  ASSERT_TRUE(wait_for([&] { return who.all_answered(); }, 60s));

  const std::string victim = busiest_runner();
  ASSERT_FALSE(victim.empty());
  const pid_t frozen = slots.at(victim)->pid();
  // Whatever happens below, the frozen runner is woken before the fixture ends it.
  struct wake_on_exit {
    pid_t pid;
    ~wake_on_exit() { ::kill(pid, SIGCONT); }
  } wake{frozen};
  ASSERT_EQ(::kill(frozen, SIGSTOP), 0);
  const auto stopped_at = steady_clock::now();

  // Its entities answer again, volatile and persisted, within 5 s of the freeze.
  const auto recovered = time_until_all_answer(proxy_port, 40, 60s, "frozen");
  std::cout << victim << " frozen: 40 entities answered Echo and Append again " << recovered
            << " ms later\n";
  EXPECT_LE(recovered, 5000) << "entities of the frozen runner stayed unavailable too long";
  // Frozen for a while longer (a long GC pause, a stopped VM): calls go on meanwhile.
  std::this_thread::sleep_until(stopped_at + 8s);
  ASSERT_TRUE(load.wait_answered(load.answered() + 200, 60s)) << "calls stalled while frozen";
  const std::size_t who_before_wake = who.answered();
  ASSERT_TRUE(wait_for([&] { return who.answered() >= who_before_wake + 32; }, 60s));

  ASSERT_EQ(::kill(frozen, SIGCONT), 0);
  const auto woken_at = steady_clock::now();
  std::cout << victim << " woken after "
            << std::chrono::duration_cast<milliseconds>(woken_at - stopped_at).count() << " ms\n";
  // It re-registers by itself and gets shards again: nothing restarted.
  ASSERT_TRUE(ready(2)) << "the woken runner did not rejoin";
  EXPECT_TRUE(slots.at(victim)->running());
  EXPECT_EQ(slots.at(victim)->pid(), frozen);
  ASSERT_TRUE(load.wait_answered(load.answered() + 200, 60s));
  const std::size_t who_after_wake = who.answered();
  ASSERT_TRUE(wait_for([&] { return who.answered() >= who_after_wake + 64; }, 60s));
  who.stop();
  const auto result = load.stop();
  std::cout << result.ok << " calls answered, " << result.persisted_ok << " persisted\n";
  expect_no_failures(result);
  expect_every_acknowledged_append_ran(result.sent);

  // The manager ended the frozen runner's sessions; the runner noticed its stall.
  auto log_of = [&](const std::string& name) {
    std::ifstream in(dir / (name + ".log"));
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  EXPECT_NE(log_of("manager").find("storage sessions ended"), std::string::npos);
  EXPECT_NE(log_of(victim).find("event loop stalled"), std::string::npos);

  // One owner at a time for every probed entity: while frozen nothing came from it, and an
  // entity that moves back to it after the wake starts a fresh activation there.
  // With runner.isolation = "process" the pid is that of the runner's plugin-host child.
  auto runner_of = [&](std::int64_t pid) -> std::string {
    if (runner_of_pid.count(pid)) return runner_of_pid[pid];
    std::ifstream status("/proc/" + std::to_string(pid) + "/status");
    for (std::string line; std::getline(status, line);)
      if (line.rfind("PPid:", 0) == 0) {
        const auto parent = std::stoll(line.substr(5));
        if (runner_of_pid.count(parent)) return runner_of_pid[pid] = runner_of_pid[parent];
      }
    return "?";
  };
  const auto answers = who.answers();
  const auto sent = who.sent();
  for (std::size_t i = 0; i < answers.size(); ++i) {
    const auto& list = answers[i];
    std::string sequence;
    for (const auto& a : list) {
      const auto name = runner_of(a.pid);
      if (sequence.empty() || sequence.substr(sequence.rfind(' ') + 1) != name)
        sequence += " " + name;
      EXPECT_NE(name, "?") << "who-" << i << " answered from pid " << a.pid;
      if (name == victim) {
        EXPECT_FALSE(a.sent > stopped_at && a.received < woken_at)
            << "who-" << i << " was answered by the frozen runner";
      }
    }
    for (std::size_t k = 1; k < list.size(); ++k) {
      if (list[k].pid == list[k - 1].pid) {
        EXPECT_GT(list[k].seen, list[k - 1].seen)
            << "who-" << i << ": two activations answered in turn on one runner";
        continue;
      }
      // A new owner: its activation can only have seen calls sent since the last answer of
      // the previous owner (one call per entity at a time).
      const auto since = std::count_if(sent[i].begin(), sent[i].end(),
                                       [&](auto at) { return at >= list[k - 1].received; });
      EXPECT_LE(list[k].seen, since) << "who-" << i << " moved to a runner whose activation "
                                     << "had seen " << list[k].seen << " messages:" << sequence;
    }
    std::cout << "who-" << i << ":" << sequence << "\n";
  }
}

}  // namespace
}  // namespace cluster::testing
