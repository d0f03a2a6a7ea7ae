// The manager's bounds on what runners and subscribers may make it hold: registrations
// within their limits and a snapshot within what subscribers accept, stored garbage dropped
// at start, one subscription per connection, a subscriber that does not read disconnected,
// and the admin's unregister of another runner. A real manager on loopback, driven by real
// connections, on the test thread's io_context.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <memory>
#include <set>

#include "cluster/manager/manager.hpp"
#include "cluster_fixture.hpp"
#include "manager_fixture.hpp"

namespace cluster::testing {
namespace {

using namespace std::chrono_literals;

register_runner_msg registration_of(const std::string& name, const std::string& address,
                                    std::vector<std::string> groups = {"default"}) {
  register_runner_msg registration;
  registration.name = name;
  registration.address = address;
  registration.groups = std::move(groups);
  registration.version = "test";
  entity_type_info type;
  type.name = name + "-Type";
  type.group = registration.groups.front();
  type.rpcs = {rpc_info{"Run", false}};
  registration.entity_types = {type};
  return registration;
}

// What the oversized registration of the field report looked like: 150 groups and a
// 200-byte address.
register_runner_msg oversized_registration() {
  auto registration = registration_of("impostor", std::string(195, 'a') + ":3443");
  registration.groups.clear();
  for (int i = 0; i < 150; ++i) registration.groups.push_back("group-" + std::to_string(i));
  return registration;
}

std::set<std::string> group_names(const assignment_snapshot& snapshot) {
  std::set<std::string> names;
  for (const auto& group : snapshot.groups) names.insert(group.group);
  return names;
}

std::set<std::string> runner_addresses(const assignment_snapshot& snapshot) {
  std::set<std::string> addresses;
  for (const auto& runner : snapshot.runners) addresses.insert(runner.address);
  return addresses;
}

class manager_limits : public manager_fixture {};

TEST_F(manager_limits, refuses_150_groups_and_a_200_byte_address_and_status_keeps_answering) {
  start();
  join(registration_of("runner-1", "127.0.0.1:40001"));
  auto impostor = connect_as("runner");
  const auto reply = call(impostor, message_kind::register_runner, oversized_registration());
  EXPECT_EQ(reply.code, errc::invalid_request);
  EXPECT_EQ(reply.message, "groups has 150 entries; at most 64 are allowed");
  EXPECT_TRUE(impostor->is_open());  // a refused registration is an answer, not a close

  auto long_address = registration_of("long", std::string(300, 'a') + ":1");
  const auto refused = call(impostor, message_kind::register_runner, long_address);
  EXPECT_EQ(refused.code, errc::invalid_request);
  EXPECT_EQ(refused.message, "address is 302 bytes long; at most 255 are allowed");

  const auto not_an_address =
      call(impostor, message_kind::register_runner, registration_of("x", "no-port-here"));
  EXPECT_EQ(not_an_address.code, errc::invalid_request);
  EXPECT_EQ(not_an_address.message, "address 'no-port-here' is not host:port");

  auto snapshot = status();
  ASSERT_TRUE(snapshot.has_value()) << snapshot.error().message;
  EXPECT_EQ(runner_addresses(snapshot.value()), (std::set<std::string>{"127.0.0.1:40001"}));
  EXPECT_EQ(group_names(snapshot.value()), (std::set<std::string>{"default"}));
}

TEST_F(manager_limits,
       refuses_a_registration_that_could_make_the_snapshot_exceed_what_subscribers_accept) {
  auto config = default_config();
  config.common.max_frame_bytes = 256 * 1024;
  start(config);
  ASSERT_EQ(manager_->snapshot_limit(), 256u * 1024 - 4096);
  std::vector<std::string> four, sixty_four;
  for (int i = 0; i < 4; ++i) four.push_back("small-" + std::to_string(i));
  for (int i = 0; i < 64; ++i) sixty_four.push_back("big-" + std::to_string(i));
  join(registration_of("small", "127.0.0.1:40001", four));

  // 64 groups are within the per-runner limit, but 64 x 300 owners are not within 252 KiB.
  auto big = connect_as("runner");
  const auto reply = call(big, message_kind::register_runner,
                          registration_of("big", "127.0.0.1:40002", sixty_four));
  EXPECT_EQ(reply.code, errc::invalid_request);
  EXPECT_NE(reply.message.find("assignment snapshot could reach"), std::string::npos)
      << reply.message;
  EXPECT_NE(reply.message.find("more than the 258048 its subscribers accept"), std::string::npos)
      << reply.message;

  auto snapshot = status();
  ASSERT_TRUE(snapshot.has_value()) << snapshot.error().message;
  EXPECT_EQ(snapshot.value().runners.size(), 1u);
  EXPECT_LE(pack_bytes(manager_->snapshot()).size(), manager_->snapshot_limit());
  // The bound is an upper bound: what the manager sends stays below what it promised.
  EXPECT_EQ(snapshot.value().groups.size(), 4u);
}

TEST_F(manager_limits, forgets_the_groups_and_entity_types_of_a_runner_that_left) {
  start();
  auto solo = join(registration_of("solo", "127.0.0.1:40001", {"default", "solo-group"}));
  join(registration_of("shared", "127.0.0.1:40002", {"default"}));
  EXPECT_EQ(group_names(manager_->snapshot()), (std::set<std::string>{"default", "solo-group"}));
  const auto left =
      call(solo, message_kind::unregister_runner, unregister_runner_msg{"127.0.0.1:40001"});
  ASSERT_TRUE(left.ok()) << left.message;
  const auto snapshot = manager_->snapshot();
  EXPECT_EQ(group_names(snapshot), (std::set<std::string>{"default"}));
  ASSERT_EQ(snapshot.entity_types.size(), 1u);
  EXPECT_EQ(snapshot.entity_types.front().name, "shared-Type");
  // Every shard of the group that is left went to the runner that stayed.
  const auto* group = snapshot.find_group("default");
  ASSERT_NE(group, nullptr);
  EXPECT_TRUE(std::all_of(group->owners.begin(), group->owners.end(),
                          [](const std::string& owner) { return owner == "127.0.0.1:40002"; }));
}

TEST_F(manager_limits, drops_stored_runners_and_groups_that_break_the_limits_when_it_starts) {
  // What an older manager could have stored: the oversized runner, its 150 groups, and a
  // group whose owner is not a runner at all.
  auto store = std::make_unique<memory_manager_store>();
  auto* stored = store.get();
  const auto garbage = oversized_registration();
  stored->save_runner(garbage);
  for (const auto& group : garbage.groups)
    stored->save_assignment(group, std::vector<std::string>(300, garbage.address));
  const auto good = registration_of("good", "127.0.0.1:40001");
  stored->save_runner(good);
  std::vector<std::string> owners(300, good.address);
  owners[7] = "127.0.0.1:9";  // not a runner: orphaned, assigned again
  stored->save_assignment("default", owners);
  start(default_config(), std::move(store));

  const auto snapshot = manager_->snapshot();
  EXPECT_EQ(runner_addresses(snapshot), (std::set<std::string>{good.address}));
  EXPECT_EQ(group_names(snapshot), (std::set<std::string>{"default"}));
  ASSERT_EQ(snapshot.groups.front().owners.size(), 300u);
  EXPECT_EQ(snapshot.groups.front().owners[7], "");
  EXPECT_EQ(snapshot.groups.front().owners[8], good.address);
  // Gone from storage too, so the next start does not meet them again.
  ASSERT_EQ(stored->load_runners().size(), 1u);
  EXPECT_EQ(stored->load_runners().front().address, good.address);
  EXPECT_EQ(stored->load_assignments().size(), 1u);
  auto status_now = status();
  ASSERT_TRUE(status_now.has_value()) << status_now.error().message;
  EXPECT_EQ(status_now.value().runners.size(), 1u);
}

TEST_F(manager_limits, a_repeated_subscribe_on_one_connection_is_one_subscription) {
  start();
  auto versions = std::make_shared<std::vector<std::uint64_t>>();
  auto subscriber = connect_as("proxy", [versions](const connection_ptr&, envelope&& env) {
    if (env.kind != static_cast<std::uint32_t>(message_kind::assignments)) return;
    if (auto snapshot = env.as<assignment_snapshot>())
      versions->push_back(snapshot.value().version);
  });
  for (int i = 0; i < 3; ++i) {
    const auto reply = call(subscriber, message_kind::subscribe_assignments, empty_msg{});
    EXPECT_TRUE(reply.ok()) << reply.message;
  }
  EXPECT_EQ(manager_->subscriber_count(), 1u);
  join(registration_of("runner-1", "127.0.0.1:40001"));
  join(registration_of("runner-2", "127.0.0.1:40002"));
  const auto latest = manager_->snapshot().version;
  ASSERT_TRUE(run_until(io_, [&] { return !versions->empty() && versions->back() == latest; }));
  // Each snapshot arrived once: the first on subscribing, then one per change.
  EXPECT_TRUE(std::adjacent_find(versions->begin(), versions->end(), std::greater_equal<>{}) ==
              versions->end())
      << "a version arrived twice or out of order";
  EXPECT_EQ(versions->size(), latest - versions->front() + 1);
}

// A plain socket that says hello and subscribes, then never reads.
class deaf_subscriber {
 public:
  deaf_subscriber(asio::io_context& io, std::uint16_t port) : socket_(io) {
    // Default buffers: a tiny receive window would leave the drain below to the sender's
    // zero-window probes, which back off to seconds.
    socket_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
    hello_msg hello{protocol_version, "proxy", "deaf"};
    write(encode_frame(message_kind::hello, 1, hello));
    write(encode_frame(message_kind::subscribe_assignments, 2, empty_msg{}));
  }
  /// Reads everything that was queued for it: true when the manager closed the connection
  /// (end of stream), false when it is still open after `limit`.
  bool drain_until_closed(asio::io_context& io, milliseconds limit) {
    auto closed = std::make_shared<bool>(false);
    auto buffer = std::make_shared<std::array<char, 65536>>();
    auto read = std::make_shared<std::function<void()>>();
    *read = [this, closed, buffer, weak = std::weak_ptr<std::function<void()>>(read)] {
      socket_.async_read_some(asio::buffer(*buffer),
                              [closed, weak](const error_code& ec, std::size_t) {
                                if (ec) {
                                  *closed = true;
                                  return;
                                }
                                if (auto again = weak.lock()) (*again)();
                              });
    };
    (*read)();
    const bool ended = run_until(
        io, [closed] { return *closed; }, limit);
    error_code ignored;
    socket_.close(ignored);
    run_until(
        io, [] { return false; }, 20ms);  // let the read's handler run while `read` lives
    return ended;
  }

 private:
  void write(const frame& out) { asio::write(socket_, asio::buffer(out.data(), out.size())); }
  tcp::socket socket_;
};

TEST_F(manager_limits,
       a_subscriber_that_never_reads_is_disconnected_while_others_keep_getting_snapshots) {
  auto config = default_config();
  config.common.max_frame_bytes = 1024 * 1024;
  config.common.max_queued_bytes = 2 * 1024 * 1024;
  start(config);
  auto latest = std::make_shared<std::uint64_t>(0);
  auto reader = connect_as("proxy", [latest](const connection_ptr&, envelope&& env) {
    if (env.kind != static_cast<std::uint32_t>(message_kind::assignments)) return;
    if (auto snapshot = env.as<assignment_snapshot>()) *latest = snapshot.value().version;
  });
  ASSERT_TRUE(call(reader, message_kind::subscribe_assignments, empty_msg{}).ok());
  deaf_subscriber deaf(io_, manager_->port());
  ASSERT_TRUE(run_until(io_, [&] { return manager_->subscriber_count() == 2; }));

  // Snapshots of ~150 KB (8 groups of 300 owners with a 60-byte address): one per join and
  // one per leave, until the deaf subscriber's queue passes 2 MiB past what the kernel's
  // socket buffers hold.
  std::vector<std::string> groups;
  for (int i = 0; i < 8; ++i) groups.push_back("group-" + std::to_string(i));
  const std::string address = std::string(55, 'r') + ":4000";
  int changes = 0;
  while (manager_->subscriber_count() == 2 && changes < 2000) {
    auto runner = join(registration_of("churn", address, groups));
    ASSERT_TRUE(call(runner, message_kind::unregister_runner, unregister_runner_msg{address}).ok());
    runner->close();
    changes += 2;
  }
  ASSERT_EQ(manager_->subscriber_count(), 1u) << changes << " snapshots did not disconnect it";
  // The reader got every snapshot up to the latest meanwhile.
  const auto version = manager_->snapshot().version;
  ASSERT_TRUE(run_until(io_, [&] { return *latest == version; }));
  EXPECT_TRUE(reader->is_open());
  // What reached the deaf one ends with the manager closing the connection.
  EXPECT_TRUE(deaf.drain_until_closed(io_, 10000ms));
}

TEST_F(manager_limits, only_an_admin_unregisters_another_runner_and_its_shards_move) {
  start();
  join(registration_of("victim", "127.0.0.1:40001"));
  join(registration_of("other", "127.0.0.1:40002"));
  auto rogue = join(registration_of("rogue", "127.0.0.1:40003"));

  const auto forged =
      call(rogue, message_kind::unregister_runner, unregister_runner_msg{"127.0.0.1:40001"});
  EXPECT_FALSE(forged.ok());
  EXPECT_NE(forged.message.find("only an admin may unregister another runner"), std::string::npos)
      << forged.message;
  EXPECT_EQ(runner_addresses(manager_->snapshot()).count("127.0.0.1:40001"), 1u);

  auto admin = connect_as("admin");
  const auto unknown =
      call(admin, message_kind::unregister_runner, unregister_runner_msg{"127.0.0.1:1"});
  EXPECT_EQ(unknown.code, errc::invalid_request);
  EXPECT_EQ(unknown.message, "no runner is registered at 127.0.0.1:1");

  const auto done =
      call(admin, message_kind::unregister_runner, unregister_runner_msg{"127.0.0.1:40001"});
  ASSERT_TRUE(done.ok()) << done.message;
  const auto snapshot = manager_->snapshot();
  EXPECT_EQ(runner_addresses(snapshot),
            (std::set<std::string>{"127.0.0.1:40002", "127.0.0.1:40003"}));
  const auto* group = snapshot.find_group("default");
  ASSERT_NE(group, nullptr);
  EXPECT_EQ(std::count(group->owners.begin(), group->owners.end(), "127.0.0.1:40001"), 0);
  EXPECT_EQ(std::count(group->owners.begin(), group->owners.end(), ""), 0);
  EXPECT_TRUE(admin->is_open());
}

}  // namespace
}  // namespace cluster::testing
