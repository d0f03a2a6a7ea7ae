// TOML configuration: defaults, file, SST links, environment, --set, strict keys
// (common/include/cluster/process/config.hpp).

#include "cluster/process/config.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "cluster/process/ecs_metadata.hpp"
#include "cluster/process/settings.hpp"

namespace {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

// A unique directory under the system temp dir, removed with everything in it.
class temp_dir {
 public:
  temp_dir() {
    static std::atomic<int> counter{0};
    path_ = fs::temp_directory_path() /
            ("cluster-config-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~temp_dir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  temp_dir(const temp_dir&) = delete;
  temp_dir& operator=(const temp_dir&) = delete;

  std::string write(const std::string& name, const std::string& text) const {
    const auto file = path_ / name;
    std::ofstream(file) << text;
    return file.string();
  }

 private:
  fs::path path_;
};

// One value of every supported type, with recognisable defaults.
struct settings {
  std::string name = "default-name";
  std::int64_t count = -1;
  std::uint16_t port = 7000;
  std::uint32_t shards = 300;
  bool enabled = false;
  std::vector<std::string> groups = {"default"};
  std::chrono::milliseconds timeout = 1500ms;
  std::string log_level = "info";
  std::map<std::string, std::string> aliases;

  std::vector<cluster::config_section> sections() {
    std::vector<cluster::config_section> result;
    result.emplace_back("runner");
    result.back()
        .key("name", &name)
        .key("count", &count)
        .key("port", &port)
        .key("shards", &shards)
        .key("enabled", &enabled)
        .key("groups", &groups)
        .key("timeout_ms", &timeout)
        .key("aliases", &aliases);
    result.emplace_back("log");
    result.back().key("level", &log_level);
    return result;
  }
};

const std::vector<std::string> known = {"cluster", "runner", "log", "manager"};

// An environment with only the given variables.
std::function<const char*(const char*)> fake_env(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  };
}

cluster::config_sources sources_for(const std::string& file,
                                    std::map<std::string, std::string> env = {}) {
  cluster::config_sources sources;
  sources.file = file;
  std::vector<std::string> names;
  for (const auto& [name, value] : env) names.push_back(name);
  sources.env_names = [names] { return names; };
  sources.getenv = fake_env(std::move(env));
  return sources;
}

void load(settings& s, const cluster::config_sources& sources) {
  auto sections = s.sections();
  const auto loaded = cluster::load_config(sources, sections, known);
  ASSERT_TRUE(loaded.has_value()) << loaded.error().message;
}

// The message of the failure loading returns; fails the test if loading succeeds.
std::string load_error(const cluster::config_sources& sources) {
  settings s;
  auto sections = s.sections();
  const auto loaded = cluster::load_config(sources, sections, known);
  if (loaded.has_value()) {
    ADD_FAILURE() << "expected a failure";
    return {};
  }
  EXPECT_EQ(loaded.error().code, cluster::errc::invalid_request);
  return loaded.error().message;
}

// argv for parse_command_line, which wants mutable strings.
struct args {
  explicit args(std::vector<std::string> words) : storage(std::move(words)) {
    for (auto& w : storage) pointers.push_back(w.data());
  }
  int argc() const { return static_cast<int>(pointers.size()); }
  char** argv() { return pointers.data(); }
  std::vector<std::string> storage;
  std::vector<char*> pointers;
};

}  // namespace

TEST(config, keeps_defaults_for_keys_the_file_does_not_set) {
  temp_dir dir;
  const auto file = dir.write("cluster.toml", "[runner]\nname = \"only-the-name\"\n");
  settings s;
  load(s, sources_for(file));
  EXPECT_EQ(s.name, "only-the-name");
  EXPECT_EQ(s.count, -1);
  EXPECT_EQ(s.port, 7000);
  EXPECT_EQ(s.shards, 300u);
  EXPECT_FALSE(s.enabled);
  EXPECT_EQ(s.groups, (std::vector<std::string>{"default"}));
  EXPECT_EQ(s.timeout, 1500ms);
  EXPECT_EQ(s.log_level, "info");
}

TEST(config, keeps_every_default_without_a_file) {
  settings s;
  load(s, sources_for(""));
  EXPECT_EQ(s.name, "default-name");
  EXPECT_EQ(s.port, 7000);
  EXPECT_EQ(s.timeout, 1500ms);
}

TEST(config, applies_file_values_of_every_type) {
  temp_dir dir;
  const auto file = dir.write("cluster.toml", R"(
[runner]
name = "runner-7"
count = -9000000000
port = 65535
shards = 4294967295
enabled = true
groups = ["a", "b", "c"]
timeout_ms = 250

[log]
level = "debug"
)");
  settings s;
  load(s, sources_for(file));
  EXPECT_EQ(s.name, "runner-7");
  EXPECT_EQ(s.count, -9'000'000'000);
  EXPECT_EQ(s.port, 65535);
  EXPECT_EQ(s.shards, 4294967295u);
  EXPECT_TRUE(s.enabled);
  EXPECT_EQ(s.groups, (std::vector<std::string>{"a", "b", "c"}));
  EXPECT_EQ(s.timeout, 250ms);
  EXPECT_EQ(s.log_level, "debug");
}

TEST(config, lets_the_environment_override_the_file) {
  temp_dir dir;
  const auto file = dir.write("cluster.toml", R"(
[runner]
name = "from-file"
port = 7100
enabled = true
timeout_ms = 250
)");
  settings s;
  load(s, sources_for(file, {{"CLUSTER_RUNNER_NAME", "from-env"},
                             {"CLUSTER_RUNNER_PORT", "7200"},
                             {"CLUSTER_RUNNER_ENABLED", "false"},
                             {"CLUSTER_RUNNER_TIMEOUT_MS", "900"},
                             {"CLUSTER_LOG_LEVEL", "warn"},
                             {"CLUSTER_RUNNER_SHARDS", "12"},
                             {"CLUSTER_RUNNER_COUNT", "-5"}}));
  EXPECT_EQ(s.name, "from-env");
  EXPECT_EQ(s.port, 7200);
  EXPECT_FALSE(s.enabled);
  EXPECT_EQ(s.timeout, 900ms);
  EXPECT_EQ(s.log_level, "warn");
  EXPECT_EQ(s.shards, 12u);
  EXPECT_EQ(s.count, -5);
}

TEST(config, lets_set_override_the_environment_and_links_override_the_file) {
  temp_dir dir;
  const auto file = dir.write("cluster.toml", "[runner]\nname = \"from-file\"\nport = 7100\n");
  auto sources = sources_for(file, {{"CLUSTER_RUNNER_NAME", "from-env"}});
  sources.links = {"runner.port=7300", "runner.name=from-link", "proxy.port=1",
                   "runner.not_declared=1"};
  sources.sets = {"runner.name=from-set", "log.level=a=b"};
  settings s;
  load(s, sources);
  EXPECT_EQ(s.name, "from-set");
  EXPECT_EQ(s.port, 7300);  // link beats the file, nothing later sets it
  EXPECT_EQ(s.log_level, "a=b");
}

// A section of tables, as the runner's [entity.<Type>]: optional fields, set only when given.
struct table_settings {
  struct entry {
    std::optional<std::int64_t> max_idle_ms;
    std::optional<bool> keep_alive;
    cluster::config_section section{"entity"};
  };
  std::map<std::string, entry> entries;

  std::vector<cluster::config_section> sections() {
    std::vector<cluster::config_section> result;
    result.emplace_back("entity");
    result.back().tables(
        {"max_idle_ms", "keep_alive"}, [this](const std::string& name) -> cluster::config_section& {
          auto& e = entries[name];
          e.section = cluster::config_section("entity");
          e.section.key("max_idle_ms", &e.max_idle_ms).key("keep_alive", &e.keep_alive);
          return e.section;
        });
    return result;
  }
};

TEST(config, reads_named_tables_from_the_file_the_environment_and_set_in_that_order) {
  temp_dir dir;
  const auto file = dir.write("cluster.toml", R"(
[entity.Counter]
max_idle_ms = 100
keep_alive = true

[entity.Cart]
keep_alive = false
)");
  auto sources = sources_for(file, {{"CLUSTER_ENTITY_COUNTER_MAX_IDLE_MS", "200"},
                                    {"CLUSTER_ENTITY_MY_TYPE_KEEP_ALIVE", "true"},
                                    {"CLUSTER_ENTITY_NOTHING", "1"}});
  sources.sets = {"entity.Cart.max_idle_ms=300"};
  table_settings s;
  auto sections = s.sections();
  const auto loaded =
      cluster::load_config(sources, sections, std::vector<std::string>{"entity", "runner"});
  ASSERT_TRUE(loaded) << loaded.error().message;
  // The file's names as written; the environment's in upper case.
  ASSERT_EQ(s.entries.count("Counter"), 1u);
  EXPECT_EQ(s.entries["Counter"].max_idle_ms, 100);
  EXPECT_EQ(s.entries["Counter"].keep_alive, true);
  EXPECT_EQ(s.entries["COUNTER"].max_idle_ms, 200);
  EXPECT_FALSE(s.entries["COUNTER"].keep_alive.has_value());
  EXPECT_EQ(s.entries["Cart"].keep_alive, false);
  EXPECT_EQ(s.entries["Cart"].max_idle_ms, 300);
  EXPECT_EQ(s.entries["MY_TYPE"].keep_alive, true);
  EXPECT_EQ(s.entries.count("NOTHING"), 0u);
}

TEST(config, rejects_an_unknown_key_or_a_bad_value_in_a_named_table) {
  temp_dir dir;
  const auto run = [&](const std::string& text, std::vector<std::string> sets = {}) {
    auto sources = sources_for(dir.write("cluster.toml", text));
    sources.sets = std::move(sets);
    table_settings s;
    auto sections = s.sections();
    auto loaded = cluster::load_config(sources, sections, std::vector<std::string>{"entity"});
    return loaded ? std::string() : loaded.error().message;
  };
  EXPECT_NE(run("[entity.Counter]\nmax_idle = 1\n").find("entity.Counter.max_idle: unknown key"),
            std::string::npos);
  EXPECT_NE(run("[entity.Counter]\nkeep_alive = 1\n").find("expected true or false"),
            std::string::npos);
  EXPECT_NE(run("[entity]\nmax_idle_ms = 1\n").find("must be a [entity.max_idle_ms] table"),
            std::string::npos);
  EXPECT_NE(run("", {"entity.max_idle_ms=1"}).find("expected entity.<name>.key=value"),
            std::string::npos);
}

TEST(config, reads_a_table_of_strings_from_the_file_the_environment_and_set) {
  temp_dir dir;
  const auto file = dir.write("cluster.toml", "[runner.aliases]\nGreet = \"Greeter.Greet\"\n");
  settings from_file;
  load(from_file, sources_for(file));
  EXPECT_EQ(from_file.aliases, (std::map<std::string, std::string>{{"Greet", "Greeter.Greet"}}));

  // The environment replaces the table; --set adds one entry to it.
  auto sources = sources_for(file, {{"CLUSTER_RUNNER_ALIASES", "A=x.y,B=z.w"}});
  sources.sets = {"runner.aliases.C=c.d"};
  settings layered;
  load(layered, sources);
  EXPECT_EQ(layered.aliases,
            (std::map<std::string, std::string>{{"A", "x.y"}, {"B", "z.w"}, {"C", "c.d"}}));

  EXPECT_NE(
      load_error(sources_for("", {{"CLUSTER_RUNNER_ALIASES", "no-equals"}})).find("no-equals"),
      std::string::npos);
  const auto bad = dir.write("bad.toml", "[runner.aliases]\nGreet = 5\n");
  EXPECT_NE(load_error(sources_for(bad)).find("runner.aliases.Greet"), std::string::npos);
  auto unknown = sources_for("");
  unknown.sets = {"runner.name.x=1"};
  EXPECT_NE(load_error(unknown).find("unknown key"), std::string::npos);
}

TEST(config, splits_comma_lists_from_the_environment) {
  settings s;
  load(s, sources_for("", {{"CLUSTER_RUNNER_GROUPS", "alpha,beta,,gamma,"}}));
  EXPECT_EQ(s.groups, (std::vector<std::string>{"alpha", "beta", "gamma"}));

  settings empty;
  load(empty, sources_for("", {{"CLUSTER_RUNNER_GROUPS", ""}}));
  EXPECT_TRUE(empty.groups.empty());
}

TEST(config, rejects_an_unknown_key_naming_it) {
  temp_dir dir;
  const auto file = dir.write("cluster.toml", "[runner]\nname = \"x\"\nprot = 7100\n");
  const auto error = load_error(sources_for(file));
  EXPECT_NE(error.find("runner.prot"), std::string::npos) << error;
  EXPECT_NE(error.find("unknown key"), std::string::npos) << error;
}

TEST(config, rejects_an_unknown_section) {
  temp_dir dir;
  const auto file = dir.write("cluster.toml", "[runnr]\nname = \"x\"\n");
  const auto error = load_error(sources_for(file));
  EXPECT_NE(error.find("[runnr]"), std::string::npos) << error;
}

TEST(config, skips_known_sections_that_belong_to_another_process) {
  temp_dir dir;
  // [manager] is known but not declared here: its keys are the manager's business.
  const auto file = dir.write("cluster.toml", "[manager]\nwhatever = 1\n[runner]\nport = 1\n");
  settings s;
  load(s, sources_for(file));
  EXPECT_EQ(s.port, 1);
}

TEST(config, rejects_a_value_of_the_wrong_type_naming_the_key) {
  temp_dir dir;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"[runner]\ncount = \"12\"\n", "runner.count"},
      {"[runner]\nname = 12\n", "runner.name"},
      {"[runner]\nenabled = \"true\"\n", "runner.enabled"},
      {"[runner]\ngroups = \"a,b\"\n", "runner.groups"},
      {"[runner]\ngroups = [\"a\", 1]\n", "runner.groups"},
      {"[runner]\ntimeout_ms = 1.5\n", "runner.timeout_ms"},
  };
  for (const auto& [text, key] : cases) {
    const auto file = dir.write("wrong.toml", text);
    const auto error = load_error(sources_for(file));
    EXPECT_NE(error.find(key), std::string::npos) << text << " gave: " << error;
  }
}

TEST(config, rejects_out_of_range_numbers) {
  temp_dir dir;
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"[runner]\nport = 70000\n", "runner.port"},
      {"[runner]\nport = -1\n", "runner.port"},
      {"[runner]\nshards = 4294967296\n", "runner.shards"},
      {"[runner]\ntimeout_ms = -5\n", "runner.timeout_ms"},
  };
  for (const auto& [text, key] : cases) {
    const auto file = dir.write("range.toml", text);
    const auto error = load_error(sources_for(file));
    EXPECT_NE(error.find(key), std::string::npos) << text << " gave: " << error;
    EXPECT_NE(error.find("outside"), std::string::npos) << error;
  }
}

TEST(config, rejects_bad_values_from_the_environment_naming_the_variable) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"CLUSTER_RUNNER_PORT", "70000"},  {"CLUSTER_RUNNER_PORT", "12ab"},
      {"CLUSTER_RUNNER_ENABLED", "yes"}, {"CLUSTER_RUNNER_COUNT", "99999999999999999999"},
      {"CLUSTER_RUNNER_SHARDS", "-1"},   {"CLUSTER_RUNNER_TIMEOUT_MS", ""},
  };
  for (const auto& [name, value] : cases) {
    const auto error = load_error(sources_for("", {{name, value}}));
    EXPECT_NE(error.find(name), std::string::npos) << name << "=" << value << " gave: " << error;
  }
}

TEST(config, rejects_malformed_toml_naming_the_file) {
  temp_dir dir;
  const auto file = dir.write("broken.toml", "[runner\nname = \"x\n");
  const auto error = load_error(sources_for(file));
  EXPECT_NE(error.find(file), std::string::npos) << error;

  const auto missing =
      (fs::temp_directory_path() / "cluster-config-test-no-such-file.toml").string();
  const auto missing_error = load_error(sources_for(missing));
  EXPECT_NE(missing_error.find(missing), std::string::npos) << missing_error;
}

TEST(config, rejects_set_with_an_unknown_key_section_or_shape) {
  for (const std::string set : {"runner.nope=1", "nope.name=1", "runner.name", "name=1"}) {
    auto sources = sources_for("");
    sources.sets = {set};
    const auto error = load_error(sources);
    EXPECT_NE(error.find(set), std::string::npos) << error;
  }
}

TEST(config, parses_config_set_and_help_from_the_command_line) {
  args a({"runner", "--config", "/etc/cluster.toml", "--set", "runner.port=1", "--set",
          "log.level=debug", "--help"});
  const auto line = cluster::parse_command_line(a.argc(), a.argv()).value();
  EXPECT_EQ(line.sources.file, "/etc/cluster.toml");
  EXPECT_EQ(line.sources.sets, (std::vector<std::string>{"runner.port=1", "log.level=debug"}));
  EXPECT_TRUE(line.help);

  args none({"runner"});
  const auto empty = cluster::parse_command_line(none.argc(), none.argv()).value();
  EXPECT_TRUE(empty.sources.file.empty());
  EXPECT_TRUE(empty.sources.sets.empty());
  EXPECT_FALSE(empty.help);

  args short_forms({"runner", "-c", "x.toml", "-h"});
  const auto shorts = cluster::parse_command_line(short_forms.argc(), short_forms.argv()).value();
  EXPECT_EQ(shorts.sources.file, "x.toml");
  EXPECT_TRUE(shorts.help);
}

TEST(config, rejects_unknown_arguments_and_missing_values) {
  for (const auto& words : std::vector<std::vector<std::string>>{{"runner", "--verbose"},
                                                                 {"runner", "extra"},
                                                                 {"runner", "--config"},
                                                                 {"runner", "--set"}}) {
    args a(words);
    const auto line = cluster::parse_command_line(a.argc(), a.argv());
    ASSERT_FALSE(line.has_value()) << words.back() << " was accepted";
    EXPECT_NE(line.error().message.find(words.back()), std::string::npos) << line.error().message;
  }
}

TEST(sst_links, map_database_manager_and_proxy_links_to_settings) {
  const std::map<std::string, std::string> env = {
      {"SST_RESOURCE_Database",
       R"({"host":"db.internal","port":5432,"username":"app","password":"s3cret","database":"cluster"})"},
      {"SST_RESOURCE_ShardManager", R"({"host":"manager.local","port":8080})"},
      {"SST_RESOURCE_ProxyServer", R"({"host":"proxy.local","port":3333})"}};
  const auto sets = cluster::sst_link_settings([&](const char* name) -> const char* {
                      auto it = env.find(name);
                      return it == env.end() ? nullptr : it->second.c_str();
                    }).value();
  const std::vector<std::string> expected = {"storage.host=db.internal",
                                             "storage.port=5432",
                                             "storage.user=app",
                                             "storage.password=s3cret",
                                             "storage.database=cluster",
                                             "runner.manager=manager.local:8080",
                                             "proxy.manager=manager.local:8080",
                                             "gateway.proxy=proxy.local:3333"};
  EXPECT_EQ(sets, expected);
}

TEST(sst_links, map_token_secrets_and_leave_the_effect_rpc_link_to_clients) {
  const std::map<std::string, std::string> env = {
      {"SST_RESOURCE_GatewayToken", R"({"value":"gateway-secret"})"},
      {"SST_RESOURCE_EffectRpcToken", R"({"value":"effect-secret"})"},
      {"SST_RESOURCE_EffectRpc", R"({"host":"proxy.local","port":3334})"}};
  const auto sets = cluster::sst_link_settings([&](const char* name) -> const char* {
                      auto it = env.find(name);
                      return it == env.end() ? nullptr : it->second.c_str();
                    }).value();
  const std::vector<std::string> expected = {"gateway.bearer_token=gateway-secret",
                                             "proxy.effect_token=effect-secret"};
  EXPECT_EQ(sets, expected);
}

TEST(sst_links, reject_a_link_that_is_not_json_naming_the_variable) {
  const auto sets = cluster::sst_link_settings([](const char* name) -> const char* {
    return std::string(name) == "SST_RESOURCE_Database" ? "{not json" : nullptr;
  });
  ASSERT_FALSE(sets.has_value());
  EXPECT_NE(sets.error().message.find("SST_RESOURCE_Database"), std::string::npos);
}

TEST(ecs_metadata, finds_the_task_private_ip) {
  const std::string task = R"({"Cluster":"c","Containers":[{"Name":"runner-1","Networks":[
      {"NetworkMode":"awsvpc","IPv4Addresses":["10.0.1.23"]}]}]})";
  EXPECT_EQ(cluster::ecs_task_ip_from_json(task), std::optional<std::string>("10.0.1.23"));
  EXPECT_EQ(cluster::ecs_task_ip_from_json("{}"), std::nullopt);
  EXPECT_EQ(cluster::ecs_task_ip_from_json("not json"), std::nullopt);
}
