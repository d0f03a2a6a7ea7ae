// The installed SDK end to end: `cmake --install --component sdk` of this build into a temp
// prefix, examples/hello configured and built against it with find_package(ClusterSDK) (a
// fresh build dir, a version set with -D), its own tests run, and the built .so loaded by this
// repository's runner code (entity_registry + entity_host) and called.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "child_process.hpp"
#include "cluster/host/entity_host.hpp"
#include "cluster/host/entity_registry.hpp"
#include "cluster_fixture.hpp"

namespace cluster::host {
namespace {

namespace fs = std::filesystem;

constexpr const char* hello_version = "2.7.1";  // not the example's default: the -D took effect

std::string quoted(const fs::path& path) { return "'" + path.string() + "'"; }

class sdk_package : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    root_ = fs::temp_directory_path() / ("cluster-sdk-package-" + std::to_string(::getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    const fs::path prefix = root_ / "prefix";
    const fs::path build = root_ / "build";
    const std::string cmake = quoted(CLUSTER_CMAKE_COMMAND);
    steps_ = {
        {"install", cmake + " --install " + quoted(CLUSTER_BUILD_DIR) +
                        " --component sdk --prefix " + quoted(prefix)},
        {"configure", cmake + " -S " + quoted(fs::path(CLUSTER_SOURCE_DIR) / "examples/hello") +
                          " -B " + quoted(build) + " -G " + quoted(CLUSTER_CMAKE_GENERATOR) +
                          " -DCMAKE_CXX_COMPILER=" + quoted(CLUSTER_CXX_COMPILER) +
                          " -DCMAKE_PREFIX_PATH=" + quoted(prefix) +
                          " -DHELLO_VERSION=" + hello_version},
        {"build", cmake + " --build " + quoted(build) + " -j2"},
        {"test", quoted(CLUSTER_CTEST_COMMAND) + " --test-dir " + quoted(build) +
                     " --output-on-failure -j2"},
    };
    for (auto& step : steps_) {
      step.output = testing::run_command(step.command + " 2>&1", step.status);
      if (step.status != 0) break;
    }
    plugin_ = build / "libhello.so";
  }
  static void TearDownTestSuite() {
    std::error_code ignored;
    fs::remove_all(root_, ignored);
  }

  struct step {
    std::string name, command, output;
    int status = -1;
  };
  // Each test needs the steps up to `name` to have passed; their output when one did not.
  static ::testing::AssertionResult passed_up_to(const std::string& name) {
    for (const auto& s : steps_) {
      if (s.status != 0)
        return ::testing::AssertionFailure() << "step '" << s.name << "' failed (status "
                                             << s.status << "): " << s.command << "\n"
                                             << s.output;
      if (s.name == name) return ::testing::AssertionSuccess();
    }
    return ::testing::AssertionFailure() << "no step " << name;
  }

  static inline fs::path root_;
  static inline std::vector<step> steps_;
  static inline fs::path plugin_;
};

TEST_F(sdk_package, installs_the_headers_and_the_cmake_package) {
  ASSERT_TRUE(passed_up_to("install"));
  for (const char* file :
       {"include/cluster/sdk.hpp", "include/cluster/plugin_abi.h", "include/cluster/testing.hpp",
        "lib/cmake/ClusterSDK/ClusterSDKConfig.cmake",
        "lib/cmake/ClusterSDK/ClusterSDKConfigVersion.cmake",
        "lib/cmake/ClusterSDK/ClusterSDKTargets.cmake", "lib/cmake/ClusterSDK/ClusterPlugin.cmake"})
    EXPECT_TRUE(fs::exists(root_ / "prefix" / file)) << file;
  // The component holds the SDK only: no binaries, no sanitizer flags forced on plugins.
  EXPECT_FALSE(fs::exists(root_ / "prefix/bin"));
  std::ifstream targets(root_ / "prefix/lib/cmake/ClusterSDK/ClusterSDKTargets.cmake");
  const std::string text((std::istreambuf_iterator<char>(targets)), {});
  EXPECT_EQ(text.find("sanitize"), std::string::npos);
  EXPECT_NE(text.find("cluster::testing"), std::string::npos);
}

TEST_F(sdk_package, builds_the_example_out_of_tree_and_its_kit_tests_pass) {
  ASSERT_TRUE(passed_up_to("test"));
  EXPECT_TRUE(fs::exists(plugin_)) << plugin_;
  EXPECT_NE(steps_.back().output.find("100% tests passed"), std::string::npos)
      << steps_.back().output;
}

TEST_F(sdk_package, the_runner_loads_the_built_plugin_and_it_answers_with_its_version) {
  ASSERT_TRUE(passed_up_to("build"));
  entity_registry registry;
  const auto loaded = registry.load_file(plugin_);
  ASSERT_TRUE(loaded) << loaded.error().message;
  const entity_type* type = registry.find("Hello");
  ASSERT_NE(type, nullptr);
  EXPECT_EQ(type->plugin_name, "hello");
  EXPECT_EQ(type->plugin_version, hello_version);
  EXPECT_EQ(type->info.group, "default");
  ASSERT_TRUE(type->rpc_index("Greet"));
  ASSERT_TRUE(type->rpc_index("GreetVolatile"));
  EXPECT_TRUE(type->persisted(*type->rpc_index("Greet")));
  EXPECT_FALSE(type->persisted(*type->rpc_index("GreetVolatile")));

  asio::io_context io;
  entity_host host(io, {}, [](request_msg, entity_host::reply_callback done) {
    done(reply_msg::failure(errc::unavailable, "no router in this test"));
  });
  std::optional<reply_msg> reply;
  const std::uint32_t rpc = *type->rpc_index("GreetVolatile");
  host.deliver(entity_address{type, "Test", 1}, rpc,
               testing::make_request("Hello", "Test", "GreetVolatile", {{"name", "John"}}),
               steady_clock::now() + std::chrono::seconds(10),
               [&reply](reply_msg&& r) { reply = std::move(r); });
  ASSERT_TRUE(testing::run_until(io, [&] { return reply.has_value(); }));
  ASSERT_TRUE(reply->ok()) << reply->error << ": " << reply->message;
  const auto body = testing::reply_json(*reply);
  EXPECT_EQ(body["message"], std::string("Hello, John! from Test (hello ") + hello_version + ")");
  EXPECT_EQ(body["version"], hello_version);
  host.stop();
}

}  // namespace
}  // namespace cluster::host
