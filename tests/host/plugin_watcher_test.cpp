// The plugin folder watcher on its own: what counts as a settled file, and what is ignored.
#include "cluster/host/plugin_watcher.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "cluster_fixture.hpp"

namespace cluster::host {
namespace {

namespace fs = std::filesystem;
using cluster::testing::run_until;

struct watcher_test : ::testing::Test {
  void SetUp() override {
    char pattern[] = "/tmp/watcher-test-XXXXXX";
    ASSERT_NE(::mkdtemp(pattern), nullptr);
    dir = pattern;
    watcher = std::make_unique<plugin_watcher>(
        io, milliseconds(100),
        [this](const fs::path& file, bool present) { reports.emplace_back(file, present); });
  }
  void TearDown() override {
    watcher.reset();
    std::error_code ignored;
    fs::remove_all(dir, ignored);
  }
  void write(const fs::path& file, const std::string& text) {
    std::ofstream(file, std::ios::binary) << text;
  }
  /// Runs the loop for `time` (nothing else can be waited on: the point is that nothing comes).
  void idle(milliseconds time) {
    run_until(
        io, [] { return false; }, time);
  }

  asio::io_context io;
  fs::path dir;
  std::unique_ptr<plugin_watcher> watcher;
  std::vector<std::pair<fs::path, bool>> reports;
};

TEST_F(watcher_test, reports_a_renamed_in_file_once_and_its_removal) {
  ASSERT_TRUE(watcher->watch(dir));
  watcher->start();
  write(dir / ".libx.so.tmp", "one");
  fs::rename(dir / ".libx.so.tmp", dir / "libx.so");
  ASSERT_TRUE(run_until(io, [&] { return !reports.empty(); }));
  idle(milliseconds(300));
  ASSERT_EQ(reports.size(), 1u) << "the temp name is ignored, the rename is one report";
  EXPECT_EQ(reports[0], std::make_pair(dir / "libx.so", true));
  fs::remove(dir / "libx.so");
  ASSERT_TRUE(run_until(io, [&] { return reports.size() == 2; }));
  EXPECT_EQ(reports[1], std::make_pair(dir / "libx.so", false));
}

TEST_F(watcher_test, waits_for_a_file_being_written_to_be_closed_and_quiet) {
  ASSERT_TRUE(watcher->watch(dir));
  watcher->start();
  const auto started = steady_clock::now();
  {
    std::ofstream out(dir / "liby.so", std::ios::binary);
    out << "first half" << std::flush;
    idle(milliseconds(250));
    EXPECT_TRUE(reports.empty()) << "reported while still open for writing";
    out << "second half" << std::flush;
  }
  ASSERT_TRUE(run_until(io, [&] { return !reports.empty(); }));
  EXPECT_GE(steady_clock::now() - started, milliseconds(350));
  EXPECT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].second, true);
}

TEST_F(watcher_test, watches_only_the_named_file_and_so_files) {
  ASSERT_TRUE(watcher->watch(dir, "libwanted.so"));
  watcher->start();
  write(dir / "libother.so", "x");
  write(dir / "notes.txt", "x");
  write(dir / "libwanted.so", "x");
  ASSERT_TRUE(run_until(io, [&] { return !reports.empty(); }));
  idle(milliseconds(300));
  ASSERT_EQ(reports.size(), 1u);
  EXPECT_EQ(reports[0].first, dir / "libwanted.so");
  EXPECT_EQ(watcher->scan(), std::vector<fs::path>{dir / "libwanted.so"});
}

TEST_F(watcher_test, refuses_a_folder_that_does_not_exist_with_the_reason) {
  const auto watched = watcher->watch(dir / "missing");
  ASSERT_FALSE(watched);
  EXPECT_NE(watched.error().message.find("No such file or directory"), std::string::npos)
      << watched.error().message;
}

}  // namespace
}  // namespace cluster::host
