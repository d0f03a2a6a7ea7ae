// The runner's end of a plugin host's channel: frames that wait out a stall are not written.

#include "cluster/host/plugin_channel.hpp"

#include <gtest/gtest.h>

#include <thread>

namespace cluster::host {
namespace {

struct channel_pair {
  asio::io_context io;
  std::shared_ptr<plugin_channel> runner_end;
  std::shared_ptr<plugin_channel> host_end;
  std::vector<std::uint64_t> host_received;
  std::string runner_closed;

  channel_pair() {
    plugin_channel::socket_type a(io), b(io);
    asio::local::connect_pair(a, b);
    runner_end = std::make_shared<plugin_channel>(std::move(a), decode_limits{});
    host_end = std::make_shared<plugin_channel>(std::move(b), decode_limits{});
    runner_end->start([](envelope&&) {}, [this](const std::string& why) { runner_closed = why; });
    host_end->start([this](envelope&& env) { host_received.push_back(env.id); },
                    [](const std::string&) {});
  }
  void run_for(milliseconds duration) {
    io.restart();
    io.run_for(duration);
  }
};

TEST(plugin_channel, writes_frames_queued_within_the_stale_limit) {
  channel_pair pair;
  pair.runner_end->set_stale_after(milliseconds(200));
  pair.runner_end->send(plugin_kind::destroy, 7, plugin_destroy_msg{1});
  pair.runner_end->send(plugin_kind::destroy, 8, plugin_destroy_msg{2});
  pair.run_for(milliseconds(100));
  EXPECT_EQ(pair.host_received, (std::vector<std::uint64_t>{7, 8}));
  EXPECT_TRUE(pair.runner_end->is_open());
  EXPECT_FALSE(pair.runner_end->went_stale());
  EXPECT_EQ(pair.runner_end->batches_written(), 1u);
}

TEST(plugin_channel, closes_instead_of_writing_frames_that_waited_out_a_stall) {
  channel_pair pair;
  pair.runner_end->set_stale_after(milliseconds(20));
  pair.runner_end->send(plugin_kind::destroy, 7, plugin_destroy_msg{1});
  pair.run_for(milliseconds(50));
  ASSERT_EQ(pair.host_received, (std::vector<std::uint64_t>{7}));
  // Queued, then the loop stalls (a frozen runner) before the write it posted can run.
  pair.runner_end->send(plugin_kind::destroy, 8, plugin_destroy_msg{2});
  std::this_thread::sleep_for(milliseconds(60));
  pair.run_for(milliseconds(100));
  EXPECT_EQ(pair.host_received, (std::vector<std::uint64_t>{7})) << "a stale frame was written";
  EXPECT_FALSE(pair.runner_end->is_open());
  EXPECT_TRUE(pair.runner_end->went_stale());
  EXPECT_NE(pair.runner_closed.find("event loop stalled"), std::string::npos)
      << pair.runner_closed;
  EXPECT_EQ(pair.runner_end->batches_written(), 1u);
}

TEST(plugin_channel, without_a_stale_limit_writes_late_frames_too) {
  channel_pair pair;
  pair.runner_end->send(plugin_kind::destroy, 8, plugin_destroy_msg{2});
  std::this_thread::sleep_for(milliseconds(30));
  pair.run_for(milliseconds(100));
  EXPECT_EQ(pair.host_received, (std::vector<std::uint64_t>{8}));
}

}  // namespace
}  // namespace cluster::host
