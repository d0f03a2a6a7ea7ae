// The command line every process shares (run_process, CLI11): --help and a bad --set or
// argument, against the real binaries.

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "child_process.hpp"

namespace cluster::testing {
namespace {

const std::string bin = CLUSTER_BIN_DIR;

struct process_case {
  std::string binary;
  std::string section;  // its own configuration section
  std::string key;      // a key of it, with its default as --help shows it
  std::string shown_default;
};

class process_cli : public ::testing::TestWithParam<process_case> {};

TEST_P(process_cli, help_lists_the_flags_and_every_key_with_its_default_and_variable) {
  const auto& p = GetParam();
  int status = -1;
  const auto out = run_command(bin + "/" + p.binary + " --help 2>&1", status);
  EXPECT_EQ(status, 0) << out;
  for (const std::string expected : {"--config", "--set", "--help", "cluster.max_frame_bytes",
                                     "log.level = info  (CLUSTER_LOG_LEVEL)"})
    EXPECT_NE(out.find(expected), std::string::npos) << expected << " missing from:\n" << out;
  std::string upper_section = p.section, upper_key = p.key;
  for (auto* text : {&upper_section, &upper_key})
    for (auto& c : *text) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  const std::string line = p.section + "." + p.key + " = " + p.shown_default + "  (CLUSTER_" +
                           upper_section + "_" + upper_key + ")";
  EXPECT_NE(out.find(line), std::string::npos) << line << " missing from:\n" << out;
  // -h is the same flag.
  const auto short_out = run_command(bin + "/" + p.binary + " -h 2>&1", status);
  EXPECT_EQ(status, 0);
  EXPECT_EQ(short_out, out);
}

TEST_P(process_cli, refuses_a_bad_set_naming_it_with_exit_code_2) {
  const auto& p = GetParam();
  int status = -1;
  for (const std::string& set : std::vector<std::string>{
           p.section + ".no_such_key=1", "no_such_section.key=1", p.section + "." + p.key}) {
    const auto out = run_command(bin + "/" + p.binary + " --set " + set + " 2>&1", status);
    EXPECT_EQ(status, 2) << set << ": " << out;
    EXPECT_NE(out.find("configuration error"), std::string::npos) << out;
    EXPECT_NE(out.find(set), std::string::npos) << out;
  }
  const auto out =
      run_command(bin + "/" + p.binary + " --set " + p.section + ".port=70000 2>&1", status);
  EXPECT_EQ(status, 2) << out;
  EXPECT_NE(out.find("outside [0, 65535]"), std::string::npos) << out;
}

TEST_P(process_cli, refuses_unknown_arguments_and_missing_values_with_exit_code_2) {
  const auto& p = GetParam();
  for (const std::string args : {"--verbose", "stray", "--config", "--set"}) {
    int status = -1;
    const auto out = run_command(bin + "/" + p.binary + " " + args + " 2>&1", status);
    EXPECT_EQ(status, 2) << args << ": " << out;
    EXPECT_NE(out.find(args), std::string::npos) << out;
  }
}

TEST_P(process_cli, names_a_missing_config_file) {
  const auto& p = GetParam();
  int status = -1;
  const auto out = run_command(
      bin + "/" + p.binary + " --config /nonexistent/cluster-cli-test.toml 2>&1", status);
  EXPECT_EQ(status, 2) << out;
  EXPECT_NE(out.find("/nonexistent/cluster-cli-test.toml"), std::string::npos) << out;
}

INSTANTIATE_TEST_SUITE_P(
    every_process, process_cli,
    ::testing::Values(process_case{"cluster-manager", "manager", "port", "8080"},
                      process_case{"cluster-runner", "runner", "manager", "127.0.0.1:8080"},
                      process_case{"cluster-proxy", "proxy", "port", "3333"},
                      process_case{"cluster-gateway", "gateway", "proxy", "127.0.0.1:3333"}),
    [](const ::testing::TestParamInfo<process_case>& test) {
      std::string name = test.param.binary;
      for (auto& c : name)
        if (c == '-') c = '_';
      return name;
    });

TEST(cluster_bench_cli, prints_help_and_refuses_bad_numbers_and_unknown_flags) {
  int status = -1;
  auto out = run_command(bin + "/cluster-bench --help 2>&1", status);
  EXPECT_EQ(status, 0) << out;
  for (const std::string flag : {"--proxy", "--connections", "--in-flight", "--duration-s",
                                 "--payload-size", "--pick", "--json", "127.0.0.1:3333"})
    EXPECT_NE(out.find(flag), std::string::npos) << flag << " missing from:\n" << out;

  out = run_command(bin + "/cluster-bench --connections 0 2>&1", status);
  EXPECT_EQ(status, 1) << out;
  EXPECT_NE(out.find("--connections needs a positive integer, got '0'"), std::string::npos) << out;
  out = run_command(bin + "/cluster-bench --duration-s 1x 2>&1", status);
  EXPECT_EQ(status, 1) << out;
  EXPECT_NE(out.find("--duration-s needs a number of seconds, got '1x'"), std::string::npos) << out;
  out = run_command(bin + "/cluster-bench --pick sideways 2>&1", status);
  EXPECT_EQ(status, 1) << out;
  EXPECT_NE(out.find("--pick is round-robin or random"), std::string::npos) << out;
  out = run_command(bin + "/cluster-bench --no-such-flag 2>&1", status);
  EXPECT_EQ(status, 2) << out;
  EXPECT_NE(out.find("--no-such-flag"), std::string::npos) << out;
  out = run_command(bin + "/cluster-bench --threads 2>&1", status);
  EXPECT_EQ(status, 2) << out;
}

}  // namespace
}  // namespace cluster::testing
