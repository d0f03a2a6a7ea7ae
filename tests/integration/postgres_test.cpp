// The PostgreSQL backend against a real server (scripts/dev test starts a private one and
// sets CLUSTER_TEST_PG_URL). Each test uses its own table prefix.
#include "cluster/storage-pg/postgres.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <thread>

#include "cluster/storage-pg/pg_message_store.hpp"
#include "cluster/storage-pg/stores.hpp"
#include "cluster_fixture.hpp"
#include "test_postgres.hpp"

namespace cluster::testing {
namespace {

std::string unique_prefix() {
  static std::atomic<int> counter{0};
  return "t" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
}

storage_settings settings_for(const std::string& prefix) {
  storage_settings settings;
  settings.backend = "postgres";
  settings.url = test_pg_url();
  settings.table_prefix = prefix;
  return settings;
}

persisted_message message_for(const std::string& id, const std::string& key,
                              std::int32_t shard = 5) {
  persisted_message m;
  m.group = "default";
  m.shard = shard;
  m.request = make_request("Probe", id, "Append", {{"sender", "s"}, {"value", 1}});
  m.request.primary_key = key;
  return m;
}

/// A completion that keeps the value of a result in `slot` (a failure fails the test).
template <class T>
std::function<void(result<T>)> store_into(std::optional<T>& slot) {
  return [&slot](result<T> done) {
    if (done) {
      slot = std::move(done.value());
    } else {
      ADD_FAILURE() << "storage failed: " << done.error().message;
    }
  };
}

template <class T>
T wait_result(asio::io_context& io, std::optional<T>& slot) {
  EXPECT_TRUE(run_until(io, [&] { return slot.has_value(); }));
  return slot.value_or(T{});
}

TEST(postgres, migrates_an_empty_database_and_is_idempotent) {
  REQUIRE_POSTGRES();
  const auto prefix = unique_prefix();
  pg::connection conn(test_pg_url());
  pg::migrate(conn, prefix);
  pg::migrate(conn, prefix);
  auto versions = conn.exec("SELECT count(*) FROM " + prefix + "_migrations");
  EXPECT_EQ(versions.integer(0, 0), pg::latest_schema_version());
  for (const char* table : {"runners", "shards", "messages", "replies", "pending", "dead_letters",
                            "plugins", "entity_state", "shard_epochs", "kept_entities"})
    EXPECT_NO_THROW(conn.exec(std::string("SELECT count(*) FROM ") + prefix + "_" + table));
}

TEST(postgres, migrates_safely_when_processes_start_at_once) {
  REQUIRE_POSTGRES();
  const auto prefix = unique_prefix();
  std::atomic<int> failures{0};
  std::vector<std::thread> starters;
  for (int i = 0; i < 6; ++i)
    starters.emplace_back([&] {
      try {
        pg::connection conn(test_pg_url());
        pg::migrate(conn, prefix);
      } catch (const std::exception&) {
        ++failures;
      }
    });
  for (auto& t : starters) t.join();
  EXPECT_EQ(failures, 0);
  pg::connection conn(test_pg_url());
  EXPECT_EQ(conn.exec("SELECT count(*) FROM " + prefix + "_migrations").integer(0, 0),
            pg::latest_schema_version());
}

TEST(postgres, runs_a_pipeline_as_one_transaction_and_rolls_it_all_back_on_failure) {
  REQUIRE_POSTGRES();
  const auto table = unique_prefix() + "_pipeline";
  pg::connection conn(test_pg_url());
  conn.exec("CREATE TABLE " + table + " (n integer PRIMARY KEY)");
  const pg::statement insert{"test_insert", "INSERT INTO " + table + " VALUES ($1) RETURNING n"};
  const pg::statement count{"test_count", "SELECT count(*) FROM " + table};

  auto results = conn.pipeline(
      {{&insert, {pg::param::text("1")}}, {&insert, {pg::param::text("2")}}, {&count, {}}});
  ASSERT_EQ(results.size(), 3u);
  EXPECT_EQ(results[1].integer(0, 0), 2);
  EXPECT_EQ(results[2].integer(0, 0), 2);  // the steps see each other's rows

  // The third step violates the primary key: the new rows of the first two are gone too.
  try {
    conn.pipeline({{&insert, {pg::param::text("3")}},
                   {&insert, {pg::param::text("4")}},
                   {&insert, {pg::param::text("1")}},
                   {&count, {}}});
    ADD_FAILURE() << "a duplicate key went through";
  } catch (const pg::error& e) {
    EXPECT_NE(std::string(e.what()).find("duplicate key"), std::string::npos) << e.what();
    EXPECT_FALSE(e.retriable);
  }
  EXPECT_TRUE(conn.healthy());
  EXPECT_EQ(conn.exec(count).integer(0, 0), 2);
  EXPECT_EQ(conn.pipeline({{&insert, {pg::param::text("5")}}}).at(0).integer(0, 0), 5);
  EXPECT_EQ(conn.exec(count).integer(0, 0), 3);

  // A statement that does not parse fails its pipeline and leaves the session usable.
  const pg::statement broken{"test_broken", "SELEC nothing"};
  EXPECT_THROW(conn.pipeline({{&insert, {pg::param::text("6")}}, {&broken, {}}}), pg::error);
  EXPECT_EQ(conn.exec(count).integer(0, 0), 3);
  conn.exec("DROP TABLE " + table);
}

TEST(postgres, upgrading_from_schema_1_keeps_unprocessed_messages_queued) {
  REQUIRE_POSTGRES();
  const auto prefix = unique_prefix();
  {
    pg::connection conn(test_pg_url());
    pg::migrate(conn, prefix, 1);
    // Schema 1 marked processed messages with a flag (and stored their reply).
    conn.exec("INSERT INTO " + prefix +
              "_messages (id, shard_group, shard, entity_type, entity_id, rpc, primary_key, "
              "payload, processed) VALUES (1, 'default', 5, 'Probe', 'a', 'Append', 'k1', "
              "'\\x80', true), (2, 'default', 5, 'Probe', 'b', 'Append', 'k2', '\\x80', "
              "false)");
    conn.exec("INSERT INTO " + prefix +
              "_replies (message_id, code, error, message, payload) VALUES (1, 0, '', '', "
              "'\\x80')");
  }
  asio::io_context io;
  pg_message_store store(io, settings_for(prefix));  // migrates to the latest schema
  std::optional<std::vector<persisted_message>> queued;
  store.unprocessed("default", 5, 0, [&](result<std::vector<persisted_message>> batch) {
    EXPECT_TRUE(batch.has_value());
    if (batch) queued = std::move(batch.value());
  });
  const auto batch = wait_result(io, queued);
  ASSERT_EQ(batch.size(), 1u);
  EXPECT_EQ(batch[0].id, 2);
  EXPECT_EQ(batch[0].request.entity_id, "b");

  // Its reply takes it off the queue.
  std::optional<bool> stored;
  store.complete(2, reply_msg::success({}), false,
                 [&](result<void> done) { stored = done.has_value(); });
  EXPECT_TRUE(wait_result(io, stored));
  queued.reset();
  store.unprocessed("default", 5, 0, [&](result<std::vector<persisted_message>> rest) {
    if (rest) queued = std::move(rest.value());
  });
  EXPECT_TRUE(wait_result(io, queued).empty());
  store.stop();
}

TEST(postgres, refuses_a_table_prefix_that_is_not_an_identifier) {
  EXPECT_THROW(pg::validate_prefix("x; DROP TABLE y"), pg::error);
  EXPECT_THROW(pg::validate_prefix(""), pg::error);
  EXPECT_NO_THROW(pg::validate_prefix("cluster_2"));
}

TEST(postgres, gives_each_shard_lock_to_exactly_one_store) {
  REQUIRE_POSTGRES();
  asio::io_context io;
  const auto settings = settings_for(unique_prefix());
  pg_message_store first(io, settings), second(io, settings);
  std::optional<std::vector<std::int32_t>> a, b;
  first.acquire("default", {1, 2, 3}, store_into(a));
  EXPECT_EQ(wait_result(io, a), (std::vector<std::int32_t>{1, 2, 3}));
  // Both believe they own shards 2..4: only the free one goes to the second store.
  second.acquire("default", {2, 3, 4}, store_into(b));
  EXPECT_EQ(wait_result(io, b), (std::vector<std::int32_t>{4}));
  first.release("default", {2});
  b.reset();
  run_until(
      io, [] { return false; }, milliseconds(200));
  second.acquire("default", {2, 3}, store_into(b));
  EXPECT_EQ(wait_result(io, b), (std::vector<std::int32_t>{2}));
  first.stop();
  second.stop();
}

TEST(postgres, frees_the_locks_of_a_store_whose_session_ends) {
  REQUIRE_POSTGRES();
  asio::io_context io;
  const auto settings = settings_for(unique_prefix());
  auto first = std::make_unique<pg_message_store>(io, settings);
  pg_message_store second(io, settings);
  std::optional<std::vector<std::int32_t>> held;
  first->acquire("default", {7}, store_into(held));
  EXPECT_EQ(wait_result(io, held).size(), 1u);
  first.reset();  // the session ends, as when a runner dies
  held.reset();
  second.acquire("default", {7}, store_into(held));
  EXPECT_EQ(wait_result(io, held), (std::vector<std::int32_t>{7}));
  second.stop();
}

TEST(postgres, reports_a_lost_session_fails_what_it_could_not_store_and_reconnects) {
  REQUIRE_POSTGRES();
  asio::io_context io;
  const auto settings = settings_for(unique_prefix());
  pg_message_store store(io, settings);
  bool lost = false;
  store.on_locks_lost = [&] { lost = true; };
  std::optional<std::vector<std::int32_t>> held;
  store.acquire("default", {3}, store_into(held));
  ASSERT_EQ(wait_result(io, held), (std::vector<std::int32_t>{3}));

  // End the store's session from outside, as a database restart or a network cut would: the
  // session is the one holding the shard's advisory lock.
  pg::connection admin(test_pg_url());
  auto holder = admin.exec(
      "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 2 AND objid = 3 AND "
      "classid = (hashtext($1)::bigint & 4294967295)::oid",
      {pg::param::text(settings.table_prefix + ":default")});
  ASSERT_EQ(holder.rows(), 1);
  const auto pid = holder.text(0, 0);
  admin.exec("SELECT pg_terminate_backend(" + pid + ")");
  const auto gone = [&] {
    return admin.exec("SELECT count(*) FROM pg_stat_activity WHERE pid = " + pid).integer(0, 0) ==
           0;
  };
  ASSERT_TRUE(run_until(io, gone));

  // The next statement finds the session gone (unless the store's idle check did first): what
  // it carried fails with StorageError, and the lost locks are reported either way.
  std::optional<result<persist_outcome>> first;
  store.persist(message_for("x", "k"), [&](result<persist_outcome> r) { first = std::move(r); });
  ASSERT_TRUE(run_until(io, [&] { return first.has_value(); }));
  if (!first->has_value()) {
    EXPECT_EQ(first->error().code, errc::storage_error);
  }
  EXPECT_TRUE(run_until(io, [&] { return lost; }));

  // It reconnects by itself: the message is stored (again, if the first attempt failed) and
  // the lock can be taken back.
  std::optional<persist_outcome> again;
  store.persist(message_for("x", "k"), store_into(again));
  const auto stored = wait_result(io, again);
  EXPECT_EQ(stored.inserted, !first->has_value());
  held.reset();
  store.acquire("default", {3}, store_into(held));
  EXPECT_EQ(wait_result(io, held), (std::vector<std::int32_t>{3}));
  store.stop();
}

TEST(postgres, deduplicates_by_primary_key_and_returns_the_stored_reply) {
  REQUIRE_POSTGRES();
  asio::io_context io;
  pg_message_store store(io, settings_for(unique_prefix()));
  std::optional<persist_outcome> first, again, after;
  store.persist(message_for("e1", "k1"), store_into(first));
  const auto stored = wait_result(io, first);
  EXPECT_TRUE(stored.inserted);
  store.persist(message_for("e1", "k1"), store_into(again));
  const auto duplicate = wait_result(io, again);
  EXPECT_FALSE(duplicate.inserted);
  EXPECT_EQ(duplicate.id, stored.id);
  EXPECT_FALSE(duplicate.reply.has_value());  // not processed yet
  std::optional<bool> completed;
  store.complete(stored.id, reply_msg::success({0x81, 0xa1, 'v', 0x05}), false,
                 [&](result<void> done) { completed = done.has_value(); });
  EXPECT_TRUE(wait_result(io, completed));
  store.persist(message_for("e1", "k1"), store_into(after));
  const auto processed = wait_result(io, after);
  ASSERT_TRUE(processed.reply.has_value());
  EXPECT_EQ(processed.reply->payload, (bytes{0x81, 0xa1, 'v', 0x05}));
  store.stop();
}

/// The outcome of storing `message`, failures included.
result<persist_outcome> persist_now(asio::io_context& io, pg_message_store& store,
                                    persisted_message message) {
  std::optional<result<persist_outcome>> out;
  store.persist(std::move(message), [&](result<persist_outcome> r) { out = std::move(r); });
  EXPECT_TRUE(run_until(io, [&] { return out.has_value(); }));
  return out.value_or(failure{errc::unavailable, "no answer"});
}

persisted_message message_with_value(const std::string& id, const std::string& key, int value) {
  auto m = message_for(id, key);
  m.request = make_request("Probe", id, "Append", {{"sender", "s"}, {"value", value}});
  m.request.primary_key = key;
  return m;
}

void expect_reused_key(const result<persist_outcome>& outcome) {
  ASSERT_FALSE(outcome.has_value()) << "the reused key was accepted";
  EXPECT_EQ(outcome.error().code, errc::invalid_request);
  EXPECT_EQ(outcome.error().message, "primary key reused with a different request");
}

TEST(postgres, refuses_a_primary_key_reused_with_a_different_request) {
  REQUIRE_POSTGRES();
  asio::io_context io;
  pg_message_store store(io, settings_for(unique_prefix()));
  const auto stored = persist_now(io, store, message_with_value("e1", "k1", 1));
  ASSERT_TRUE(stored.has_value());
  expect_reused_key(persist_now(io, store, message_with_value("e1", "k1", 2)));
  auto other_rpc = message_with_value("e1", "k1", 1);
  other_rpc.request.rpc = "Read";
  expect_reused_key(persist_now(io, store, other_rpc));
  // The original is untouched: the same request joins it, and reads its reply once processed.
  const auto joined = persist_now(io, store, message_with_value("e1", "k1", 1));
  ASSERT_TRUE(joined.has_value());
  EXPECT_FALSE(joined.value().inserted);
  EXPECT_EQ(joined.value().id, stored.value().id);
  std::optional<std::vector<persisted_message>> queued;
  store.unprocessed("default", 5, 0, store_into(queued));
  const auto batch = wait_result(io, queued);
  ASSERT_EQ(batch.size(), 1u) << "nothing was stored for the reused key";
  EXPECT_EQ(batch[0].request.payload, message_with_value("e1", "k1", 1).request.payload);
  std::optional<bool> completed;
  store.complete(stored.value().id, reply_msg::success({0x05}), false,
                 [&](result<void> done) { completed = done.has_value(); });
  EXPECT_TRUE(wait_result(io, completed));
  const auto processed = persist_now(io, store, message_with_value("e1", "k1", 1));
  ASSERT_TRUE(processed.has_value() && processed.value().reply.has_value());
  EXPECT_EQ(processed.value().reply->payload, (bytes{0x05}));
  expect_reused_key(persist_now(io, store, message_with_value("e1", "k1", 3)));
  store.stop();
}

TEST(postgres, stores_one_request_of_a_key_sent_twice_differently_in_one_round) {
  REQUIRE_POSTGRES();
  asio::io_context io;
  pg_message_store store(io, settings_for(unique_prefix()));
  // Queued together, so that (past the first pairs, while the worker is busy) each pair shares
  // a round; different starting attempts put the two of a pair in different statements of
  // it, in the opposite order of their arrival.
  constexpr int pairs = 40;
  std::vector<persisted_message> replayed, running;
  std::vector<std::optional<result<persist_outcome>>> first(pairs), second(pairs);
  for (int i = 0; i < pairs; ++i) {
    const auto key = "k" + std::to_string(i);
    replayed.push_back(message_with_value("e2", key, 1));
    replayed.back().attempts = 0;
    running.push_back(message_with_value("e2", key, 2));
    running.back().attempts = 1;
    store.persist(replayed.back(), [&, i](result<persist_outcome> r) { first[i] = std::move(r); });
    store.persist(running.back(), [&, i](result<persist_outcome> r) { second[i] = std::move(r); });
  }
  ASSERT_TRUE(run_until(io, [&] {
    return std::all_of(second.begin(), second.end(), [](const auto& o) { return o.has_value(); });
  }));
  std::map<std::int64_t, bytes> kept;  // id → the payload its caller sent
  for (int i = 0; i < pairs; ++i) {
    ASSERT_TRUE(first[i].has_value());
    ASSERT_NE(first[i]->has_value(), second[i]->has_value()) << "exactly one of pair " << i;
    const bool first_kept = first[i]->has_value();
    expect_reused_key(first_kept ? *second[i] : *first[i]);
    const auto& outcome = first_kept ? *first[i] : *second[i];
    EXPECT_TRUE(outcome.value().inserted);
    kept[outcome.value().id] = (first_kept ? replayed : running)[i].request.payload;
  }
  std::optional<std::vector<persisted_message>> queued;
  store.unprocessed("default", 5, 0, store_into(queued));
  const auto batch = wait_result(io, queued);
  ASSERT_EQ(batch.size(), static_cast<std::size_t>(pairs));
  for (const auto& stored : batch) {
    ASSERT_TRUE(kept.count(stored.id)) << "message " << stored.id << " was not told inserted";
    EXPECT_EQ(stored.request.payload, kept[stored.id])
        << "the stored row holds the request its caller was told was stored";
  }
  store.stop();
}

TEST(postgres, a_message_stored_before_fingerprints_keeps_answering_any_request_of_its_key) {
  REQUIRE_POSTGRES();
  const auto prefix = unique_prefix();
  {
    pg::connection conn(test_pg_url());
    pg::migrate(conn, prefix, 3);
    conn.exec("INSERT INTO " + prefix +
              "_messages (id, shard_group, shard, entity_type, entity_id, rpc, primary_key, "
              "payload) VALUES (1, 'default', 5, 'Probe', 'old', 'Append', 'k1', '\\x80')");
    conn.exec("INSERT INTO " + prefix +
              "_replies (message_id, code, error, message, payload) VALUES (1, 0, '', '', "
              "'\\x81')");
  }
  asio::io_context io;
  pg_message_store store(io, settings_for(prefix));  // migrates to the latest schema
  const auto outcome = persist_now(io, store, message_with_value("old", "k1", 9));
  ASSERT_TRUE(outcome.has_value()) << outcome.error().message;
  EXPECT_FALSE(outcome.value().inserted);
  EXPECT_EQ(outcome.value().id, 1);
  ASSERT_TRUE(outcome.value().reply.has_value());
  EXPECT_EQ(outcome.value().reply->payload, (bytes{0x81}));
  store.stop();
}

TEST(postgres, batches_concurrent_messages_and_lists_unprocessed_ones_in_order) {
  REQUIRE_POSTGRES();
  asio::io_context io;
  pg_message_store store(io, settings_for(unique_prefix()));
  std::size_t pending = 300;
  std::vector<std::int64_t> ids(300);
  for (int i = 0; i < 300; ++i)
    store.persist(message_for("ordered", "key-" + std::to_string(i), 9),
                  [&, i](result<persist_outcome> o) {
                    if (o) {
                      ids[i] = o.value().id;
                    } else {
                      ADD_FAILURE() << o.error().message;
                    }
                    --pending;
                  });
  ASSERT_TRUE(run_until(io, [&] { return pending == 0; }));
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));  // arrival order is id order
  std::optional<std::vector<persisted_message>> listed;
  store.unprocessed("default", 9, 0, [&](result<std::vector<persisted_message>> batch) {
    EXPECT_TRUE(batch.has_value());
    if (batch) listed = std::move(batch.value());
  });
  const auto batch = wait_result(io, listed);
  ASSERT_EQ(batch.size(), 300u);
  for (std::size_t i = 0; i < batch.size(); ++i) {
    EXPECT_EQ(batch[i].id, ids[i]);
    EXPECT_EQ(*batch[i].request.primary_key, "key-" + std::to_string(i));
  }
  store.stop();
}

// What no caller may read: the server's own words.
void expect_no_database_internals(const std::string& text) {
  for (const char* internal : {"ERROR", "SQLSTATE", "invalid byte sequence", "malformed array",
                               "UTF8", "unnest", "_messages"})
    EXPECT_EQ(text.find(internal), std::string::npos) << "'" << text << "' leaks " << internal;
}

TEST(postgres, a_row_the_server_refuses_fails_only_itself_not_the_rest_of_its_round) {
  REQUIRE_POSTGRES();
  asio::io_context io;
  pg_message_store store(io, settings_for(unique_prefix()));
  // Rows PostgreSQL refuses (validation at the edge keeps them out; the store must not rely
  // on it): an id that is not UTF-8, a NUL in an id (it cuts the array literal short), a
  // primary key that ends inside a character.
  const std::map<int, persisted_message> refused = {
      {40, message_for("bad-\xFF", "key-40")},
      {41, message_for(std::string("bad-\0-nul", 9), "key-41")},
      {170, message_for("bad-key", "key-\xC3")},
  };
  constexpr int total = 300;
  std::vector<std::optional<result<persist_outcome>>> outcomes(total);
  // Queued before the worker can take them, so they share a few rounds.
  for (int i = 0; i < total; ++i) {
    auto it = refused.find(i);
    store.persist(it != refused.end() ? it->second
                                      : message_for("good-" + std::to_string(i % 7),
                                                    "key-" + std::to_string(i), 11),
                  [&outcomes, i](result<persist_outcome> o) { outcomes[i] = std::move(o); });
  }
  ASSERT_TRUE(run_until(io, [&] {
    return std::all_of(outcomes.begin(), outcomes.end(),
                       [](const auto& o) { return o.has_value(); });
  }));
  std::vector<std::int64_t> ids;
  for (int i = 0; i < total; ++i) {
    const auto& outcome = *outcomes[i];
    if (refused.count(i)) {
      ASSERT_FALSE(outcome.has_value()) << i;
      EXPECT_EQ(outcome.error().code, errc::storage_error);
      EXPECT_EQ(outcome.error().message, "message could not be stored");
      expect_no_database_internals(outcome.error().message);
      continue;
    }
    ASSERT_TRUE(outcome.has_value()) << i << ": " << outcome.error().message;
    EXPECT_TRUE(outcome.value().inserted) << i;
    ids.push_back(outcome.value().id);
  }
  EXPECT_TRUE(std::is_sorted(ids.begin(), ids.end()));  // still arrival order

  // Every accepted one is queued for its shard, once.
  std::optional<std::vector<persisted_message>> listed;
  store.unprocessed("default", 11, 0, [&](result<std::vector<persisted_message>> batch) {
    EXPECT_TRUE(batch.has_value());
    if (batch) listed = std::move(batch.value());
  });
  const auto batch = wait_result(io, listed);
  std::vector<std::int64_t> queued;
  for (const auto& m : batch) queued.push_back(m.id);
  EXPECT_EQ(queued, ids);
  store.stop();
}

TEST(postgres, stores_a_reply_whose_error_text_is_not_utf8_with_the_bad_bytes_replaced) {
  REQUIRE_POSTGRES();
  asio::io_context io;
  pg_message_store store(io, settings_for(unique_prefix()));
  std::optional<persist_outcome> first, again;
  store.persist(message_for("e1", "k1"), store_into(first));
  const auto stored = wait_result(io, first);
  ASSERT_TRUE(stored.inserted);
  auto reply = reply_msg::failure(errc::application_error, std::string("caf\xE9 \0 ok", 9));
  reply.error = "Tag\xFF";
  std::optional<bool> completed;
  store.complete(stored.id, reply, false, [&](result<void> done) { completed = done.has_value(); });
  EXPECT_TRUE(wait_result(io, completed));
  store.persist(message_for("e1", "k1"), store_into(again));
  const auto duplicate = wait_result(io, again);
  ASSERT_TRUE(duplicate.reply.has_value());
  EXPECT_EQ(duplicate.reply->code, errc::application_error);
  EXPECT_EQ(duplicate.reply->error, "Tag\xEF\xBF\xBD");
  EXPECT_EQ(duplicate.reply->message, "caf\xEF\xBF\xBD \xEF\xBF\xBD ok");
  store.stop();
}

TEST(postgres, notifies_other_stores_of_the_replies_it_is_asked_to_announce) {
  REQUIRE_POSTGRES();
  asio::io_context io;
  const auto settings = settings_for(unique_prefix());
  pg_message_store writer(io, settings), watcher(io, settings);
  std::vector<std::int64_t> notified;
  watcher.on_reply = [&](std::int64_t id) { notified.push_back(id); };
  run_until(
      io, [] { return false; }, milliseconds(300));  // let the watcher LISTEN
  std::optional<persist_outcome> quiet, announced;
  writer.persist(message_for("n1", "k"), store_into(quiet));
  writer.persist(message_for("n2", "k"), store_into(announced));
  const auto quiet_id = wait_result(io, quiet).id;
  const auto announced_id = wait_result(io, announced).id;
  // Notifications arrive in commit order: once the second is in, the first would be too.
  writer.complete(quiet_id, reply_msg::success({}), false, [](result<void>) {});
  writer.complete(announced_id, reply_msg::success({}), true, [](result<void>) {});
  EXPECT_TRUE(run_until(io, [&] {
    return std::find(notified.begin(), notified.end(), announced_id) != notified.end();
  }));
  EXPECT_EQ(std::count(notified.begin(), notified.end(), quiet_id), 0);
  writer.stop();
  watcher.stop();
}

std::vector<persisted_message> read_unprocessed(asio::io_context& io, message_store& store,
                                                std::int32_t shard) {
  std::optional<std::vector<persisted_message>> listed;
  store.unprocessed("default", shard, 0, [&](result<std::vector<persisted_message>> batch) {
    EXPECT_TRUE(batch.has_value());
    if (batch) listed = std::move(batch.value());
  });
  return wait_result(io, listed);
}

attempt_outcome count_next(asio::io_context& io, message_store& store, std::int64_t id,
                           std::optional<std::string> failure) {
  std::optional<attempt_outcome> outcome;
  store.next_attempt(id, std::move(failure), store_into(outcome));
  return wait_result(io, outcome);
}

TEST(postgres, counts_attempts_and_dead_letters_a_message_after_max_attempts) {
  REQUIRE_POSTGRES();
  asio::io_context io;
  const auto settings = settings_for(unique_prefix());
  pg_message_store runner(io, settings), other_runner(io, settings);
  std::vector<std::int64_t> notified;
  other_runner.on_reply = [&](std::int64_t id) { notified.push_back(id); };
  auto poison = message_for("poison", "k1", 11);
  poison.attempts = 1;  // stored on a serving shard: its first run counts at insert
  auto bystander = message_for("bystander", "k2", 11);
  std::optional<persist_outcome> stored, other;
  runner.persist(poison, store_into(stored));
  runner.persist(bystander, store_into(other));
  const auto id = wait_result(io, stored).id;
  wait_result(io, other);

  // The runner died: the next owner's read counts the second attempt of each.
  auto replay = read_unprocessed(io, runner, 11);
  ASSERT_EQ(replay.size(), 2u);
  EXPECT_EQ(replay[0].attempts, 2);
  EXPECT_FALSE(replay[0].suspect);
  EXPECT_EQ(replay[1].attempts, 1);
  // It died again: the poison is a suspect now, left to next_attempt; the other one is not.
  replay = read_unprocessed(io, runner, 11);
  EXPECT_TRUE(replay[0].suspect);
  EXPECT_EQ(replay[0].attempts, 2);
  EXPECT_FALSE(replay[1].suspect);
  const auto third = count_next(io, runner, id, std::nullopt);
  ASSERT_TRUE(third.rerun.has_value());
  EXPECT_EQ(third.rerun->attempts, 3);
  EXPECT_EQ(third.rerun->request.entity_id, "poison");
  EXPECT_EQ(third.rerun->request.payload, poison.request.payload);

  // Cut short a third time: dead-lettered, announced to every runner, answered to callers.
  run_until(
      io, [] { return false; }, milliseconds(300));  // let the other store LISTEN
  const auto dead = count_next(io, runner, id, std::string("plugin libx.so crashed: SIGSEGV"));
  ASSERT_TRUE(dead.dead_lettered.has_value());
  EXPECT_EQ(dead.dead_lettered->code, errc::defect);
  EXPECT_EQ(dead.dead_lettered->message,
            "dead-lettered after 3 attempts: plugin libx.so crashed: SIGSEGV");
  EXPECT_TRUE(run_until(io, [&] { return !notified.empty(); }));
  EXPECT_EQ(notified, (std::vector<std::int64_t>{id}));
  std::optional<persist_outcome> retried;
  runner.persist(poison, store_into(retried));
  const auto again = wait_result(io, retried);
  ASSERT_TRUE(again.reply.has_value());
  EXPECT_EQ(again.reply->message, dead.dead_lettered->message);
  // The shard's other message is still there, the dead one is not.
  replay = read_unprocessed(io, runner, 11);
  ASSERT_EQ(replay.size(), 1u);
  EXPECT_EQ(replay[0].request.entity_id, "bystander");

  // Operators see it, replay it (the runners hear of it) and it can be dead-lettered anew.
  std::vector<std::int64_t> requeued;
  other_runner.on_requeued = [&](const std::string& group, std::int32_t shard, std::int64_t rid) {
    EXPECT_EQ(group, "default");
    EXPECT_EQ(shard, 11);
    requeued.push_back(rid);
  };
  auto letters = make_dead_letter_store(io, settings);
  std::optional<std::vector<dead_letter_info>> listed;
  letters->list(100, store_into(listed));
  const auto list = wait_result(io, listed);
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].id, id);
  EXPECT_EQ(list[0].entity_type, "Probe");
  EXPECT_EQ(list[0].entity_id, "poison");
  EXPECT_EQ(list[0].rpc, "Append");
  EXPECT_EQ(list[0].primary_key, "k1");
  EXPECT_EQ(list[0].attempts, 3);
  EXPECT_EQ(list[0].last_failure, "plugin libx.so crashed: SIGSEGV");
  EXPECT_GT(list[0].dead_at_ms, 0);
  std::optional<bool> replayed;
  letters->replay(id, store_into(replayed));
  EXPECT_TRUE(wait_result(io, replayed));
  EXPECT_TRUE(run_until(io, [&] { return !requeued.empty(); }));
  EXPECT_EQ(requeued, (std::vector<std::int64_t>{id}));
  const auto rerun = count_next(io, runner, id, std::nullopt);
  ASSERT_TRUE(rerun.rerun.has_value());
  EXPECT_EQ(rerun.rerun->attempts, 1) << "a replayed dead letter starts over";
  std::optional<persist_outcome> waiting;
  runner.persist(poison, store_into(waiting));
  EXPECT_FALSE(wait_result(io, waiting).reply.has_value()) << "its error reply is gone";
  replayed.reset();
  letters->replay(id, store_into(replayed));
  EXPECT_FALSE(wait_result(io, replayed)) << "no dead letter any more";

  // Dead again (counted without a failure seen), then dropped: the error reply stays.
  count_next(io, runner, id, std::nullopt);
  count_next(io, runner, id, std::nullopt);
  const auto stopped = count_next(io, runner, id, std::nullopt);
  ASSERT_TRUE(stopped.dead_lettered.has_value());
  EXPECT_EQ(stopped.dead_lettered->message,
            "dead-lettered after 3 attempts: the runner running it stopped")
      << "the failure before the replay is not this run's";
  std::optional<bool> dropped;
  letters->drop(id, store_into(dropped));
  EXPECT_TRUE(wait_result(io, dropped));
  listed.reset();
  letters->list(100, store_into(listed));
  EXPECT_TRUE(wait_result(io, listed).empty());
  std::optional<persist_outcome> after_drop;
  runner.persist(poison, store_into(after_drop));
  const auto kept = wait_result(io, after_drop);
  ASSERT_TRUE(kept.reply.has_value());
  EXPECT_EQ(kept.reply->code, errc::defect);
  letters.reset();
  runner.stop();
  other_runner.stop();
}

TEST(postgres, says_the_runner_stopped_when_only_replays_counted_the_attempts) {
  REQUIRE_POSTGRES();
  asio::io_context io;
  auto settings = settings_for(unique_prefix());
  settings.max_attempts = 1;
  pg_message_store store(io, settings);
  auto message = message_for("once", "k", 12);
  message.attempts = 1;
  std::optional<persist_outcome> stored;
  store.persist(message, store_into(stored));
  const auto id = wait_result(io, stored).id;
  const auto replay = read_unprocessed(io, store, 12);
  ASSERT_EQ(replay.size(), 1u);
  EXPECT_TRUE(replay[0].suspect) << "it had its one attempt";
  const auto dead = count_next(io, store, id, std::nullopt);
  ASSERT_TRUE(dead.dead_lettered.has_value());
  EXPECT_EQ(dead.dead_lettered->message,
            "dead-lettered after 1 attempt: the runner running it stopped");
  store.stop();
}

TEST(postgres, purges_processed_messages_past_retention_only) {
  REQUIRE_POSTGRES();
  asio::io_context io;
  auto settings = settings_for(unique_prefix());
  settings.retention = milliseconds(200);
  settings.max_attempts = 1;
  pg_message_store store(io, settings);
  std::optional<persist_outcome> done_one, open_one;
  store.persist(message_for("p", "done"), store_into(done_one));
  store.persist(message_for("p", "open"), store_into(open_one));
  const auto processed_id = wait_result(io, done_one).id;
  wait_result(io, open_one);
  std::optional<bool> completed;
  store.complete(processed_id, reply_msg::success({}), false,
                 [&](result<void> done) { completed = done.has_value(); });
  wait_result(io, completed);
  auto poison = message_for("p", "dead");  // dead letters go with their replies
  poison.attempts = 1;
  std::optional<persist_outcome> dead_one;
  store.persist(poison, store_into(dead_one));
  ASSERT_TRUE(count_next(io, store, wait_result(io, dead_one).id, "boom").dead_lettered);
  std::optional<std::size_t> purged;
  store.purge(store_into(purged));
  EXPECT_EQ(wait_result(io, purged), 0u);  // younger than the retention
  run_until(
      io, [] { return false; }, milliseconds(400));
  purged.reset();
  store.purge(store_into(purged));
  EXPECT_EQ(wait_result(io, purged), 2u);
  pg::connection conn(test_pg_url());
  auto left = conn.exec("SELECT primary_key FROM " + settings.table_prefix + "_messages");
  ASSERT_EQ(left.rows(), 1);
  EXPECT_EQ(left.text(0, 0), "open");  // unprocessed messages are never purged
  EXPECT_EQ(conn.exec("SELECT count(*) FROM " + settings.table_prefix + "_replies").integer(0, 0),
            0);
  EXPECT_EQ(
      conn.exec("SELECT count(*) FROM " + settings.table_prefix + "_dead_letters").integer(0, 0),
      0);
  store.stop();
}

TEST(postgres, keeps_the_manager_state_across_stores) {
  REQUIRE_POSTGRES();
  const auto settings = settings_for(unique_prefix());
  {
    auto store = make_manager_store(settings);
    register_runner_msg runner;
    runner.name = "runner-1";
    runner.address = "127.0.0.1:1";
    runner.groups = {"default"};
    store->save_runner(runner);
    store->save_assignment("default", {"127.0.0.1:1", "", "127.0.0.1:1"});
  }
  auto restarted = make_manager_store(settings);
  const auto runners = restarted->load_runners();
  ASSERT_EQ(runners.size(), 1u);
  EXPECT_EQ(runners[0].name, "runner-1");
  const auto assignments = restarted->load_assignments();
  EXPECT_EQ(assignments.at("default"),
            (std::vector<std::string>{"127.0.0.1:1", "", "127.0.0.1:1"}));
}

}  // namespace
}  // namespace cluster::testing
