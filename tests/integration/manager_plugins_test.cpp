// What the manager does with the plugins runners hold: a registration repeated on the same
// connection updates that runner, its plugins are in the snapshot, and a group's shards go
// only to runners that have the most of its entity types, once a new type has settled.
// A real manager on loopback, driven by real connections on the test thread's io_context.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include "cluster/host/plugin_fetcher.hpp"
#include "cluster/security/digest.hpp"
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

// --- plugins pushed to the cluster -------------------------------------------------------

bytes file_bytes(std::size_t size, std::uint8_t seed) {
  bytes data(size);
  for (std::size_t i = 0; i < size; ++i) data[i] = static_cast<std::uint8_t>(seed + i * 7);
  return data;
}

stored_plugin metadata_of(const std::string& name, const bytes& data,
                          const std::string& version = "1.0.0") {
  stored_plugin plugin;
  plugin.name = name;
  plugin.version = version;
  plugin.sha256 = security::sha256_hex(data);
  plugin.abi_major = 1;
  plugin.abi_minor = 0;
  plugin.size_bytes = data.size();
  plugin.entity_types = {"Wishlist"};
  return plugin;
}

std::string read_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

class pushed_plugins : public manager_plugins {
 protected:
  /// Every chunk of `data` on `conn`, in order; the last reply (or the first failure).
  reply_msg push(const connection_ptr& conn, const stored_plugin& plugin, const bytes& data,
                 std::size_t chunk_bytes = push_plugin_chunk_bytes) {
    push_plugin_msg msg;
    msg.plugin = plugin;
    reply_msg reply = reply_msg::failure(errc::defect, "nothing sent");
    std::size_t offset = 0;
    do {
      const std::size_t size = std::min(chunk_bytes, data.size() - offset);
      msg.offset = offset;
      msg.chunk.assign(data.begin() + static_cast<std::ptrdiff_t>(offset),
                       data.begin() + static_cast<std::ptrdiff_t>(offset + size));
      reply = call(conn, message_kind::push_plugin, msg);
      offset += size;
    } while (reply.ok() && offset < data.size());
    return reply;
  }

  std::vector<stored_plugin> listed() {
    auto conn = connect_as("client");
    const auto reply = call(conn, message_kind::list_plugins, empty_msg{});
    EXPECT_TRUE(reply.ok()) << reply.message;
    auto plugins = unpack_bytes<plugins_msg>(reply.payload);
    EXPECT_TRUE(plugins.has_value());
    return plugins ? plugins.value().plugins : std::vector<stored_plugin>{};
  }

  /// All bytes of the stored plugin `sha256` through fetch_plugin, `max_bytes` at a time.
  result<bytes> fetch_all(const std::string& sha256, std::uint32_t max_bytes) {
    auto conn = connect_as("runner");
    bytes data;
    while (true) {
      const auto reply =
          call(conn, message_kind::fetch_plugin, fetch_plugin_msg{sha256, data.size(), max_bytes});
      if (!reply.ok()) return failure{reply.code, reply.message};
      auto chunk = unpack_bytes<plugin_chunk_msg>(reply.payload);
      if (!chunk) return failure{errc::bad_payload, "does not decode"};
      data.insert(data.end(), chunk.value().chunk.begin(), chunk.value().chunk.end());
      if (data.size() >= chunk.value().size_bytes || chunk.value().chunk.empty()) return data;
    }
  }
};

TEST_F(pushed_plugins, an_admin_push_in_chunks_is_stored_listed_published_and_fetched) {
  start(config());
  const auto data = file_bytes(push_plugin_chunk_bytes * 2 + 12345, 3);
  const auto plugin = metadata_of("wishlist", data);
  const auto reply = push(connect_as("admin"), plugin, data);
  ASSERT_TRUE(reply.ok()) << reply.error << ": " << reply.message;
  auto stored = unpack_bytes<stored_plugin>(reply.payload);
  ASSERT_TRUE(stored.has_value());
  EXPECT_EQ(stored.value().sha256, plugin.sha256);
  EXPECT_GT(stored.value().pushed_at_ms, 0);

  const auto list = listed();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list.front().name, "wishlist");
  EXPECT_EQ(list.front().size_bytes, data.size());
  EXPECT_EQ(list.front().entity_types, std::vector<std::string>{"Wishlist"});
  const auto snapshot = manager_->snapshot();
  ASSERT_EQ(snapshot.pushed_plugins.size(), 1u);
  EXPECT_EQ(snapshot.pushed_plugins.front().sha256, plugin.sha256);

  auto fetched = fetch_all(plugin.sha256, 100000);
  ASSERT_TRUE(fetched.has_value()) << fetched.error().message;
  EXPECT_EQ(fetched.value(), data);
  // Asking for more than a chunk gets a chunk.
  auto big = fetch_all(plugin.sha256, 0xffffffffu);
  ASSERT_TRUE(big.has_value()) << big.error().message;
  EXPECT_EQ(big.value(), data);
}

TEST_F(pushed_plugins, a_push_of_the_same_name_replaces_and_remove_forgets_it) {
  start(config());
  auto admin = connect_as("admin");
  const auto v1 = file_bytes(5000, 1);
  const auto v2 = file_bytes(6000, 2);
  ASSERT_TRUE(push(admin, metadata_of("wishlist", v1, "1.0.0"), v1).ok());
  ASSERT_TRUE(push(admin, metadata_of("wishlist", v2, "2.0.0"), v2).ok());
  auto list = listed();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list.front().version, "2.0.0");
  EXPECT_FALSE(fetch_all(security::sha256_hex(v1), 4096).has_value());

  const auto unknown = call(admin, message_kind::remove_plugin, remove_plugin_msg{"nope"});
  EXPECT_EQ(unknown.code, errc::invalid_request);
  EXPECT_EQ(unknown.message, "no stored plugin is named 'nope'");
  const auto removed = call(admin, message_kind::remove_plugin, remove_plugin_msg{"wishlist"});
  ASSERT_TRUE(removed.ok()) << removed.message;
  EXPECT_TRUE(listed().empty());
  EXPECT_TRUE(manager_->snapshot().pushed_plugins.empty());
}

TEST_F(pushed_plugins, only_an_admin_pushes_or_removes_and_only_runners_and_admins_fetch) {
  start(config());
  const auto data = file_bytes(1000, 5);
  for (const char* role : {"client", "runner", "proxy"}) {
    const auto reply = push(connect_as(role), metadata_of("wishlist", data), data);
    EXPECT_EQ(reply.code, errc::forbidden) << role;
    const auto removed =
        call(connect_as(role), message_kind::remove_plugin, remove_plugin_msg{"wishlist"});
    EXPECT_EQ(removed.code, errc::forbidden) << role;
  }
  EXPECT_TRUE(listed().empty());
  ASSERT_TRUE(push(connect_as("admin"), metadata_of("wishlist", data), data).ok());
  const auto by_client = call(connect_as("client"), message_kind::fetch_plugin,
                              fetch_plugin_msg{security::sha256_hex(data), 0, 1000});
  EXPECT_EQ(by_client.code, errc::forbidden);
}

TEST_F(pushed_plugins, a_corrupted_upload_is_refused_and_stores_nothing) {
  start(config());
  auto admin = connect_as("admin");
  const auto data = file_bytes(300000, 9);
  auto plugin = metadata_of("wishlist", data);
  auto corrupted = data;
  corrupted[123456] ^= 0x01;
  const auto reply = push(admin, plugin, corrupted, 100000);
  EXPECT_EQ(reply.code, errc::invalid_request);
  EXPECT_NE(reply.message.find("not the " + plugin.sha256 + " it claims; nothing is stored"),
            std::string::npos)
      << reply.message;
  EXPECT_TRUE(listed().empty());
  EXPECT_TRUE(manager_->snapshot().pushed_plugins.empty());
  EXPECT_TRUE(admin->is_open());
}

TEST_F(pushed_plugins, chunks_must_be_contiguous_and_within_the_bounds) {
  auto limited = config();
  limited.limits.max_plugin_bytes = 10000;
  limited.limits.max_plugin_total_bytes = 15000;
  start(limited);
  auto admin = connect_as("admin");
  const auto data = file_bytes(8000, 4);
  push_plugin_msg msg;
  msg.plugin = metadata_of("wishlist", data);
  msg.offset = 4000;
  msg.chunk.assign(data.begin(), data.begin() + 4000);
  auto reply = call(admin, message_kind::push_plugin, msg);
  EXPECT_EQ(reply.message,
            "no upload is in progress on this connection: the first chunk has offset 0");
  msg.offset = 0;
  ASSERT_TRUE(call(admin, message_kind::push_plugin, msg).ok());
  msg.offset = 5000;  // a gap
  reply = call(admin, message_kind::push_plugin, msg);
  EXPECT_EQ(reply.message, "a chunk at offset 5000, expected 4000: chunks go in order");
  // The refused chunk ended the upload.
  msg.offset = 4000;
  reply = call(admin, message_kind::push_plugin, msg);
  EXPECT_EQ(reply.code, errc::invalid_request);

  const auto big = file_bytes(10001, 1);
  reply = push(admin, metadata_of("big", big), big);
  EXPECT_EQ(reply.message,
            "the plugin is 10001 bytes; at most 10000 are allowed (manager.max_plugin_bytes)");
  ASSERT_TRUE(push(admin, metadata_of("wishlist", data), data).ok());
  reply = push(admin, metadata_of("cart", data), data);
  EXPECT_NE(reply.message.find("more than the 15000 allowed (manager.max_plugin_total_bytes)"),
            std::string::npos)
      << reply.message;
  auto bad_name = metadata_of("../evil", data);
  reply = push(admin, bad_name, data);
  EXPECT_NE(reply.message.find("is not 1-128 letters, digits"), std::string::npos) << reply.message;
  ASSERT_EQ(listed().size(), 1u);
}

TEST_F(pushed_plugins, an_upload_cut_short_by_its_connection_stores_nothing) {
  start(config());
  const auto data = file_bytes(8000, 4);
  {
    auto admin = connect_as("admin");
    push_plugin_msg msg;
    msg.plugin = metadata_of("wishlist", data);
    msg.chunk.assign(data.begin(), data.begin() + 4000);
    ASSERT_TRUE(call(admin, message_kind::push_plugin, msg).ok());
    admin->close();
  }
  run_until(
      io_, [] { return false; }, 100ms);
  EXPECT_TRUE(listed().empty());
}

TEST_F(pushed_plugins, stored_plugins_come_back_at_start_unless_their_bytes_do_not_match) {
  auto store = std::make_unique<memory_manager_store>();
  const auto good = file_bytes(5000, 1);
  store->save_plugin({metadata_of("good", good), std::make_shared<const bytes>(good)});
  auto bad = file_bytes(5000, 2);
  auto bad_meta = metadata_of("bad", bad);
  bad[0] ^= 1;
  store->save_plugin({bad_meta, std::make_shared<const bytes>(bad)});
  start(config(), std::move(store));
  const auto list = listed();
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list.front().name, "good");
}

TEST_F(pushed_plugins, the_fetcher_writes_what_is_pushed_and_deletes_what_is_removed) {
  start(config());
  const auto cache =
      std::filesystem::temp_directory_path() /
      ("plugin-fetcher-" + std::to_string(::getpid()) + "-" + std::to_string(manager_->port()));
  std::filesystem::remove_all(cache);
  // Left by an earlier life of the runner: the cluster no longer stores it.
  std::filesystem::create_directories(cache / "pushed");
  std::ofstream(cache / "pushed" / "stale.so") << "old";
  host::plugin_fetcher_options options;
  options.cache_dir = cache;
  options.manager = *parse_host_port(address());
  options.hello = hello_msg{protocol_version, "runner", "fetcher-test"};
  options.retry_min = 20ms;
  options.retry_max = 100ms;
  host::plugin_fetcher fetcher(io_, options);

  auto admin = connect_as("admin");
  const auto v1 = file_bytes(push_plugin_chunk_bytes + 100, 1);
  ASSERT_TRUE(push(admin, metadata_of("wishlist", v1, "1.0.0"), v1).ok());
  fetcher.update(manager_->snapshot().pushed_plugins);
  const auto file = cache / "pushed" / "wishlist.so";
  const std::string v1_text(v1.begin(), v1.end());
  ASSERT_TRUE(run_until(io_, [&] { return read_file(file) == v1_text; }));
  EXPECT_FALSE(std::filesystem::exists(cache / "pushed" / "stale.so"));
  EXPECT_FALSE(std::filesystem::exists(cache / "incoming" / "wishlist.tmp"));

  // A new version replaces the file; a snapshot that changes nothing fetches nothing.
  const auto v2 = file_bytes(3000, 2);
  ASSERT_TRUE(push(admin, metadata_of("wishlist", v2, "2.0.0"), v2).ok());
  fetcher.update(manager_->snapshot().pushed_plugins);
  const std::string v2_text(v2.begin(), v2.end());
  ASSERT_TRUE(run_until(io_, [&] { return read_file(file) == v2_text; }));
  fetcher.update(manager_->snapshot().pushed_plugins);
  run_until(
      io_, [] { return false; }, 50ms);
  EXPECT_EQ(fetcher.fetched(), 2u);

  ASSERT_TRUE(call(admin, message_kind::remove_plugin, remove_plugin_msg{"wishlist"}).ok());
  fetcher.update(manager_->snapshot().pushed_plugins);
  ASSERT_TRUE(run_until(io_, [&] { return !std::filesystem::exists(file); }));
  fetcher.stop();
  std::filesystem::remove_all(cache);
}

TEST_F(pushed_plugins, the_fetcher_retries_until_the_manager_has_the_bytes_it_was_told_of) {
  start(config());
  const auto cache = std::filesystem::temp_directory_path() /
                     ("plugin-fetcher-retry-" + std::to_string(::getpid()) + "-" +
                      std::to_string(manager_->port()));
  std::filesystem::remove_all(cache);
  host::plugin_fetcher_options options;
  options.cache_dir = cache;
  options.manager = *parse_host_port(address());
  options.hello = hello_msg{protocol_version, "runner", "fetcher-test"};
  options.retry_min = 20ms;
  options.retry_max = 50ms;
  host::plugin_fetcher fetcher(io_, options);
  // A snapshot names a plugin the manager does not hold (yet): the fetcher fails and retries.
  const auto data = file_bytes(4000, 7);
  fetcher.update({metadata_of("wishlist", data)});
  ASSERT_TRUE(run_until(io_, [&] { return !fetcher.last_error().empty(); }));
  EXPECT_NE(fetcher.last_error().find("no stored plugin has sha256"), std::string::npos)
      << fetcher.last_error();
  ASSERT_TRUE(push(connect_as("admin"), metadata_of("wishlist", data), data).ok());
  ASSERT_TRUE(run_until(io_, [&] { return fetcher.fetched() == 1; }));
  EXPECT_TRUE(fetcher.last_error().empty());
  fetcher.stop();
  std::filesystem::remove_all(cache);
}

}  // namespace
}  // namespace cluster::testing
