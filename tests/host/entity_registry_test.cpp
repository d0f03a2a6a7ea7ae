// Plugin loading: the ABI's version and size rules, each rejection reason, and what the
// registry keeps of a plugin.
#include "cluster/host/entity_registry.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "cluster/security/digest.hpp"
#include "cluster_fixture.hpp"
#include "log_capture.hpp"

namespace cluster::host {
namespace {

using cluster::testing::test_plugin;

std::string load_error(const std::string& file) {
  entity_registry registry;
  auto loaded = registry.load_file(file);
  return loaded ? std::string() : loaded.error().message;
}

TEST(entity_registry, loads_the_example_plugins_with_their_rpcs) {
  entity_registry registry;
  EXPECT_TRUE(registry.load({CLUSTER_PLUGIN_DIR}).empty());
  const auto* greeter = registry.find("Greeter");
  ASSERT_NE(greeter, nullptr);
  EXPECT_EQ(greeter->info.group, "default");
  ASSERT_EQ(greeter->info.rpcs.size(), 3u);
  EXPECT_TRUE(greeter->info.find_rpc("Greet")->persisted);
  EXPECT_FALSE(greeter->info.find_rpc("GreetVolatile")->persisted);
  EXPECT_TRUE(greeter->info.find_rpc("GreetMany")->stream);
  EXPECT_FALSE(greeter->info.find_rpc("GreetMany")->persisted);
  EXPECT_TRUE(greeter->streams(*greeter->rpc_index("GreetMany")));
  EXPECT_TRUE(greeter->persisted(*greeter->rpc_index("Greet")));
  EXPECT_FALSE(greeter->persisted(*greeter->rpc_index("GreetVolatile")));
  EXPECT_EQ(greeter->plugin_name, "greeter");
  EXPECT_EQ(greeter->plugin_version, "1.1.0");
  EXPECT_NE(registry.find("Counter"), nullptr);
  EXPECT_NE(registry.find("Calculator"), nullptr);
  EXPECT_EQ(registry.find("Nope"), nullptr);
}

TEST(entity_registry, logs_each_loaded_plugin_with_its_version) {
  cluster::testing::log_capture log;
  entity_registry registry;
  ASSERT_TRUE(registry.load_file(test_plugin("shared_class_plugin")));
  EXPECT_NE(log.text().find("loaded plugin twins 1.2.0 from " + test_plugin("shared_class_plugin") +
                            ": LeftTwin, RightTwin"),
            std::string::npos)
      << log.text();
}

TEST(entity_registry, reads_the_version_and_groups_and_flags_of_each_type) {
  entity_registry registry;
  ASSERT_TRUE(registry.load_file(test_plugin("shared_class_plugin")));
  ASSERT_TRUE(registry.load_file(test_plugin("probe_plugin")));
  const auto* left = registry.find("LeftTwin");
  const auto* right = registry.find("RightTwin");
  ASSERT_NE(left, nullptr);
  ASSERT_NE(right, nullptr);
  EXPECT_EQ(left->plugin_version, "1.2.0");
  EXPECT_EQ(left->info.group, "default");
  EXPECT_EQ(right->info.group, "twins");
  EXPECT_EQ(left->rpc_index("Who"), 0u);
  EXPECT_EQ(right->rpc_index("Who"), 1u);
  EXPECT_FALSE(left->persisted(0));
  EXPECT_TRUE(right->persisted(1));
  // Each type keeps its own type_data: the SDK dispatches through it.
  EXPECT_NE(left->descriptor.type_data, nullptr);
  EXPECT_NE(left->descriptor.type_data, right->descriptor.type_data);
  // A plugin that names no version is "0.0.0".
  EXPECT_EQ(registry.find("Probe")->plugin_version, "0.0.0");
}

TEST(entity_registry, loads_a_plugin_built_against_an_older_minor_with_defaults) {
  entity_registry registry;
  const auto loaded = registry.load_file(test_plugin("old_minor_plugin"));
  ASSERT_TRUE(loaded) << loaded.error().message;
  const auto* elder = registry.find("Elder");
  ASSERT_NE(elder, nullptr);
  // The bytes past each struct_size hold garbage: the registry must not have read them.
  EXPECT_EQ(elder->plugin_version, "0.0.0");
  EXPECT_EQ(elder->descriptor.type_data, nullptr);
  EXPECT_EQ(elder->plugin_name, "elder");
  EXPECT_EQ(elder->info.group, "default");
  ASSERT_EQ(elder->info.rpcs.size(), 1u);
  EXPECT_EQ(elder->info.rpcs[0].name, "Ping");
  // The 2.1 options lie past its struct_size: all of them the runner's defaults.
  EXPECT_EQ(elder->info.options, entity_options{});
  EXPECT_FALSE(elder->info.rpcs[0].read_only);
}

TEST(entity_registry, reads_the_options_of_each_type_and_its_read_only_rpcs) {
  entity_registry registry;
  const auto loaded = registry.load_file(test_plugin("tuned_plugin"));
  ASSERT_TRUE(loaded) << loaded.error().message;
  const auto* tuned = registry.find("Tuned");
  ASSERT_NE(tuned, nullptr);
  EXPECT_EQ(tuned->info.options.flags, CLUSTER_ENTITY_KEEP_ALIVE);
  EXPECT_TRUE(tuned->has_flag(CLUSTER_ENTITY_KEEP_ALIVE));
  EXPECT_EQ(tuned->info.options.max_idle_ms, 250);
  EXPECT_EQ(tuned->info.options.mailbox_capacity, 3u);
  EXPECT_EQ(tuned->info.options.concurrency, 4u);
  EXPECT_TRUE(tuned->info.find_rpc("Read")->read_only);
  EXPECT_FALSE(tuned->info.find_rpc("Read")->persisted);
  EXPECT_FALSE(tuned->info.find_rpc("Write")->read_only);
  EXPECT_TRUE(tuned->info.find_rpc("Note")->read_only);
  EXPECT_TRUE(tuned->info.find_rpc("Note")->persisted);
  EXPECT_TRUE(tuned->read_only(*tuned->rpc_index("Read")));
  EXPECT_FALSE(tuned->read_only(*tuned->rpc_index("Write")));
  // The runner keeps no pointer into the plugin's text.
  EXPECT_EQ(tuned->descriptor.cron_schedule, nullptr);
  EXPECT_EQ(registry.find("Plain")->info.options, entity_options{});
}

TEST(entity_registry, refuses_a_type_whose_option_is_past_its_bound_naming_the_field) {
  const auto error = load_error(test_plugin("absurd_options_plugin"));
  EXPECT_NE(error.find("entity type 'Greedy'"), std::string::npos) << error;
  EXPECT_NE(error.find("mailbox_capacity 1073741824"), std::string::npos) << error;
}

TEST(entity_registry, checks_options_drops_unknown_flags_and_keeps_singletons_alive) {
  entity_options options;
  options.flags = CLUSTER_ENTITY_SINGLETON | (1u << 20);
  auto checked = check_entity_options(options, "entity type 'T'");
  ASSERT_TRUE(checked);
  EXPECT_EQ(checked.value().flags, CLUSTER_ENTITY_SINGLETON | CLUSTER_ENTITY_KEEP_ALIVE);
  options.flags = CLUSTER_ENTITY_SINGLETON | CLUSTER_ENTITY_CRON;
  EXPECT_FALSE(check_entity_options(options, "entity type 'T'"));
  const auto refusal = [](entity_options o) {
    auto r = check_entity_options(o, "entity type 'T'");
    return r ? std::string() : r.error().message;
  };
  entity_options idle;
  idle.max_idle_ms = -1;
  EXPECT_NE(refusal(idle).find("max_idle_ms -1"), std::string::npos);
  entity_options wide;
  wide.concurrency = 5000;
  EXPECT_NE(refusal(wide).find("concurrency 5000"), std::string::npos);
  entity_options missed;
  missed.cron_missed = 7;
  EXPECT_NE(refusal(missed).find("cron_missed 7"), std::string::npos);
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
  EXPECT_EQ(load_error(test_plugin("newer_minor_plugin")),
            "ABI version 2.3 is newer than this runner's 2.2");
}

TEST(entity_registry, refuses_an_entry_that_throws_with_the_exceptions_message) {
  EXPECT_EQ(load_error(test_plugin("throwing_entry_plugin")),
            "entry failed: the plugin's settings file is missing");
}

TEST(entity_registry, refuses_an_entry_that_returns_no_descriptor) {
  EXPECT_EQ(load_error(test_plugin("null_descriptor_plugin")), "entry returned no descriptor");
}

TEST(entity_registry, refuses_a_descriptor_whose_size_does_not_fit_the_abi) {
  EXPECT_NE(load_error(test_plugin("garbage_descriptor_plugin")).find("claims 4096 bytes"),
            std::string::npos);
}

TEST(entity_registry, refuses_at_load_a_plugin_that_needs_a_missing_symbol) {
  const auto error = load_error(test_plugin("unresolved_symbol_plugin"));
  EXPECT_NE(error.find("not a loadable plugin"), std::string::npos) << error;
  EXPECT_NE(error.find("cluster_test_symbol_that_does_not_exist"), std::string::npos) << error;
}

TEST(entity_registry, refuses_a_missing_file) {
  EXPECT_EQ(load_error("/nonexistent/libnothing.so"), "no such file");
}

TEST(entity_registry, refuses_a_duplicate_entity_type_and_keeps_the_first) {
  entity_registry registry;
  EXPECT_TRUE(registry.load_file(test_plugin("probe_plugin")));
  const auto loaded = registry.load_file(test_plugin("duplicate_probe_plugin"));
  ASSERT_FALSE(loaded);
  EXPECT_NE(loaded.error().message.find("entity type 'Probe' is already provided by"),
            std::string::npos);
  ASSERT_NE(registry.find("Probe"), nullptr);
  EXPECT_TRUE(registry.find("Probe")->rpc_index("Append").has_value());
  EXPECT_FALSE(registry.find("Probe")->rpc_index("Ping").has_value());
}

TEST(entity_registry, loads_the_good_plugins_of_a_folder_and_names_each_bad_file) {
  entity_registry registry;
  const auto errors = registry.load({CLUSTER_TEST_PLUGIN_DIR});
  // One line per bad file, each naming it; the folder's good plugins all load.
  const std::vector<std::string> refused = {
      "libabsurd_options_plugin.so", "libgarbage_descriptor_plugin.so",
      "libmissing_entry_plugin.so",  "libnewer_minor_plugin.so",
      "libnot_a_plugin.so",          "libnull_descriptor_plugin.so",
      "libprobe_plugin.so",  // Probe came from the duplicate
      "libthrowing_entry_plugin.so", "libunresolved_symbol_plugin.so",
      "libwrong_abi_plugin.so"};
  ASSERT_EQ(errors.size(), refused.size());
  for (std::size_t i = 0; i < errors.size(); ++i)
    EXPECT_EQ(errors[i].rfind(std::string(CLUSTER_TEST_PLUGIN_DIR) + "/" + refused[i] + ": ", 0),
              0u)
        << errors[i];
  for (const char* type : {"Probe", "Fragile", "Elder", "LeftTwin", "RightTwin", "Chatty",
                           "EagerCaller", "Tuned", "Plain"})
    EXPECT_NE(registry.find(type), nullptr) << type;
}

// --- plugin files while the runner serves ------------------------------------------------

/// A temp folder of a test, removed with it.
struct scratch_dir {
  std::filesystem::path path;
  scratch_dir() {
    char pattern[] = "/tmp/registry-test-XXXXXX";
    path = ::mkdtemp(pattern);
  }
  ~scratch_dir() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
};

std::string versioned(int major) {
  return std::string(CLUSTER_VERSIONED_PLUGIN_DIR) + "/libversioned_v" + std::to_string(major) +
         "_plugin.so";
}

result<void> update_now(entity_registry& registry, const std::filesystem::path& file) {
  std::optional<result<void>> outcome;
  registry.update(file, [&](result<void> r) { outcome = std::move(r); });
  // In this process the update is done when `update` returns.
  if (!outcome) return failure{errc::unavailable, "update did not finish"};
  return *outcome;
}

TEST(entity_registry, loads_a_copy_named_by_the_hash_of_its_bytes) {
  scratch_dir dir;
  entity_registry registry;
  ASSERT_TRUE(registry.copy_plugins_to(dir.path / "loaded"));
  const auto file = dir.path / "libversioned.so";
  std::filesystem::copy_file(versioned(1), file);
  ASSERT_TRUE(registry.load_file(file));
  const auto sha = security::sha256_file(file).value();
  const auto plugins = registry.plugins();
  ASSERT_EQ(plugins.size(), 1u);
  EXPECT_EQ(plugins[0].sha256, sha);
  EXPECT_EQ(plugins[0].file, file.string());
  EXPECT_EQ(plugins[0].state, "loaded");
  EXPECT_EQ(plugins[0].version, "1.0.0");
  EXPECT_EQ(plugins[0].entity_types, (std::vector<std::string>{"Versioned", "OnlyInV1"}));
  EXPECT_TRUE(std::filesystem::exists(dir.path / "loaded" / (sha + ".so")));
  // The same bytes again: nothing is reloaded.
  const auto* type = registry.find("Versioned");
  ASSERT_TRUE(update_now(registry, file));
  EXPECT_EQ(registry.find("Versioned"), type);
}

TEST(entity_registry, keeps_a_replaced_version_until_its_last_type_reference_goes) {
  scratch_dir dir;
  cluster::testing::log_capture log;
  entity_registry registry;
  ASSERT_TRUE(registry.copy_plugins_to(dir.path / "loaded"));
  int retired = 0;
  registry.on_types_retired = [&] { ++retired; };
  const auto file = dir.path / "libversioned.so";
  std::filesystem::copy_file(versioned(1), file);
  ASSERT_TRUE(registry.load_file(file));
  auto held = registry.find_shared("Versioned");  // as an entity instance holds it
  const auto v1_copy = dir.path / "loaded" / (held->origin->sha256 + ".so");
  std::filesystem::copy_file(versioned(2), file, std::filesystem::copy_options::overwrite_existing);
  ASSERT_TRUE(update_now(registry, file));
  EXPECT_EQ(retired, 1);
  EXPECT_TRUE(held->retired);
  EXPECT_EQ(registry.find("Versioned")->plugin_version, "2.0.0");
  EXPECT_EQ(registry.find("OnlyInV1"), nullptr);
  EXPECT_NE(registry.find("OnlyInV2"), nullptr);
  auto plugins = registry.plugins();
  ASSERT_EQ(plugins.size(), 2u);
  EXPECT_EQ(plugins[0].state, "loaded");
  EXPECT_EQ(plugins[0].version, "2.0.0");
  EXPECT_EQ(plugins[1].state, "draining");
  EXPECT_EQ(plugins[1].version, "1.0.0");
  EXPECT_TRUE(std::filesystem::exists(v1_copy));
  EXPECT_EQ(log.text().find("unloaded plugin versioned 1.0.0"), std::string::npos);
  held.reset();  // the last instance of v1 is gone
  EXPECT_NE(log.text().find("unloaded plugin versioned 1.0.0"), std::string::npos) << log.text();
  EXPECT_FALSE(std::filesystem::exists(v1_copy));
  EXPECT_EQ(registry.plugins().size(), 1u);
}

TEST(entity_registry, refuses_a_file_declaring_a_type_another_file_provides) {
  scratch_dir dir;
  entity_registry registry;
  ASSERT_TRUE(registry.copy_plugins_to(dir.path / "loaded"));
  std::filesystem::copy_file(versioned(1), dir.path / "liba.so");
  std::filesystem::copy_file(versioned(2), dir.path / "libb.so");
  ASSERT_TRUE(update_now(registry, dir.path / "liba.so"));
  const auto refused = update_now(registry, dir.path / "libb.so");
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().message,
            "entity type 'Versioned' is already provided by " + (dir.path / "liba.so").string());
  EXPECT_EQ(registry.find("Versioned")->plugin_version, "1.0.0");
  EXPECT_EQ(registry.find("OnlyInV2"), nullptr);
  const auto plugins = registry.plugins();
  ASSERT_EQ(plugins.size(), 2u);
  EXPECT_EQ(plugins[1].file, (dir.path / "libb.so").string());
  EXPECT_EQ(plugins[1].state, "failed");
  EXPECT_EQ(plugins[1].error, refused.error().message);
  // Its copy is not kept: nothing loaded it.
  std::size_t copies = 0;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path / "loaded"))
    copies += entry.path().extension() == ".so" ? 1 : 0;
  EXPECT_EQ(copies, 1u);
}

TEST(entity_registry, unregisters_the_types_of_a_removed_file_and_lists_pushed_ones_by_name) {
  scratch_dir dir;
  entity_registry registry;
  ASSERT_TRUE(registry.copy_plugins_to(dir.path / "loaded"));
  registry.set_pushed_dir(dir.path / "pushed");
  std::filesystem::create_directories(dir.path / "pushed");
  const auto file = dir.path / "pushed" / "versioned.so";
  std::filesystem::copy_file(versioned(1), file);
  ASSERT_TRUE(update_now(registry, file));
  ASSERT_EQ(registry.plugins().size(), 1u);
  EXPECT_EQ(registry.plugins()[0].file, "push:versioned");
  std::filesystem::remove(file);
  EXPECT_TRUE(registry.remove(file));
  EXPECT_EQ(registry.find("Versioned"), nullptr);
  EXPECT_TRUE(registry.empty());
  EXPECT_TRUE(registry.plugins().empty());
  EXPECT_FALSE(registry.remove(file));
}

}  // namespace
}  // namespace cluster::host
