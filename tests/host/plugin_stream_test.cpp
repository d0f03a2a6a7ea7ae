// Streams, cancellation and sends of a plugin behind an entity host, driven through the
// request's request_control as the runner drives it. Each test runs with the plugin in this
// process and in a real cluster-plugin-host child: the two must not differ.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cluster/host/entity_host.hpp"
#include "cluster/host/request_control.hpp"
#include "cluster_fixture.hpp"
#include "log_capture.hpp"

namespace cluster::host {
namespace {

using cluster::testing::make_request;
using cluster::testing::reply_json;
using cluster::testing::run_until;
using cluster::testing::test_plugin;

/// Sends this process's stderr, and so that of the plugin hosts it starts meanwhile, to a
/// file: what a plugin logs in its own process is written there.
class stderr_capture {
 public:
  stderr_capture()
      : path_(std::filesystem::temp_directory_path() /
              ("plugin-stream-test-" + std::to_string(::getpid()) + ".log")) {
    std::fflush(stderr);
    saved_ = ::dup(STDERR_FILENO);
    const int file = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ::dup2(file, STDERR_FILENO);
    ::close(file);
  }
  ~stderr_capture() {
    std::fflush(stderr);
    ::dup2(saved_, STDERR_FILENO);
    ::close(saved_);
    std::error_code ignored;
    std::filesystem::remove(path_, ignored);
  }
  stderr_capture(const stderr_capture&) = delete;
  stderr_capture& operator=(const stderr_capture&) = delete;

  std::string text() const {
    std::ifstream in(path_);
    std::stringstream out;
    out << in.rdbuf();
    return out.str();
  }

 private:
  std::filesystem::path path_;
  int saved_ = -1;
};

/// One streamed delivery: its items as JSON, its reply, and when each came.
struct streamed {
  std::shared_ptr<request_control> control;
  std::vector<nlohmann::json> items;
  std::optional<reply_msg> reply;
  int replies = 0;
  steady_clock::time_point replied_at;
  bool answered() const { return reply.has_value(); }
};
using streamed_ptr = std::shared_ptr<streamed>;

class plugin_stream_test : public ::testing::TestWithParam<bool> {
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
    for (const std::string& plugin :
         {std::string(CLUSTER_PLUGIN_DIR) + "/libgreeter.so", test_plugin("probe_plugin")}) {
      const auto loaded = registry.load_file(plugin);
      ASSERT_TRUE(loaded) << plugin << ": " << loaded.error().message;
    }
    host = std::make_unique<entity_host>(
        io, entity_host_options{}, [this](request_msg request, entity_host::reply_callback done) {
          outbound.push_back(request);
          route(std::move(request), std::move(done));
        });
  }
  void TearDown() override {
    for (const auto& s : sent) EXPECT_LE(s->replies, 1) << "a delivery was answered twice";
    host.reset();
    if (HasFailure()) std::cout << "plugin hosts' log:\n" << child_log.text();
  }

  streamed_ptr stream(const std::string& type_name, const std::string& id, const std::string& rpc,
                      const nlohmann::json& payload, std::uint32_t credit) {
    const auto* type = registry.find(type_name);
    EXPECT_NE(type, nullptr) << type_name;
    auto s = std::make_shared<streamed>();
    sent.push_back(s);
    s->control = std::make_shared<request_control>(io, credit, false, 64 * 1024);
    s->control->stream = true;
    s->control->send_items = [weak = std::weak_ptr<streamed>(s)](std::vector<bytes>&& items) {
      auto held = weak.lock();
      if (!held) return;
      for (const auto& item : items) held->items.push_back(nlohmann::json::from_msgpack(item));
    };
    host->deliver(
        entity_address{type, id, 7}, *type->rpc_index(rpc),
        make_request(type_name, id, rpc, payload), steady_clock::now() + std::chrono::seconds(30),
        [s](reply_msg&& reply) {
          ++s->replies;
          s->replied_at = steady_clock::now();
          s->control->flush();
          s->control->finish();
          s->reply = std::move(reply);
        },
        true, {}, s->control);
    return s;
  }
  /// A plain request (credit is irrelevant; it still has a control, as a runner's has).
  streamed_ptr send(const std::string& type_name, const std::string& id, const std::string& rpc,
                    const nlohmann::json& payload) {
    return stream(type_name, id, rpc, payload, 0);
  }
  bool wait(const streamed_ptr& s, milliseconds timeout = milliseconds(10000)) {
    return run_until(
        io, [&] { return s->answered(); }, timeout);
  }
  void run_for(milliseconds duration) {
    run_until(
        io, [] { return false; }, duration);
  }
  /// What plugins logged, in this process or in theirs.
  std::string logged() const { return in_process_log.text() + child_log.text(); }
  const plugin_process* greeter_process() const {
    const auto* type = registry.find("Greeter");
    return type == nullptr ? nullptr : type->process.get();
  }

  stderr_capture child_log;  // before the registry: its children inherit the file
  cluster::testing::log_capture in_process_log;
  asio::io_context io;
  entity_registry registry;
  std::unique_ptr<entity_host> host;
  std::vector<streamed_ptr> sent;
  std::vector<request_msg> outbound;  // what handlers called or sent, in order
  /// Where the outbound requests go; the default answers Unavailable.
  std::function<void(request_msg, entity_host::reply_callback)> route =
      [](request_msg, entity_host::reply_callback done) {
        done(reply_msg::failure(errc::unavailable, "no router in this test"));
      };
};

TEST_P(plugin_stream_test, streams_every_item_in_order_within_the_credit_then_the_reply) {
  auto s = stream("Greeter", "many", "GreetMany", {{"name", "Ada"}, {"count", 100}}, 10);
  for (std::size_t granted = 10; granted < 100; granted += 10) {
    // The handler's next item waits for credit: nothing beyond it goes, and no reply.
    ASSERT_TRUE(run_until(io, [&] { return s->control->waiting() == 1 || s->answered(); }))
        << "stalled at " << s->items.size() << " items with credit for " << granted;
    ASSERT_FALSE(s->answered()) << s->reply->message;
    ASSERT_EQ(s->items.size(), granted);
    s->control->grant(10);
  }
  ASSERT_TRUE(wait(s));
  ASSERT_TRUE(s->reply->ok()) << s->reply->message;
  EXPECT_EQ(reply_json(*s->reply), (nlohmann::json{{"count", 100}}));
  ASSERT_EQ(s->items.size(), 100u);
  for (std::size_t i = 0; i < s->items.size(); ++i) {
    EXPECT_EQ(s->items[i]["index"], i);
    EXPECT_EQ(s->items[i]["message"], "Hello, Ada! from many Greeter 7");
  }
}

TEST_P(plugin_stream_test, credit_that_runs_out_with_the_last_item_still_lets_the_reply_go) {
  auto exact = stream("Greeter", "exact", "GreetMany", {{"name", "Ada"}, {"count", 5}}, 5);
  ASSERT_TRUE(wait(exact));
  EXPECT_EQ(exact->items.size(), 5u);
  EXPECT_EQ(reply_json(*exact->reply)["count"], 5);

  auto short_by_one = stream("Greeter", "short", "GreetMany", {{"name", "Ada"}, {"count", 5}}, 4);
  ASSERT_TRUE(run_until(io, [&] { return short_by_one->control->waiting() == 1; }));
  EXPECT_FALSE(short_by_one->answered());
  short_by_one->control->grant(1);
  ASSERT_TRUE(wait(short_by_one));
  EXPECT_EQ(short_by_one->items.size(), 5u);
  EXPECT_EQ(reply_json(*short_by_one->reply)["count"], 5);
}

TEST_P(plugin_stream_test, a_cancelled_request_still_in_the_mailbox_never_runs) {
  auto running = stream("Greeter", "busy", "GreetMany",
                        {{"name", "Ada"}, {"count", 3}, {"delay_ms", 60000}}, 0);
  auto queued = stream("Greeter", "busy", "GreetMany", {{"name", "Ada"}, {"count", 3}}, 0);
  ASSERT_TRUE(run_until(io, [&] { return !running->items.empty(); }));
  queued->control->cancel(errc::cancelled, "interrupted by the caller");
  ASSERT_TRUE(queued->answered()) << "a queued request is answered at once";
  EXPECT_EQ(queued->reply->code, errc::cancelled);
  // The cancel's code is what the caller gets: a deadline says DeadlineExceeded.
  running->control->cancel(errc::deadline_exceeded, "the stream made no progress for 10 ms");
  ASSERT_TRUE(wait(running));
  EXPECT_EQ(running->reply->code, errc::deadline_exceeded);
  run_for(milliseconds(50));
  EXPECT_TRUE(queued->items.empty());
  EXPECT_EQ(logged().find("GreetMany: cancelled (interrupted by the caller)"), std::string::npos)
      << "the queued request's handler ran";
}

TEST_P(plugin_stream_test, credit_held_out_past_the_protocols_bound_ends_the_stream) {
  auto s = stream("Greeter", "greedy", "GreetMany", {{"name", "Ada"}, {"count", 100}}, 1);
  ASSERT_TRUE(run_until(io, [&] { return s->control->waiting() == 1; }));
  EXPECT_FALSE(s->control->grant(max_stream_credit + 1));
  ASSERT_TRUE(wait(s));
  EXPECT_EQ(s->reply->code, errc::invalid_request) << s->reply->message;
}

TEST_P(plugin_stream_test, a_cancel_ends_a_sleeping_stream_at_once) {
  auto s = stream("Greeter", "slow", "GreetMany",
                  {{"name", "Ada"}, {"count", 1000}, {"delay_ms", 1000}}, 10);
  ASSERT_TRUE(run_until(io, [&] { return !s->items.empty() || s->answered(); }));
  ASSERT_FALSE(s->answered()) << s->reply->message;
  const auto cancelled_at = steady_clock::now();
  s->control->cancel(errc::cancelled, "the caller interrupted it");
  ASSERT_TRUE(wait(s, milliseconds(2000)));
  // Freed at once: a few ms here, in either mode; 100 ms is what callers may rely on.
  EXPECT_LT(s->replied_at - cancelled_at, milliseconds(100));
  EXPECT_EQ(s->reply->code, errc::cancelled) << s->reply->message;
  EXPECT_EQ(s->reply->message, "the caller interrupted it");
  EXPECT_EQ(s->items.size(), 1u);
  // In its own process the handler may not have taken the first item's ready yet when the
  // cancel comes: it stops at that yield then, not in the next sleep.
  ASSERT_TRUE(run_until(io, [&] {
    const auto text = logged();
    return text.find("GreetMany cancelled after 1 of 1000") != std::string::npos ||
           text.find("GreetMany cancelled after 0 of 1000") != std::string::npos;
  })) << logged();
}

TEST_P(plugin_stream_test, a_cancel_releases_a_stream_that_waits_for_credit) {
  auto s = stream("Greeter", "starved", "GreetMany", {{"name", "Ada"}, {"count", 100}}, 1);
  ASSERT_TRUE(run_until(io, [&] { return s->control->waiting() == 1 || s->answered(); }));
  ASSERT_EQ(s->items.size(), 1u);
  // Its ready goes back to the handler after the cancel: the handler sees it cancelled.
  s->control->cancel(errc::deadline_exceeded, "no progress for 10 ms");
  ASSERT_TRUE(wait(s, milliseconds(2000)));
  EXPECT_EQ(s->reply->code, errc::deadline_exceeded) << s->reply->message;
  EXPECT_EQ(s->items.size(), 1u);
  ASSERT_TRUE(run_until(io, [&] {
    return logged().find("GreetMany cancelled after 1 of 100") != std::string::npos;
  })) << logged();
}

TEST_P(plugin_stream_test, a_cancel_fails_the_pending_calls_of_the_handler_as_cancelled) {
  entity_host::reply_callback held;
  route = [&held](request_msg, entity_host::reply_callback done) { held = std::move(done); };
  auto s = send("Probe", "relay", "Relay", {{"target", "far"}, {"text", "hi"}});
  ASSERT_TRUE(run_until(io, [&] { return static_cast<bool>(held) || s->answered(); }));
  ASSERT_FALSE(s->answered()) << s->reply->message;
  s->control->cancel(errc::cancelled, "the caller went away");
  ASSERT_TRUE(wait(s, milliseconds(2000)));
  // Not the call's failure (an application error "Cancelled"): the handler knew it was
  // cancelled when its call failed, so it stopped as cancelled.
  EXPECT_EQ(s->reply->code, errc::cancelled) << s->reply->error << ": " << s->reply->message;
  EXPECT_EQ(s->reply->message, "the caller went away");
  // The call's late reply finds nobody waiting.
  held(reply_msg::success(bytes{0x80}));
  run_for(milliseconds(50));
  EXPECT_EQ(s->replies, 1);
}

TEST_P(plugin_stream_test, streaming_rpcs_are_known_as_such_to_the_entity_host) {
  // Streaming flags travel with the RPCs: GreetMany streams, Greet does not.
  const auto* greeter = registry.find("Greeter");
  ASSERT_NE(greeter, nullptr);
  EXPECT_TRUE(greeter->streams(*greeter->rpc_index("GreetMany")));
  EXPECT_FALSE(greeter->streams(*greeter->rpc_index("GreetVolatile")));
  EXPECT_TRUE(greeter->info.find_rpc("GreetMany")->stream);
}

TEST_P(plugin_stream_test, a_send_reaches_its_target_with_discard) {
  route = [this](request_msg request, entity_host::reply_callback done) {
    const auto* type = registry.find(request.entity_type);
    ASSERT_NE(type, nullptr);
    const auto rpc = type->rpc_index(request.rpc);
    ASSERT_TRUE(rpc.has_value());
    const std::string id = request.entity_id;
    // Accepted once queued, as a runner answers a discarded request.
    host->deliver(entity_address{type, id, 7}, *rpc, std::move(request),
                  steady_clock::now() + std::chrono::seconds(5), [](reply_msg&&) {});
    done(reply_msg::success({}));
  };
  auto told =
      send("Probe", "teller", "Tell", {{"target", "listener"}, {"sender", "t"}, {"value", 5}});
  ASSERT_TRUE(wait(told));
  ASSERT_TRUE(told->reply->ok()) << told->reply->message;
  ASSERT_EQ(outbound.size(), 1u);
  EXPECT_EQ(outbound[0].entity_type, "Probe");
  EXPECT_EQ(outbound[0].entity_id, "listener");
  EXPECT_EQ(outbound[0].rpc, "Append");
  EXPECT_TRUE(outbound[0].discard);
  auto after = send("Probe", "listener", "Append", {{"sender", "me"}, {"value", 6}});
  ASSERT_TRUE(wait(after));
  ASSERT_TRUE(after->reply->ok()) << after->reply->message;
  EXPECT_EQ(reply_json(*after->reply)["log"], (nlohmann::json{"t:5", "me:6"}));
}

TEST_P(plugin_stream_test, a_refused_send_fails_the_sender_that_awaits_it) {
  auto told =
      send("Probe", "teller", "Tell", {{"target", "nowhere"}, {"sender", "t"}, {"value", 1}});
  ASSERT_TRUE(wait(told));
  ASSERT_EQ(outbound.size(), 1u);
  EXPECT_TRUE(outbound[0].discard);
  EXPECT_EQ(told->reply->code, errc::application_error) << told->reply->message;
  EXPECT_EQ(told->reply->error, "Unavailable");
  EXPECT_EQ(told->reply->message, "no router in this test");
}

INSTANTIATE_TEST_SUITE_P(isolation, plugin_stream_test, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& mode) {
                           return mode.param ? "process" : "none";
                         });

/// A child that dies mid-stream: only a plugin in its own process survives that.
class plugin_stream_crash_test : public plugin_stream_test {};

TEST_P(plugin_stream_crash_test, a_crash_mid_stream_ends_the_request_and_the_next_child_streams) {
  auto s = stream("Greeter", "doomed", "GreetMany", {{"name", "Ada"}, {"count", 100}}, 1);
  ASSERT_TRUE(run_until(io, [&] { return s->control->waiting() == 1 || s->answered(); }));
  const auto* process = greeter_process();
  ASSERT_NE(process, nullptr);
  ASSERT_GT(process->pid(), 0);
  ::kill(process->pid(), SIGKILL);
  ASSERT_TRUE(wait(s));
  EXPECT_TRUE(s->reply->attempt_cut_short()) << s->reply->message;
  EXPECT_NE(s->reply->message.find("SIGKILL"), std::string::npos) << s->reply->message;
  // What the runner still holds for the dead child goes nowhere: the credit, the cancel.
  s->control->grant(10);
  s->control->cancel(errc::cancelled, "too late");

  auto next = stream("Greeter", "doomed", "GreetMany", {{"name", "Bo"}, {"count", 5}}, 2);
  ASSERT_TRUE(run_until(io, [&] { return next->control->waiting() == 1 || next->answered(); }));
  EXPECT_EQ(next->items.size(), 2u);
  next->control->grant(3);
  ASSERT_TRUE(wait(next));
  ASSERT_TRUE(next->reply->ok()) << next->reply->message;
  EXPECT_EQ(reply_json(*next->reply), (nlohmann::json{{"count", 5}}));
  ASSERT_EQ(next->items.size(), 5u);
  for (std::size_t i = 0; i < next->items.size(); ++i) EXPECT_EQ(next->items[i]["index"], i);
  EXPECT_EQ(process->restarts(), 1u);
}

INSTANTIATE_TEST_SUITE_P(isolation, plugin_stream_crash_test, ::testing::Values(true),
                         [](const ::testing::TestParamInfo<bool>&) { return "process"; });

}  // namespace
}  // namespace cluster::host
