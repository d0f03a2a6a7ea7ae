// Streaming replies and cancellation in the entity host: Greeter.GreetMany driven through a
// request_control (the runner's side of a request), plugins in this process and in a
// cluster-plugin-host child.
#include <gtest/gtest.h>

#include <chrono>
#include <optional>

#include "cluster/host/entity_host.hpp"
#include "cluster/protocol/codec.hpp"
#include "cluster_fixture.hpp"
#include "log_capture.hpp"

namespace cluster::host {
namespace {

using cluster::testing::make_request;
using cluster::testing::reply_json;
using cluster::testing::run_until;

/// One streaming request as its caller sees it.
struct stream_call {
  std::shared_ptr<request_control> control;
  std::vector<nlohmann::json> items;
  std::optional<reply_msg> reply;
  int replies = 0;
};

class stream_host_test : public ::testing::TestWithParam<bool> {
 protected:
  bool isolated() const { return GetParam(); }
  void SetUp() override {
    if (isolated()) {
      isolation_options options;
      options.plugin_host = std::string(CLUSTER_BIN_DIR) + "/cluster-plugin-host";
      options.handler_timeout = milliseconds(0);
      registry.isolate(io, options);
      registry.on_instances_lost = [this](const plugin_process* process) {
        if (host) host->instances_lost(process);
      };
    }
    const auto loaded = registry.load_file(std::string(CLUSTER_PLUGIN_DIR) + "/libgreeter.so");
    ASSERT_TRUE(loaded) << loaded.error().message;
    host = std::make_unique<entity_host>(
        io, entity_host_options{}, [](request_msg, entity_host::reply_callback done) {
          done(reply_msg::failure(errc::unavailable, "no router in this test"));
        });
  }
  void TearDown() override {
    for (const auto& call : calls) EXPECT_LE(call->replies, 1) << "a request was answered twice";
  }

  /// Greeter/`id` GreetMany of `count` greetings `delay_ms` apart, with `credit`.
  std::shared_ptr<stream_call> greet_many(const std::string& id, int count, int delay_ms,
                                          std::uint32_t credit) {
    auto call = std::make_shared<stream_call>();
    calls.push_back(call);
    call->control = std::make_shared<request_control>(io, credit, false, 1 << 20);
    call->control->send_items = [call](std::vector<bytes>&& items) {
      for (const auto& item : items) call->items.push_back(nlohmann::json::from_msgpack(item));
    };
    const auto* type = registry.find("Greeter");
    auto request = make_request("Greeter", id, "GreetMany",
                                {{"name", "John"}, {"count", count}, {"delay_ms", delay_ms}});
    host->deliver(
        entity_address{type, id, 7}, *type->rpc_index("GreetMany"), std::move(request),
        steady_clock::now() + milliseconds(60000),
        [call](reply_msg&& reply) {
          // As the runner does: the items written so far go before the reply.
          call->control->flush();
          call->control->finish();
          ++call->replies;
          call->reply = std::move(reply);
        },
        true, {}, call->control);
    return call;
  }

  asio::io_context io;
  entity_registry registry;
  std::unique_ptr<entity_host> host;
  std::vector<std::shared_ptr<stream_call>> calls;
};

TEST_P(stream_host_test, a_stream_stops_at_the_callers_credit_and_goes_on_with_each_grant) {
  auto call = greet_many("g1", 20, 0, 4);
  ASSERT_TRUE(run_until(io, [&] { return call->items.size() == 4; }));
  io.run_for(milliseconds(100));
  EXPECT_EQ(call->items.size(), 4u) << "items went past the credit";
  EXPECT_FALSE(call->reply.has_value());
  EXPECT_TRUE(call->control->starved());
  for (std::size_t expected = 8; expected <= 16; expected += 4) {
    call->control->grant(4);
    ASSERT_TRUE(run_until(io, [&] { return call->items.size() == expected; })) << expected;
  }
  ASSERT_FALSE(call->reply.has_value()) << "the final reply came before the last items";
  call->control->grant(4);
  ASSERT_TRUE(run_until(io, [&] { return call->reply.has_value(); }));
  ASSERT_TRUE(call->reply->ok()) << call->reply->message;
  EXPECT_EQ(reply_json(*call->reply)["count"], 20);
  ASSERT_EQ(call->items.size(), 20u);
  for (std::size_t i = 0; i < call->items.size(); ++i) EXPECT_EQ(call->items[i]["index"], i);
  EXPECT_EQ(call->items[0]["message"], "Hello, John! from g1 Greeter 7");
}

TEST_P(stream_host_test, credit_that_runs_out_with_the_last_item_still_lets_the_reply_go) {
  auto exact = greet_many("g2", 5, 0, 5);
  ASSERT_TRUE(run_until(io, [&] { return exact->reply.has_value(); }));
  EXPECT_EQ(exact->items.size(), 5u);
  EXPECT_EQ(reply_json(*exact->reply)["count"], 5);

  auto short_by_one = greet_many("g3", 5, 0, 4);
  ASSERT_TRUE(run_until(io, [&] { return short_by_one->items.size() == 4; }));
  io.run_for(milliseconds(50));
  EXPECT_FALSE(short_by_one->reply.has_value());
  short_by_one->control->grant(1);
  ASSERT_TRUE(run_until(io, [&] { return short_by_one->reply.has_value(); }));
  EXPECT_EQ(short_by_one->items.size(), 5u);
  EXPECT_EQ(reply_json(*short_by_one->reply)["count"], 5);
}

TEST_P(stream_host_test, a_cancel_frees_a_sleeping_handler_at_once_with_cancelled) {
  testing::log_capture logs;
  auto call = greet_many("sleepy", 10, 60000, 0);
  ASSERT_TRUE(run_until(io, [&] { return !call->items.empty(); }));  // then it sleeps a minute
  const auto asked = steady_clock::now();
  call->control->cancel(errc::cancelled, "interrupted by the caller");
  ASSERT_TRUE(run_until(
      io, [&] { return call->reply.has_value(); }, milliseconds(5000)));
  const auto took = std::chrono::duration_cast<milliseconds>(steady_clock::now() - asked);
  EXPECT_EQ(call->reply->code, errc::cancelled) << call->reply->message;
  EXPECT_EQ(call->reply->message, "interrupted by the caller");
  EXPECT_LT(took, milliseconds(100));
  EXPECT_NE(logs.text().find("Greeter/sleepy GreetMany: cancelled (interrupted by the caller)"),
            std::string::npos)
      << logs.text();
  // The entity is free: its next request runs.
  auto next = greet_many("sleepy", 2, 0, 0);
  ASSERT_TRUE(run_until(io, [&] { return next->reply.has_value(); }));
  EXPECT_TRUE(next->reply->ok()) << next->reply->message;
}

TEST_P(stream_host_test, a_cancelled_request_still_in_the_mailbox_never_runs) {
  auto running = greet_many("busy", 3, 60000, 0);
  auto queued = greet_many("busy", 3, 0, 0);
  ASSERT_TRUE(run_until(io, [&] { return !running->items.empty(); }));
  queued->control->cancel(errc::cancelled, "interrupted by the caller");
  ASSERT_TRUE(queued->reply.has_value()) << "a queued request is answered at once";
  EXPECT_EQ(queued->reply->code, errc::cancelled);
  EXPECT_TRUE(queued->items.empty());
  running->control->cancel(errc::deadline_exceeded, "the stream made no progress for 10 ms");
  ASSERT_TRUE(run_until(io, [&] { return running->reply.has_value(); }));
  // The cancel's code is what the caller gets: a deadline says DeadlineExceeded.
  EXPECT_EQ(running->reply->code, errc::deadline_exceeded);
  io.run_for(milliseconds(50));
  EXPECT_TRUE(queued->items.empty());
}

TEST_P(stream_host_test, credit_held_out_past_the_protocols_bound_ends_the_stream) {
  auto call = greet_many("greedy", 100, 0, 1);
  ASSERT_TRUE(run_until(io, [&] { return call->items.size() == 1; }));
  EXPECT_FALSE(call->control->grant(max_stream_credit + 1));
  ASSERT_TRUE(run_until(io, [&] { return call->reply.has_value(); }));
  EXPECT_EQ(call->reply->code, errc::invalid_request) << call->reply->message;
}

INSTANTIATE_TEST_SUITE_P(isolation, stream_host_test, ::testing::Bool(),
                         [](const auto& param) { return param.param ? "process" : "none"; });

}  // namespace
}  // namespace cluster::host
