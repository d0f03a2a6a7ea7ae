// What the manager does with the plugins runners hold: a registration repeated on the same
// connection updates that runner, its plugins are in the snapshot, and a group's shards go
// only to runners that have the most of its entity types, once a new type has settled.
// A real manager on loopback, driven by real connections on the test thread's io_context.
#include <gtest/gtest.h>

#include <algorithm>
#include <map>
#include <set>

#include "manager_fixture.hpp"

namespace cluster::testing {
namespace {

constexpr auto settle = 300ms;

plugin_info plugin_of(const std::string& name, std::vector<std::string> types,
                      const std::string& version = "1.0.0") {
  plugin_info plugin;
  plugin.name = name;
  plugin.version = version;
  plugin.sha256 = std::string(64, 'c');
  plugin.file = "/plugins/lib" + name + ".so";
  plugin.state = "loaded";
  plugin.entity_types = std::move(types);
  return plugin;
}

// A runner of group "default" with one plugin per entity type (each with RPC "Get").
register_runner_msg runner_with(const std::string& name, const std::string& address,
                                const std::vector<std::string>& types) {
  register_runner_msg registration;
  registration.name = name;
  registration.address = address;
  registration.groups = {"default"};
  registration.version = "test";
  for (const auto& type : types) {
    registration.entity_types.push_back({type, "default", {rpc_info{"Get", false}}});
    registration.plugins.push_back(plugin_of(type, {type}));
  }
  return registration;
}

std::map<std::string, std::size_t> shards_of(const assignment_snapshot& snapshot) {
  std::map<std::string, std::size_t> load;
  if (const auto* group = snapshot.find_group("default"))
    for (const auto& owner : group->owners) ++load[owner];
  return load;
}

const std::string a = "127.0.0.1:40001";
const std::string b = "127.0.0.1:40002";

class manager_plugins : public manager_fixture {
 protected:
  static manager::manager_config config() {
    auto config = default_config();
    config.plugin_settle = settle;
    return config;
  }

  void update(const connection_ptr& conn, const register_runner_msg& registration) {
    const auto reply = call(conn, message_kind::register_runner, registration);
    ASSERT_TRUE(reply.ok()) << reply.error << ": " << reply.message;
  }

  bool wait_for_load(const std::map<std::string, std::size_t>& wanted, milliseconds limit = 5s) {
    return run_until(
        io_, [&] { return shards_of(manager_->snapshot()) == wanted; }, limit);
  }

  using load = std::map<std::string, std::size_t>;
};

TEST_F(manager_plugins, a_registration_on_the_same_connection_updates_the_runner_in_place) {
  start(config());
  auto conn_a = join(runner_with("a", a, {"Cart"}));
  join(runner_with("b", b, {"Cart"}));
  ASSERT_TRUE(wait_for_load(load{{a, 150}, {b, 150}}));
  const auto owners_before = manager_->snapshot().find_group("default")->owners;

  // A new build of Cart's plugin, and a new plugin whose type only a has so far.
  auto updated = runner_with("a", a, {"Cart", "Wishlist"});
  updated.plugins.front().version = "2.0.0";
  updated.plugins.push_back(plugin_of("broken", {}, "0.1.0"));
  updated.plugins.back().state = "failed";
  updated.plugins.back().error = "bad ABI";
  update(conn_a, updated);

  const auto snapshot = manager_->snapshot();
  ASSERT_EQ(snapshot.runners.size(), 2u);
  const auto& info =
      snapshot.runners.front().address == a ? snapshot.runners.front() : snapshot.runners.back();
  EXPECT_TRUE(info.healthy);
  ASSERT_EQ(info.plugins.size(), 3u);
  EXPECT_EQ(info.plugins[0].version, "2.0.0");
  EXPECT_EQ(info.plugins[1].entity_types, std::vector<std::string>{"Wishlist"});
  EXPECT_EQ(info.plugins[2].state, "failed");
  EXPECT_EQ(info.plugins[2].error, "bad ABI");
  ASSERT_NE(snapshot.find_entity_type("Wishlist"), nullptr);
  EXPECT_TRUE(conn_a->is_open());
  // Not a new runner: nothing moved (Wishlist has not settled yet).
  EXPECT_EQ(snapshot.find_group("default")->owners, owners_before);

  // get_status carries the plugins as well.
  auto status_snapshot = status();
  ASSERT_TRUE(status_snapshot.has_value()) << status_snapshot.error().message;
  for (const auto& runner : status_snapshot.value().runners)
    EXPECT_EQ(runner.plugins.size(), runner.address == a ? 3u : 1u) << runner.address;
}

TEST_F(manager_plugins, gives_every_shard_to_the_runner_with_a_new_type_once_it_settled) {
  start(config());
  auto conn_a = join(runner_with("a", a, {"Cart"}));
  auto conn_b = join(runner_with("b", b, {"Cart"}));
  ASSERT_TRUE(wait_for_load(load{{a, 150}, {b, 150}}));

  const auto appeared = steady_clock::now();
  update(conn_a, runner_with("a", a, {"Cart", "Wishlist"}));
  EXPECT_EQ(shards_of(manager_->snapshot()), (load{{a, 150}, {b, 150}}));
  ASSERT_TRUE(wait_for_load(load{{a, 300}}));
  EXPECT_GE(steady_clock::now() - appeared, settle) << "the new type counted before it settled";

  // b loads it too: balanced again.
  update(conn_b, runner_with("b", b, {"Cart", "Wishlist"}));
  ASSERT_TRUE(wait_for_load(load{{a, 150}, {b, 150}}));
}

TEST_F(manager_plugins, moves_nothing_when_every_runner_loads_the_new_type_within_the_settle_time) {
  start(config());
  auto conn_a = join(runner_with("a", a, {"Cart"}));
  auto conn_b = join(runner_with("b", b, {"Cart"}));
  ASSERT_TRUE(wait_for_load(load{{a, 150}, {b, 150}}));
  const auto owners = manager_->snapshot().find_group("default")->owners;
  update(conn_a, runner_with("a", a, {"Cart", "Wishlist"}));
  run_until(
      io_, [] { return false; }, settle / 3);
  update(conn_b, runner_with("b", b, {"Cart", "Wishlist"}));
  // Past the settle time, nothing has moved.
  EXPECT_FALSE(run_until(
      io_, [&] { return manager_->snapshot().find_group("default")->owners != owners; },
      settle * 3));
}

TEST_F(manager_plugins, a_dropped_type_still_counts_for_its_runner_while_it_settles) {
  start(config());
  auto conn_a = join(runner_with("a", a, {"Cart", "Wishlist"}));
  auto conn_b = join(runner_with("b", b, {"Cart", "Wishlist"}));
  ASSERT_TRUE(wait_for_load(load{{a, 150}, {b, 150}}));
  const auto owners = manager_->snapshot().find_group("default")->owners;

  // Both drop Wishlist, one after the other: no shard moves meanwhile.
  update(conn_a, runner_with("a", a, {"Cart"}));
  run_until(
      io_, [] { return false; }, settle / 3);
  update(conn_b, runner_with("b", b, {"Cart"}));
  EXPECT_EQ(manager_->snapshot().find_entity_type("Wishlist"), nullptr);
  EXPECT_FALSE(run_until(
      io_, [&] { return manager_->snapshot().find_group("default")->owners != owners; },
      settle * 3));

  // Only a drops Cart: once that settled, b (which still has it) owns every shard.
  update(conn_a, runner_with("a", a, {}));
  EXPECT_EQ(shards_of(manager_->snapshot()), (load{{a, 150}, {b, 150}}));
  ASSERT_TRUE(wait_for_load(load{{b, 300}}));
}

TEST_F(manager_plugins, a_runner_joining_with_the_known_types_gets_shards_at_once) {
  start(config());
  join(runner_with("a", a, {"Cart"}));
  ASSERT_TRUE(wait_for_load(load{{a, 300}}));
  join(runner_with("b", b, {"Cart"}));
  // The types are not new: no settle time before b counts.
  EXPECT_EQ(shards_of(manager_->snapshot()), (load{{a, 150}, {b, 150}}));
}

TEST_F(manager_plugins, an_entity_type_has_every_rpc_some_runner_declares) {
  start(config());
  join(runner_with("a", a, {"Cart"}));
  auto newer = runner_with("b", b, {"Cart"});
  newer.entity_types.front().rpcs.push_back(rpc_info{"Checkout", true});
  join(newer);
  const auto snapshot = manager_->snapshot();
  const auto* cart = snapshot.find_entity_type("Cart");
  ASSERT_NE(cart, nullptr);
  EXPECT_NE(cart->find_rpc("Get"), nullptr);
  ASSERT_NE(cart->find_rpc("Checkout"), nullptr);
  EXPECT_TRUE(cart->find_rpc("Checkout")->persisted);
}

TEST_F(manager_plugins, types_restored_from_storage_have_settled) {
  // A manager restart: what the runners declared before decided the stored assignment, so
  // it counts at once when they register again.
  auto store = std::make_unique<memory_manager_store>();
  store->save_runner(runner_with("a", a, {"Cart"}));
  store->save_runner(runner_with("b", b, {"Cart", "Wishlist"}));
  std::vector<std::string> owners(300);
  for (std::size_t i = 0; i < owners.size(); ++i) owners[i] = i % 2 ? a : b;
  store->save_assignment("default", owners);
  start(config(), std::move(store));
  join(runner_with("b", b, {"Cart", "Wishlist"}));
  join(runner_with("a", a, {"Cart"}));
  // a lacks Wishlist, which b has: b owns every shard without waiting for a settle time.
  EXPECT_EQ(shards_of(manager_->snapshot()), (load{{b, 300}}));
}

TEST_F(manager_plugins, refuses_a_registration_listing_too_many_plugins) {
  auto limited = config();
  limited.limits.registration.max_plugins = 2;
  start(limited);
  auto conn = connect_as("runner");
  const auto reply = call(conn, message_kind::register_runner,
                          runner_with("a", a, {"Cart", "Wishlist", "Orders"}));
  EXPECT_EQ(reply.code, errc::invalid_request);
  EXPECT_EQ(reply.message, "plugins has 3 entries; at most 2 are allowed");
  EXPECT_TRUE(manager_->snapshot().runners.empty());
}

}  // namespace
}  // namespace cluster::testing
