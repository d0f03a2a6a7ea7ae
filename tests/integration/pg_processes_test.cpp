// The real binaries on a real PostgreSQL: crashes under persisted load, manager restarts,
// the replay of a scheduled message and deduplication. Skipped without CLUSTER_TEST_PG_URL.
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "cluster/protocol/shard.hpp"
#include "cluster/storage-pg/postgres.hpp"
#include "cluster/storage-pg/stores.hpp"
#include "process_cluster.hpp"

namespace cluster::testing {
namespace {

using namespace std::chrono_literals;

class pg_processes : public pg_cluster_test {
 protected:
  std::map<std::string, std::string> shard_owners() {
    pg::connection conn(test_pg_url());
    auto rows = conn.exec("SELECT shard_group || '/' || shard, owner FROM " + prefix + "_shards");
    std::map<std::string, std::string> out;
    for (int r = 0; r < rows.rows(); ++r) out[rows.text(r, 0)] = rows.text(r, 1);
    return out;
  }
};

// Sends `total` persisted calls (`make(n)`, n = 0..total-1) over `clients` connections (at
// most `window` in flight each); each of `events` runs once `at` of them were answered.
struct load_result {
  std::size_t ok = 0;
  std::map<std::string, std::size_t> failures;
  std::vector<int> failed;  // the n of each call not answered with success
};
struct load_event {
  double at;  // fraction of the calls answered
  std::function<void()> run;
};
load_result persisted_load(std::uint16_t proxy_port, int clients, int total, int window,
                           const std::function<request_msg(int n)>& make,
                           std::vector<load_event> events) {
  asio::io_context io;
  load_result result;
  std::vector<connection_ptr> conns;
  for (int c = 0; c < clients; ++c)
    conns.push_back(connect_client(io, "127.0.0.1:" + std::to_string(proxy_port)));
  int sent = 0, answered = 0;
  std::size_t next_event = 0;
  std::function<void(int)> send_next = [&](int c) {
    if (sent >= total || !conns[c]) return;
    const int n = sent++;
    auto request = make(n);
    request.timeout_ms = 60000;
    conns[c]->call(message_kind::request, request, milliseconds(61000),
                   [&, c, n](reply_msg&& reply) {
                     ++answered;
                     if (reply.ok()) {
                       ++result.ok;
                     } else {
                       ++result.failures[reply.error + ": " + reply.message];
                       result.failed.push_back(n);
                     }
                     send_next(c);
                   });
  };
  for (int c = 0; c < clients; ++c)
    for (int w = 0; w < window; ++w) send_next(c);
  run_until(
      io,
      [&] {
        while (next_event < events.size() && answered >= events[next_event].at * total)
          events[next_event++].run();
        return answered >= total;
      },
      milliseconds(240000));
  for (auto& conn : conns)
    if (conn) conn->close();
  run_until(
      io, [] { return false; }, milliseconds(50));
  return result;
}

request_msg probe_append(int n) {
  auto request = make_request("Probe", "load-" + std::to_string(n % 97), "Append",
                              {{"sender", "c"}, {"value", n}});
  request.primary_key = "key-" + std::to_string(n);
  return request;
}

// One call through the proxy, waited for.
reply_msg call_once(std::uint16_t proxy_port, request_msg request) {
  asio::io_context io;
  auto conn = connect_client(io, "127.0.0.1:" + std::to_string(proxy_port));
  std::optional<reply_msg> reply;
  request.timeout_ms = 30000;
  conn->call(message_kind::request, request, milliseconds(31000),
             [&](reply_msg&& r) { reply = std::move(r); });
  run_until(
      io, [&] { return reply.has_value(); }, milliseconds(32000));
  conn->close();
  return reply ? std::move(*reply) : reply_msg::failure(errc::unavailable, "no reply");
}

TEST_F(pg_processes, answer_every_persisted_call_when_a_runner_is_killed) {
  start_manager();
  start_runner(1);
  start_runner(2);
  start_proxy();
  ASSERT_TRUE(ready(2));
  auto result = persisted_load(proxy_port, 8, 1000, 8, probe_append,
                               {{1.0 / 3, [&] {
                                   // kill -9 the runner owning the most shards, then bring it
                                   // back.
                                   const std::string victim = busiest_runner();
                                   end(victim, SIGKILL, 5s);
                                   start_runner(victim == "runner-1" ? 1 : 2);
                                 }}});
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
  pg::connection conn(test_pg_url());
  EXPECT_EQ(conn.exec("SELECT count(*) FROM " + prefix + "_messages m JOIN " + prefix +
                      "_replies r ON r.message_id = m.id")
                .integer(0, 0),
            1000);
  EXPECT_EQ(conn.exec("SELECT count(*) FROM " + prefix + "_pending").integer(0, 0), 0);
}

// Counter keeps its value as durable state: every acknowledged persisted Increment is in it
// exactly once, across a kill -9 and a SIGTERM of runners in the middle of the load. Calls
// that were not acknowledged are sent again with their primary key, so in the end each
// counter must equal the number of distinct keys sent to it: one lost or doubled
// increment anywhere changes a total.
TEST_F(pg_processes, count_every_acknowledged_increment_once_across_runner_kills) {
  start_manager();
  start_runner(1);
  start_runner(2);
  start_proxy();
  ASSERT_TRUE(ready(2));
  constexpr int counters = 40;
  constexpr int total = 2000;
  const auto increment = [](int n) {
    auto request =
        make_request("Counter", "c-" + std::to_string(n % counters), "Increment", {{"by", 1}});
    request.primary_key = "inc-" + std::to_string(n);
    return request;
  };
  const auto restart = [&](int signal) {
    const std::string victim = busiest_runner();
    end(victim, signal, 10s);
    start_runner(victim == "runner-1" ? 1 : 2);
  };
  auto result =
      persisted_load(proxy_port, 8, total, 8, increment,
                     {{0.3, [&] { restart(SIGKILL); }}, {0.6, [&] { restart(SIGTERM); }}});
  std::vector<int> unacknowledged = result.failed;
  for (int round = 0; round < 5 && !unacknowledged.empty(); ++round) {
    std::vector<int> still;
    for (int n : unacknowledged)
      if (!call_once(proxy_port, increment(n)).ok()) still.push_back(n);
    unacknowledged = std::move(still);
  }
  ASSERT_TRUE(unacknowledged.empty()) << unacknowledged.size() << " increments never acknowledged";
  for (int c = 0; c < counters; ++c) {
    const auto reply =
        call_once(proxy_port, make_request("Counter", "c-" + std::to_string(c), "Get"));
    ASSERT_TRUE(reply.ok()) << reply.error << ": " << reply.message;
    const auto value = nlohmann::json::from_msgpack(reply.payload)["value"];
    EXPECT_EQ(value, total / counters) << "Counter c-" << c;
  }
}

// A kept-alive entity (Tuned keeps itself alive) is remembered with its shard: when its
// runner is killed, the shard's next owner activates it without waiting for a message, and
// hands it a larger fencing token than the dead owner had.
TEST_F(pg_processes, activate_a_kept_alive_entity_on_the_next_owner_without_a_message) {
  const std::string log = (dir / "tuned-activations.log").string();
  ::setenv("CLUSTER_TUNED_ACTIVATION_LOG", log.c_str(), 1);
  const std::vector<std::string> plugins{
      "--set", "runner.plugins=" + std::string(CLUSTER_PLUGIN_DIR) + "," + CLUSTER_TEST_PLUGIN_DIR +
                   "/libprobe_plugin.so," + CLUSTER_TEST_PLUGIN_DIR + "/libtuned_plugin.so"};
  start_manager();
  start_runner(1, plugins);
  start_runner(2, plugins);
  start_proxy();
  ::unsetenv("CLUSTER_TUNED_ACTIVATION_LOG");
  ASSERT_TRUE(ready(2));
  const auto first = call_once(proxy_port, make_request("Tuned", "kept", "Stats"));
  ASSERT_TRUE(first.ok()) << first.error << ": " << first.message;
  const std::int64_t first_token = nlohmann::json::from_msgpack(first.payload)["fencing_token"];
  EXPECT_GT(first_token, 0);
  const auto activations = [&] {
    std::ifstream in(log);
    int lines = 0;
    for (std::string line; std::getline(in, line);)
      if (line.rfind("Tuned kept ", 0) == 0) ++lines;
    return lines;
  };
  ASSERT_EQ(activations(), 1);
  const std::string owner_address =
      shard_owners()["default/" + std::to_string(shard_for("kept", 300))];
  std::string owner;
  const auto cluster = status();
  for (const auto& runner : cluster["runners"])
    if (runner["address"] == owner_address) owner = runner["name"];
  ASSERT_FALSE(owner.empty()) << "no runner has address " << owner_address;
  end(owner, SIGKILL, 5s);
  // No call: the survivor activates it once it serves the shard.
  EXPECT_TRUE(wait_for([&] { return activations() == 2; }, 30s)) << activations();
  const auto moved = call_once(proxy_port, make_request("Tuned", "kept", "Stats"));
  ASSERT_TRUE(moved.ok()) << moved.error << ": " << moved.message;
  EXPECT_GT(nlohmann::json::from_msgpack(moved.payload)["fencing_token"].get<std::int64_t>(),
            first_token);
  EXPECT_EQ(activations(), 2);  // the call found it active
}

TEST_F(pg_processes, restart_the_manager_without_moving_a_shard) {
  start_manager();
  start_runner(1);
  start_runner(2);
  start_proxy();
  ASSERT_TRUE(ready(2));
  const auto before = shard_owners();
  ASSERT_EQ(before.size(), 300u);
  end("manager", SIGKILL, 5s);
  start_manager();
  ASSERT_TRUE(ready(2));
  std::this_thread::sleep_for(500ms);
  EXPECT_EQ(shard_owners(), before);
  int code = 0;
  auto out = clusterctl("call Greeter Test Greet '{\"name\":\"John\"}'", code);
  EXPECT_EQ(code, 0) << out;
}

TEST_F(pg_processes, replay_a_stored_scheduled_message_after_its_runner_is_killed) {
  start_manager();
  start_runner(1);
  start_runner(2);
  start_proxy();
  ASSERT_TRUE(ready(2));
  const auto unix_ms = [] {
    return std::chrono::duration_cast<milliseconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
  };
  // Far enough ahead that its runner is killed before it is due.
  const auto deliver_at = unix_ms() + 6000;
  std::string out;
  int code = -1;
  std::thread caller([&] {
    out = clusterctl("call --key sched-1 --deliver-at-ms " + std::to_string(deliver_at) +
                         " Probe scheduled Stamp '{}'",
                     code);
  });
  pg::connection db(test_pg_url());
  const auto count = [&](const std::string& sql) { return db.exec(sql).integer(0, 0); };
  const std::string stored_sql =
      "SELECT count(*) FROM " + prefix + "_messages WHERE primary_key = 'sched-1'";
  const std::string answered_sql = "SELECT count(*) FROM " + prefix + "_replies r JOIN " + prefix +
                                   "_messages m ON m.id = r.message_id WHERE m.primary_key = "
                                   "'sched-1'";
  const bool stored = wait_for([&] { return count(stored_sql) == 1; }, 30s);
  if (!stored) caller.join();
  ASSERT_TRUE(stored) << "the scheduled message was never stored: " << out;

  // Kill the runner serving the message's shard: it stored the message and waits for its time.
  const auto shard = shard_for("scheduled", 300);
  const auto owner =
      db.exec("SELECT owner FROM " + prefix +
              "_shards WHERE shard_group = 'default' AND shard = " + std::to_string(shard))
          .text(0, 0);
  const int victim = owner == "127.0.0.1:" + std::to_string(runner_ports[0]) ? 1 : 2;
  end("runner-" + std::to_string(victim), SIGKILL, 5s);
  const bool before_its_time = unix_ms() < deliver_at;
  EXPECT_EQ(count(answered_sql), 0) << "it ran before its time, or before its runner was killed";
  start_runner(victim);
  ASSERT_TRUE(ready(2));
  caller.join();
  ASSERT_EQ(code, 0) << out;
  EXPECT_GE(nlohmann::json::parse(out)["at_ms"].get<std::int64_t>(), deliver_at);

  // Stored once and answered once: the shard's next lock holder replayed it from the table.
  ASSERT_TRUE(before_its_time) << "the runner was killed after the message was due";
  EXPECT_EQ(count(stored_sql), 1);
  EXPECT_EQ(count(answered_sql), 1);
  EXPECT_EQ(count("SELECT count(*) FROM " + prefix + "_pending"), 0);
  const std::string replayed = "stored messages of shard default/" + std::to_string(shard);
  bool logged = false;
  for (const auto& name : {"runner-1", "runner-2"}) {
    std::ifstream log(dir / (std::string(name) + ".log"));
    for (std::string line; std::getline(log, line);)
      logged = logged || (line.find("replayed") != std::string::npos &&
                          line.find(replayed) != std::string::npos);
  }
  EXPECT_TRUE(logged) << "no runner logged the replay of shard " << shard;
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

TEST_F(pg_processes, refuse_a_primary_key_reused_with_a_different_request) {
  start_manager();
  start_runner(1);
  start_proxy();
  ASSERT_TRUE(ready(1));
  int code = 0;
  const auto alice = clusterctl("call --key k1 Greeter reuse Greet '{\"name\":\"Alice\"}'", code);
  ASSERT_EQ(code, 0) << alice;
  EXPECT_NE(alice.find("Hello, Alice!"), std::string::npos) << alice;
  const auto mallory =
      clusterctl("call --key k1 Greeter reuse Greet '{\"name\":\"Mallory\"}'", code);
  EXPECT_NE(code, 0) << mallory;
  EXPECT_NE(mallory.find("InvalidRequest: primary key reused with a different request"),
            std::string::npos)
      << mallory;
  EXPECT_EQ(mallory.find("Alice"), std::string::npos) << "another caller's reply leaked";
  const auto again = clusterctl("call --key k1 Greeter reuse Greet '{\"name\":\"Alice\"}'", code);
  ASSERT_EQ(code, 0) << again;
  EXPECT_EQ(again, alice);

  // A refused reuse runs nothing: the counter moved once.
  ASSERT_EQ(clusterctl("call --key inc-1 Counter reuse Increment '{\"by\":5}'", code).empty(),
            false);
  ASSERT_EQ(code, 0);
  const auto bigger = clusterctl("call --key inc-1 Counter reuse Increment '{\"by\":500}'", code);
  EXPECT_NE(code, 0) << bigger;
  EXPECT_NE(bigger.find("InvalidRequest"), std::string::npos) << bigger;
  const auto got = clusterctl("call Counter reuse Get '{}'", code);
  ASSERT_EQ(code, 0) << got;
  EXPECT_EQ(nlohmann::json::parse(got)["value"], 5);
}

// One register_runner with 150 groups and a 200-byte address is refused; what an older
// manager stored from such a registration is dropped when the manager starts again, so
// `clusterctl status` (the manager's health check) keeps answering.
TEST_F(pg_processes, refuse_an_oversized_registration_and_answer_status_after_a_restart) {
  start_manager();
  start_runner(1);
  start_proxy();
  ASSERT_TRUE(ready(1));
  register_runner_msg oversized;
  oversized.name = "impostor";
  oversized.address = std::string(195, 'a') + ":3443";
  for (int i = 0; i < 150; ++i) oversized.groups.push_back("group-" + std::to_string(i));
  {
    asio::io_context io;
    auto conn = connect_as(io, "127.0.0.1:" + std::to_string(manager_port), "runner");
    ASSERT_NE(conn, nullptr);
    std::optional<reply_msg> reply;
    conn->call(message_kind::register_runner, oversized, 5000ms,
               [&](reply_msg&& r) { reply = std::move(r); });
    ASSERT_TRUE(run_until(io, [&] { return reply.has_value(); }));
    EXPECT_EQ(reply->code, errc::invalid_request);
    EXPECT_EQ(reply->message, "groups has 150 entries; at most 64 are allowed");
    conn->close();
    run_until(
        io, [] { return false; }, 20ms);
  }
  auto s = status();
  ASSERT_TRUE(s.is_object()) << "clusterctl status failed";
  EXPECT_EQ(s["runners"].size(), 1u);

  // The same registration as an older manager stored it: the runner row and its groups'
  // shards, each owned by its 200-byte address (9 MB of snapshot, past the 8 MiB frame limit).
  {
    storage_settings settings;
    settings.backend = "postgres";
    settings.url = pg_url;
    settings.table_prefix = prefix;
    auto store = make_manager_store(settings);
    store->save_runner(oversized);
    for (const auto& group : oversized.groups)
      store->save_assignment(group, std::vector<std::string>(300, oversized.address));
    ASSERT_TRUE(store->flush(30s));
  }
  end("manager", SIGKILL, 5s);
  start_manager();
  ASSERT_TRUE(ready(1));
  s = status();
  ASSERT_TRUE(s.is_object()) << "clusterctl status failed after the restart";
  ASSERT_EQ(s["runners"].size(), 1u);
  EXPECT_EQ(s["runners"][0]["name"], "runner-1");
  EXPECT_EQ(s["groups"].size(), 1u);
  // Dropped from the database as well.
  ASSERT_TRUE(wait_for([&] {
    pg::connection conn(test_pg_url());
    auto runners = conn.exec("SELECT count(*) FROM " + prefix + "_runners");
    auto groups = conn.exec("SELECT count(DISTINCT shard_group) FROM " + prefix + "_shards");
    return runners.text(0, 0) == "1" && groups.text(0, 0) == "1";
  }));
  int code = 0;
  auto out = clusterctl("call Greeter Test Greet '{\"name\":\"John\"}'", code);
  EXPECT_EQ(code, 0) << out;
}

}  // namespace
}  // namespace cluster::testing
