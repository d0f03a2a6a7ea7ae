// Singletons and cron jobs on one runner's entity host and persisted messages, with the
// memory store and the scheduler example plugin in this process: a singleton starts when its
// shard serves here and stops (its run returns) before the shard's lock goes; a cron job's
// ticks run at their time, once each, and its bookkeeping is stored as its entity's state.
#include "cluster/host/jobs.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include "cluster/protocol/shard.hpp"
#include "cluster_fixture.hpp"

namespace cluster::host {
namespace {

using cluster::testing::run_until;

constexpr std::int32_t shards_per_group = 300;

std::vector<std::string> lines_of(const std::string& file) {
  std::vector<std::string> out;
  std::ifstream in(file);
  // "<pid> <unix ms> <what>": the what.
  for (std::string line; std::getline(in, line);) {
    const auto first = line.find(' ');
    const auto second = first == std::string::npos ? first : line.find(' ', first + 1);
    if (second != std::string::npos) out.push_back(line.substr(second + 1));
  }
  return out;
}

std::size_t count_with(const std::vector<std::string>& lines, std::string_view what) {
  return static_cast<std::size_t>(std::count_if(lines.begin(), lines.end(), [&](const auto& l) {
    return l.find(what) != std::string::npos;
  }));
}

class jobs_test : public ::testing::Test {
 protected:
  void SetUp() override {
    activity = (std::filesystem::temp_directory_path() /
                ("jobs-test-" + std::to_string(::getpid()) + ".log"))
                   .string();
    std::filesystem::remove(activity);
    ::setenv("SCHEDULER_ACTIVITY_FILE", activity.c_str(), 1);
    const auto loaded =
        registry.load_file(std::string(CLUSTER_PLUGIN_DIR) + "/jobs/libscheduler.so");
    ASSERT_TRUE(loaded) << loaded.error().message;
    entities = std::make_unique<entity_host>(
        io, entity_host_options{64, milliseconds(60000)},
        [](request_msg, entity_host::reply_callback done) {
          done(reply_msg::failure(errc::unavailable, "no calls here"));
        });
    storage_settings settings;
    settings.poll_interval = milliseconds(100);
    auto owned = make_memory_message_store(io, settings.batch_size);
    store = owned.get();
    persisted =
        std::make_unique<persisted_messages>(io, std::move(owned), *entities, registry, settings);
    scheduler = std::make_unique<jobs>(io, *entities, *persisted, *store, registry,
                                       [](const std::string&) { return shards_per_group; });
    scheduler->restart_backoff = milliseconds(50);
    persisted->on_shard_serving = [this](const std::string& group, std::int32_t shard) {
      scheduler->shard_serving(group, shard);
    };
    persisted->start();
  }
  void TearDown() override {
    scheduler.reset();
    if (persisted) persisted->stop();
    if (entities) entities->stop();
    run_until(
        io, [] { return false; }, milliseconds(50));
    ::unsetenv("SCHEDULER_ACTIVITY_FILE");
    std::filesystem::remove(activity);
  }
  std::map<std::string, std::set<std::int32_t>> serve(std::initializer_list<const char*> ids) {
    std::map<std::string, std::set<std::int32_t>> wanted;
    for (const char* id : ids) wanted["default"].insert(shard_for(id, shards_per_group));
    return wanted;
  }

  std::string activity;
  entity_registry registry;  // outlives the io_context: handlers may hold plugin code
  asio::io_context io;
  std::unique_ptr<entity_host> entities;
  message_store* store = nullptr;
  std::unique_ptr<persisted_messages> persisted;
  std::unique_ptr<jobs> scheduler;
};

TEST_F(jobs_test, runs_a_singleton_where_its_shard_serves_and_stops_it_before_the_shard_goes) {
  const auto shard = shard_for("singleton", shards_per_group);
  persisted->set_wanted(serve({"singleton"}));
  ASSERT_TRUE(run_until(io, [&] { return count_with(lines_of(activity), "beat 2") == 1; }));
  EXPECT_EQ(scheduler->running_singletons(), 1u);
  EXPECT_EQ(count_with(lines_of(activity), "start"), 1u);

  // The shard moves away: the run is asked to stop, returns, and only then the lock goes.
  persisted->set_wanted({});
  EXPECT_EQ(persisted->state("default", shard), shard_state::releasing);
  ASSERT_TRUE(run_until(io, [&] { return !persisted->state("default", shard).has_value(); }));
  const auto lines = lines_of(activity);
  ASSERT_FALSE(lines.empty());
  EXPECT_EQ(lines.back(), "stop");
  EXPECT_EQ(scheduler->running_singletons(), 0u);
  EXPECT_EQ(entities->active_entities(), 0u);

  // Served here again: a new run.
  persisted->set_wanted(serve({"singleton"}));
  ASSERT_TRUE(run_until(io, [&] { return count_with(lines_of(activity), "start") == 2; }));
}

TEST_F(jobs_test, runs_each_tick_of_a_cron_job_once_and_keeps_its_last_run) {
  persisted->set_wanted(serve({"cron"}));
  ASSERT_TRUE(run_until(
      io, [&] { return count_with(lines_of(activity), "tick ") >= 3; }, milliseconds(10000)));
  std::set<std::string> ticks;
  for (const auto& line : lines_of(activity))
    if (line.rfind("tick ", 0) == 0) {
      EXPECT_TRUE(ticks.insert(line).second) << line << " twice";
    }
  const auto status = scheduler->cron_status_of("EverySecond", "runner-x");
  EXPECT_EQ(status.schedule, "* * * * * *");
  EXPECT_EQ(status.runner, "runner-x");
  EXPECT_GT(status.last_scheduled_ms, 0);
  EXPECT_EQ(status.last_scheduled_ms % 1000, 0);
  EXPECT_EQ(status.last_outcome, "ok");
  EXPECT_GT(status.next_ms, status.last_scheduled_ms);

  // The bookkeeping is the cron entity's stored state.
  std::optional<stored_state> stored;
  store->load_state("EverySecond", "cron", [&](result<stored_state> r) {
    ASSERT_TRUE(r) << r.error().message;
    stored = r.value();
  });
  ASSERT_TRUE(run_until(io, [&] { return stored.has_value(); }));
  ASSERT_TRUE(stored->data.has_value());
  const auto bookkeeping = unpack_bytes<cron_bookkeeping>(*stored->data);
  ASSERT_TRUE(bookkeeping);
  EXPECT_GT(bookkeeping.value().last_scheduled_ms, 0);
}

TEST(next_cron_tick, follows_the_last_tick_or_applies_the_missed_policy) {
  const auto every_second = cron_schedule::parse("* * * * * *");
  // Never ran: the next tick after now.
  EXPECT_EQ(next_cron_tick(every_second, CLUSTER_CRON_SKIP_MISSED, 0, 10'500), 11'000);
  // The next one is still ahead: it, whatever the policy.
  EXPECT_EQ(next_cron_tick(every_second, CLUSTER_CRON_RUN_MISSED_ONCE, 10'000, 10'500), 11'000);
  // Missed: skip goes on after now, run-once runs the first missed one (at once).
  EXPECT_EQ(next_cron_tick(every_second, CLUSTER_CRON_SKIP_MISSED, 5'000, 10'500), 11'000);
  EXPECT_EQ(next_cron_tick(every_second, CLUSTER_CRON_RUN_MISSED_ONCE, 5'000, 10'500), 6'000);
}

}  // namespace
}  // namespace cluster::host
