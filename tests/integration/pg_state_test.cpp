// Entity state in PostgreSQL against a real server (scripts/dev test starts a private one and
// sets CLUSTER_TEST_PG_URL): versions and conflicts, a write round that mixes conflicts and
// good writes in one commit, batched loads, lock epochs across stores, kept entities. Each
// test uses its own table prefix.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>

#include "cluster/storage-pg/pg_message_store.hpp"
#include "cluster/storage-pg/stores.hpp"
#include "cluster_fixture.hpp"
#include "state_store_checks.hpp"
#include "test_postgres.hpp"

namespace cluster::testing {
namespace {

std::string unique_prefix() {
  static std::atomic<int> counter{0};
  return "s" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
}

class pg_state : public ::testing::Test {
 protected:
  void SetUp() override {
    if (test_pg_url().empty()) GTEST_SKIP() << "CLUSTER_TEST_PG_URL is not set";
    settings.backend = "postgres";
    settings.url = test_pg_url();
    settings.table_prefix = unique_prefix();
    settings.application_name = settings.table_prefix + "_a";
    store = std::make_unique<pg_message_store>(io, settings);
    driver.emplace(io, *store);
  }
  void TearDown() override {
    if (store) store->stop();
  }
  std::string table(const char* name) const { return settings.table_prefix + "_" + name; }

  asio::io_context io;
  storage_settings settings;
  std::unique_ptr<pg_message_store> store;
  std::optional<state_store_driver> driver;
};

TEST_F(pg_state, grows_the_version_with_every_write_and_refuses_a_stale_one) {
  check_state_versions(*driver);
}

TEST_F(pg_state, keeps_the_row_of_a_cleared_state_with_a_growing_version) {
  check_clear_then_write(*driver);
  pg::connection admin(test_pg_url());
  auto row = admin.exec("SELECT count(*) FROM " + table("entity_state") +
                        " WHERE entity_type = 'Counter' AND entity_id = 'c'");
  EXPECT_EQ(row.integer(0, 0), 1);
}

TEST_F(pg_state, completes_a_message_with_its_state_or_writes_none_of_them) {
  check_complete_with_state(*driver, 5);
}

TEST_F(pg_state, commits_a_round_of_writes_once_and_fails_only_its_conflicts) {
  // Hold the worker on a row lock while the round is handed over, so that the round is
  // taken whole: then everything it wrote carries the one transaction id of its commit.
  pg::connection blocker(test_pg_url());
  std::optional<result<void>> gate_done;
  const auto hold_worker = [&] {
    ASSERT_TRUE(driver->save(write_of("gate", 0, bytes{0x01})).has_value());
    blocker.exec("BEGIN");
    blocker.exec("SELECT 1 FROM " + table("entity_state") + " WHERE entity_id = 'gate' FOR UPDATE");
    store->save_state(write_of("gate", 1, bytes{0x02}),
                      [&](result<void> r) { gate_done = std::move(r); });
    pg::connection watcher(test_pg_url());
    ASSERT_TRUE(run_until(io, [&] {
      return watcher
                 .exec(
                     "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                     " AND wait_event_type = 'Lock'",
                     {pg::param::text(settings.application_name)})
                 .integer(0, 0) == 1;
    }));
  };
  const auto release_worker = [&] { blocker.exec("COMMIT"); };
  check_round_mixing_conflict_and_good_writes(io, *store, *driver, 5, hold_worker, release_worker);
  ASSERT_TRUE(gate_done.has_value());
  EXPECT_TRUE(gate_done->has_value());

  pg::connection admin(test_pg_url());
  auto states = admin.exec("SELECT DISTINCT xmin::text FROM " + table("entity_state") +
                           " WHERE entity_id IN ('m0', 'm2', 's0') OR (entity_id = 's1' AND"
                           " version = 2)");
  auto replies = admin.exec("SELECT DISTINCT xmin::text FROM " + table("replies"));
  ASSERT_EQ(states.rows(), 1) << "the round's states were written by one transaction";
  ASSERT_EQ(replies.rows(), 1) << "and its replies";
  EXPECT_EQ(states.text(0, 0), replies.text(0, 0)) << "the same one: one commit";
}

TEST_F(pg_state, tells_other_stores_of_a_reply_stored_with_its_state_when_asked_to) {
  pg_message_store other(io, settings);
  std::vector<std::int64_t> heard;
  other.on_reply = [&](std::int64_t id) { heard.push_back(id); };
  // The other store's listener is up once it hears a plain announced reply (one sent before
  // it LISTENs is never heard: send another until one is).
  for (int attempt = 0; attempt < 50 && heard.empty(); ++attempt) {
    const auto warm_up = driver->persist(state_message("w", std::to_string(attempt), 5)).value().id;
    std::optional<result<void>> completed;
    store->complete(warm_up, reply_msg::success({}), true,
                    [&](result<void> r) { completed = std::move(r); });
    run_until(
        io, [&] { return completed.has_value() && !heard.empty(); },
        std::chrono::milliseconds(200));
  }
  ASSERT_FALSE(heard.empty());

  const auto id = driver->persist(state_message("n", "k", 5)).value().id;
  std::optional<result<void>> written;
  store->complete_with_state(id, reply_msg::success({0x01}), true, write_of("n", 0, bytes{0x02}),
                             [&](result<void> r) { written = std::move(r); });
  ASSERT_TRUE(run_until(io, [&] {
    return written.has_value() && std::find(heard.begin(), heard.end(), id) != heard.end();
  }));
  EXPECT_TRUE(written->has_value());
  other.stop();
}

TEST_F(pg_state, reads_a_thousand_states_asked_for_at_once) {
  for (int i = 0; i < 10; ++i)
    ASSERT_TRUE(
        driver
            ->save(write_of("e" + std::to_string(i * 100), 0, bytes{static_cast<std::uint8_t>(i)}))
            .has_value());
  std::vector<std::optional<result<stored_state>>> loaded(1000);
  for (std::size_t i = 0; i < loaded.size(); ++i)
    store->load_state("Counter", "e" + std::to_string(i),
                      [&loaded, i](result<stored_state> r) { loaded[i] = std::move(r); });
  ASSERT_TRUE(run_until(io, [&] {
    return std::all_of(loaded.begin(), loaded.end(), [](const auto& l) { return l.has_value(); });
  }));
  for (std::size_t i = 0; i < loaded.size(); ++i) {
    ASSERT_TRUE(loaded[i]->has_value()) << loaded[i]->error().message;
    const auto& state = loaded[i]->value();
    if (i % 100 == 0) {
      EXPECT_EQ(state.version, 1) << i;
      EXPECT_EQ(state.data, bytes{static_cast<std::uint8_t>(i / 100)}) << i;
    } else {
      EXPECT_EQ(state.version, 0) << i;
      EXPECT_FALSE(state.data.has_value()) << i;
    }
  }
}

TEST_F(pg_state, fails_only_the_state_the_server_refuses_not_the_rest_of_its_round) {
  // An id that is not UTF-8 (validation at the edge keeps it out; the store must not rely on
  // it): its write and its load fail alone.
  const std::string bad = "bad-\xFF";
  const auto id = driver->persist(state_message("fine", "k", 5)).value().id;
  constexpr int total = 40;
  std::vector<std::optional<result<void>>> writes(total + 1);
  for (int i = 0; i < total; ++i)
    store->save_state(write_of(i == 17 ? bad : "w" + std::to_string(i), 0, bytes{0x01}),
                      [&writes, i](result<void> r) { writes[i] = std::move(r); });
  store->complete_with_state(id, reply_msg::success({}), false, write_of("fine", 0, bytes{0x02}),
                             [&](result<void> r) { writes[total] = std::move(r); });
  ASSERT_TRUE(run_until(io, [&] {
    return std::all_of(writes.begin(), writes.end(), [](const auto& w) { return w.has_value(); });
  }));
  for (int i = 0; i <= total; ++i) {
    if (i == 17) {
      ASSERT_FALSE(writes[i]->has_value());
      EXPECT_EQ(writes[i]->error().code, errc::storage_error);
      EXPECT_EQ(writes[i]->error().message, "state could not be stored");
    } else {
      EXPECT_TRUE(writes[i]->has_value()) << i << ": " << writes[i]->error().message;
    }
  }
  EXPECT_EQ(driver->replies({id}).value().size(), 1u);

  std::vector<std::optional<result<stored_state>>> loads(total);
  for (int i = 0; i < total; ++i)
    store->load_state("Counter", i == 17 ? bad : "w" + std::to_string(i),
                      [&loads, i](result<stored_state> r) { loads[i] = std::move(r); });
  ASSERT_TRUE(run_until(io, [&] {
    return std::all_of(loads.begin(), loads.end(), [](const auto& l) { return l.has_value(); });
  }));
  for (int i = 0; i < total; ++i) {
    if (i == 17) {
      ASSERT_FALSE(loads[i]->has_value());
      EXPECT_EQ(loads[i]->error().code, errc::storage_error);
    } else {
      ASSERT_TRUE(loads[i]->has_value()) << i;
      EXPECT_EQ(loads[i]->value().version, 1) << i;
    }
  }
}

TEST_F(pg_state, refuses_the_write_of_an_activation_that_another_store_overtook) {
  pg_message_store other(io, settings);
  state_store_driver second(io, other);
  const auto read_by_both = driver->load("Counter", "x").value().version;
  ASSERT_EQ(second.load("Counter", "x").value().version, read_by_both);
  ASSERT_TRUE(second.save(write_of("x", read_by_both, bytes{0x02})).has_value());
  auto stale = driver->save(write_of("x", read_by_both, bytes{0x01}));
  ASSERT_FALSE(stale.has_value());
  EXPECT_EQ(stale.error().code, errc::state_conflict);
  EXPECT_EQ(driver->load("Counter", "x").value().data, bytes{0x02});
  other.stop();
}

TEST_F(pg_state, starts_a_new_lock_epoch_when_another_store_takes_a_lock_released_or_lost) {
  auto other_settings = settings;
  other_settings.application_name = settings.table_prefix + "_b";
  pg_message_store other(io, other_settings);
  state_store_driver second(io, other);

  EXPECT_EQ(store->lock_epoch("default", 1), 0) << "never taken";
  ASSERT_EQ(driver->acquire("default", {1, 2}).value(), (std::vector<std::int32_t>{1, 2}));
  const auto first = store->lock_epoch("default", 1);
  EXPECT_GT(first, 0);
  EXPECT_TRUE(second.acquire("default", {1}).value().empty()) << "held by the first";
  EXPECT_EQ(other.lock_epoch("default", 1), 0);
  ASSERT_EQ(driver->acquire("default", {1}).value(), (std::vector<std::int32_t>{1}));
  EXPECT_EQ(store->lock_epoch("default", 1), first) << "held already: the same epoch";

  // Released: the next holder's epoch is a later one.
  store->release("default", {1});
  std::vector<std::int32_t> taken;
  ASSERT_TRUE(run_until(io, [&] {
    taken = second.acquire("default", {1}).value();
    return !taken.empty();
  }));
  const auto after_release = other.lock_epoch("default", 1);
  EXPECT_GT(after_release, first);

  // Lost with the session that held it: the same.
  const auto held_by_first = store->lock_epoch("default", 2);
  pg::connection admin(test_pg_url());
  admin.exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
             {pg::param::text(settings.application_name)});
  ASSERT_TRUE(run_until(io, [&] {
    taken = second.acquire("default", {2}).value();
    return !taken.empty();
  }));
  EXPECT_GT(other.lock_epoch("default", 2), held_by_first);
  auto stored = admin.exec("SELECT epoch FROM " + table("shard_epochs") +
                           " WHERE shard_group = 'default' AND shard = 1");
  ASSERT_EQ(stored.rows(), 1);
  EXPECT_EQ(stored.integer(0, 0), after_release);
  other.stop();
}

TEST_F(pg_state, lists_kept_entities_by_the_shard_they_were_remembered_for) {
  check_kept_entities(*driver);
  // Stored: another store (the shard's next owner) sees them.
  pg_message_store other(io, settings);
  state_store_driver second(io, other);
  auto kept = second.kept("default", 3).value();
  ASSERT_EQ(kept.size(), 1u);
  EXPECT_EQ(kept[0].entity_type, "Clock");
  EXPECT_EQ(kept[0].entity_id, "b");
  other.stop();
}

TEST(storage_settings_limits,
     keep_states_to_a_mebibyte_unless_told_and_refuse_a_bound_out_of_range) {
  asio::io_context io;
  storage_settings settings;
  EXPECT_EQ(settings.max_state_bytes, 1024u * 1024u);
  settings.max_state_bytes = 0;
  EXPECT_THROW(make_message_store(io, settings), std::runtime_error);
  settings.max_state_bytes = max_state_bytes_limit + 1;
  EXPECT_THROW(make_message_store(io, settings), std::runtime_error);
  settings.max_state_bytes = max_state_bytes_limit;
  EXPECT_NE(make_message_store(io, settings), nullptr);
}

}  // namespace
}  // namespace cluster::testing
