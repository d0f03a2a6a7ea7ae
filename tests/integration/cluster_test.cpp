// The whole cluster in one process: 1 manager, runners and 1 proxy on loopback ports.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <thread>

#include "cluster/protocol/shard.hpp"
#include "cluster_fixture.hpp"

namespace cluster::testing {
namespace {

std::vector<request_msg> echo_requests(std::size_t count, const std::string& prefix) {
  std::vector<request_msg> requests;
  for (std::size_t i = 0; i < count; ++i)
    requests.push_back(make_request("Probe", prefix + std::to_string(i), "Echo", {{"text", "hi"}}));
  return requests;
}

TEST(cluster, assigns_every_shard_evenly_over_three_runners) {
  in_process_cluster cluster;
  for (int i = 0; i < 3; ++i) cluster.add_runner();
  ASSERT_TRUE(cluster.wait_until_balanced(3));
  for (const auto& runner : cluster.runners()) EXPECT_EQ(runner->owned_shards(), 100u);
}

TEST(cluster, routes_a_thousand_entities_to_the_runners_owning_their_shards) {
  in_process_cluster cluster;
  for (int i = 0; i < 3; ++i) cluster.add_runner();
  ASSERT_TRUE(cluster.wait_until_balanced(3));
  const auto replies = cluster.call_all(echo_requests(1000, "entity-"));
  std::set<std::int32_t> shards;
  for (std::size_t i = 0; i < replies.size(); ++i) {
    ASSERT_TRUE(replies[i].ok()) << replies[i].error << ": " << replies[i].message;
    const auto body = reply_json(replies[i]);
    const std::string id = "entity-" + std::to_string(i);
    EXPECT_EQ(body["entity_id"], id);
    EXPECT_EQ(body["shard"].get<int>(), shard_for(id, 300));
    shards.insert(body["shard"].get<int>());
  }
  EXPECT_GT(shards.size(), 250u);
  std::size_t active = 0;
  for (const auto& runner : cluster.runners()) {
    EXPECT_GT(runner->entities().active_entities(), 200u);  // every runner took its share
    active += runner->entities().active_entities();
  }
  EXPECT_EQ(active, 1000u);  // each entity active on exactly one runner
}

TEST(cluster, keeps_each_senders_order_for_one_entity_under_concurrent_senders) {
  in_process_cluster cluster;
  for (int i = 0; i < 3; ++i) cluster.add_runner();
  ASSERT_TRUE(cluster.wait_until_balanced(3));
  constexpr int senders = 4, per_sender = 50;
  std::vector<connection_ptr> clients;
  for (int s = 0; s < senders; ++s) clients.push_back(cluster.connect(cluster.proxy_address()));
  std::size_t pending = senders * per_sender;
  std::vector<reply_msg> last(senders);
  // Interleave the senders' sends; each sender pipelines all of its messages.
  for (int i = 0; i < per_sender; ++i) {
    for (int s = 0; s < senders; ++s) {
      auto request = make_request("Probe", "shared-entity", "Append",
                                  {{"sender", "s" + std::to_string(s)}, {"value", i}});
      clients[s]->call(message_kind::request, request, milliseconds(10000),
                       [&pending, &last, s, i](reply_msg&& reply) {
                         EXPECT_TRUE(reply.ok()) << reply.message;
                         if (i == per_sender - 1) last[s] = std::move(reply);
                         --pending;
                       });
    }
  }
  ASSERT_TRUE(run_until(cluster.io, [&] { return pending == 0; }));
  std::vector<std::string> log;
  for (const auto& reply : last) {
    auto entries = reply_json(reply)["log"].get<std::vector<std::string>>();
    if (entries.size() > log.size()) log = entries;
  }
  ASSERT_EQ(log.size(), static_cast<std::size_t>(senders * per_sender));
  std::map<std::string, int> next;
  for (const auto& entry : log) {
    const auto colon = entry.find(':');
    const std::string sender = entry.substr(0, colon);
    EXPECT_EQ(std::stoi(entry.substr(colon + 1)), next[sender]++) << "out of order: " << entry;
  }
}

TEST(cluster, lets_a_handler_call_entities_on_other_runners) {
  in_process_cluster cluster;
  for (int i = 0; i < 3; ++i) cluster.add_runner();
  ASSERT_TRUE(cluster.wait_until_balanced(3));
  ASSERT_TRUE(cluster.call(make_request("Counter", "left", "Increment", {{"by", 5}})).ok());
  ASSERT_TRUE(cluster.call(make_request("Counter", "right", "Increment", {{"by", 37}})).ok());
  const auto sum = cluster.call(
      make_request("Calculator", "calc", "AddCounters", {{"left", "left"}, {"right", "right"}}));
  ASSERT_TRUE(sum.ok()) << sum.message;
  EXPECT_EQ(reply_json(sum)["sum"], 42);
  // Relay through many pairs so that some caller and callee live on different runners.
  std::vector<request_msg> relays;
  for (int i = 0; i < 30; ++i)
    relays.push_back(make_request("Probe", "from-" + std::to_string(i), "Relay",
                                  {{"target", "to-" + std::to_string(i)}, {"text", "relayed"}}));
  const auto replies = cluster.call_all(relays);
  for (int i = 0; i < 30; ++i) {
    ASSERT_TRUE(replies[i].ok()) << replies[i].message;
    const auto body = reply_json(replies[i]);
    EXPECT_EQ(body["entity_id"], "to-" + std::to_string(i));
    EXPECT_EQ(body["shard"].get<int>(), shard_for("to-" + std::to_string(i), 300));
  }
}

TEST(cluster, answers_every_call_while_a_runner_joins_mid_traffic) {
  in_process_cluster cluster;
  cluster.add_runner();
  cluster.add_runner();
  ASSERT_TRUE(cluster.wait_until_balanced(2));
  auto client = cluster.connect(cluster.proxy_address());
  std::size_t pending = 0, failed = 0, answered = 0;
  auto send_wave = [&](int wave) {
    for (int i = 0; i < 200; ++i) {
      ++pending;
      client->call(message_kind::request,
                   make_request("Probe", "join-" + std::to_string(i), "Append",
                                {{"sender", "w"}, {"value", wave}}),
                   milliseconds(30000), [&](reply_msg&& reply) {
                     --pending;
                     ++answered;
                     if (!reply.ok()) {
                       ++failed;
                       ADD_FAILURE() << reply.error << ": " << reply.message;
                     }
                   });
    }
  };
  for (int wave = 0; wave < 10; ++wave) {
    send_wave(wave);
    if (wave == 3) cluster.add_runner();
    run_until(
        cluster.io, [] { return false; }, milliseconds(20));
  }
  // Generous: the suite runs two tests at a time on two cores under ASan.
  ASSERT_TRUE(run_until(
      cluster.io, [&] { return pending == 0; }, milliseconds(60000)));
  EXPECT_EQ(answered, 2000u);
  EXPECT_EQ(failed, 0u);
  ASSERT_TRUE(cluster.wait_until_balanced(3));
  EXPECT_EQ(cluster.runners().back()->owned_shards(), 100u);
}

TEST(cluster, moves_a_stopped_runners_shards_to_the_others) {
  in_process_cluster cluster;
  for (int i = 0; i < 3; ++i) cluster.add_runner();
  ASSERT_TRUE(cluster.wait_until_balanced(3));
  cluster.stop_runner(0);
  ASSERT_TRUE(cluster.wait_until_balanced(2));
  for (const auto& reply : cluster.call_all(echo_requests(200, "after-stop-")))
    EXPECT_TRUE(reply.ok()) << reply.message;
}

TEST(cluster, passivates_idle_entities_and_reactivates_them_on_demand) {
  in_process_cluster cluster;
  cluster.add_runner([](host::runner_config& c) { c.passivate_after = milliseconds(100); });
  ASSERT_TRUE(cluster.wait_until_balanced(1));
  auto& runner = *cluster.runners().front();
  const auto first =
      cluster.call(make_request("Probe", "idle", "Append", {{"sender", "a"}, {"value", 1}}));
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(runner.entities().active_entities(), 1u);
  ASSERT_TRUE(run_until(cluster.io, [&] { return runner.entities().active_entities() == 0; }));
  const auto second =
      cluster.call(make_request("Probe", "idle", "Append", {{"sender", "a"}, {"value", 2}}));
  ASSERT_TRUE(second.ok());
  EXPECT_EQ(reply_json(second)["log"].size(), 1u);  // fresh state: the old instance is gone
  EXPECT_EQ(runner.entities().activations(), 2u);
}

TEST(cluster, answers_mailbox_full_through_the_proxy) {
  in_process_cluster cluster;
  cluster.add_runner([](host::runner_config& c) { c.mailbox_capacity = 3; });
  ASSERT_TRUE(cluster.wait_until_balanced(1));
  std::vector<request_msg> requests{make_request("Probe", "crowded", "Sleep", {{"ms", 300}})};
  for (int i = 0; i < 10; ++i)
    requests.push_back(make_request("Probe", "crowded", "Echo", {{"text", "x"}}));
  const auto replies = cluster.call_all(requests);
  std::size_t ok = 0, full = 0;
  for (const auto& reply : replies) {
    ok += reply.ok() ? 1 : 0;
    full += reply.code == errc::mailbox_full ? 1 : 0;
  }
  EXPECT_EQ(ok, 4u);
  EXPECT_EQ(full, 7u);
}

TEST(cluster, answers_typed_errors_for_unknown_types_rpcs_and_payloads) {
  in_process_cluster cluster;
  cluster.add_runner();
  ASSERT_TRUE(cluster.wait_until_balanced(1));
  EXPECT_EQ(cluster.call(make_request("Nope", "x", "Echo")).code, errc::unknown_entity_type);
  EXPECT_EQ(cluster.call(make_request("Probe", "x", "Nope")).code, errc::unknown_rpc);
  auto garbage = make_request("Probe", "x", "Echo");
  garbage.payload = {0xc1};
  EXPECT_EQ(cluster.call(garbage).code, errc::bad_payload);
  const auto failing = cluster.call(make_request("Probe", "x", "Fail"));
  EXPECT_EQ(failing.code, errc::defect);
  const auto rejected = cluster.call(make_request("Probe", "x", "Reject"));
  EXPECT_EQ(rejected.code, errc::application_error);
  EXPECT_EQ(rejected.error, "Rejected");
  EXPECT_TRUE(cluster.call(make_request("Probe", "x", "Echo", {{"text", "alive"}})).ok());
}

TEST(cluster, answers_deadline_exceeded_when_the_handler_is_too_slow) {
  in_process_cluster cluster;
  cluster.add_runner();
  ASSERT_TRUE(cluster.wait_until_balanced(1));
  auto slow = make_request("Probe", "slow", "Sleep", {{"ms", 2000}});
  slow.timeout_ms = 100;
  EXPECT_EQ(cluster.call(slow).code, errc::deadline_exceeded);
}

TEST(cluster, answers_no_runner_when_nobody_serves_the_shard) {
  in_process_cluster cluster;
  auto request = make_request("Greeter", "lonely", "GreetVolatile", {{"name", "x"}});
  request.timeout_ms = 200;
  EXPECT_EQ(cluster.call(request).code, errc::no_runner);
}

TEST(cluster, runner_answers_not_owner_for_a_shard_it_does_not_serve) {
  in_process_cluster cluster;
  cluster.add_runner();
  cluster.add_runner();
  ASSERT_TRUE(cluster.wait_until_balanced(2));
  auto& first = *cluster.runners()[0];
  // Find an entity whose shard the first runner does not own, and ask that runner directly.
  std::string foreign;
  for (int i = 0; foreign.empty(); ++i)
    if (!first.owns("default", shard_for("id-" + std::to_string(i), 300)))
      foreign = "id-" + std::to_string(i);
  auto direct = cluster.connect("127.0.0.1:" + std::to_string(first.port()));
  ASSERT_NE(direct, nullptr);
  reply_msg reply;
  bool done = false;
  direct->call(message_kind::request, make_request("Probe", foreign, "Echo", {{"text", "x"}}),
               milliseconds(2000), [&](reply_msg&& r) {
                 reply = std::move(r);
                 done = true;
               });
  ASSERT_TRUE(run_until(cluster.io, [&] { return done; }));
  EXPECT_EQ(reply.code, errc::not_owner);
  EXPECT_EQ(first.entities().active_entities(), 0u);
}

std::int64_t unix_ms() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// Requests no process may pass on: each with the message its InvalidRequest names.
std::vector<std::pair<request_msg, std::string>> invalid_requests() {
  std::vector<std::pair<request_msg, std::string>> out;
  auto add = [&](request_msg request, std::string message) {
    out.emplace_back(std::move(request), std::move(message));
  };
  add(make_request("Probe", "\xFF", "Append", {{"sender", "bad"}, {"value", 1}}),
      "entity_id is not valid UTF-8 (byte 0xff at offset 0)");
  add(make_request("Probe", std::string("a\0b", 3), "Echo", {{"text", "x"}}),
      "entity_id contains a NUL byte at offset 1");
  add(make_request("Probe", std::string(1025, 'x'), "Echo", {{"text", "x"}}),
      "entity_id is 1025 bytes long; at most 1024 are allowed");
  add(make_request("Pro\xC0\xAF", "x", "Echo"),
      "entity_type is not valid UTF-8 (byte 0xc0 at offset 3)");
  add(make_request("Probe", "x", std::string(300, 'R')),
      "rpc is 300 bytes long; at most 255 are allowed");
  auto key = make_request("Probe", "x", "Append", {{"sender", "bad"}, {"value", 1}});
  key.primary_key = "k\xED\xA0\x80";
  add(key, "primary_key is not valid UTF-8 (byte 0xed at offset 1)");
  auto later = make_request("Probe", "x", "Append", {{"sender", "bad"}, {"value", 1}});
  later.primary_key = "later";
  later.deliver_at_ms = unix_ms() + 3650LL * 24 * 60 * 60 * 1000 + 60000;
  add(later, "deliver_at_ms is 3650 days ahead; at most 365 days are allowed");
  return out;
}

TEST(cluster, refuses_invalid_ids_names_and_times_at_the_proxy_and_at_the_runner) {
  in_process_cluster cluster;
  auto& runner = cluster.add_runner();
  ASSERT_TRUE(cluster.wait_until_balanced(1));
  auto direct = cluster.connect("127.0.0.1:" + std::to_string(runner.port()));
  ASSERT_NE(direct, nullptr);
  for (const auto& [request, message] : invalid_requests()) {
    const auto through_proxy = cluster.call(request);
    EXPECT_EQ(through_proxy.code, errc::invalid_request) << message;
    EXPECT_EQ(through_proxy.error, "InvalidRequest");
    EXPECT_EQ(through_proxy.message, message);
    std::optional<reply_msg> reply;
    direct->call(message_kind::request, request, milliseconds(2000),
                 [&reply](reply_msg&& r) { reply = std::move(r); });
    ASSERT_TRUE(run_until(cluster.io, [&] { return reply.has_value(); }));
    EXPECT_EQ(reply->code, errc::invalid_request) << message;
    EXPECT_EQ(reply->message, message);
  }
  // Nothing of it reached an entity, and the next valid call is served.
  EXPECT_EQ(runner.entities().active_entities(), 0u);
  EXPECT_TRUE(cluster.call(make_request("Probe", "fine", "Echo", {{"text", "x"}})).ok());
}

TEST(cluster, takes_ids_up_to_the_configured_max_id_bytes) {
  in_process_cluster cluster;
  auto& runner = cluster.add_runner([](host::runner_config& c) { c.common.max_id_bytes = 8; });
  ASSERT_TRUE(cluster.wait_until_balanced(1));
  auto direct = cluster.connect("127.0.0.1:" + std::to_string(runner.port()));
  ASSERT_NE(direct, nullptr);
  std::map<std::string, reply_msg> replies;
  for (const std::string id : {"12345678", "123456789"})
    direct->call(message_kind::request, make_request("Probe", id, "Echo", {{"text", "x"}}),
                 milliseconds(2000), [&replies, id](reply_msg&& r) { replies[id] = std::move(r); });
  ASSERT_TRUE(run_until(cluster.io, [&] { return replies.size() == 2; }));
  EXPECT_TRUE(replies["12345678"].ok()) << replies["12345678"].message;
  EXPECT_EQ(replies["123456789"].code, errc::invalid_request);
  EXPECT_EQ(replies["123456789"].message, "entity_id is 9 bytes long; at most 8 are allowed");
}

TEST(cluster, survives_a_plugin_whose_entities_cannot_activate) {
  in_process_cluster cluster;
  cluster.add_runner([](host::runner_config& c) {
    c.plugins.push_back(test_plugin("throwing_constructor_plugin"));
  });
  ASSERT_TRUE(cluster.wait_until_balanced(1));
  const auto reply = cluster.call(make_request("Fragile", "f", "Touch"));
  EXPECT_EQ(reply.code, errc::defect);
  EXPECT_NE(reply.message.find("activation"), std::string::npos);
  EXPECT_TRUE(cluster.call(make_request("Probe", "p", "Echo", {{"text", "fine"}})).ok());
}

TEST(cluster, serves_the_seed_greeting_with_the_shard_number) {
  in_process_cluster cluster;
  cluster.add_runner();
  cluster.add_runner();
  ASSERT_TRUE(cluster.wait_until_balanced(2));
  const auto reply = cluster.call(make_request("Greeter", "Test", "Greet", {{"name", "John"}}));
  ASSERT_TRUE(reply.ok()) << reply.message;
  EXPECT_EQ(reply_json(reply)["message"], "Hello, John! from Test Greeter 216");
}

TEST(cluster, refuses_a_primary_key_reused_with_a_different_request_with_the_memory_store) {
  in_process_cluster cluster;
  cluster.add_runner();
  ASSERT_TRUE(cluster.wait_until_balanced(1));
  const auto greet = [&](const std::string& name) {
    auto request = make_request("Greeter", "reuse", "Greet", {{"name", name}});
    request.primary_key = "k1";
    return cluster.call(request);
  };
  const auto alice = greet("Alice");
  ASSERT_TRUE(alice.ok()) << alice.message;
  const std::string greeting = reply_json(alice)["message"];
  EXPECT_EQ(greeting.rfind("Hello, Alice!", 0), 0u) << greeting;
  const auto mallory = greet("Mallory");
  EXPECT_EQ(mallory.code, errc::invalid_request);
  EXPECT_EQ(mallory.message, "primary key reused with a different request");
  EXPECT_TRUE(mallory.payload.empty()) << "another caller's reply leaked";
  const auto again = greet("Alice");
  ASSERT_TRUE(again.ok()) << again.message;
  EXPECT_EQ(reply_json(again)["message"], greeting);
}

// The whole process stands still (the test thread runs none of its handlers), as under
// SIGSTOP: the runner must not serve from what it knew before, but register again first.
TEST(cluster, a_runner_whose_loop_stalled_serves_nothing_until_it_has_registered_again) {
  in_process_cluster cluster;
  auto& runner = cluster.add_runner(
      [](host::runner_config& config) { config.stall_fence = milliseconds(200); });
  ASSERT_TRUE(cluster.wait_until_balanced(1));
  const auto before = cluster.call(make_request("Probe", "frozen", "Echo", {{"text", "a"}}));
  ASSERT_TRUE(before.ok()) << before.message;
  auto direct = cluster.connect("127.0.0.1:" + std::to_string(runner.port()));
  ASSERT_NE(direct, nullptr);

  std::this_thread::sleep_for(milliseconds(500));  // the stall itself
  // Written at once; the runner reads it in the first round of handlers after the stall.
  reply_msg refused;
  bool done = false;
  direct->call(message_kind::request, make_request("Probe", "frozen", "Echo", {{"text", "b"}}),
               milliseconds(5000), [&](reply_msg&& r) {
                 refused = std::move(r);
                 done = true;
               });
  ASSERT_TRUE(run_until(cluster.io, [&] { return done; }));
  EXPECT_EQ(refused.code, errc::not_owner) << refused.message;

  // It registers again; the fresh assignment lifts the fence and its shards come back.
  ASSERT_TRUE(run_until(cluster.io, [&] { return !runner.fenced(); }));
  ASSERT_TRUE(cluster.wait_until_balanced(1));
  const auto after = cluster.call(make_request("Probe", "frozen", "Echo", {{"text", "c"}}));
  ASSERT_TRUE(after.ok()) << after.message;
  // A new activation: the one from before the stall was passivated with the fence.
  EXPECT_GT(reply_json(after)["activation"].get<std::int64_t>(),
            reply_json(before)["activation"].get<std::int64_t>());
}

/// A manager store that records the fences the manager asks for.
class fence_recorder final : public manager_store {
 public:
  explicit fence_recorder(std::shared_ptr<std::vector<std::string>> fenced)
      : fenced_(std::move(fenced)) {}
  std::string backend_name() const override { return "memory"; }
  void save_runner(const register_runner_msg& runner) override { inner_.save_runner(runner); }
  void remove_runner(const std::string& address) override { inner_.remove_runner(address); }
  void save_assignment(const std::string& group, const std::vector<std::string>& owners) override {
    inner_.save_assignment(group, owners);
  }
  std::vector<register_runner_msg> load_runners() override { return inner_.load_runners(); }
  std::map<std::string, std::vector<std::string>> load_assignments() override {
    return inner_.load_assignments();
  }
  void save_plugin(const pushed_plugin& plugin) override { inner_.save_plugin(plugin); }
  void remove_plugin(const std::string& name) override { inner_.remove_plugin(name); }
  std::vector<pushed_plugin> load_plugins() override { return inner_.load_plugins(); }
  void fence_runner(const std::string& incarnation, fence_done done) override {
    fenced_->push_back(incarnation);
    done(1);
  }

 private:
  memory_manager_store inner_;
  std::shared_ptr<std::vector<std::string>> fenced_;
};

TEST(manager, fences_a_runner_it_declares_dead_but_not_one_that_leaves) {
  asio::io_context io;
  auto fenced = std::make_shared<std::vector<std::string>>();
  manager::manager_config config;
  config.host = "127.0.0.1";
  config.port = 0;
  config.probe_timeout = milliseconds(100);
  manager::manager manager(io, config, std::make_unique<fence_recorder>(fenced));
  manager.start();
  const std::string address = "127.0.0.1:" + std::to_string(manager.port());

  // Registers as a runner at an address where nothing listens (probes fail at once).
  auto join = [&](const std::string& name, const std::string& incarnation) {
    auto conn = connect_as(io, address, "runner");
    EXPECT_NE(conn, nullptr);
    register_runner_msg registration;
    registration.name = name;
    registration.address = "127.0.0.1:" + std::to_string(1 + name.size());
    registration.groups = {"default"};
    registration.incarnation = incarnation;
    bool done = false;
    conn->call(message_kind::register_runner, registration, milliseconds(5000),
               [&](reply_msg&& reply) {
                 EXPECT_TRUE(reply.ok()) << reply.message;
                 done = true;
               });
    EXPECT_TRUE(run_until(io, [&] { return done; }));
    return std::make_pair(conn, registration.address);
  };
  auto count_runners = [&] { return manager.snapshot().runners.size(); };

  auto [leaving, leaving_address] = join("leaving-runner", "1eave");
  bool left = false;
  leaving->call(message_kind::unregister_runner, unregister_runner_msg{leaving_address},
                milliseconds(5000), [&](reply_msg&& reply) {
                  EXPECT_TRUE(reply.ok()) << reply.message;
                  left = true;
                });
  ASSERT_TRUE(run_until(io, [&] { return left && count_runners() == 0; }));

  auto [dying, dying_address] = join("dying", "dead0");
  dying->close();  // connection lost, and the probes find nobody at its address
  ASSERT_TRUE(run_until(io, [&] { return count_runners() == 0; }));
  EXPECT_EQ(*fenced, (std::vector<std::string>{"dead0"}));
  manager.stop();
  run_until(
      io, [] { return false; }, milliseconds(50));
}

}  // namespace
}  // namespace cluster::testing
