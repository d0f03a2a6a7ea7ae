#pragma once
// The entity state of a message_store, checked the same way against every backend: versions,
// conflicts that write nothing, a clear that keeps the version growing, kept entities per shard.
// Each check drives the store through its io_context and reports through GoogleTest.

#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "cluster/storage/message_store.hpp"
#include "cluster_fixture.hpp"

namespace cluster::testing {

/// Synchronous calls to a store's asynchronous operations (each waits on its completion).
class state_store_driver {
 public:
  state_store_driver(asio::io_context& io, message_store& store) : io_(io), store_(store) {}

  template <class T>
  T wait(std::optional<T>& slot) {
    EXPECT_TRUE(run_until(io_, [&] { return slot.has_value(); }));
    return slot ? std::move(*slot) : T(failure{errc::defect, "no completion"});
  }

  result<stored_state> load(const std::string& type, const std::string& id) {
    std::optional<result<stored_state>> out;
    store_.load_state(type, id, [&](result<stored_state> r) { out = std::move(r); });
    return wait(out);
  }
  result<void> save(state_write write) {
    std::optional<result<void>> out;
    store_.save_state(std::move(write), [&](result<void> r) { out = std::move(r); });
    return wait(out);
  }
  result<void> complete_with_state(std::int64_t id, reply_msg reply, state_write write) {
    std::optional<result<void>> out;
    store_.complete_with_state(id, std::move(reply), false, std::move(write),
                               [&](result<void> r) { out = std::move(r); });
    return wait(out);
  }
  result<persist_outcome> persist(persisted_message message) {
    std::optional<result<persist_outcome>> out;
    store_.persist(std::move(message), [&](result<persist_outcome> r) { out = std::move(r); });
    return wait(out);
  }
  result<std::vector<persisted_message>> unprocessed(const std::string& group, std::int32_t shard) {
    std::optional<result<std::vector<persisted_message>>> out;
    store_.unprocessed(group, shard, 0,
                       [&](result<std::vector<persisted_message>> r) { out = std::move(r); });
    return wait(out);
  }
  result<std::map<std::int64_t, reply_msg>> replies(std::vector<std::int64_t> ids) {
    std::optional<result<std::map<std::int64_t, reply_msg>>> out;
    store_.replies(std::move(ids),
                   [&](result<std::map<std::int64_t, reply_msg>> r) { out = std::move(r); });
    return wait(out);
  }
  result<void> remember(const std::string& group, std::int32_t shard, kept_entity entity) {
    std::optional<result<void>> out;
    store_.remember_kept(group, shard, std::move(entity),
                         [&](result<void> r) { out = std::move(r); });
    return wait(out);
  }
  result<void> forget(kept_entity entity) {
    std::optional<result<void>> out;
    store_.forget_kept(std::move(entity), [&](result<void> r) { out = std::move(r); });
    return wait(out);
  }
  result<std::vector<kept_entity>> kept(const std::string& group, std::int32_t shard) {
    std::optional<result<std::vector<kept_entity>>> out;
    store_.kept_entities(group, shard,
                         [&](result<std::vector<kept_entity>> r) { out = std::move(r); });
    return wait(out);
  }
  result<std::vector<std::int32_t>> acquire(const std::string& group,
                                            std::vector<std::int32_t> shards) {
    std::optional<result<std::vector<std::int32_t>>> out;
    store_.acquire(group, std::move(shards),
                   [&](result<std::vector<std::int32_t>> r) { out = std::move(r); });
    return wait(out);
  }

 private:
  asio::io_context& io_;
  message_store& store_;
};

inline state_write write_of(const std::string& id, std::int64_t expected,
                            std::optional<bytes> data) {
  return state_write{"Counter", id, expected, std::move(data)};
}

/// A persisted message of entity Counter/`id` stored in `shard` of group "default".
inline persisted_message state_message(const std::string& id, const std::string& key,
                                       std::int32_t shard) {
  persisted_message m;
  m.group = "default";
  m.shard = shard;
  m.request = make_request("Counter", id, "Increment", {{"by", 1}});
  m.request.primary_key = key;
  m.request.persisted = true;
  m.attempts = 1;
  return m;
}

/// Every write adds one to the version; a stale expected version is refused and writes nothing.
inline void check_state_versions(state_store_driver& store) {
  auto none = store.load("Counter", "v");
  ASSERT_TRUE(none.has_value()) << none.error().message;
  EXPECT_EQ(none.value().version, 0);
  EXPECT_FALSE(none.value().data.has_value());

  ASSERT_TRUE(store.save(write_of("v", 0, bytes{0x01})).has_value());
  ASSERT_TRUE(store.save(write_of("v", 1, bytes{0x02})).has_value());
  auto second = store.load("Counter", "v").value();
  EXPECT_EQ(second.version, 2);
  EXPECT_EQ(second.data, bytes{0x02});

  for (std::int64_t stale : {0, 1, 3}) {
    auto refused = store.save(write_of("v", stale, bytes{0x09}));
    ASSERT_FALSE(refused.has_value()) << "expected version " << stale;
    EXPECT_EQ(refused.error().code, errc::state_conflict);
  }
  auto after = store.load("Counter", "v").value();
  EXPECT_EQ(after.version, 2);
  EXPECT_EQ(after.data, bytes{0x02});
  // Another entity of the same type has a state of its own.
  EXPECT_EQ(store.load("Counter", "other").value().version, 0);
}

/// A clear keeps the version growing: a write that read the cleared state's predecessor, or
/// the state before ever written, cannot slip in (no ABA).
inline void check_clear_then_write(state_store_driver& store) {
  ASSERT_TRUE(store.save(write_of("c", 0, bytes{0x05, 0x06})).has_value());
  ASSERT_TRUE(store.save(write_of("c", 1, std::nullopt)).has_value());
  auto cleared = store.load("Counter", "c").value();
  EXPECT_EQ(cleared.version, 2);
  EXPECT_FALSE(cleared.data.has_value());
  auto from_scratch = store.save(write_of("c", 0, bytes{0x07}));
  ASSERT_FALSE(from_scratch.has_value());
  EXPECT_EQ(from_scratch.error().code, errc::state_conflict);
  ASSERT_TRUE(store.save(write_of("c", 2, bytes{0x08})).has_value());
  auto again = store.load("Counter", "c").value();
  EXPECT_EQ(again.version, 3);
  EXPECT_EQ(again.data, bytes{0x08});
  // An empty state is a state, not a clear.
  ASSERT_TRUE(store.save(write_of("c", 3, bytes{})).has_value());
  auto empty = store.load("Counter", "c").value();
  EXPECT_EQ(empty.version, 4);
  ASSERT_TRUE(empty.data.has_value());
  EXPECT_TRUE(empty.data->empty());
}

/// complete_with_state: the reply, the processed mark and the state together, or none of them.
inline void check_complete_with_state(state_store_driver& store, std::int32_t shard) {
  const auto stored = store.persist(state_message("p", "k1", shard));
  ASSERT_TRUE(stored.has_value()) << stored.error().message;
  const auto id = stored.value().id;

  // Stale: nothing of the message is written, and it stays pending.
  ASSERT_TRUE(store.save(write_of("p", 0, bytes{0x01})).has_value());
  auto stale =
      store.complete_with_state(id, reply_msg::success({0xAA}), write_of("p", 0, bytes{0x02}));
  ASSERT_FALSE(stale.has_value());
  EXPECT_EQ(stale.error().code, errc::state_conflict);
  EXPECT_EQ(store.load("Counter", "p").value().data, bytes{0x01});
  EXPECT_TRUE(store.replies({id}).value().empty()) << "the reply of a conflict is not stored";
  auto pending = store.unprocessed("default", shard).value();
  ASSERT_EQ(pending.size(), 1u);
  EXPECT_EQ(pending[0].id, id);
  auto again = store.persist(state_message("p", "k1", shard)).value();
  EXPECT_FALSE(again.inserted);
  EXPECT_FALSE(again.reply.has_value());

  // Current: all of it.
  ASSERT_TRUE(
      store.complete_with_state(id, reply_msg::success({0xBB}), write_of("p", 1, bytes{0x03}))
          .has_value());
  auto state = store.load("Counter", "p").value();
  EXPECT_EQ(state.version, 2);
  EXPECT_EQ(state.data, bytes{0x03});
  auto replies = store.replies({id}).value();
  ASSERT_EQ(replies.count(id), 1u);
  EXPECT_EQ(replies.at(id).payload, bytes{0xBB});
  EXPECT_TRUE(store.unprocessed("default", shard).value().empty());
  auto duplicate = store.persist(state_message("p", "k1", shard)).value();
  ASSERT_TRUE(duplicate.reply.has_value());
  EXPECT_EQ(duplicate.reply->payload, bytes{0xBB});

  // The same message run twice (the retry of a caller, a replay): its effect counts once. The
  // second run read the state before the first committed, so its version is stale; and even
  // with the current version the message is processed already.
  auto twice =
      store.complete_with_state(id, reply_msg::success({0xCC}), write_of("p", 2, bytes{0x04}));
  ASSERT_FALSE(twice.has_value());
  EXPECT_EQ(twice.error().code, errc::state_conflict);
  EXPECT_EQ(store.load("Counter", "p").value().data, bytes{0x03});
  EXPECT_EQ(store.replies({id}).value().at(id).payload, bytes{0xBB});
}

/// Writes handed over together (one write round for PostgreSQL): a conflict fails only itself.
/// `before_round` runs once the setup is stored, `handed_over` once every write of the round
/// was handed to the store (a backend's test can hold its worker between them).
inline void check_round_mixing_conflict_and_good_writes(
    asio::io_context& io, message_store& raw, state_store_driver& store, std::int32_t shard,
    const std::function<void()>& before_round = {}, const std::function<void()>& handed_over = {}) {
  std::vector<std::int64_t> ids;
  for (int i = 0; i < 4; ++i) {
    auto stored = store.persist(state_message("m" + std::to_string(i), "k", shard));
    ASSERT_TRUE(stored.has_value()) << stored.error().message;
    ids.push_back(stored.value().id);
  }
  ASSERT_TRUE(store.save(write_of("m1", 0, bytes{0x10})).has_value());  // m1 is at version 1
  ASSERT_TRUE(store.save(write_of("s1", 0, bytes{0x10})).has_value());  // s1 too

  if (before_round) before_round();
  std::vector<std::optional<result<void>>> done(7);
  const auto into = [&](std::size_t i) {
    return [&done, i](result<void> r) { done[i] = std::move(r); };
  };
  raw.complete_with_state(ids[0], reply_msg::success({0x00}), false, write_of("m0", 0, bytes{0x20}),
                          into(0));
  raw.complete_with_state(ids[1], reply_msg::success({0x01}), false, write_of("m1", 0, bytes{0x21}),
                          into(1));  // stale
  raw.complete_with_state(ids[2], reply_msg::success({0x02}), false,
                          write_of("m2", 0, std::nullopt), into(2));  // a clear of nothing
  raw.complete(ids[3], reply_msg::success({0x03}), false, into(3));
  raw.save_state(write_of("s0", 0, bytes{0x30}), into(4));
  raw.save_state(write_of("s1", 0, bytes{0x31}), into(5));  // stale
  raw.save_state(write_of("s1", 1, bytes{0x32}), into(6));
  if (handed_over) handed_over();
  ASSERT_TRUE(run_until(io, [&] {
    return std::all_of(done.begin(), done.end(), [](const auto& d) { return d.has_value(); });
  }));
  for (std::size_t i : {0u, 2u, 3u, 4u, 6u})
    EXPECT_TRUE(done[i]->has_value()) << i << ": " << done[i]->error().message;
  for (std::size_t i : {1u, 5u}) {
    ASSERT_FALSE(done[i]->has_value()) << i;
    EXPECT_EQ(done[i]->error().code, errc::state_conflict) << i;
  }
  EXPECT_EQ(store.load("Counter", "m0").value().data, bytes{0x20});
  EXPECT_EQ(store.load("Counter", "m1").value().data, bytes{0x10});
  EXPECT_EQ(store.load("Counter", "m2").value().version, 1);
  EXPECT_EQ(store.load("Counter", "s0").value().data, bytes{0x30});
  auto s1 = store.load("Counter", "s1").value();
  EXPECT_EQ(s1.version, 2);
  EXPECT_EQ(s1.data, bytes{0x32});
  auto replies = store.replies(ids).value();
  EXPECT_EQ(replies.count(ids[0]), 1u);
  EXPECT_EQ(replies.count(ids[1]), 0u);
  EXPECT_EQ(replies.count(ids[2]), 1u);
  EXPECT_EQ(replies.count(ids[3]), 1u);
  auto pending = store.unprocessed("default", shard).value();
  ASSERT_EQ(pending.size(), 1u);
  EXPECT_EQ(pending[0].id, ids[1]);
}

/// Kept entities are listed by the shard they were remembered for, once each.
inline void check_kept_entities(state_store_driver& store) {
  ASSERT_TRUE(store.remember("default", 3, {"Timer", "a"}).has_value());
  ASSERT_TRUE(store.remember("default", 3, {"Timer", "a"}).has_value());  // idempotent
  ASSERT_TRUE(store.remember("default", 3, {"Clock", "b"}).has_value());
  ASSERT_TRUE(store.remember("default", 4, {"Timer", "c"}).has_value());
  ASSERT_TRUE(store.remember("jobs", 3, {"Worker", "d"}).has_value());
  const auto names = [](const std::vector<kept_entity>& kept) {
    std::vector<std::string> out;
    for (const auto& e : kept) out.push_back(e.entity_type + "/" + e.entity_id);
    std::sort(out.begin(), out.end());
    return out;
  };
  EXPECT_EQ(names(store.kept("default", 3).value()),
            (std::vector<std::string>{"Clock/b", "Timer/a"}));
  EXPECT_EQ(names(store.kept("default", 4).value()), (std::vector<std::string>{"Timer/c"}));
  EXPECT_EQ(names(store.kept("jobs", 3).value()), (std::vector<std::string>{"Worker/d"}));
  EXPECT_TRUE(store.kept("default", 5).value().empty());
  ASSERT_TRUE(store.forget({"Timer", "a"}).has_value());
  ASSERT_TRUE(store.forget({"Timer", "zz"}).has_value());  // never remembered: nothing to do
  EXPECT_EQ(names(store.kept("default", 3).value()), (std::vector<std::string>{"Clock/b"}));
}

}  // namespace cluster::testing
