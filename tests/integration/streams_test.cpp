// Streaming replies, interrupts and discard through the real binaries: a runner serving
// Greeter.GreetMany, the proxy in front of it, clusterctl and the gateway as callers.
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "cluster/protocol/codec.hpp"
#include "cluster/protocol/shard.hpp"
#include "process_cluster.hpp"

namespace cluster::testing {
namespace {

using namespace std::chrono_literals;
using json = nlohmann::json;
const std::string bin = CLUSTER_BIN_DIR;

// Resident memory of a process in KiB, from /proc/PID/status (0 when unreadable).
long rss_kib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return 0;
}

request_msg greet_many(const std::string& id, int count, int delay_ms, std::uint32_t credit) {
  auto request = make_request("Greeter", id, "GreetMany",
                              json{{"name", "John"}, {"count", count}, {"delay_ms", delay_ms}});
  request.credit = credit;
  request.timeout_ms = 30000;
  return request;
}

// Each case runs with the plugins in the runner and in their own process.
class streams : public process_cluster_test, public ::testing::WithParamInterface<std::string> {
 protected:
  void SetUp() override {
    // ASan's quarantine keeps freed memory resident (256 MiB by default): with a small one
    // the children's resident memory shows what they hold, not what they freed.
    const char* options = std::getenv("ASAN_OPTIONS");
    const std::string joined = std::string(options ? options : "") +
                               (options && *options ? ":" : "") + "quarantine_size_mb=8";
    ::setenv("ASAN_OPTIONS", joined.c_str(), 1);
    process_cluster_test::SetUp();
  }
  void start_cluster(int runners = 1) {
    start_manager();
    for (int n = 1; n <= runners; ++n) start_runner(n, {"--set", "runner.isolation=" + GetParam()});
    start_proxy();
    ASSERT_TRUE(ready(static_cast<std::size_t>(runners)));
  }
  std::string log(const std::string& name) {
    std::ifstream in(dir / (name + ".log"));
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }
  std::string proxy_address() const { return "127.0.0.1:" + std::to_string(proxy_port); }
};

// What one streaming call saw.
struct stream_seen {
  std::vector<json> items;
  std::optional<reply_msg> reply;
  std::uint32_t unacked = 0;
};

TEST_P(streams, a_slow_consumer_holds_back_a_100k_item_stream_and_memory_stays_bounded) {
  start_cluster();
  asio::io_context io;
  auto conn = connect_client(io, proxy_address());
  ASSERT_NE(conn, nullptr);
  const pid_t runner = slots.at("runner-1")->pid();
  const pid_t proxy = slots.at("proxy")->pid();
  const long runner_start = rss_kib(runner), proxy_start = rss_kib(proxy);
  constexpr int total = 100000;
  constexpr std::uint32_t window = 256;
  auto seen = std::make_shared<stream_seen>();
  std::uint64_t id = 0;
  std::size_t count = 0;
  id = conn->call_stream(
      message_kind::request, greet_many("slow", total, 0, window), window, 30s,
      [seen, &count](std::vector<bytes>&& items) {
        count += items.size();
        seen->unacked += static_cast<std::uint32_t>(items.size());
        if (seen->items.size() < 3)
          for (const auto& item : items) seen->items.push_back(json::from_msgpack(item));
      },
      [seen](reply_msg&& reply) { seen->reply = std::move(reply); });
  // Hold the credit: the producer must stop at the window, end to end through the proxy.
  ASSERT_TRUE(run_until(
      io, [&] { return count == window; }, 10s))
      << count;
  io.run_for(500ms);
  EXPECT_EQ(count, window) << "items arrived past the caller's credit";
  // Then consume slowly: half a window every 2 ms, so the producer waits on the consumer.
  long runner_peak = 0, proxy_peak = 0;
  asio::steady_timer tick(io);
  std::function<void()> consume = [&] {
    runner_peak = std::max(runner_peak, rss_kib(runner));
    proxy_peak = std::max(proxy_peak, rss_kib(proxy));
    if (seen->reply) return;
    if (seen->unacked > 0) {
      const auto grant = std::min(seen->unacked, window / 2);
      conn->ack(id, grant);
      seen->unacked -= grant;
    }
    tick.expires_after(2ms);
    tick.async_wait([&](const error_code& ec) {
      if (!ec) consume();
    });
  };
  consume();
  ASSERT_TRUE(run_until(
      io, [&] { return seen->reply.has_value(); }, 120s))
      << count;
  ASSERT_TRUE(seen->reply->ok()) << seen->reply->error << ": " << seen->reply->message;
  EXPECT_EQ(count, static_cast<std::size_t>(total));
  EXPECT_EQ(reply_json(*seen->reply)["count"], total);
  ASSERT_FALSE(seen->items.empty());
  EXPECT_EQ(seen->items[0]["index"], 0);
  EXPECT_EQ(seen->items[0]["message"],
            "Hello, John! from slow Greeter " + std::to_string(shard_for("slow", 300)));
  std::cerr << "RSS KiB: runner " << runner_start << " -> peak " << runner_peak << ", proxy "
            << proxy_start << " -> peak " << proxy_peak << "\n";
  EXPECT_LT(runner_peak - runner_start, 64 * 1024);
  EXPECT_LT(proxy_peak - proxy_start, 64 * 1024);
  conn->close();
}

TEST_P(streams, an_interrupt_through_the_proxy_ends_a_sleeping_handler_with_cancelled) {
  start_cluster();
  asio::io_context io;
  auto conn = connect_client(io, proxy_address());
  ASSERT_NE(conn, nullptr);
  auto seen = std::make_shared<stream_seen>();
  const auto id = conn->call_stream(
      message_kind::request, greet_many("sleepy", 10, 60000, 0), 0, 30s,
      [seen](std::vector<bytes>&& items) {
        for (const auto& item : items) seen->items.push_back(json::from_msgpack(item));
      },
      [seen](reply_msg&& reply) { seen->reply = std::move(reply); });
  // GreetMany yields its first item at once, then sleeps before the next.
  ASSERT_TRUE(run_until(
      io, [&] { return !seen->items.empty() || seen->reply; }, 10s));
  ASSERT_FALSE(seen->reply.has_value()) << seen->reply->message;
  const auto asked = steady_clock::now();
  conn->interrupt(id);
  ASSERT_TRUE(run_until(
      io, [&] { return seen->reply.has_value(); }, 5s));
  const auto took = std::chrono::duration_cast<milliseconds>(steady_clock::now() - asked);
  EXPECT_EQ(seen->reply->code, errc::cancelled) << seen->reply->message;
  std::cerr << "interrupt to Cancelled through the proxy: " << took.count() << " ms\n";
  EXPECT_TRUE(wait_for(
      [&] { return log("runner-1").find("GreetMany cancelled") != std::string::npos; }, 5s))
      << log("runner-1");
  conn->close();
}

TEST_P(streams, a_stream_silent_past_its_timeout_ends_deadline_exceeded_a_starved_one_does_not) {
  start_cluster();
  asio::io_context io;
  auto conn = connect_client(io, proxy_address());
  ASSERT_NE(conn, nullptr);
  // The handler sleeps 5 s after its first item: past the 800 ms a wait may last.
  auto silent = std::make_shared<stream_seen>();
  auto request = greet_many("silent", 3, 5000, 0);
  request.timeout_ms = 800;
  conn->call_stream(
      message_kind::request, request, 0, 30s,
      [silent](std::vector<bytes>&& items) {
        for (const auto& item : items) silent->items.push_back(json::from_msgpack(item));
      },
      [silent](reply_msg&& reply) { silent->reply = std::move(reply); });
  ASSERT_TRUE(run_until(
      io, [&] { return silent->reply.has_value(); }, 4s));
  EXPECT_EQ(silent->reply->code, errc::deadline_exceeded) << silent->reply->message;
  EXPECT_EQ(silent->items.size(), 1u);

  // A consumer that holds all the credit for 2 s: the producer waits, the deadline does not run.
  auto starved = std::make_shared<stream_seen>();
  std::size_t count = 0;
  request = greet_many("starved", 50, 0, 2);
  request.timeout_ms = 800;
  const auto id = conn->call_stream(
      message_kind::request, request, 2, 30s,
      [starved, &count](std::vector<bytes>&& items) { count += items.size(); },
      [starved](reply_msg&& reply) { starved->reply = std::move(reply); });
  io.run_for(2s);
  EXPECT_EQ(count, 2u);
  ASSERT_FALSE(starved->reply.has_value()) << starved->reply->message;
  conn->ack(id, 48);
  ASSERT_TRUE(run_until(
      io, [&] { return starved->reply.has_value(); }, 5s));
  EXPECT_TRUE(starved->reply->ok()) << starved->reply->message;
  EXPECT_EQ(count, 50u);
  conn->close();
}

TEST_P(streams, clusterctl_prints_one_line_per_item_then_the_final_reply) {
  start_cluster();
  int status = 0;
  const auto out = clusterctl(
      "call --stream Greeter x GreetMany '{\"name\":\"John\",\"count\":3,\"delay_ms\":10}'",
      status);
  ASSERT_EQ(status, 0) << out;
  std::istringstream lines(out);
  std::vector<json> parsed;
  for (std::string line; std::getline(lines, line);) parsed.push_back(json::parse(line));
  ASSERT_EQ(parsed.size(), 4u) << out;
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(parsed[static_cast<std::size_t>(i)]["index"], i) << out;
    EXPECT_EQ(parsed[static_cast<std::size_t>(i)]["message"],
              "Hello, John! from x Greeter " + std::to_string(shard_for("x", 300)));
  }
  EXPECT_EQ(parsed[3], (json{{"final", {{"count", 3}}}})) << out;
}

TEST_P(streams, sigint_of_clusterctl_interrupts_the_handler_and_exits_non_zero) {
  start_cluster();
  const auto out_file = (dir / "clusterctl.out").string();
  child_process ctl(
      bin + "/clusterctl",
      {"--proxy", proxy_address(), "--timeout-ms", "30000", "call", "--stream", "Greeter", "ctrl-c",
       "GreetMany", R"({"name":"John","count":5,"delay_ms":60000})"},
      out_file);
  const auto printed = [&] {
    std::ifstream in(out_file);
    return std::string{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  };
  // The first item is out at once; the handler then sleeps for a minute.
  ASSERT_TRUE(wait_for([&] { return printed().find("\"index\":0") != std::string::npos; }, 10s))
      << printed();
  const auto status = ctl.stop(SIGINT, 5s);
  ASSERT_TRUE(status.has_value()) << "clusterctl did not exit after SIGINT";
  EXPECT_NE(*status, 0);
  const auto out = printed();
  EXPECT_NE(out.find("error: Cancelled"), std::string::npos) << out;
  EXPECT_TRUE(wait_for(
      [&] { return log("runner-1").find("GreetMany cancelled") != std::string::npos; }, 5s))
      << log("runner-1");
}

TEST_P(streams, sigint_of_clusterctl_withdraws_a_persisted_request_before_it_runs) {
  start_cluster();
  const auto out_file = (dir / "clusterctl.out").string();
  const auto due = std::chrono::duration_cast<milliseconds>(
                       std::chrono::system_clock::now().time_since_epoch() + 3s)
                       .count();
  child_process ctl(
      bin + "/clusterctl",
      {"--proxy", proxy_address(), "--timeout-ms", "30000", "call", "--key", "late-5",
       "--deliver-at-ms", std::to_string(due), "Counter", "later", "Increment", R"({"by":5})"},
      out_file);
  std::this_thread::sleep_for(700ms);  // stored by now, waiting for its time
  const auto status = ctl.stop(SIGINT, 5s);
  ASSERT_TRUE(status.has_value()) << "clusterctl did not exit after SIGINT";
  EXPECT_NE(*status, 0);
  std::ifstream in(out_file);
  const std::string out{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  EXPECT_NE(out.find("error: Cancelled"), std::string::npos) << out;
  // Past its time it still has not run, and its key answers with the stored Cancelled.
  std::this_thread::sleep_for(3s);
  int code = 0;
  EXPECT_EQ(clusterctl("call Counter later Get '{}'", code), "{\"value\":0}\n");
  const auto again = clusterctl("call --key late-5 --deliver-at-ms " + std::to_string(due) +
                                    " Counter later Increment '{\"by\":5}'",
                                code);
  EXPECT_NE(code, 0);
  EXPECT_NE(again.find("Cancelled"), std::string::npos) << again;
}

TEST_P(streams, a_runner_killed_mid_stream_gives_unavailable_and_a_new_call_succeeds) {
  start_cluster(2);
  asio::io_context io;
  auto conn = connect_client(io, proxy_address());
  ASSERT_NE(conn, nullptr);
  auto seen = std::make_shared<stream_seen>();
  conn->call_stream(
      message_kind::request, greet_many("doomed", 1000, 20, 0), 0, 30s,
      [seen](std::vector<bytes>&& items) {
        for (const auto& item : items) seen->items.push_back(json::from_msgpack(item));
      },
      [seen](reply_msg&& reply) { seen->reply = std::move(reply); });
  ASSERT_TRUE(run_until(
      io, [&] { return seen->items.size() >= 3 || seen->reply; }, 10s));
  ASSERT_FALSE(seen->reply.has_value()) << seen->reply->message;
  // The runner serving it owns the shard of "doomed" in the proxy's assignment.
  std::optional<reply_msg> answer;
  conn->call(message_kind::get_status, empty_msg{}, 5s,
             [&answer](reply_msg&& reply) { answer = std::move(reply); });
  ASSERT_TRUE(run_until(
      io, [&] { return answer.has_value(); }, 5s));
  auto snapshot = unpack_bytes<assignment_snapshot>(answer->payload);
  ASSERT_TRUE(snapshot) << snapshot.error().message;
  std::string victim;
  const auto shard = shard_for("doomed", 300);
  for (const auto& group : snapshot.value().groups)
    if (group.group == "default")
      for (int n = 1; n <= 2; ++n)
        if (group.owners.at(static_cast<std::size_t>(shard - 1)) ==
            "127.0.0.1:" + std::to_string(runner_ports[static_cast<std::size_t>(n - 1)]))
          victim = "runner-" + std::to_string(n);
  ASSERT_FALSE(victim.empty());
  end(victim, SIGKILL);
  ASSERT_TRUE(run_until(
      io, [&] { return seen->reply.has_value(); }, 10s));
  EXPECT_EQ(seen->reply->code, errc::unavailable) << seen->reply->message;
  // Once the shard moved, the same stream works again.
  EXPECT_TRUE(wait_for(
      [&] {
        int code = 0;
        const auto out = clusterctl(
            "call --stream Greeter doomed GreetMany "
            "'{\"name\":\"John\",\"count\":2,\"delay_ms\":0}'",
            code);
        return code == 0 && out.find("{\"final\":{\"count\":2}}") != std::string::npos;
      },
      30s));
  conn->close();
}

TEST_P(streams, a_discarded_call_is_accepted_at_once_and_still_runs) {
  start_cluster();
  int status = 0;
  auto out = clusterctl("call --discard Counter d Increment '{\"by\":5}'", status);
  ASSERT_EQ(status, 0) << out;
  EXPECT_EQ(out, "accepted\n");
  EXPECT_TRUE(wait_for(
      [&] {
        int code = 0;
        const auto got = clusterctl("call Counter d Get '{}'", code);
        return code == 0 && got.find("5") != std::string::npos;
      },
      10s));
}

INSTANTIATE_TEST_SUITE_P(isolation, streams, ::testing::Values("none", "process"),
                         [](const auto& param) { return param.param; });

}  // namespace
}  // namespace cluster::testing
