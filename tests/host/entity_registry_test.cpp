// Plugin loading (each rejection reason) and the entity host's mailbox semantics.
#include "cluster/host/entity_registry.hpp"

#include <gtest/gtest.h>

#include "cluster/host/entity_host.hpp"
#include "cluster_fixture.hpp"

namespace cluster::host {
namespace {

using cluster::testing::make_request;
using cluster::testing::reply_json;
using cluster::testing::run_until;
using cluster::testing::test_plugin;

std::string load_error(const std::string& file) {
  entity_registry registry;
  auto error = registry.load_file(file);
  return error.value_or("");
}

TEST(entity_registry, loads_the_example_plugins_with_their_rpcs) {
  entity_registry registry;
  EXPECT_TRUE(registry.load({CLUSTER_PLUGIN_DIR}).empty());
  const auto* greeter = registry.find("Greeter");
  ASSERT_NE(greeter, nullptr);
  EXPECT_EQ(greeter->info.group, "default");
  ASSERT_EQ(greeter->info.rpcs.size(), 2u);
  EXPECT_TRUE(greeter->info.find_rpc("Greet")->persisted);
  EXPECT_FALSE(greeter->info.find_rpc("GreetVolatile")->persisted);
  EXPECT_NE(registry.find("Counter"), nullptr);
  EXPECT_NE(registry.find("Calculator"), nullptr);
  EXPECT_EQ(registry.find("Nope"), nullptr);
}

TEST(entity_registry, refuses_a_file_that_is_not_a_shared_library) {
  EXPECT_NE(load_error(test_plugin("not_a_plugin")).find("not a loadable plugin"),
            std::string::npos);
}

TEST(entity_registry, refuses_a_library_without_the_entry_symbol) {
  EXPECT_NE(load_error(test_plugin("missing_entry_plugin")).find("missing the entry symbol"),
            std::string::npos);
}

TEST(entity_registry, refuses_another_abi_major_version) {
  EXPECT_NE(load_error(test_plugin("wrong_abi_plugin")).find("ABI major version 999"),
            std::string::npos);
}

TEST(entity_registry, refuses_a_plugin_built_for_a_newer_minor_version) {
  EXPECT_NE(load_error(test_plugin("newer_minor_plugin")).find("newer than this runner"),
            std::string::npos);
}

TEST(entity_registry, refuses_a_missing_file) {
  EXPECT_EQ(load_error("/nonexistent/libnothing.so"), "no such file");
}

TEST(entity_registry, refuses_a_duplicate_entity_type_and_keeps_the_first) {
  entity_registry registry;
  EXPECT_FALSE(registry.load_file(test_plugin("probe_plugin")).has_value());
  const auto error = registry.load_file(test_plugin("duplicate_probe_plugin"));
  ASSERT_TRUE(error.has_value());
  EXPECT_NE(error->find("entity type 'Probe' is already provided by"), std::string::npos);
  ASSERT_NE(registry.find("Probe"), nullptr);
  EXPECT_TRUE(registry.find("Probe")->rpc_index("Append").has_value());
  EXPECT_FALSE(registry.find("Probe")->rpc_index("Ping").has_value());
}

TEST(entity_registry, loads_the_good_plugins_of_a_folder_and_names_each_bad_file) {
  entity_registry registry;
  const auto errors = registry.load({CLUSTER_TEST_PLUGIN_DIR});
  // not_a_plugin, missing_entry, wrong_abi, newer_minor, and one of the two Probe plugins.
  ASSERT_EQ(errors.size(), 5u);
  for (const auto& error : errors) EXPECT_EQ(error.rfind(CLUSTER_TEST_PLUGIN_DIR, 0), 0u) << error;
  EXPECT_NE(registry.find("Probe"), nullptr);
  EXPECT_NE(registry.find("Fragile"), nullptr);
}

// The entity host on its own: one io_context, the probe plugin, no network.
class entity_host_test : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_FALSE(registry.load_file(test_plugin("probe_plugin"))); }

  void make_host(entity_host_options options) {
    host = std::make_unique<entity_host>(
        io, options, [](request_msg, entity_host::reply_callback done) {
          done(reply_msg::failure(errc::unavailable, "no router in this test"));
        });
  }

  void send(const std::string& id, const std::string& rpc, const nlohmann::json& payload,
            std::vector<reply_msg>& replies, std::size_t slot) {
    const auto* type = registry.find("Probe");
    host->deliver(entity_address{type, id, 7}, *type->rpc_index(rpc),
                  make_request("Probe", id, rpc, payload), steady_clock::now() + milliseconds(5000),
                  [&replies, slot](reply_msg&& reply) { replies[slot] = std::move(reply); });
  }

  asio::io_context io;
  entity_registry registry;
  std::unique_ptr<entity_host> host;
};

TEST_F(entity_host_test, runs_one_entitys_messages_one_at_a_time_in_arrival_order) {
  make_host({});
  std::vector<reply_msg> replies(100, reply_msg::failure(errc::unavailable, "pending"));
  for (std::size_t i = 0; i < replies.size(); ++i)
    send("ordered", "Append", {{"sender", "s"}, {"value", i}}, replies, i);
  ASSERT_TRUE(run_until(io, [&] { return replies.back().ok(); }));
  for (std::size_t i = 0; i < replies.size(); ++i) {
    ASSERT_TRUE(replies[i].ok()) << replies[i].message;
    const auto log = reply_json(replies[i])["log"];
    ASSERT_EQ(log.size(), i + 1);  // each message saw exactly the ones before it
    EXPECT_EQ(log.back(), "s:" + std::to_string(i));
  }
  EXPECT_EQ(host->activations(), 1u);
}

TEST_F(entity_host_test, answers_mailbox_full_beyond_the_bound) {
  make_host({3, milliseconds(60000)});
  std::vector<reply_msg> replies(8, reply_msg::failure(errc::unavailable, "pending"));
  send("busy", "Sleep", {{"ms", 200}}, replies, 0);  // runs, so it is not in the mailbox
  for (std::size_t i = 1; i < replies.size(); ++i)
    send("busy", "Echo", {{"text", "x"}}, replies, i);
  ASSERT_TRUE(run_until(io, [&] {
    return std::all_of(replies.begin(), replies.end(),
                       [](const reply_msg& r) { return r.code != errc::unavailable; });
  }));
  std::size_t ok = 0, full = 0;
  for (const auto& reply : replies) {
    ok += reply.ok() ? 1 : 0;
    full += reply.code == errc::mailbox_full ? 1 : 0;
  }
  EXPECT_EQ(ok, 4u);
  EXPECT_EQ(full, 4u);
}

TEST_F(entity_host_test, passivates_entities_idle_longer_than_the_configured_time) {
  make_host({4096, milliseconds(50)});
  std::vector<reply_msg> replies(2, reply_msg::failure(errc::unavailable, "pending"));
  send("sleepy", "Echo", {{"text", "a"}}, replies, 0);
  ASSERT_TRUE(run_until(io, [&] { return replies[0].ok(); }));
  EXPECT_EQ(host->active_entities(), 1u);
  ASSERT_TRUE(run_until(io, [&] { return host->active_entities() == 0; }));
  EXPECT_EQ(host->passivations(), 1u);
  send("sleepy", "Echo", {{"text", "b"}}, replies, 1);
  ASSERT_TRUE(run_until(io, [&] { return replies[1].ok(); }));
  EXPECT_EQ(host->activations(), 2u);  // a fresh instance after passivation
  EXPECT_GT(reply_json(replies[1])["activation"].get<int>(),
            reply_json(replies[0])["activation"].get<int>());
}

TEST_F(entity_host_test, fails_only_the_request_whose_handler_throws) {
  make_host({});
  std::vector<reply_msg> replies(3, reply_msg::failure(errc::unavailable, "pending"));
  send("fragile", "Fail", nlohmann::json::object(), replies, 0);
  send("fragile", "Reject", nlohmann::json::object(), replies, 1);
  send("fragile", "Echo", {{"text", "still here"}}, replies, 2);
  ASSERT_TRUE(run_until(io, [&] { return replies[2].code != errc::unavailable; }));
  EXPECT_EQ(replies[0].code, errc::defect);
  EXPECT_NE(replies[0].message.find("probe failed on purpose"), std::string::npos);
  EXPECT_EQ(replies[1].code, errc::application_error);
  EXPECT_EQ(replies[1].error, "Rejected");
  ASSERT_TRUE(replies[2].ok());
  EXPECT_EQ(reply_json(replies[2])["text"], "still here");
  EXPECT_EQ(host->activations(), 1u);  // the entity survived its failing handler
}

TEST_F(entity_host_test, answers_bad_payload_for_a_request_of_the_wrong_shape) {
  make_host({});
  std::vector<reply_msg> replies(2, reply_msg::failure(errc::unavailable, "pending"));
  send("typed", "Append", {{"sender", 12}, {"value", "not a number"}}, replies, 0);
  const auto* type = registry.find("Probe");
  request_msg garbage = make_request("Probe", "typed", "Echo");
  garbage.payload = {0xc1, 0xff, 0x00};  // 0xc1 is never valid MessagePack
  host->deliver(entity_address{type, "typed", 7}, *type->rpc_index("Echo"), garbage,
                steady_clock::now() + milliseconds(5000),
                [&replies](reply_msg&& reply) { replies[1] = std::move(reply); });
  ASSERT_TRUE(run_until(io, [&] { return replies[1].code != errc::unavailable; }));
  EXPECT_EQ(replies[0].code, errc::bad_payload);
  EXPECT_EQ(replies[1].code, errc::bad_payload);
}

TEST_F(entity_host_test, evicts_entities_of_shards_it_no_longer_owns) {
  make_host({});
  std::vector<reply_msg> replies(1, reply_msg::failure(errc::unavailable, "pending"));
  send("moving", "Echo", {{"text", "a"}}, replies, 0);
  ASSERT_TRUE(run_until(io, [&] { return replies[0].ok(); }));
  host->evict_shards([](const std::string&, std::int32_t shard) { return shard != 7; });
  EXPECT_EQ(host->active_entities(), 0u);
  EXPECT_EQ(host->passivations(), 1u);
}

}  // namespace
}  // namespace cluster::host
