// The plugin test kit (<cluster/testing.hpp>) on this repository's plugins: the Probe test
// plugin linked into this binary, the example plugins and test plugins loaded from their
// files, and entity types declared here with the SDK behind entry functions of their own.
#include <gtest/gtest.h>

#include <cluster/testing.hpp>

#include "cluster/protocol/shard.hpp"
#include "probe.hpp"  // the Probe type linked into this test

namespace {

using cluster::testing::bytes;
using cluster::testing::call_options;
using cluster::testing::kit;
using cluster::testing::kit_options;

struct EchoAsArray {
  std::string text;
  MSGPACK_DEFINE(text);
};
struct Relay {
  struct Request {
    std::string target;
    std::string text;
    MSGPACK_DEFINE_MAP(target, text);
  };
  using Reply = Echo::Reply;
};
struct Stamp {
  using Request = cluster::empty;
  struct Reply {
    std::int64_t at_ms = 0;
    MSGPACK_DEFINE_MAP(at_ms);
  };
};

// The RPCs of plugins/counter and plugins/greeter, loaded from their files.
struct Increment {
  struct Request {
    std::int64_t by = 1;
    MSGPACK_DEFINE_MAP(by);
  };
  struct Reply {
    std::int64_t value = 0;
    MSGPACK_DEFINE_MAP(value);
  };
};
struct Get {
  using Request = cluster::empty;
  using Reply = Increment::Reply;
};
struct Greet {
  struct Request {
    std::string name;
    MSGPACK_DEFINE_MAP(name);
  };
  struct Reply {
    std::string message;
    MSGPACK_DEFINE_MAP(message);
  };
};

// --- entity types declared here, each plugin behind its own entry -------------------------
struct Charge {
  struct Request {
    std::string order;
    std::int64_t cents = 0;
    MSGPACK_DEFINE_MAP(order, cents);
  };
  struct Reply {
    std::string receipt;
    MSGPACK_DEFINE_MAP(receipt);
  };
};

// Checkout.Pay (persisted) charges through Billing.Charge with the order as primary key.
class Checkout {
 public:
  explicit Checkout(cluster::context& ctx) {
    ctx.log_info("checkout " + std::string(ctx.entity_id()) + " opened");
  }
  cluster::task<Charge::Reply> pay(const Charge::Request& request, cluster::context& ctx) {
    ++paid_;
    const std::string key = "pay:" + request.order;
    const auto receipt =
        co_await ctx.call<Charge::Reply>("Billing", "main", "Charge", request, key.c_str());
    co_return Charge::Reply{receipt.receipt + " #" + std::to_string(paid_)};
  }

 private:
  int paid_ = 0;
};

const cluster_plugin_descriptor* checkout_entry(const cluster_load_context*) {
  static const cluster::detail::plugin_record plugin{
      cluster::plugin("checkout").version("3.1.4"),
      cluster::entity<Checkout>("Checkout")
          .group("shop")
          .rpc<Charge>("Pay", &Checkout::pay, cluster::persisted)};
  return plugin.descriptor();
}

// Feed.Numbers streams 0..count-1 (a pause of `pause_ms` before each after the first), then
// their sum; Feed.Notify sends Billing.Charge without waiting; Feed.Wait awaits a call that
// a cancel must end.
struct Numbers {
  struct Request {
    int count = 0;
    std::int64_t pause_ms = 0;
    MSGPACK_DEFINE_MAP(count, pause_ms);
  };
  using Item = int;
  struct Reply {
    int sum = 0;
    MSGPACK_DEFINE_MAP(sum);
  };
};
struct Notify {
  using Request = Charge::Request;
  using Reply = cluster::empty;
};

class Feed {
 public:
  cluster::stream<int, Numbers::Reply> numbers(const Numbers::Request& request,
                                               cluster::context& ctx) {
    int sum = 0;
    try {
      for (int n = 0; n < request.count; ++n) {
        if (n > 0 && request.pause_ms > 0) co_await ctx.sleep_ms(request.pause_ms);
        co_yield n;
        sum += n;
      }
    } catch (const cluster::cancelled&) {
      ctx.log_info("numbers cancelled at " + std::to_string(sum));
      throw;
    }
    co_return Numbers::Reply{sum};
  }
  cluster::task<cluster::empty> notify(const Charge::Request& request, cluster::context& ctx) {
    co_await ctx.send("Billing", "main", "Charge", request);
    co_return cluster::empty{};
  }
  cluster::task<Charge::Reply> wait(const Charge::Request&, cluster::context& ctx) {
    try {
      // Feed/slow streams its second number after a minute: the call waits that long.
      const Numbers::Request slow{2, 60000};
      const auto reply = co_await ctx.call<Numbers::Reply>("Feed", "slow", "Numbers", slow);
      co_return Charge::Reply{std::to_string(reply.sum)};
    } catch (const cluster::cancelled&) {
      ctx.log_info("wait cancelled");
      throw;
    }
  }
};

const cluster_plugin_descriptor* feed_entry(const cluster_load_context*) {
  static const cluster::detail::plugin_record plugin{cluster::plugin("feed"),
                                                     cluster::entity<Feed>("Feed")
                                                         .rpc<Numbers>("Numbers", &Feed::numbers)
                                                         .rpc<Notify>("Notify", &Feed::notify)
                                                         .rpc<Charge>("Wait", &Feed::wait)};
  return plugin.descriptor();
}

const cluster_plugin_descriptor* failing_entry(const cluster_load_context* load) {
  const char reason[] = "no configuration";
  std::memcpy(load->error, reason, sizeof reason);
  return nullptr;
}

kit probe_kit(kit_options options = {}) { return kit(std::move(options)); }

// --- calls and the errors a cluster answers ---------------------------------------------------
TEST(plugin_kit, answers_a_typed_call_through_the_plugins_descriptor) {
  kit k;
  auto reply = k.call<Echo>("Probe", "p1", "Echo", {"hi"});
  ASSERT_TRUE(reply) << reply.error();
  EXPECT_EQ(reply->text, "hi");
  EXPECT_EQ(reply->entity_id, "p1");
  EXPECT_EQ(reply->shard, 1);  // no shard_of given
}

TEST(plugin_kit, computes_shards_with_the_function_it_is_given) {
  kit_options options;
  options.shard_of = [](std::string_view id) { return cluster::shard_for(id, 300); };
  auto k = probe_kit(options);
  auto reply = k.call<Echo>("Probe", "Test", "Echo", {"hi"});
  ASSERT_TRUE(reply) << reply.error();
  EXPECT_EQ(reply->shard, cluster::shard_for("Test", 300));
}

TEST(plugin_kit, reports_errors_with_the_codes_tags_and_texts_of_a_runner) {
  kit k;
  auto rejected = k.call<Nothing>("Probe", "p1", "Reject", {});
  ASSERT_FALSE(rejected);
  EXPECT_EQ(rejected.error().code, "ApplicationError");
  EXPECT_EQ(rejected.error().tag, "Rejected");
  EXPECT_EQ(rejected.error().message, "probe rejected the request");

  auto failed = k.call<Nothing>("Probe", "p1", "Fail", {});
  ASSERT_FALSE(failed);
  EXPECT_EQ(failed.error().code, "Defect");
  EXPECT_EQ(failed.error().message, "probe failed on purpose");

  auto bad = k.call_raw("Probe", "p1", "Echo", cluster::testing::detail::encode_bytes(42));
  ASSERT_FALSE(bad);
  EXPECT_EQ(bad.error().code, "BadPayload");
  EXPECT_EQ(bad.error().message.rfind("payload does not decode as Probe.Echo's request: ", 0), 0u)
      << bad.error();

  auto no_rpc = k.call<Nothing>("Probe", "p1", "Nope", {});
  EXPECT_EQ(no_rpc.error().code, "UnknownRpc");
  EXPECT_EQ(no_rpc.error().message, "entity type 'Probe' has no RPC 'Nope'");
  EXPECT_EQ(k.call<Nothing>("Nobody", "p1", "Echo", {}).error().code, "UnknownEntityType");
}

TEST(plugin_kit, a_reply_of_another_shape_is_a_bad_reply_not_a_crash) {
  kit k;
  struct Wrong {
    using Request = Echo::Request;
    using Reply = EchoAsArray;  // Echo answers a map
  };
  auto reply = k.call<Wrong>("Probe", "p1", "Echo", {"hi"});
  ASSERT_FALSE(reply);
  EXPECT_EQ(reply.error().code, "BadReply");
  EXPECT_THROW(reply.value(), std::logic_error);
}

TEST(plugin_kit, runs_an_entitys_messages_one_at_a_time_in_order) {
  kit k;
  auto sleeping = k.send<Sleep>("Probe", "p1", "Sleep", {100});
  auto queued = k.send<Echo>("Probe", "p1", "Echo", {"after"});
  auto other = k.send<Echo>("Probe", "p2", "Echo", {"elsewhere"});
  EXPECT_FALSE(sleeping.done());
  EXPECT_FALSE(queued.done()) << "ran while the entity's previous message was running";
  EXPECT_TRUE(other.done()) << "another entity waited for p1";
  k.advance_ms(100);
  ASSERT_TRUE(sleeping.done());
  ASSERT_TRUE(queued.done());
  EXPECT_EQ(sleeping.get()->slept_ms, 100);

  for (int i = 0; i < 3; ++i) (void)k.send<Append>("Probe", "log", "Append", {"t", i});
  auto log = k.call<Append>("Probe", "log", "Append", {"t", 3});
  ASSERT_TRUE(log) << log.error();
  EXPECT_EQ(log->log, (std::vector<std::string>{"t:0", "t:1", "t:2", "t:3"}));
}

// --- the fake clock -------------------------------------------------------------------------
TEST(plugin_kit, a_sleep_resumes_only_when_the_clock_passes_it) {
  kit k;
  const auto start = k.now_ms();
  auto pending = k.send<Sleep>("Probe", "p1", "Sleep", {5'000});
  EXPECT_EQ(k.call<Sleep>("Probe", "p9", "Sleep", {5'000}).error().code, "Pending");
  k.advance_ms(4'999);
  EXPECT_FALSE(pending.done());
  EXPECT_EQ(pending.get().error().code, "Pending");
  k.advance_ms(1);
  ASSERT_TRUE(pending.done());
  EXPECT_EQ(pending.get()->slept_ms, 5'000);
  EXPECT_EQ(k.now_ms(), start + 5'000);
}

TEST(plugin_kit, a_persisted_call_with_deliver_at_runs_once_the_clock_reaches_it) {
  kit k;
  call_options at;
  at.deliver_at_ms = k.now_ms() + 1'000;
  auto stamp = k.send<Stamp>("Probe", "p1", "Stamp", {}, at);
  EXPECT_FALSE(k.active("Probe", "p1"));
  k.advance_ms(999);
  EXPECT_FALSE(stamp.done());
  k.advance_ms(5'000);  // delivered at its own time, not at the end of the step
  ASSERT_TRUE(stamp.done());
  EXPECT_EQ(stamp.get()->at_ms, *at.deliver_at_ms);

  // Volatile RPCs ignore deliver_at, as in a runner.
  at.deliver_at_ms = k.now_ms() + 1'000;
  EXPECT_TRUE(k.call<Echo>("Probe", "p1", "Echo", {"now"}, at));
}

// --- calls to other entities: the plugin's own, stubs, unknown types --------------------------
TEST(plugin_kit, routes_an_entitys_call_to_the_plugins_own_types_and_records_it) {
  kit k;
  auto reply = k.call<Relay>("Probe", "front", "Relay", {"back", "hi"});
  ASSERT_TRUE(reply) << reply.error();
  EXPECT_EQ(reply->entity_id, "back");
  ASSERT_EQ(k.calls().size(), 1u);
  EXPECT_EQ(k.calls()[0].from_id, "front");
  EXPECT_EQ(k.calls()[0].entity_id, "back");
  EXPECT_EQ(k.calls()[0].request<Echo::Request>().text, "hi");
  EXPECT_TRUE(k.active("Probe", "back"));
}

TEST(plugin_kit, a_stub_answers_in_place_of_the_called_type) {
  kit k;
  k.stub<Echo>("Probe", "Echo", [](const Echo::Request& request) {
    return Echo::Reply{"stubbed " + request.text, "stub", 0, 0};
  });
  auto reply = k.call<Relay>("Probe", "front", "Relay", {"back", "hi"});
  ASSERT_TRUE(reply) << reply.error();
  EXPECT_EQ(reply->text, "stubbed hi");
  EXPECT_FALSE(k.active("Probe", "back"));
}

TEST(plugin_kit, a_stubs_error_reaches_the_caller_as_the_cluster_would_send_it) {
  kit k(&checkout_entry);
  k.stub<Charge>("Billing", "Charge", [](const Charge::Request& request) -> Charge::Reply {
    if (request.cents > 100) throw cluster::app_error("Declined", "over the limit");
    throw cluster::call_error("Unavailable", "billing is down");
  });
  auto declined = k.call<Charge>("Checkout", "c1", "Pay", {"o1", 500});
  ASSERT_FALSE(declined);
  // The SDK turns the failed call into call_error; uncaught, it is the handler's error.
  EXPECT_EQ(declined.error().code, "ApplicationError");
  EXPECT_EQ(declined.error().tag, "Declined");
  EXPECT_EQ(k.call<Charge>("Checkout", "c1", "Pay", {"o2", 5}).error().tag, "Unavailable");
}

TEST(plugin_kit, an_unstubbed_type_fails_like_a_type_no_runner_serves) {
  kit k(&checkout_entry);
  auto reply = k.call<Charge>("Checkout", "c1", "Pay", {"o1", 5});
  ASSERT_FALSE(reply);
  EXPECT_EQ(reply.error().tag, "UnknownEntityType");
  ASSERT_EQ(k.calls_to("Billing", "Charge"), 1u);
  EXPECT_EQ(k.calls()[0].primary_key, "pay:o1");
  EXPECT_EQ(k.calls()[0].from_type, "Checkout");
}

// --- activation and passivation ----------------------------------------------------------------
TEST(plugin_kit, passivate_destroys_the_instance_and_the_next_call_activates_another) {
  kit k;
  const auto first = k.call<Echo>("Probe", "p1", "Echo", {"a"})->activation;
  EXPECT_EQ(k.call<Echo>("Probe", "p1", "Echo", {"b"})->activation, first);
  k.passivate("Probe", "p1");
  EXPECT_FALSE(k.active("Probe", "p1"));
  EXPECT_GT(k.call<Echo>("Probe", "p1", "Echo", {"c"})->activation, first);
  EXPECT_EQ(k.passivations(), 1u);

  // A busy entity is passivated once its message is done.
  auto sleeping = k.send<Sleep>("Probe", "p1", "Sleep", {10});
  k.passivate("Probe", "p1");
  EXPECT_TRUE(k.active("Probe", "p1"));
  k.advance_ms(10);
  EXPECT_TRUE(sleeping.done());
  EXPECT_FALSE(k.active("Probe", "p1"));
}

TEST(plugin_kit, a_throwing_constructor_gives_the_runners_defect) {
  kit k = kit::load(THROWING_CONSTRUCTOR_PLUGIN);
  auto reply = k.call<Nothing>("Fragile", "f1", "Touch", {});
  ASSERT_FALSE(reply);
  EXPECT_EQ(reply.error().code, "Defect");
  // The same text as tests/host/entity_host_test.cpp expects from a runner.
  EXPECT_EQ(reply.error().message,
            "activation of Fragile/f1 failed in its constructor: activation failed: cannot "
            "activate");
  EXPECT_FALSE(k.active("Fragile", "f1"));
}

TEST(plugin_kit, a_constructor_sees_its_address_and_logs_and_cannot_call) {
  kit k(&checkout_entry);
  k.stub<Charge>("Billing", "Charge", [](const Charge::Request&) { return Charge::Reply{"r"}; });
  ASSERT_TRUE(k.call<Charge>("Checkout", "c7", "Pay", {"o1", 5}));
  EXPECT_TRUE(k.logged("checkout c7 opened"));
  ASSERT_FALSE(k.logs().empty());
  EXPECT_EQ(k.logs()[0].entity_id, "c7");

  // As in tests/host/entity_host_test.cpp: the refusal runs later, never inside the call.
  kit eager = kit::load(CONSTRUCTOR_CALL_PLUGIN);
  EXPECT_EQ(eager.call<Nothing>("EagerCaller", "e1", "Report", {}).error().tag, "NotYet");
  auto report = eager.call<Nothing>("EagerCaller", "e1", "Report", {});
  EXPECT_EQ(report.error().tag, "Later");
  EXPECT_EQ(report.error().message,
            "4 InvalidRequest: an entity cannot call other entities from its constructor");
}

// --- persisted messages: deduplication, replays, runs twice -------------------------------------
TEST(plugin_kit, a_primary_key_answers_a_repeated_persisted_call_without_running_it) {
  kit k;
  call_options keyed;
  keyed.primary_key = "once";
  const auto first = k.call<Append>("Probe", "p1", "Append", {"a", 1}, keyed);
  const auto again = k.call<Append>("Probe", "p1", "Append", {"a", 1}, keyed);
  ASSERT_TRUE(first && again);
  EXPECT_EQ(again->log, first->log);
  EXPECT_EQ(k.call<Append>("Probe", "p1", "Append", {"b", 2})->log.size(), 2u);
  auto reused = k.call<Append>("Probe", "p1", "Append", {"other", 3}, keyed);
  EXPECT_EQ(reused.error().code, "InvalidRequest");
  EXPECT_EQ(reused.error().message, "primary key reused with a different request");
}

TEST(plugin_kit, replay_runs_the_persisted_messages_again_on_fresh_instances) {
  kit k = kit::load(COUNTER_PLUGIN);
  for (int by : {1, 2, 3}) ASSERT_TRUE(k.call<Increment>("Counter", "c", "Increment", {by}));
  ASSERT_EQ(k.call<Get>("Counter", "c", "Get", {})->value, 6);
  ASSERT_EQ(k.persisted().size(), 3u);  // Get is volatile
  const auto activations = k.activations();

  const auto replies = k.replay_persisted();
  ASSERT_EQ(replies.size(), 3u);
  EXPECT_EQ(replies[0].as<Increment::Reply>()->value, 1);  // a fresh instance: from 0 again
  EXPECT_EQ(replies[2].as<Increment::Reply>()->value, 6);
  EXPECT_EQ(k.activations(), activations + 1);
  EXPECT_EQ(k.call<Get>("Counter", "c", "Get", {})->value, 6);
  EXPECT_EQ(k.persisted().size(), 3u) << "a replay is not recorded again";
}

/// Counter's state type, as the plugin declares it.
struct CounterState {
  std::int64_t value = 0;
  MSGPACK_DEFINE_MAP(value);
};

TEST(plugin_kit, keeps_a_stateful_entity_s_state_across_passivation) {
  kit k = kit::load(COUNTER_PLUGIN);
  EXPECT_FALSE(k.stored_state<CounterState>("Counter", "c").has_value());
  ASSERT_EQ(k.call<Increment>("Counter", "c", "Increment", {5})->value, 5);
  EXPECT_EQ(k.stored_state<CounterState>("Counter", "c")->value, 5);
  k.passivate("Counter", "c");
  EXPECT_FALSE(k.active("Counter", "c"));
  EXPECT_EQ(k.call<Get>("Counter", "c", "Get", {})->value, 5);
  EXPECT_EQ(k.call<Increment>("Counter", "other", "Increment", {1})->value, 1);
}

TEST(plugin_kit, a_persisted_rpc_run_twice_changes_the_state_once) {
  kit_options options;
  options.run_persisted_twice = true;
  kit k = kit::load(COUNTER_PLUGIN, options);
  // The first run's state was never committed: the second starts from the state before.
  EXPECT_EQ(k.call<Increment>("Counter", "c", "Increment", {2})->value, 2);
  EXPECT_EQ(k.call<Increment>("Counter", "c", "Increment", {3})->value, 5);
  EXPECT_EQ(k.stored_state<CounterState>("Counter", "c")->value, 5);
}

TEST(plugin_kit, a_replay_starts_from_the_state_before_the_persisted_messages) {
  kit k = kit::load(COUNTER_PLUGIN);
  k.store_state("Counter", "c", CounterState{40});
  for (int by : {1, 1}) ASSERT_TRUE(k.call<Increment>("Counter", "c", "Increment", {by}));
  const auto replies = k.replay_persisted();
  ASSERT_EQ(replies.size(), 2u);
  EXPECT_EQ(replies[0].as<Increment::Reply>()->value, 41);
  EXPECT_EQ(replies[1].as<Increment::Reply>()->value, 42);
  EXPECT_EQ(k.stored_state<CounterState>("Counter", "c")->value, 42);
}

TEST(plugin_kit, a_stored_state_that_does_not_decode_fails_the_activation) {
  kit k = kit::load(COUNTER_PLUGIN);
  k.store_state_bytes("Counter", "c", {0xc1});
  const auto reply = k.call<Increment>("Counter", "c", "Increment", {1});
  ASSERT_FALSE(reply);
  EXPECT_EQ(reply.error().code, "Defect");
  EXPECT_NE(reply.error().message.find("does not decode"), std::string::npos)
      << reply.error().message;
}

TEST(plugin_kit, replay_refuses_while_a_handler_still_runs) {
  kit k;
  (void)k.send<Stamp>("Probe", "p1", "Stamp", {});
  auto sleeping = k.send<Sleep>("Probe", "p2", "Sleep", {50});
  EXPECT_THROW(k.replay_persisted(), std::logic_error);
  k.advance_ms(50);
  EXPECT_EQ(k.replay_persisted().size(), 1u);
}

TEST(plugin_kit, run_persisted_twice_runs_each_persisted_message_on_two_instances) {
  kit_options twice;
  twice.run_persisted_twice = true;
  kit k(&checkout_entry, twice);
  std::vector<std::string> keys;
  k.stub<Charge>("Billing", "Charge",
                 [&keys](const Charge::Request& request, const cluster::testing::recorded_call& c) {
                   keys.push_back(c.primary_key.value_or(""));
                   return Charge::Reply{"receipt-" + request.order};
                 });
  auto reply = k.call<Charge>("Checkout", "c1", "Pay", {"o1", 5});
  ASSERT_TRUE(reply) << reply.error();
  EXPECT_EQ(reply->receipt, "receipt-o1 #1");  // the second run, on a fresh instance
  EXPECT_EQ(keys, (std::vector<std::string>{"pay:o1", "pay:o1"}));
  EXPECT_EQ(k.activations(), 2u);
}

// --- streams, cancellation, fire and forget ----------------------------------------------------
TEST(plugin_kit, a_stream_yields_its_items_in_order_then_its_final_reply) {
  kit k(&feed_entry);
  auto numbers = k.send_stream<Numbers>("Feed", "f1", "Numbers", {5, 0});
  ASSERT_TRUE(numbers.done());
  EXPECT_EQ(numbers.items(), (std::vector<int>{0, 1, 2, 3, 4}));
  ASSERT_TRUE(numbers.get()) << numbers.get().error();
  EXPECT_EQ(numbers.get()->sum, 10);
}

TEST(plugin_kit, a_stream_waits_for_credit_and_goes_on_when_granted) {
  kit k(&feed_entry);
  call_options two;
  two.credit = 2;
  auto numbers = k.send_stream<Numbers>("Feed", "f1", "Numbers", {5, 0}, two);
  EXPECT_EQ(numbers.item_count(), 2u);
  EXPECT_EQ(numbers.waiting(), 1u);  // the third item waits; the handler with it
  EXPECT_FALSE(numbers.done());
  numbers.grant(2);
  EXPECT_EQ(numbers.item_count(), 4u);
  EXPECT_FALSE(numbers.done());
  numbers.grant(1);
  EXPECT_TRUE(numbers.done());
  EXPECT_EQ(numbers.get()->sum, 10);
}

TEST(plugin_kit, a_cancel_ends_a_sleeping_stream_with_cancelled_and_its_handler_sees_it) {
  kit k(&feed_entry);
  auto numbers = k.send_stream<Numbers>("Feed", "f1", "Numbers", {100, 60000});
  EXPECT_EQ(numbers.items(), (std::vector<int>{0}));  // then it sleeps a minute
  numbers.cancel();                                   // no clock advance: the sleep ends at once
  ASSERT_TRUE(numbers.done());
  EXPECT_EQ(numbers.get().error().code, "Cancelled");
  EXPECT_TRUE(k.logged("numbers cancelled at 0"));
  // The entity serves its next message.
  EXPECT_EQ(k.send_stream<Numbers>("Feed", "f1", "Numbers", {2, 0}).get()->sum, 1);
}

TEST(plugin_kit, a_cancel_ends_a_pending_call_and_a_queued_request_never_runs) {
  kit k(&feed_entry);
  auto waiting = k.send_stream<Numbers>("Feed", "f2", "Numbers", {3, 60000});
  auto queued = k.send_stream<Numbers>("Feed", "f2", "Numbers", {3, 0});
  queued.cancel();
  EXPECT_TRUE(queued.done());
  EXPECT_EQ(queued.get().error().code, "Cancelled");
  EXPECT_EQ(queued.item_count(), 0u);
  waiting.cancel();
  EXPECT_EQ(waiting.get().error().code, "Cancelled");

  // A handler awaiting another entity's reply: the cancel ends its wait at once.
  struct Wait {
    using Request = Charge::Request;
    using Item = int;  // not a stream: send_stream collects nothing
    using Reply = Charge::Reply;
  };
  auto call = k.send_stream<Wait>("Feed", "f3", "Wait", {"o", 1});
  EXPECT_FALSE(call.done());
  call.cancel();
  ASSERT_TRUE(call.done());
  EXPECT_EQ(call.get().error().code, "Cancelled");
  EXPECT_TRUE(k.logged("wait cancelled"));
}

TEST(plugin_kit, send_is_accepted_without_its_outcome_and_the_callee_runs) {
  kit k(&feed_entry);
  int charged = 0;
  k.stub<Charge>("Billing", "Charge", [&charged](const Charge::Request& request) {
    charged += static_cast<int>(request.cents);
    return Charge::Reply{"r"};
  });
  ASSERT_TRUE(k.call<Notify>("Feed", "f1", "Notify", {"o1", 7}));
  EXPECT_EQ(charged, 7);
  ASSERT_EQ(k.calls_to("Billing", "Charge"), 1u);
  EXPECT_TRUE(k.calls()[0].discard);
  // A refused send fails the awaiting handler (no stub, no such type): its call_error.
  kit lonely(&feed_entry);
  EXPECT_EQ(lonely.call<Notify>("Feed", "f1", "Notify", {"o1", 7}).error().tag,
            "UnknownEntityType");
}

// The greeter plugin's streaming RPC, as its README declares it for callers.
struct GreetMany {
  struct Request {
    std::string name;
    std::uint32_t count = 0;
    std::int64_t delay_ms = 0;
    MSGPACK_DEFINE_MAP(name, count, delay_ms);
  };
  struct Item {
    std::string message;
    std::uint32_t index = 0;
    MSGPACK_DEFINE_MAP(message, index);
  };
  struct Reply {
    std::uint32_t count = 0;
    MSGPACK_DEFINE_MAP(count);
  };
};

TEST(plugin_kit, greeter_greet_many_streams_greetings_from_the_plugin_file) {
  kit k = kit::load(GREETER_PLUGIN);
  auto greetings = k.send_stream<GreetMany>("Greeter", "Test", "GreetMany", {"John", 3, 100});
  EXPECT_EQ(greetings.item_count(), 1u);  // the first at once, then one every 100 ms
  k.advance_ms(200);
  ASSERT_TRUE(greetings.done());
  const auto items = greetings.items();
  ASSERT_EQ(items.size(), 3u);
  EXPECT_EQ(items[2].index, 2u);
  EXPECT_EQ(items[0].message, "Hello, John! from Test Greeter 1");
  EXPECT_EQ(greetings.get()->count, 3u);
}

// --- loading ---------------------------------------------------------------------------------
TEST(plugin_kit, loads_a_plugin_file_with_its_name_version_and_types) {
  kit k = kit::load(GREETER_PLUGIN);
  EXPECT_EQ(k.plugin_name(), "greeter");
  EXPECT_EQ(k.plugin_version(), "1.1.0");
  const auto types = k.entity_types();
  ASSERT_EQ(types.size(), 1u);
  EXPECT_EQ(types[0].name, "Greeter");
  EXPECT_EQ(types[0].group, "default");
  ASSERT_EQ(types[0].rpcs.size(), 3u);
  EXPECT_TRUE(types[0].rpcs[0].persisted);
  EXPECT_FALSE(types[0].rpcs[1].persisted);
  EXPECT_EQ(types[0].rpcs[2].name, "GreetMany");
  EXPECT_TRUE(types[0].rpcs[2].stream);
  auto reply = k.call<Greet>("Greeter", "Test", "Greet", {"John"});
  ASSERT_TRUE(reply) << reply.error();
  EXPECT_EQ(reply->message, "Hello, John! from Test Greeter 1");

  kit named(&checkout_entry);
  EXPECT_EQ(named.plugin_version(), "3.1.4");
  EXPECT_EQ(named.entity_types()[0].group, "shop");
}

TEST(plugin_kit, refuses_what_a_runner_refuses_with_the_reason) {
  auto refused = [](const std::string& path) {
    try {
      kit::load(path);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("loaded");
  };
  EXPECT_NE(refused(WRONG_ABI_PLUGIN).find("ABI version"), std::string::npos);
  EXPECT_NE(refused("/nonexistent/libnothing.so").find("cannot load"), std::string::npos);
  EXPECT_NE(refused(THROWING_ENTRY_PLUGIN).find("entry failed"), std::string::npos);
  try {
    kit k(&failing_entry);
    FAIL() << "a failing entry was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_STREQ(e.what(), "entry failed: no configuration");
  }
}

TEST(plugin_kit, a_kit_destroyed_while_a_handler_sleeps_lets_it_finish) {
  // Under ASan a suspended handler's frame left behind is a reported leak.
  auto k = std::make_unique<kit>();
  auto pending = k->send<Sleep>("Probe", "p1", "Sleep", {60'000});
  k.reset();
  EXPECT_TRUE(pending.done());
}

}  // namespace

namespace cluster::testing {
namespace {

TEST(plugin_kit, ticks_a_cron_job_when_the_clock_passes_each_tick) {
  kit_options options;
  options.start_ms = 1'700'000'000'500;
  kit k = kit::load(SCHEDULER_PLUGIN, options);
  EXPECT_TRUE(k.persisted().empty());
  k.advance_ms(499);
  EXPECT_TRUE(k.persisted().empty()) << "ticked before its time";
  k.advance_ms(1);
  ASSERT_EQ(k.persisted().size(), 1u);
  EXPECT_EQ(k.persisted()[0].entity_type, "EverySecond");
  EXPECT_EQ(k.persisted()[0].entity_id, "cron");
  EXPECT_EQ(k.persisted()[0].primary_key, "cron:1700000001000");
  EXPECT_TRUE(k.logged("tick scheduled at 1700000001000 ran 0 ms late"));
  k.advance_ms(3'000);
  ASSERT_EQ(k.persisted().size(), 4u);
  EXPECT_EQ(k.persisted()[3].primary_key, "cron:1700000004000");
}

TEST(plugin_kit, runs_a_singleton_until_it_is_asked_to_stop) {
  kit k = kit::load(SCHEDULER_PLUGIN);
  auto run = k.start_singleton("Heartbeat");
  EXPECT_FALSE(run.done());
  EXPECT_TRUE(k.logged("heartbeat 1 from pid"));
  k.advance_ms(3'000);
  EXPECT_TRUE(k.logged("heartbeat 4 from pid"));
  EXPECT_FALSE(run.done());
  k.stop("Heartbeat", "singleton");
  ASSERT_TRUE(run.done());
  EXPECT_TRUE(run.get()) << run.get().error();
  EXPECT_TRUE(k.logged("heartbeat singleton stopping after 4 beats"));
  EXPECT_THROW(k.start_singleton("EverySecond"), std::invalid_argument);
}

}  // namespace
}  // namespace cluster::testing
