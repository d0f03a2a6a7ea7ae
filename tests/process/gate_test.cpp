// The gate of a graceful stop (libs/process/include/cluster/process/gate.hpp).

#include "cluster/process/gate.hpp"

#include <gtest/gtest.h>

#include <memory>
#include <optional>

namespace {

using cluster::gate;
namespace asio = cluster::asio;

TEST(gate, runs_the_drain_callback_posted_when_closed_with_nothing_in_flight) {
  asio::io_context io;
  gate g(io.get_executor());
  int drained = 0;
  g.close([&] { ++drained; });
  EXPECT_EQ(drained, 0) << "ran inside close()";
  EXPECT_TRUE(g.is_closed());
  io.run();
  EXPECT_EQ(drained, 1);
}

TEST(gate, waits_for_the_last_holder_and_runs_the_callback_once) {
  asio::io_context io;
  gate g(io.get_executor());
  auto first = std::make_optional(g.hold());
  auto second = std::make_optional(g.hold());
  int drained = 0;
  g.close([&] { ++drained; });
  io.run();
  io.restart();
  EXPECT_EQ(drained, 0);
  EXPECT_EQ(g.count(), 2u);
  first.reset();
  io.run();
  io.restart();
  EXPECT_EQ(drained, 0);
  second.reset();
  EXPECT_EQ(g.count(), 0u);
  EXPECT_EQ(drained, 0) << "ran inside leave()";
  io.run();
  io.restart();
  EXPECT_EQ(drained, 1);
  // Work that enters after the drain and leaves again does not run it a second time.
  g.enter();
  g.leave();
  io.run();
  EXPECT_EQ(drained, 1);
}

TEST(gate, refuses_try_enter_once_closed_but_enter_still_counts) {
  asio::io_context io;
  gate g(io.get_executor());
  EXPECT_TRUE(g.try_enter());
  int drained = 0;
  g.close([&] { ++drained; });
  EXPECT_FALSE(g.try_enter());
  EXPECT_FALSE(g.try_hold());
  EXPECT_EQ(g.count(), 1u);
  g.enter();  // a continuation of admitted work
  EXPECT_EQ(g.count(), 2u);
  g.leave();
  g.leave();
  io.run();
  EXPECT_EQ(drained, 1);
}

TEST(gate, holder_copies_enter_again_and_moves_do_not) {
  asio::io_context io;
  gate g(io.get_executor());
  auto original = g.hold();
  EXPECT_EQ(g.count(), 1u);
  {
    auto copy = original;
    EXPECT_EQ(g.count(), 2u);
    auto moved = std::move(copy);
    EXPECT_EQ(g.count(), 2u);
    EXPECT_FALSE(copy);  // NOLINT(bugprone-use-after-move): moved-from holders are empty
    EXPECT_TRUE(moved);
  }
  EXPECT_EQ(g.count(), 1u);
  original.release();
  original.release();  // twice is harmless
  EXPECT_EQ(g.count(), 0u);
  gate::holder empty;
  EXPECT_FALSE(empty);
}

TEST(gate, a_holder_may_outlive_its_gate_and_a_pending_callback_is_dropped) {
  asio::io_context io;
  std::optional<gate::holder> late;
  int drained = 0;
  {
    gate g(io.get_executor());
    late = g.hold();
    g.close([&] { ++drained; });
  }
  late.reset();  // leaves a count the dead gate left behind (ASan checks the memory)
  io.run();
  EXPECT_EQ(drained, 0);

  io.restart();
  {
    gate g(io.get_executor());
    g.close([&] { ++drained; });  // posted now, gate gone before it runs
  }
  io.run();
  EXPECT_EQ(drained, 0);
}

}  // namespace
