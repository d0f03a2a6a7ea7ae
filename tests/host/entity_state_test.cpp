// Entity state on a runner: the entity host and persisted_messages on the memory store, with
// the Ledger test plugin, in both isolation modes. State is read before an activation,
// written before the entity's next message (with a persisted RPC's reply in one transaction),
// left alone by failing handlers, and a write the store refuses drops the activation.
#include <gtest/gtest.h>

#include "cluster/host/entity_host.hpp"
#include "cluster/host/persisted_messages.hpp"
#include "cluster/protocol/shard.hpp"
#include "cluster_fixture.hpp"

namespace cluster::host {
namespace {

using cluster::testing::make_request;
using cluster::testing::reply_json;
using cluster::testing::run_until;
using cluster::testing::test_plugin;
using reply_slot = std::shared_ptr<std::optional<reply_msg>>;

constexpr std::int32_t shards_per_group = 300;

bytes ledger_bytes(std::int64_t total) {
  const auto packed =
      nlohmann::json::to_msgpack({{"total", total}, {"notes", nlohmann::json::array()}});
  return bytes(packed.begin(), packed.end());
}

class entity_state_test : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    if (GetParam()) {
      isolation_options options;
      options.plugin_host = std::string(CLUSTER_BIN_DIR) + "/cluster-plugin-host";
      options.handler_timeout = milliseconds(0);
      registry.isolate(io, options);
      registry.on_instances_lost = [this](const plugin_process* process) {
        if (host) host->instances_lost(process);
      };
    }
    const auto loaded = registry.load_file(test_plugin("ledger_plugin"));
    ASSERT_TRUE(loaded) << loaded.error().message;
    ledger = registry.find("Ledger");
    ASSERT_NE(ledger, nullptr);
  }
  void TearDown() override {
    if (persisted) persisted->stop();
    if (host) host->stop();
  }

  /// An entity host and persisted_messages on a fresh memory store, serving every shard.
  void start(entity_host_options options = {}) {
    host = std::make_unique<entity_host>(
        io, options, [](request_msg, entity_host::reply_callback done) {
          done(reply_msg::failure(errc::unavailable, "no router in this test"));
        });
    auto owned = make_memory_message_store(io, settings.batch_size);
    store = owned.get();
    persisted =
        std::make_unique<persisted_messages>(io, std::move(owned), *host, registry, settings);
    persisted->start();
    std::set<std::int32_t> all;
    for (std::int32_t shard = 1; shard <= shards_per_group; ++shard) all.insert(shard);
    persisted->set_wanted({{"default", all}});
    ASSERT_TRUE(run_until(io, [&] { return persisted->held_shards() == all.size(); }));
  }

  static std::int32_t shard_of(const std::string& id) { return shard_for(id, shards_per_group); }

  reply_slot send(const std::string& id, const std::string& rpc,
                  const nlohmann::json& payload = nlohmann::json::object()) {
    auto slot = std::make_shared<std::optional<reply_msg>>();
    host->deliver(entity_address{ledger, id, shard_of(id)}, *ledger->rpc_index(rpc),
                  make_request("Ledger", id, rpc, payload),
                  steady_clock::now() + std::chrono::seconds(10),
                  [slot](reply_msg&& reply) { *slot = std::move(reply); });
    return slot;
  }
  reply_slot submit(const std::string& id, const std::string& rpc, const nlohmann::json& payload,
                    const std::string& key) {
    auto slot = std::make_shared<std::optional<reply_msg>>();
    auto request = make_request("Ledger", id, rpc, payload);
    request.primary_key = key;
    persisted->submit(entity_address{ledger, id, shard_of(id)}, *ledger->rpc_index(rpc),
                      std::move(request), steady_clock::now() + std::chrono::seconds(10),
                      [slot](reply_msg&& reply) { *slot = std::move(reply); });
    return slot;
  }
  reply_msg wait(const reply_slot& slot) {
    EXPECT_TRUE(run_until(io, [&] { return slot->has_value(); }));
    return slot->value_or(reply_msg::failure(errc::deadline_exceeded, "no reply in the test"));
  }
  reply_msg call(const std::string& id, const std::string& rpc,
                 const nlohmann::json& payload = nlohmann::json::object()) {
    return wait(send(id, rpc, payload));
  }
  nlohmann::json ok(const reply_msg& reply) {
    EXPECT_TRUE(reply.ok()) << to_string(reply.code) << ": " << reply.message;
    return reply.ok() ? reply_json(reply) : nlohmann::json::object();
  }
  /// What the store holds for Ledger/`id`.
  stored_state stored(const std::string& id) {
    std::optional<result<stored_state>> read;
    store->load_state("Ledger", id, [&](result<stored_state> r) { read = std::move(r); });
    EXPECT_TRUE(run_until(io, [&] { return read.has_value(); }));
    EXPECT_TRUE(read && *read) << (read && !*read ? read->error().message : "");
    return read && *read ? read->value() : stored_state{};
  }
  std::int64_t stored_total(const std::string& id) {
    const auto state = stored(id);
    if (!state.data) return -1;
    return nlohmann::json::from_msgpack(*state.data).value("total", std::int64_t{-1});
  }
  /// Another activation somewhere wrote the state: its version moves on.
  void write_behind(const std::string& id, std::int64_t total) {
    const auto before = stored(id);
    std::optional<result<void>> written;
    store->save_state(state_write{"Ledger", id, before.version, ledger_bytes(total)},
                      [&](result<void> r) { written = std::move(r); });
    ASSERT_TRUE(run_until(io, [&] { return written.has_value(); }));
    ASSERT_TRUE(*written) << written->error().message;
  }
  void passivate_all() {
    host->passivate_idle(steady_clock::now() + std::chrono::hours(1));
    ASSERT_TRUE(run_until(io, [&] { return host->active_entities() == 0; }));
  }

  asio::io_context io;
  entity_registry registry;  // before the io_context goes: its plugin processes use it
  const entity_type* ledger = nullptr;
  storage_settings settings;
  message_store* store = nullptr;
  std::unique_ptr<entity_host> host;
  std::unique_ptr<persisted_messages> persisted;
};

TEST_P(entity_state_test, keeps_the_state_across_passivation) {
  start();
  EXPECT_EQ(ok(call("a", "Add", {{"amount", 5}, {"note", "first"}}))["total"], 5);
  EXPECT_EQ(ok(call("a", "Add", {{"amount", 7}, {"note", "second"}}))["total"], 12);
  const auto before = ok(call("a", "Show"))["activation"];
  passivate_all();
  const auto shown = ok(call("a", "Show"));
  EXPECT_EQ(shown["total"], 12);
  EXPECT_EQ(shown["notes"], nlohmann::json({"first", "second"}));
  EXPECT_NE(shown["activation"], before);  // a new instance, from storage
  EXPECT_EQ(stored("a").version, 2);
}

TEST_P(entity_state_test, writes_nothing_for_a_handler_that_leaves_the_state_as_it_was) {
  start();
  ok(call("b", "Show"));
  EXPECT_EQ(stored("b").version, 0);
  ok(call("b", "Add", {{"amount", 1}}));
  ok(call("b", "Show"));
  ok(call("b", "Show"));
  EXPECT_EQ(stored("b").version, 1);
}

TEST_P(entity_state_test, a_failing_handler_changes_nothing) {
  start();
  ok(call("c", "Add", {{"amount", 5}, {"note", "kept"}}));
  const auto failed = call("c", "AddThenFail", {{"amount", 100}, {"note", "lost"}});
  EXPECT_EQ(failed.code, errc::application_error);
  EXPECT_EQ(failed.error, "Refused");
  const auto shown = ok(call("c", "Show"));
  EXPECT_EQ(shown["total"], 5);  // the instance went back to the stored state
  EXPECT_EQ(shown["notes"], nlohmann::json({"kept"}));
  EXPECT_EQ(stored("c").version, 1);
}

TEST_P(entity_state_test, runs_the_next_message_only_after_a_coroutine_s_state_is_written) {
  start();
  const auto later = send("d", "AddLater", {{"amount", 3}, {"sleep_ms", 30}});
  const auto shown = send("d", "Show");
  EXPECT_EQ(ok(wait(later))["total"], 3);
  EXPECT_EQ(ok(wait(shown))["total"], 3);
  EXPECT_EQ(stored_total("d"), 3);
}

TEST_P(entity_state_test, clear_state_deletes_the_stored_state_and_the_version_goes_on) {
  start();
  ok(call("e", "Add", {{"amount", 4}}));
  ok(call("e", "Clear"));
  const auto state = stored("e");
  EXPECT_FALSE(state.data.has_value());
  EXPECT_EQ(state.version, 2);
  passivate_all();
  EXPECT_EQ(ok(call("e", "Show"))["total"], 0);
  ok(call("e", "Add", {{"amount", 1}}));
  EXPECT_EQ(stored("e").version, 3);
}

TEST_P(entity_state_test, a_persisted_rpc_retried_with_its_key_counts_once) {
  start();
  EXPECT_EQ(ok(wait(submit("f", "AddPersisted", {{"amount", 2}}, "k1")))["total"], 2);
  EXPECT_EQ(ok(wait(submit("f", "AddPersisted", {{"amount", 2}}, "k1")))["total"], 2);
  EXPECT_EQ(ok(wait(submit("f", "AddPersisted", {{"amount", 2}}, "k2")))["total"], 4);
  passivate_all();
  EXPECT_EQ(ok(call("f", "Show"))["total"], 4);
  EXPECT_EQ(stored("f").version, 2);
}

TEST_P(entity_state_test, a_persisted_coroutine_s_state_goes_with_its_reply) {
  start();
  // Persisted messages of one entity run in their stored order: the second sees the first's
  // state, committed with its reply once the coroutine replied.
  const auto later = submit("g", "AddLaterPersisted", {{"amount", 6}, {"sleep_ms", 20}}, "k1");
  const auto next = submit("g", "AddPersisted", {{"amount", 1}}, "k2");
  EXPECT_EQ(ok(wait(later))["total"], 6);
  EXPECT_EQ(ok(wait(next))["total"], 7);
  EXPECT_EQ(stored_total("g"), 7);
  EXPECT_EQ(stored("g").version, 2);
}

TEST_P(entity_state_test, a_stale_activation_s_volatile_write_is_refused_and_it_is_dropped) {
  start();
  const auto first = ok(call("h", "Add", {{"amount", 1}}));
  write_behind("h", 100);
  const auto refused = call("h", "Add", {{"amount", 1}});
  EXPECT_EQ(refused.code, errc::not_owner);
  EXPECT_NE(refused.message.find("state changed elsewhere"), std::string::npos) << refused.message;
  EXPECT_EQ(stored_total("h"), 100);  // nothing of the stale write
  const auto shown = ok(call("h", "Show"));
  EXPECT_EQ(shown["total"], 100);  // activated again, from storage
  EXPECT_NE(shown["activation"], first["activation"]);
  EXPECT_EQ(ok(call("h", "Add", {{"amount", 1}}))["total"], 101);
}

TEST_P(entity_state_test, a_stale_activation_s_persisted_write_is_refused_and_runs_again_once) {
  start();
  ok(wait(submit("i", "AddPersisted", {{"amount", 1}}, "one")));
  write_behind("i", 100);
  const auto refused = wait(submit("i", "AddPersisted", {{"amount", 1}}, "two"));
  EXPECT_EQ(refused.code, errc::not_owner) << refused.message;
  // The message stayed pending and ran again on a fresh activation: the caller's retry with
  // the same key gets that run's reply; the effect counted once.
  const auto retried = ok(wait(submit("i", "AddPersisted", {{"amount", 1}}, "two")));
  EXPECT_EQ(retried["total"], 101);
  EXPECT_EQ(stored_total("i"), 101);
  EXPECT_EQ(ok(call("i", "Show"))["total"], 101);
}

TEST_P(entity_state_test, refuses_a_state_over_the_size_limit_and_stores_nothing) {
  entity_host_options options;
  options.max_state_bytes = 1000;
  start(options);
  ok(call("j", "Add", {{"amount", 1}}));
  const auto refused = call("j", "Grow", {{"bytes", 5000}});
  EXPECT_EQ(refused.code, errc::defect);
  EXPECT_NE(refused.message.find("max_state_bytes (1000)"), std::string::npos) << refused.message;
  EXPECT_EQ(stored("j").version, 1);
  const auto shown = ok(call("j", "Show"));
  EXPECT_EQ(shown["notes"].size(), 1u);  // the dropped activation's growth is gone
}

TEST_P(entity_state_test, a_stored_state_that_does_not_decode_fails_the_activation) {
  start();
  std::optional<result<void>> written;
  store->save_state(state_write{"Ledger", "k", 0, bytes{0xc1}},  // 0xc1: never valid
                    [&](result<void> r) { written = std::move(r); });
  ASSERT_TRUE(run_until(io, [&] { return written.has_value(); }));
  const auto failed = call("k", "Add", {{"amount", 1}});
  EXPECT_EQ(failed.code, errc::defect);
  EXPECT_NE(failed.message.find("does not decode"), std::string::npos) << failed.message;
  EXPECT_EQ(stored("k").version, 1);
}

TEST_P(entity_state_test, with_state_save_at_passivation_writes_when_the_entity_goes) {
  entity_host_options options;
  options.save_state_on_reply = false;
  start(options);
  ok(call("l", "Add", {{"amount", 2}}));
  ok(call("l", "Add", {{"amount", 3}}));
  EXPECT_EQ(stored("l").version, 0);  // the loss window: nothing written yet
  passivate_all();
  ASSERT_TRUE(run_until(io, [&] { return stored("l").version == 1; }));
  EXPECT_EQ(stored_total("l"), 5);
  EXPECT_EQ(ok(call("l", "Show"))["total"], 5);
}

TEST_P(entity_state_test, with_state_save_at_passivation_writes_what_is_left_at_stop) {
  entity_host_options options;
  options.save_state_on_reply = false;
  start(options);
  ok(call("m", "Add", {{"amount", 9}}));
  bool written = false;
  host->write_unsaved([&] { written = true; });
  ASSERT_TRUE(run_until(io, [&] { return written; }));
  EXPECT_EQ(stored_total("m"), 9);
}

TEST_P(entity_state_test, a_runner_without_a_state_store_answers_storage_error) {
  start();
  host->state_store = nullptr;
  const auto failed = call("n", "Add", {{"amount", 1}});
  EXPECT_EQ(failed.code, errc::storage_error);
  EXPECT_EQ(host->active_entities(), 0u);
}

INSTANTIATE_TEST_SUITE_P(isolation, entity_state_test, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& mode) {
                           return mode.param ? "process" : "none";
                         });

}  // namespace
}  // namespace cluster::host
