// The memory message store: deduplication, stored replies, the unprocessed queue in id
// order and in batches, locks, and completions that always arrive through the io_context.
#include <gtest/gtest.h>

#include "cluster/storage/message_store.hpp"
#include "cluster_fixture.hpp"
#include "state_store_checks.hpp"

namespace cluster {
namespace {

using cluster::testing::make_request;
using cluster::testing::run_until;

persisted_message message_for(const std::string& entity_id, const std::string& key,
                              std::int32_t shard = 7, const std::string& group = "default") {
  persisted_message m;
  m.group = group;
  m.shard = shard;
  m.request = make_request("Probe", entity_id, "Append", {{"sender", "s"}, {"value", 1}});
  m.request.primary_key = key;
  m.request.persisted = true;
  return m;
}

class memory_store : public ::testing::Test {
 protected:
  persist_outcome persist(persisted_message message) {
    std::optional<result<persist_outcome>> out;
    store->persist(std::move(message), [&](result<persist_outcome> r) { out = std::move(r); });
    EXPECT_TRUE(run_until(io, [&] { return out.has_value(); }));
    EXPECT_TRUE(out && out->has_value());
    return out && out->has_value() ? out->value() : persist_outcome{};
  }
  void complete(std::int64_t id, reply_msg reply) {
    std::optional<result<void>> out;
    store->complete(id, std::move(reply), false, [&](result<void> r) { out = std::move(r); });
    EXPECT_TRUE(run_until(io, [&] { return out.has_value(); }));
    EXPECT_TRUE(out && out->has_value());
  }
  std::vector<persisted_message> unprocessed(std::int32_t shard, std::int64_t after,
                                             const std::string& group = "default") {
    std::optional<result<std::vector<persisted_message>>> out;
    store->unprocessed(group, shard, after,
                       [&](result<std::vector<persisted_message>> r) { out = std::move(r); });
    EXPECT_TRUE(run_until(io, [&] { return out.has_value(); }));
    EXPECT_TRUE(out && out->has_value());
    return out && out->has_value() ? out->value() : std::vector<persisted_message>{};
  }
  std::vector<std::int64_t> ids_of(const std::vector<persisted_message>& messages) {
    std::vector<std::int64_t> ids;
    for (const auto& m : messages) ids.push_back(m.id);
    return ids;
  }

  asio::io_context io;
  std::unique_ptr<message_store> store = make_memory_message_store(io, 3);
};

TEST_F(memory_store, stores_new_messages_with_increasing_ids_and_finds_duplicates) {
  const auto first = persist(message_for("a", "k1"));
  EXPECT_TRUE(first.inserted);
  EXPECT_FALSE(first.reply.has_value());
  const auto second = persist(message_for("a", "k2"));
  EXPECT_TRUE(second.inserted);
  EXPECT_GT(second.id, first.id);
  // The key is (entity type, entity id, primary key): another entity may reuse a key.
  EXPECT_TRUE(persist(message_for("b", "k1")).inserted);
  const auto again = persist(message_for("a", "k1"));
  EXPECT_FALSE(again.inserted);
  EXPECT_EQ(again.id, first.id);
  EXPECT_FALSE(again.reply.has_value()) << "not processed yet";
}

TEST_F(memory_store, answers_a_processed_duplicate_with_the_first_stored_reply) {
  const auto stored = persist(message_for("a", "k"));
  complete(stored.id, reply_msg::success({0x01}));
  complete(stored.id, reply_msg::success({0x02}));  // a rerun after a lost lock
  const auto again = persist(message_for("a", "k"));
  EXPECT_FALSE(again.inserted);
  ASSERT_TRUE(again.reply.has_value());
  EXPECT_EQ(again.reply->payload, (bytes{0x01}));

  std::optional<std::map<std::int64_t, reply_msg>> found;
  store->replies({stored.id, stored.id + 100},
                 [&](result<std::map<std::int64_t, reply_msg>> r) { found = r.value(); });
  ASSERT_TRUE(run_until(io, [&] { return found.has_value(); }));
  ASSERT_EQ(found->size(), 1u) << "only messages with a reply are listed";
  EXPECT_EQ(found->at(stored.id).payload, (bytes{0x01}));
}

TEST_F(memory_store, refuses_a_primary_key_reused_with_a_different_request) {
  const auto stored = persist(message_for("a", "k1"));
  auto other_payload = message_for("a", "k1");
  other_payload.request = make_request("Probe", "a", "Append", {{"sender", "s"}, {"value", 2}});
  other_payload.request.primary_key = "k1";
  auto other_rpc = message_for("a", "k1");
  other_rpc.request.rpc = "Read";
  for (auto& reused : {other_payload, other_rpc}) {
    std::optional<result<persist_outcome>> out;
    store->persist(reused, [&](result<persist_outcome> r) { out = std::move(r); });
    ASSERT_TRUE(run_until(io, [&] { return out.has_value(); }));
    ASSERT_FALSE(out->has_value());
    EXPECT_EQ(out->error().code, errc::invalid_request);
    EXPECT_EQ(out->error().message, "primary key reused with a different request");
  }
  // Nothing was stored for them, and the original is untouched: the same request still joins
  // it, and once processed reads its reply.
  EXPECT_EQ(ids_of(unprocessed(7, 0)), (std::vector<std::int64_t>{stored.id}));
  EXPECT_EQ(unprocessed(7, 0).at(0).request.payload, message_for("a", "k1").request.payload);
  const auto joined = persist(message_for("a", "k1"));
  EXPECT_FALSE(joined.inserted);
  EXPECT_EQ(joined.id, stored.id);
  complete(stored.id, reply_msg::success({0x07}));
  const auto again = persist(message_for("a", "k1"));
  ASSERT_TRUE(again.reply.has_value());
  EXPECT_EQ(again.reply->payload, (bytes{0x07}));
}

TEST_F(memory_store, lists_a_shards_unprocessed_messages_in_id_order_in_batches) {
  std::vector<std::int64_t> ids;
  for (int i = 0; i < 5; ++i) {
    ids.push_back(persist(message_for("e" + std::to_string(i), "k")).id);
    persist(message_for("other" + std::to_string(i), "k", 8));          // another shard
    persist(message_for("group" + std::to_string(i), "k", 7, "jobs"));  // another group
  }
  complete(ids[1], reply_msg::success({}));
  const auto first = unprocessed(7, 0);
  EXPECT_EQ(ids_of(first), (std::vector<std::int64_t>{ids[0], ids[2], ids[3]}));  // batch of 3
  EXPECT_EQ(first[0].request.entity_id, "e0");
  EXPECT_EQ(*first[0].request.primary_key, "k");
  EXPECT_EQ(first[0].group, "default");
  EXPECT_EQ(first[0].shard, 7);
  const auto rest = unprocessed(7, first.back().id);
  EXPECT_EQ(ids_of(rest), (std::vector<std::int64_t>{ids[4]}));
  EXPECT_TRUE(unprocessed(7, ids[4]).empty());
  EXPECT_EQ(unprocessed(7, 0, "jobs").size(), 3u);
}

TEST_F(memory_store, completes_through_the_io_context_never_inside_the_call) {
  bool persisted = false, completed = false, listed = false, locked = false, found = false,
       purged = false;
  std::vector<std::int64_t> announced;
  store->on_reply = [&](std::int64_t id) { announced.push_back(id); };
  store->persist(message_for("a", "k"), [&](result<persist_outcome>) { persisted = true; });
  store->complete(1, reply_msg::success({}), false, [&](result<void>) { completed = true; });
  store->unprocessed("default", 7, 0,
                     [&](result<std::vector<persisted_message>>) { listed = true; });
  store->acquire("default", {1, 2}, [&](result<std::vector<std::int32_t>> held) {
    locked = true;
    EXPECT_EQ(held.value(), (std::vector<std::int32_t>{1, 2})) << "memory locks are always granted";
  });
  store->replies({1}, [&](result<std::map<std::int64_t, reply_msg>>) { found = true; });
  store->purge([&](result<std::size_t>) { purged = true; });
  EXPECT_FALSE(persisted || completed || listed || locked || found || purged);
  EXPECT_TRUE(announced.empty());
  ASSERT_TRUE(
      run_until(io, [&] { return persisted && completed && listed && locked && found && purged; }));
  EXPECT_EQ(announced, (std::vector<std::int64_t>{1}));  // every stored reply, in one process
}

TEST_F(memory_store, counts_attempts_by_replay_reads_and_leaves_suspects_to_next_attempt) {
  const auto id = persist(message_for("a", "k1")).id;  // attempts 0: a replay will read it
  EXPECT_EQ(unprocessed(7, 0).at(0).attempts, 1);      // the read counts the attempt
  auto again = unprocessed(7, 0).at(0);                // a second crash, a second replay
  EXPECT_EQ(again.attempts, 2);
  EXPECT_FALSE(again.suspect);
  auto third = unprocessed(7, 0).at(0);  // cut short twice: not counted, run alone
  EXPECT_EQ(third.attempts, 2);
  EXPECT_TRUE(third.suspect);

  std::optional<result<attempt_outcome>> next;
  store->next_attempt(id, std::string("boom"), [&](result<attempt_outcome> r) { next = r; });
  ASSERT_TRUE(run_until(io, [&] { return next.has_value(); }));
  ASSERT_TRUE(next->has_value());
  ASSERT_TRUE(next->value().rerun.has_value());
  EXPECT_EQ(next->value().rerun->attempts, 3);
  EXPECT_EQ(next->value().rerun->request.entity_id, "a");

  // The third attempt was cut short too: dead-lettered, with the last failure in its reply.
  std::optional<std::int64_t> announced;
  store->on_reply = [&](std::int64_t reply_id) { announced = reply_id; };
  next.reset();
  store->next_attempt(id, std::string("boom again"), [&](result<attempt_outcome> r) { next = r; });
  ASSERT_TRUE(run_until(io, [&] { return next.has_value() && announced.has_value(); }));
  ASSERT_TRUE(next->value().dead_lettered.has_value());
  EXPECT_EQ(next->value().dead_lettered->code, errc::defect);
  EXPECT_EQ(next->value().dead_lettered->message, "dead-lettered after 3 attempts: boom again");
  EXPECT_EQ(*announced, id);
  EXPECT_TRUE(unprocessed(7, 0).empty());
  // A later caller with the same key gets the stored error reply.
  const auto duplicate = persist(message_for("a", "k1"));
  ASSERT_TRUE(duplicate.reply.has_value());
  EXPECT_EQ(duplicate.reply->message, "dead-lettered after 3 attempts: boom again");

  // Not pending any more: nothing to count, nothing to dead-letter.
  next.reset();
  store->next_attempt(id, std::nullopt, [&](result<attempt_outcome> r) { next = r; });
  ASSERT_TRUE(run_until(io, [&] { return next.has_value(); }));
  EXPECT_FALSE(next->value().rerun || next->value().dead_lettered);
}

TEST_F(memory_store, does_not_count_a_scheduled_message_before_its_time) {
  auto later = message_for("a", "k1");
  later.request.deliver_at_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                    std::chrono::system_clock::now().time_since_epoch())
                                    .count() +
                                3600 * 1000;
  persist(later);
  for (int read = 0; read < 4; ++read) {
    const auto listed = unprocessed(7, 0).at(0);
    EXPECT_EQ(listed.attempts, 0);
    EXPECT_FALSE(listed.suspect);
  }
}

class memory_state : public ::testing::Test {
 protected:
  asio::io_context io;
  std::unique_ptr<message_store> store = make_memory_message_store(io);
  cluster::testing::state_store_driver driver{io, *store};
};

TEST_F(memory_state, grows_the_version_with_every_write_and_refuses_a_stale_one) {
  cluster::testing::check_state_versions(driver);
}

TEST_F(memory_state, keeps_the_version_of_a_cleared_state_growing) {
  cluster::testing::check_clear_then_write(driver);
}

TEST_F(memory_state, completes_a_message_with_its_state_or_writes_none_of_them) {
  cluster::testing::check_complete_with_state(driver, 7);
}

TEST_F(memory_state, fails_only_the_conflicting_writes_of_those_handed_over_together) {
  cluster::testing::check_round_mixing_conflict_and_good_writes(io, *store, driver, 7);
}

TEST_F(memory_state, lists_kept_entities_by_the_shard_they_were_remembered_for) {
  cluster::testing::check_kept_entities(driver);
}

TEST_F(memory_state, answers_state_operations_through_the_io_context_never_inside_the_call) {
  int done = 0;
  store->load_state("Counter", "a", [&](result<stored_state>) { ++done; });
  store->save_state(cluster::testing::write_of("a", 0, bytes{1}), [&](result<void>) { ++done; });
  store->complete_with_state(1, reply_msg::success({}), false,
                             cluster::testing::write_of("a", 1, bytes{2}),
                             [&](result<void>) { ++done; });
  store->remember_kept("default", 1, {"Counter", "a"}, [&](result<void>) { ++done; });
  store->kept_entities("default", 1, [&](result<std::vector<kept_entity>>) { ++done; });
  store->forget_kept({"Counter", "a"}, [&](result<void>) { ++done; });
  EXPECT_EQ(done, 0);
  ASSERT_TRUE(run_until(io, [&] { return done == 6; }));
}

TEST_F(memory_state, starts_a_new_lock_epoch_each_time_a_shard_is_taken_again) {
  EXPECT_EQ(store->lock_epoch("default", 1), 0) << "never taken";
  ASSERT_TRUE(driver.acquire("default", {1, 2}).has_value());
  const auto first = store->lock_epoch("default", 1);
  EXPECT_GT(first, 0);
  EXPECT_GT(store->lock_epoch("default", 2), 0);
  ASSERT_TRUE(driver.acquire("default", {1}).has_value());
  EXPECT_EQ(store->lock_epoch("default", 1), first) << "held already: the same lock";
  store->release("default", {1});
  EXPECT_EQ(store->lock_epoch("default", 1), first) << "the last epoch stays readable";
  ASSERT_TRUE(driver.acquire("default", {1}).has_value());
  EXPECT_GT(store->lock_epoch("default", 1), first);
  EXPECT_EQ(store->lock_epoch("jobs", 1), 0) << "epochs are per group";
}

TEST(memory_store_death, refuses_a_message_without_a_primary_key) {
  asio::io_context io;
  auto store = make_memory_message_store(io);
  auto message = message_for("a", "k");
  message.request.primary_key.reset();
  EXPECT_DEATH(store->persist(message, [](result<persist_outcome>) {}), "primary key");
}

}  // namespace
}  // namespace cluster
