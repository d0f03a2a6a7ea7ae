// The entity host on its own: one io_context, test plugins, no network.
#include "cluster/host/entity_host.hpp"

#include <gtest/gtest.h>

#include <chrono>
#include <optional>

#include "cluster/protocol/codec.hpp"
#include "cluster_fixture.hpp"
#include "log_capture.hpp"

namespace cluster::host {
namespace {

using cluster::testing::make_request;
using cluster::testing::reply_json;
using cluster::testing::run_until;
using cluster::testing::test_plugin;

/// Where one delivery's reply lands; `count` catches a second reply.
struct reply_slot {
  std::optional<reply_msg> reply;
  int count = 0;
  bool answered() const { return reply.has_value(); }
  const reply_msg& operator*() const { return *reply; }
  const reply_msg* operator->() const { return &*reply; }
};
using slot_ptr = std::shared_ptr<reply_slot>;

std::int64_t unix_ms() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

/// Every test runs twice: plugins in this process (runner.isolation = "none") and in
/// cluster-plugin-host children ("process"). What differs is said where it does.
class entity_host_test : public ::testing::TestWithParam<bool> {
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
    // As a runner's [entity.Plain] max_idle_ms = 100 would (Tuned keeps what it declares).
    registry.configure_type = [](const std::string& type, entity_options declared) {
      if (type == "Plain") declared.max_idle_ms = 100;
      return result<entity_options>(std::move(declared));
    };
    for (const char* plugin :
         {"probe_plugin", "shared_class_plugin", "context_constructor_plugin", "old_minor_plugin",
          "throwing_constructor_plugin", "constructor_call_plugin", "tuned_plugin"}) {
      const auto loaded = registry.load_file(test_plugin(plugin));
      ASSERT_TRUE(loaded) << plugin << ": " << loaded.error().message;
    }
  }
  void TearDown() override {
    for (const auto& slot : sent) EXPECT_LE(slot->count, 1) << "a delivery was answered twice";
  }

  void make_host(entity_host_options options = {}, entity_host::outbound_call call_out = {}) {
    if (!call_out)
      call_out = [](request_msg, entity_host::reply_callback done) {
        done(reply_msg::failure(errc::unavailable, "no router in this test"));
      };
    host = std::make_unique<entity_host>(io, options, std::move(call_out));
  }

  slot_ptr send(const std::string& type_name, const std::string& id, const std::string& rpc,
                const nlohmann::json& payload = nlohmann::json::object(),
                milliseconds timeout = milliseconds(5000)) {
    request_msg request = make_request(type_name, id, rpc, payload);
    return deliver(type_name, id, rpc, std::move(request), timeout);
  }
  slot_ptr deliver(const std::string& type_name, const std::string& id, const std::string& rpc,
                   request_msg request, milliseconds timeout = milliseconds(5000)) {
    const auto* type = registry.find(type_name);
    EXPECT_NE(type, nullptr) << type_name;
    auto slot = std::make_shared<reply_slot>();
    sent.push_back(slot);
    host->deliver(entity_address{type, id, 7}, *type->rpc_index(rpc), std::move(request),
                  steady_clock::now() + timeout, [slot](reply_msg&& reply) {
                    ++slot->count;
                    slot->reply = std::move(reply);
                  });
    return slot;
  }
  bool wait(const slot_ptr& slot) {
    return run_until(io, [&] { return slot->answered(); });
  }
  /// Delivers past the mailbox bound (as replayed persisted messages are).
  slot_ptr deliver_unbounded(const std::string& type_name, const std::string& id,
                             const std::string& rpc, const nlohmann::json& payload) {
    const auto* type = registry.find(type_name);
    auto slot = std::make_shared<reply_slot>();
    sent.push_back(slot);
    host->deliver(
        entity_address{type, id, 7}, *type->rpc_index(rpc),
        make_request(type_name, id, rpc, payload), steady_clock::now() + milliseconds(10000),
        [slot](reply_msg&& reply) {
          ++slot->count;
          slot->reply = std::move(reply);
        },
        false);
    return slot;
  }
  nlohmann::json stats(const std::string& type_name, const std::string& id) {
    const auto reply = send(type_name, id, "Stats");
    EXPECT_TRUE(wait(reply));
    EXPECT_TRUE((*reply)->ok()) << (*reply)->message;
    return reply_json(**reply);
  }

  asio::io_context io;
  entity_registry registry;
  std::unique_ptr<entity_host> host;
  std::vector<slot_ptr> sent;
};

TEST_P(entity_host_test, runs_one_entitys_messages_one_at_a_time_in_arrival_order) {
  make_host();
  std::vector<slot_ptr> replies;
  for (int i = 0; i < 100; ++i)
    replies.push_back(send("Probe", "ordered", "Append", {{"sender", "s"}, {"value", i}}));
  ASSERT_TRUE(wait(replies.back()));
  for (std::size_t i = 0; i < replies.size(); ++i) {
    ASSERT_TRUE(replies[i]->answered());
    ASSERT_TRUE((*replies[i])->ok()) << (*replies[i])->message;
    const auto log = reply_json(**replies[i])["log"];
    ASSERT_EQ(log.size(), i + 1);  // each message saw exactly the ones before it
    EXPECT_EQ(log.back(), "s:" + std::to_string(i));
  }
  EXPECT_EQ(host->activations(), 1u);
}

TEST_P(entity_host_test, holds_the_next_message_until_a_suspended_handler_finishes) {
  make_host();
  const auto sleeping = send("Probe", "one", "Sleep", {{"ms", 30}});
  const auto echo = send("Probe", "one", "Echo", {{"text", "after"}});
  const auto other = send("Probe", "two", "Echo", {{"text", "meanwhile"}});
  ASSERT_TRUE(wait(other));
  EXPECT_FALSE(sleeping->answered());  // another entity ran while this one slept
  ASSERT_TRUE(wait(echo));
  ASSERT_TRUE(sleeping->answered());  // the Echo behind it waited for the sleep to end
  EXPECT_TRUE((*sleeping)->ok());
  EXPECT_TRUE((*echo)->ok());
}

TEST_P(entity_host_test, answers_mailbox_full_beyond_the_bound) {
  make_host({3, milliseconds(60000)});
  std::vector<slot_ptr> replies;
  replies.push_back(send("Probe", "busy", "Sleep", {{"ms", 200}}));  // runs: not in the mailbox
  for (int i = 1; i < 8; ++i) replies.push_back(send("Probe", "busy", "Echo", {{"text", "x"}}));
  ASSERT_TRUE(run_until(io, [&] {
    return std::all_of(replies.begin(), replies.end(),
                       [](const slot_ptr& r) { return r->answered(); });
  }));
  std::size_t ok = 0, full = 0;
  for (const auto& reply : replies) {
    ok += (*reply)->ok() ? 1 : 0;
    full += (*reply)->code == errc::mailbox_full ? 1 : 0;
  }
  EXPECT_EQ(ok, 4u);
  EXPECT_EQ(full, 4u);
  EXPECT_TRUE((*replies[0])->ok());
}

TEST_P(entity_host_test, answers_deadline_exceeded_for_a_message_that_expired_in_the_mailbox) {
  make_host();
  const auto sleeping = send("Probe", "late", "Sleep", {{"ms", 50}});
  const auto expired = send("Probe", "late", "Echo", {{"text", "x"}}, milliseconds(1));
  ASSERT_TRUE(wait(expired));
  EXPECT_EQ((*expired)->code, errc::deadline_exceeded);
  ASSERT_TRUE(wait(sleeping));
  EXPECT_TRUE((*sleeping)->ok());
}

TEST_P(entity_host_test, passivates_entities_idle_longer_than_the_configured_time) {
  make_host({4096, milliseconds(50)});
  const auto first = send("Probe", "sleepy", "Echo", {{"text", "a"}});
  ASSERT_TRUE(wait(first));
  EXPECT_EQ(host->active_entities(), 1u);
  ASSERT_TRUE(run_until(io, [&] { return host->active_entities() == 0; }));
  EXPECT_EQ(host->passivations(), 1u);
  const auto second = send("Probe", "sleepy", "Echo", {{"text", "b"}});
  ASSERT_TRUE(wait(second));
  EXPECT_EQ(host->activations(), 2u);  // a fresh instance after passivation
  EXPECT_GT(reply_json(**second)["activation"].get<int>(),
            reply_json(**first)["activation"].get<int>());
}

TEST_P(entity_host_test, fails_only_the_request_whose_handler_throws) {
  make_host();
  const auto failed = send("Probe", "fragile", "Fail");
  const auto rejected = send("Probe", "fragile", "Reject");
  const auto echo = send("Probe", "fragile", "Echo", {{"text", "still here"}});
  ASSERT_TRUE(wait(echo));
  EXPECT_EQ((*failed)->code, errc::defect);
  EXPECT_NE((*failed)->message.find("probe failed on purpose"), std::string::npos);
  EXPECT_EQ((*rejected)->code, errc::application_error);
  EXPECT_EQ((*rejected)->error, "Rejected");
  ASSERT_TRUE((*echo)->ok());
  EXPECT_EQ(reply_json(**echo)["text"], "still here");
  EXPECT_EQ(host->activations(), 1u);  // the entity survived its failing handler
}

TEST_P(entity_host_test, answers_bad_payload_for_a_request_of_the_wrong_shape) {
  make_host();
  const auto typed = send("Probe", "typed", "Append", {{"sender", 12}, {"value", "not a number"}});
  request_msg garbage = make_request("Probe", "typed", "Echo");
  garbage.payload = {0xc1, 0xff, 0x00};  // 0xc1 is never valid MessagePack
  const auto raw = deliver("Probe", "typed", "Echo", std::move(garbage));
  ASSERT_TRUE(wait(raw));
  EXPECT_EQ((*typed)->code, errc::bad_payload);
  EXPECT_EQ((*raw)->code, errc::bad_payload);
}

TEST_P(entity_host_test, evicts_entities_of_shards_it_no_longer_owns) {
  make_host();
  ASSERT_TRUE(wait(send("Probe", "moving", "Echo", {{"text", "a"}})));
  host->evict_shards([](const std::string&, std::int32_t shard) { return shard != 7; });
  EXPECT_EQ(host->active_entities(), 0u);
  EXPECT_EQ(host->passivations(), 1u);
}

TEST_P(entity_host_test, stop_answers_queued_messages_and_lets_the_running_one_finish) {
  make_host();
  const auto running = send("Probe", "stopping", "Sleep", {{"ms", 20}});
  const auto queued = send("Probe", "stopping", "Echo", {{"text", "x"}});
  host->stop();
  ASSERT_TRUE(queued->answered());
  EXPECT_EQ((*queued)->code, errc::shutting_down);
  ASSERT_TRUE(wait(running));
  EXPECT_TRUE((*running)->ok());
  ASSERT_TRUE(run_until(io, [&] { return host->active_entities() == 0; }));
  const auto refused = send("Probe", "stopping", "Echo", {{"text", "y"}});
  ASSERT_TRUE(refused->answered());
  EXPECT_EQ((*refused)->code, errc::shutting_down);
}

TEST_P(entity_host_test, activates_an_entity_without_a_message_once) {
  make_host();
  const auto* probe = registry.find("Probe");
  ASSERT_NE(probe, nullptr);
  const entity_address address{probe, "early", 7};
  ASSERT_TRUE(host->activate_now(address));
  EXPECT_EQ(host->activations(), 1u);
  EXPECT_EQ(host->active_entities(), 1u);
  EXPECT_TRUE(host->shard_active("default", 7));
  ASSERT_TRUE(host->activate_now(address));  // active already: nothing happens
  EXPECT_EQ(host->activations(), 1u);
  // Its first message finds the instance made above.
  ASSERT_TRUE(wait(send("Probe", "early", "Echo", {{"text", "a"}})));
  EXPECT_EQ(host->activations(), 1u);
  EXPECT_EQ(host->active_entities(), 1u);

  host->stop();
  const auto refused = host->activate_now(entity_address{probe, "late", 7});
  ASSERT_FALSE(refused);
  EXPECT_EQ(refused.error().code, errc::shutting_down);
}

TEST_P(entity_host_test, says_why_an_activation_without_a_message_failed) {
  if (isolated()) GTEST_SKIP() << "a plugin process reports it with the first message";
  make_host();
  const auto failed = host->activate_now(entity_address{registry.find("Fragile"), "f0", 7});
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().code, errc::defect);
  EXPECT_NE(failed.error().message.find("failed in its constructor"), std::string::npos);
  EXPECT_EQ(host->active_entities(), 0u);
}

TEST_P(entity_host_test, a_stop_request_ends_a_running_handlers_sleep_at_once) {
  make_host();
  const auto started = steady_clock::now();
  const auto sleeping = send("Probe", "napping", "Sleep", {{"ms", 60000}}, milliseconds(90000));
  EXPECT_EQ(host->active_entities(), 1u);
  // The handler is running (in the runner) or its frame is on its way (in a plugin's
  // process, ahead of the stop frame): either way the stop reaches its sleep.
  host->request_stop("Probe", "napping");
  ASSERT_TRUE(wait(sleeping));
  EXPECT_TRUE((*sleeping)->ok()) << (*sleeping)->message;
  EXPECT_LT(steady_clock::now() - started, milliseconds(10000));

  // A shard moving away asks its busy entities to stop too.
  const auto moving = send("Probe", "moving", "Sleep", {{"ms", 60000}}, milliseconds(90000));
  host->evict_shards([](const std::string&, std::int32_t) { return false; });
  ASSERT_TRUE(wait(moving));
  EXPECT_TRUE((*moving)->ok()) << (*moving)->message;
  EXPECT_LT(steady_clock::now() - started, milliseconds(20000));
}

TEST_P(entity_host_test, answers_a_clear_defect_when_an_activation_fails) {
  make_host();
  const auto touched = send("Fragile", "f1", "Touch");
  // In the runner the refusal is at once (no instance to queue for); a plugin's process
  // reports it with the first message.
  if (isolated()) {
    ASSERT_TRUE(wait(touched));
  }
  ASSERT_TRUE(touched->answered());
  EXPECT_EQ((*touched)->code, errc::defect);
  EXPECT_EQ((*touched)->message,
            "activation of Fragile/f1 failed in its constructor: activation failed: cannot "
            "activate");
  if (!isolated()) {
    EXPECT_EQ(host->activations(), 0u);
    EXPECT_EQ(host->active_entities(), 0u);
  }
  // The next message tries the constructor again, and fails the same way.
  const auto again = send("Fragile", "f1", "Touch");
  ASSERT_TRUE(wait(again));
  EXPECT_EQ((*again)->message, (*touched)->message);
  const auto echo = send("Probe", "p1", "Echo", {{"text", "fine"}});
  ASSERT_TRUE(wait(echo));
  EXPECT_TRUE((*echo)->ok());
}

TEST_P(entity_host_test, gives_a_constructor_that_takes_the_context_a_working_one) {
  make_host();
  cluster::testing::log_capture log;
  const auto before = unix_ms();
  const auto hello = send("Chatty", "c1", "Hello");
  ASSERT_TRUE(wait(hello));
  ASSERT_TRUE((*hello)->ok()) << (*hello)->message;
  const auto reply = reply_json(**hello);
  EXPECT_EQ(reply["created_for"], "c1");
  EXPECT_EQ(reply["created_in_shard"], 7);
  EXPECT_GE(reply["created_at_ms"].get<std::int64_t>(), before);
  EXPECT_LE(reply["created_at_ms"].get<std::int64_t>(), unix_ms());
  // A plugin's process logs to its own stderr (the runner's log), not through this logger.
  if (!isolated()) {
    EXPECT_NE(log.text().find("Chatty/c1: activating c1 in group default"), std::string::npos)
        << log.text();
  }
}

TEST_P(entity_host_test, refuses_a_call_from_a_constructor_later_and_without_crashing) {
  std::size_t outbound = 0;
  make_host({}, [&outbound](request_msg, entity_host::reply_callback done) {
    ++outbound;
    done(reply_msg::failure(errc::unavailable, "no router in this test"));
  });
  const auto first = send("EagerCaller", "e", "Report");  // activates: create calls out
  if (isolated()) {
    ASSERT_TRUE(wait(first));
  }
  ASSERT_TRUE(first->answered());        // Report replies synchronously
  EXPECT_EQ((*first)->error, "NotYet");  // the refusal did not run inside `call` or `create`
  io.poll();                             // runs what is ready: the posted refusal
  const auto report = send("EagerCaller", "e", "Report");
  if (isolated()) {
    ASSERT_TRUE(wait(report));
  }
  ASSERT_TRUE(report->answered());
  EXPECT_EQ((*report)->error, "Later");
  EXPECT_EQ((*report)->message,
            std::to_string(CLUSTER_STATUS_CALL_FAILED) +
                " InvalidRequest: an entity cannot call other entities from its constructor");
  EXPECT_EQ(outbound, 0u);  // nothing left the runner
}

TEST_P(entity_host_test, dispatches_two_types_on_one_class_to_their_own_handlers) {
  make_host();
  const auto left = send("LeftTwin", "t", "Who");
  const auto right = send("RightTwin", "t", "Who");
  const auto extra = send("RightTwin", "t", "Extra");
  ASSERT_TRUE(wait(left));
  ASSERT_TRUE(wait(right));
  ASSERT_TRUE(wait(extra));
  ASSERT_TRUE((*left)->ok()) << (*left)->message;
  ASSERT_TRUE((*right)->ok()) << (*right)->message;
  EXPECT_EQ(reply_json(**left)["handler"], "left");
  EXPECT_EQ(reply_json(**left)["entity_type"], "LeftTwin");
  EXPECT_EQ(reply_json(**right)["handler"], "right");
  EXPECT_EQ(reply_json(**right)["entity_type"], "RightTwin");
  EXPECT_EQ(reply_json(**extra)["handler"], "extra");
}

TEST_P(entity_host_test, runs_a_plugin_built_against_an_older_minor_with_the_defaults) {
  make_host();
  const auto ping = send("Elder", "e", "Ping");
  ASSERT_TRUE(wait(ping));
  // Elder answers TypeDataNotDefaulted if it is handed the garbage past its struct_size.
  EXPECT_TRUE((*ping)->ok()) << (*ping)->error << ": " << (*ping)->message;
  EXPECT_EQ(host->activations(), 1u);
}

TEST_P(entity_host_test, sends_a_handlers_call_out_and_resumes_it_with_the_reply) {
  std::vector<request_msg> outbound;
  make_host({}, [&outbound](request_msg request, entity_host::reply_callback done) {
    outbound.push_back(request);
    done(reply_msg::success(pack_bytes(std::map<std::string, std::string>{{"text", "from afar"}})));
  });
  const auto relayed = send("Probe", "caller", "Relay", {{"target", "callee"}, {"text", "hi"}});
  ASSERT_TRUE(wait(relayed));
  ASSERT_EQ(outbound.size(), 1u);
  EXPECT_EQ(outbound[0].entity_type, "Probe");
  EXPECT_EQ(outbound[0].entity_id, "callee");
  EXPECT_EQ(outbound[0].rpc, "Echo");
  ASSERT_TRUE((*relayed)->ok()) << (*relayed)->message;
  EXPECT_EQ(reply_json(**relayed)["text"], "from afar");
}

INSTANTIATE_TEST_SUITE_P(isolation, entity_host_test, ::testing::Values(false, true),
                         [](const ::testing::TestParamInfo<bool>& mode) {
                           return mode.param ? "process" : "none";
                         });

/// What only a plugin in its own process survives: the faulty plugin's crashes.
class crashing_plugin_test : public ::testing::Test {
 protected:
  void SetUp() override {
    isolation_options options;
    options.plugin_host = std::string(CLUSTER_BIN_DIR) + "/cluster-plugin-host";
    options.handler_timeout = milliseconds(300);
    registry.isolate(io, options);
    registry.on_instances_lost = [this](const plugin_process* process) {
      host->instances_lost(process);
    };
    ASSERT_TRUE(registry.load_file(CLUSTER_FAULTY_PLUGIN));
    ASSERT_TRUE(registry.load_file(test_plugin("probe_plugin")));
    host = std::make_unique<entity_host>(io, entity_host_options{}, [](request_msg, auto done) {
      done(reply_msg::failure(errc::unavailable, "no router in this test"));
    });
  }
  std::shared_ptr<std::optional<reply_msg>> send(const std::string& type_name,
                                                 const std::string& id, const std::string& rpc,
                                                 const nlohmann::json& payload) {
    const auto* type = registry.find(type_name);
    auto slot = std::make_shared<std::optional<reply_msg>>();
    host->deliver(entity_address{type, id, 1}, *type->rpc_index(rpc),
                  make_request(type_name, id, rpc, payload),
                  steady_clock::now() + milliseconds(10000),
                  [slot](reply_msg&& reply) { *slot = std::move(reply); });
    return slot;
  }
  bool wait(const std::shared_ptr<std::optional<reply_msg>>& slot) {
    return run_until(io, [&] { return slot->has_value(); });
  }
  using seconds = std::chrono::seconds;

  asio::io_context io;
  entity_registry registry;
  std::unique_ptr<entity_host> host;
};

TEST_F(crashing_plugin_test, a_crash_cuts_short_what_ran_in_the_process_and_keeps_the_queue) {
  const auto warm = send("Faulty", "a", "Who", nlohmann::json::object());
  ASSERT_TRUE(wait(warm));
  const auto first_pid = reply_json(**warm)["pid"].get<long>();
  const auto crash = send("Faulty", "a", "CrashVolatile", {{"mode", "segfault"}});
  const auto queued = send("Faulty", "a", "Who", nlohmann::json::object());  // waits its turn
  const auto other_plugin = send("Probe", "p", "Echo", {{"text", "unaffected"}});
  ASSERT_TRUE(wait(crash));
  EXPECT_EQ((*crash)->code, errc::defect);
  EXPECT_TRUE((*crash)->attempt_cut_short());
  EXPECT_EQ((*crash)->message,
            "plugin libfaulty.so crashed: SIGSEGV while running Faulty/a CrashVolatile");
  // The queued message ran in the next process, in a new activation of the same entity.
  ASSERT_TRUE(wait(queued));
  ASSERT_TRUE((*queued)->ok()) << (*queued)->message;
  EXPECT_NE(reply_json(**queued)["pid"].get<long>(), first_pid);
  EXPECT_EQ(reply_json(**queued)["seen"], 1);
  ASSERT_TRUE(wait(other_plugin));
  EXPECT_TRUE((*other_plugin)->ok());
  EXPECT_EQ(registry.find("Faulty")->process->restarts(), 1u);
  EXPECT_EQ(registry.find("Probe")->process->restarts(), 0u);
}

TEST_F(crashing_plugin_test, a_handler_past_the_timeout_is_killed_and_named) {
  const auto loop = send("Faulty", "l", "CrashVolatile", {{"mode", "loop"}});
  ASSERT_TRUE(wait(loop));
  EXPECT_TRUE((*loop)->attempt_cut_short());
  EXPECT_EQ((*loop)->message,
            "plugin libfaulty.so killed: Faulty/l CrashVolatile ran past "
            "runner.handler_timeout_ms (300 ms)");
  const auto after = send("Faulty", "l", "CrashVolatile", {{"mode", "ok"}});
  ASSERT_TRUE(wait(after));
  EXPECT_TRUE((*after)->ok()) << (*after)->message;
}

TEST_F(crashing_plugin_test, refuses_a_plugin_the_host_cannot_load_with_its_reason) {
  const auto refused = registry.load_file(test_plugin("wrong_abi_plugin"));
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().message.find("ABI major version"), std::string::npos)
      << refused.error().message;
}

}  // namespace
}  // namespace cluster::host

namespace cluster::host {
namespace {

TEST_P(entity_host_test, runs_read_only_calls_side_by_side_up_to_the_types_concurrency) {
  make_host();
  std::vector<slot_ptr> reads;
  for (int i = 0; i < 6; ++i)
    reads.push_back(deliver_unbounded("Tuned", "c", "Read", {{"ms", 150}}));
  for (const auto& read : reads) {
    ASSERT_TRUE(wait(read));
    ASSERT_TRUE((*read)->ok()) << (*read)->message;
  }
  const auto seen = stats("Tuned", "c");
  EXPECT_EQ(seen["peak_reads"], 4);  // Tuned declares concurrency 4
  EXPECT_EQ(seen["write_overlaps"], 0);
}

TEST_P(entity_host_test, runs_a_write_alone_between_the_reads_before_and_after_it) {
  make_host();
  const auto first = deliver_unbounded("Tuned", "w", "Read", {{"ms", 120}});
  const auto second = deliver_unbounded("Tuned", "w", "Read", {{"ms", 120}});
  const auto write = deliver_unbounded("Tuned", "w", "Write", {{"ms", 30}});
  const auto after = deliver_unbounded("Tuned", "w", "Read", {{"ms", 30}});
  for (const auto& call : {first, second, write, after}) {
    ASSERT_TRUE(wait(call));
    ASSERT_TRUE((*call)->ok()) << (*call)->message;
  }
  const auto started = [](const slot_ptr& call) { return reply_json(**call)["started_ms"]; };
  const auto ended = [](const slot_ptr& call) { return reply_json(**call)["ended_ms"]; };
  EXPECT_GE(started(write), ended(first));
  EXPECT_GE(started(write), ended(second));
  EXPECT_GE(started(after), ended(write));  // a read after a write does not overtake it
  const auto seen = stats("Tuned", "w");
  EXPECT_EQ(seen["peak_reads"], 2);
  EXPECT_EQ(seen["write_overlaps"], 0);
}

TEST_P(entity_host_test, runs_read_only_calls_one_at_a_time_by_default) {
  make_host();
  std::vector<slot_ptr> reads;
  for (int i = 0; i < 3; ++i)
    reads.push_back(deliver_unbounded("Plain", "p", "Read", {{"ms", 40}}));
  for (const auto& read : reads) ASSERT_TRUE(wait(read));
  EXPECT_EQ(stats("Plain", "p")["peak_reads"], 1);
}

TEST_P(entity_host_test, bounds_a_types_mailbox_by_its_own_capacity) {
  make_host();  // the runner's default: 4096
  const auto running = send("Tuned", "m", "Write", {{"ms", 200}});
  std::vector<slot_ptr> queued;
  for (int i = 0; i < 4; ++i) queued.push_back(send("Tuned", "m", "Write", {{"ms", 0}}));
  ASSERT_TRUE(wait(queued.back()));
  EXPECT_EQ((*queued.back())->code, errc::mailbox_full) << (*queued.back())->message;
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(wait(queued[i]));
    EXPECT_TRUE((*queued[i])->ok()) << (*queued[i])->message;  // Tuned declares 3
  }
}

TEST_P(entity_host_test, passivates_by_the_types_idle_time_and_never_a_kept_alive_one) {
  entity_host_options options;
  options.passivate_after = milliseconds(60000);
  make_host(options);
  ASSERT_TRUE(wait(send("Plain", "idle", "Stats")));  // configured: 100 ms
  ASSERT_TRUE(wait(send("Tuned", "kept", "Stats")));  // keep-alive (and 250 ms declared)
  EXPECT_TRUE(run_until(
      io, [&] { return host->passivations() == 1; }, milliseconds(5000)));
  run_until(
      io, [] { return false; }, milliseconds(600));
  EXPECT_EQ(host->passivations(), 1u);
  EXPECT_EQ(host->active_entities(), 1u);
  EXPECT_EQ(host->activations(), 2u);  // the kept one was never activated again
}

TEST_P(entity_host_test, hands_handlers_the_fencing_token_of_their_shard) {
  make_host();
  host->fencing_token = [](const std::string& group, std::int32_t shard) -> std::int64_t {
    return group == "default" && shard == 7 ? 41 : 0;
  };
  EXPECT_EQ(stats("Tuned", "f")["fencing_token"], 41);
}

}  // namespace
}  // namespace cluster::host
