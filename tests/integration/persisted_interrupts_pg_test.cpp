// Interrupts and discards of persisted requests on a runner whose messages are stored in
// PostgreSQL (CLUSTER_TEST_PG_URL): the runner object of the product behind a client
// connection, stopped and replaced by a new one (a new storage session) that replays.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>

#include "cluster/storage-pg/postgres.hpp"
#include "cluster_fixture.hpp"
#include "test_postgres.hpp"

namespace cluster::testing {
namespace {

std::int64_t unix_ms() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string unique_prefix() {
  static std::atomic<int> counter{0};
  return "i" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
}

using reply_slot = std::shared_ptr<std::optional<reply_msg>>;

class persisted_interrupts_pg : public ::testing::Test {
 protected:
  void SetUp() override {
    REQUIRE_POSTGRES();
    prefix = unique_prefix();
    cluster = std::make_unique<in_process_cluster>();
    start_runner();
  }
  void TearDown() override {
    if (conn) conn->close();
    conn.reset();  // before the io_context it lives on
    cluster.reset();
  }

  /// A runner on the test's tables; the caller's connection goes to it.
  void start_runner() {
    auto& runner = cluster->add_runner([this](host::runner_config& config) {
      config.isolation = "none";
      config.common.storage.backend = "postgres";
      config.common.storage.url = test_pg_url();
      config.common.storage.table_prefix = prefix;
      config.common.storage.poll_interval = milliseconds(100);
    });
    ASSERT_TRUE(cluster->wait_until_balanced(1, milliseconds(20000)));
    if (conn) conn->close();
    conn = connect_client(cluster->io, runner.address());
    ASSERT_NE(conn, nullptr);
  }
  void restart_runner() {
    cluster->stop_runner(0);
    start_runner();
  }

  std::pair<std::uint64_t, reply_slot> send(const request_msg& request) {
    auto slot = std::make_shared<std::optional<reply_msg>>();
    const auto id = conn->call(message_kind::request, request, milliseconds(20000),
                               [slot](reply_msg&& reply) { *slot = std::move(reply); });
    return {id, slot};
  }
  reply_msg wait_reply(const reply_slot& slot, milliseconds timeout = milliseconds(10000)) {
    EXPECT_TRUE(run_until(
        cluster->io, [&] { return slot->has_value(); }, timeout));
    return slot->value_or(reply_msg::failure(errc::deadline_exceeded, "no reply in the test"));
  }
  reply_msg call(const request_msg& request) { return wait_reply(send(request).second); }
  static request_msg append(const std::string& entity, const std::string& sender, int value,
                            const std::string& key) {
    auto request = make_request("Probe", entity, "Append", {{"sender", sender}, {"value", value}});
    request.primary_key = key;
    return request;
  }
  static request_msg sleep_for(const std::string& entity, int ms) {
    return make_request("Probe", entity, "Sleep", {{"ms", ms}});
  }
  static std::vector<std::string> log_of(const reply_msg& reply) {
    return reply_json(reply).value("log", std::vector<std::string>{});
  }
  /// Messages stored and not processed yet, as the database has them.
  std::int64_t pending() {
    pg::connection db(test_pg_url());
    return db.exec("SELECT count(*) FROM " + prefix + "_pending").integer(0, 0);
  }
  bool wait_pending(std::int64_t count) {
    return run_until(
        cluster->io, [&] { return pending() == count; }, milliseconds(5000));
  }
  /// Runs the loop until `wanted` (no bare sleep).
  void run_until_time(std::int64_t wanted_unix_ms) {
    run_until(
        cluster->io, [&] { return unix_ms() >= wanted_unix_ms; }, milliseconds(10000));
  }

  std::string prefix;
  std::unique_ptr<in_process_cluster> cluster;
  connection_ptr conn;
};

TEST_F(persisted_interrupts_pg,
       an_interrupted_scheduled_request_is_stored_cancelled_and_never_runs) {
  const std::string entity = "scheduled";
  auto later = append(entity, "late", 1, "k1");
  later.deliver_at_ms = unix_ms() + 2000;
  auto [id, slot] = send(later);
  // Stored and waiting for its time: nothing answers it before the interrupt.
  ASSERT_TRUE(wait_pending(1));
  ASSERT_FALSE(slot->has_value()) << slot->value().message;
  const auto asked = steady_clock::now();
  conn->interrupt(id);
  const auto reply = wait_reply(slot, milliseconds(2000));
  EXPECT_EQ(reply.code, errc::cancelled) << reply.message;
  EXPECT_LT(steady_clock::now() - asked, milliseconds(1000)) << "not answered at once";
  EXPECT_EQ(pending(), 0) << "not taken off the queue";
  // A retry with its primary key gets the stored Cancelled.
  const auto retried = call(later);
  EXPECT_EQ(retried.code, errc::cancelled) << retried.message;

  // A new runner (a new session) replays the shard; the message's time passes there.
  restart_runner();
  run_until_time(*later.deliver_at_ms + 300);
  const auto after = call(append(entity, "after", 2, "k2"));
  ASSERT_TRUE(after.ok()) << after.message;
  EXPECT_EQ(log_of(after), (std::vector<std::string>{"after:2"})) << "the interrupted one ran";
  EXPECT_EQ(call(later).code, errc::cancelled);
}

TEST_F(persisted_interrupts_pg, an_interrupted_request_queued_behind_a_long_one_never_runs) {
  const std::string entity = "queued";
  auto [sleep_id, sleeping] = send(sleep_for(entity, 1500));  // holds the entity
  const auto queued_request = append(entity, "queued", 1, "k1");
  auto [id, queued] = send(queued_request);
  ASSERT_TRUE(wait_pending(1));  // stored, then handed to the busy entity
  ASSERT_FALSE(queued->has_value()) << queued->value().message;
  conn->interrupt(id);
  const auto reply = wait_reply(queued, milliseconds(1000));
  EXPECT_EQ(reply.code, errc::cancelled) << reply.message;
  EXPECT_FALSE(sleeping->has_value()) << "answered before the long one ended";
  ASSERT_TRUE(wait_reply(sleeping).ok());
  const auto after = call(append(entity, "after", 2, "k2"));
  ASSERT_TRUE(after.ok()) << after.message;
  EXPECT_EQ(log_of(after), (std::vector<std::string>{"after:2"})) << "the interrupted one ran";
  EXPECT_EQ(call(queued_request).code, errc::cancelled);
  // Stored as processed: a new runner's replay does not run it either.
  restart_runner();
  const auto later = call(append(entity, "later", 3, "k3"));
  ASSERT_TRUE(later.ok()) << later.message;
  EXPECT_EQ(log_of(later), (std::vector<std::string>{"later:3"}));
}

TEST_F(persisted_interrupts_pg, a_discarded_request_is_accepted_once_stored_and_still_runs) {
  const std::string entity = "discarded";
  auto [sleep_id, sleeping] = send(sleep_for(entity, 1500));
  auto discarded = append(entity, "discarded", 1, "k1");
  discarded.discard = true;
  const auto accepted = call(discarded);
  ASSERT_TRUE(accepted.ok()) << accepted.message;
  EXPECT_TRUE(accepted.payload.empty());
  EXPECT_FALSE(sleeping->has_value()) << "accepted only after the entity was free";
  ASSERT_TRUE(wait_reply(sleeping).ok());
  const auto after = call(append(entity, "after", 2, "k2"));
  ASSERT_TRUE(after.ok()) << after.message;
  EXPECT_EQ(log_of(after), (std::vector<std::string>{"discarded:1", "after:2"}));
  // Its key again: accepted at once, not run twice.
  const auto again = call(discarded);
  ASSERT_TRUE(again.ok()) << again.message;
  EXPECT_TRUE(again.payload.empty());

  // A stateful entity: the discarded Increment's effect is stored and read back.
  auto increment = make_request("Counter", "c", "Increment", {{"by", 5}});
  increment.primary_key = "inc-1";
  increment.discard = true;
  const auto counted = call(increment);
  ASSERT_TRUE(counted.ok()) << counted.message;
  EXPECT_TRUE(counted.payload.empty());
  EXPECT_TRUE(run_until(cluster->io, [&] {
    const auto got = call(make_request("Counter", "c", "Get"));
    return got.ok() && reply_json(got).value("value", 0) == 5;
  }));
}

}  // namespace
}  // namespace cluster::testing
