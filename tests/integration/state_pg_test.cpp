// Durable entity state with the real binaries on a real PostgreSQL: Counter keeps its value
// across passivation, SIGTERM and kill -9 of its runner; a persisted Increment retried with
// its key counts once; a write from an activation whose state moved on is refused, and the
// entity runs the message again from storage. Skipped without CLUSTER_TEST_PG_URL.
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "cluster/storage-pg/stores.hpp"
#include "process_cluster.hpp"

namespace cluster::testing {
namespace {

using namespace std::chrono_literals;

class state_pg : public pg_cluster_test {
 protected:
  /// runner.passivate_after_ms: short where passivation is the point, long where the entity
  /// must stay active.
  int passivate_ms = 300;
  std::vector<std::string> runner_args() const {
    return {"--set",
            "runner.plugins=" + std::string(CLUSTER_PLUGIN_DIR) + "," + CLUSTER_TEST_PLUGIN_DIR +
                "/libprobe_plugin.so," + CLUSTER_TEST_PLUGIN_DIR + "/libledger_plugin.so",
            "--set", "runner.passivate_after_ms=" + std::to_string(passivate_ms)};
  }
  void start_cluster() {
    start_manager();
    start_runner(1, runner_args());
    start_proxy();
    ASSERT_TRUE(ready(1));
  }
  void restart_runner(int signal) {
    ASSERT_TRUE(end("runner-1", signal, 20s).has_value());
    start_runner(1, runner_args());
    ASSERT_TRUE(ready(1));
  }
  /// A call through the proxy; the reply as JSON (null when it failed: `error` says why).
  nlohmann::json call(const std::string& args, std::string* error = nullptr) {
    int code = 0;
    const auto out = clusterctl("call " + args, code);
    if (code != 0) {
      if (error) *error = out;
      ADD_FAILURE() << "clusterctl call " << args << ": " << out;
      return nullptr;
    }
    return nlohmann::json::parse(out, nullptr, false);
  }
  std::int64_t counter(const std::string& id) {
    const auto got = call("Counter " + id + " Get '{}'");
    return got.is_object() ? got.value("value", std::int64_t{-1}) : -1;
  }
  std::int64_t increment(const std::string& id, int by, const std::string& key) {
    const auto got = call("--key " + key + " Counter " + id +
                          " Increment '{\"by\":" + std::to_string(by) + "}'");
    return got.is_object() ? got.value("value", std::int64_t{-1}) : -1;
  }

  /// This test's tables, as a runner's store sees them.
  std::unique_ptr<message_store> open_store(asio::io_context& io) {
    storage_settings settings;
    settings.backend = "postgres";
    settings.url = pg_url;
    settings.table_prefix = prefix;
    return make_message_store(io, settings);
  }
};

TEST_F(state_pg, counter_keeps_its_value_across_passivation_sigterm_and_kill_9) {
  start_cluster();
  EXPECT_EQ(increment("kept", 1, "k1"), 1);
  EXPECT_EQ(increment("kept", 2, "k2"), 3);
  EXPECT_EQ(increment("kept", 3, "k3"), 6);

  // Passivation: the Ledger beside it reports a new activation once its idle entity went
  // (polled more slowly than runner.passivate_after_ms, so that the polls let it go).
  const auto first = call("Ledger idle Add '{\"amount\":1,\"note\":\"a\"}'");
  ASSERT_TRUE(first.is_object());
  bool passivated = false;
  const auto deadline = std::chrono::steady_clock::now() + 20s;
  while (!passivated && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(700ms);  // the poll's pace, not a synchronisation
    const auto shown = call("Ledger idle Show '{}'");
    passivated = shown.is_object() && shown["activation"] != first["activation"];
    if (shown.is_object()) {
      EXPECT_EQ(shown["total"], 1);
    }
  }
  EXPECT_TRUE(passivated) << "the Ledger was never passivated";
  EXPECT_EQ(counter("kept"), 6);

  restart_runner(SIGTERM);
  EXPECT_EQ(counter("kept"), 6);
  restart_runner(SIGKILL);
  EXPECT_EQ(counter("kept"), 6);
  EXPECT_EQ(increment("kept", 4, "k4"), 10);
  EXPECT_EQ(counter("kept"), 10);
}

TEST_F(state_pg, a_persisted_increment_retried_with_its_key_counts_once_across_a_kill) {
  start_cluster();
  EXPECT_EQ(increment("once", 5, "same"), 5);
  restart_runner(SIGKILL);
  EXPECT_EQ(increment("once", 5, "same"), 5);  // the stored reply, not a second run
  EXPECT_EQ(counter("once"), 5);
  EXPECT_EQ(increment("once", 1, "other"), 6);
}

TEST_F(state_pg, a_write_from_a_stale_activation_is_refused_and_the_message_runs_again) {
  passivate_ms = 600000;
  start_cluster();
  EXPECT_EQ(increment("stale", 1, "a"), 1);  // active on runner-1, at version 1

  // Another activation commits first: the version moves on behind runner-1's back.
  asio::io_context io;
  auto store = open_store(io);
  std::optional<result<stored_state>> read;
  store->load_state("Counter", "stale", [&](result<stored_state> r) { read = std::move(r); });
  ASSERT_TRUE(run_until(io, [&] { return read.has_value(); }));
  ASSERT_TRUE(*read) << read->error().message;
  ASSERT_EQ(read->value().version, 1);
  const auto packed = nlohmann::json::to_msgpack({{"value", 100}});
  std::optional<result<void>> written;
  store->save_state(state_write{"Counter", "stale", 1, bytes(packed.begin(), packed.end())},
                    [&](result<void> r) { written = std::move(r); });
  ASSERT_TRUE(run_until(io, [&] { return written.has_value(); }));
  ASSERT_TRUE(*written) << written->error().message;

  // runner-1's write (version 1 → 2) is refused: nothing of that run is stored, its activation
  // goes, the caller's router retries, and the message runs again on the stored 100.
  EXPECT_EQ(increment("stale", 1, "b"), 101);
  EXPECT_EQ(counter("stale"), 101);
  std::optional<result<stored_state>> after;
  store->load_state("Counter", "stale", [&](result<stored_state> r) { after = std::move(r); });
  ASSERT_TRUE(run_until(io, [&] { return after.has_value(); }));
  ASSERT_TRUE(*after);
  EXPECT_EQ(after->value().version, 3);
  store->stop();

  std::ifstream log(dir / "runner-1.log");
  const std::string text((std::istreambuf_iterator<char>(log)), std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("state was not written"), std::string::npos);
}

}  // namespace
}  // namespace cluster::testing
