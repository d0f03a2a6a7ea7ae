// The manager's PostgreSQL store never makes its caller wait for the database: writes
// return while the server hangs or is away, and land once it answers again. A TCP
// forwarder between the store and a real server (CLUSTER_TEST_PG_URL) plays the network.
#include <gtest/gtest.h>
#include <libpq-fe.h>
#include <unistd.h>

#include <atomic>
#include <boost/asio.hpp>
#include <chrono>
#include <future>
#include <memory>
#include <thread>

#include "cluster/storage-pg/postgres.hpp"
#include "cluster/storage-pg/stores.hpp"
#include "test_postgres.hpp"

namespace cluster::testing {
namespace {

namespace net = boost::asio;
using net::ip::tcp;
using namespace std::chrono_literals;

/// The fields of a libpq URL or conninfo string.
std::map<std::string, std::string> conninfo_fields(const std::string& url) {
  std::map<std::string, std::string> fields;
  char* error = nullptr;
  PQconninfoOption* options = PQconninfoParse(url.c_str(), &error);
  if (options == nullptr) {
    ADD_FAILURE() << "bad CLUSTER_TEST_PG_URL: " << (error ? error : "?");
    PQfreemem(error);
    return fields;
  }
  for (auto* o = options; o->keyword != nullptr; ++o)
    if (o->val != nullptr) fields[o->keyword] = o->val;
  PQconninfoFree(options);
  return fields;
}

/// Forwards 127.0.0.1:<port()> to the database. `freeze()` stops moving bytes (a hung
/// server or a black-holed network: connections stay open, nothing answers); `cut()`
/// closes every connection and refuses new ones (a server that is away).
class forwarder {
 public:
  forwarder(std::string host, std::uint16_t port) : target_host_(std::move(host)), target_(port) {
    acceptor_.open(tcp::v4());
    acceptor_.set_option(tcp::acceptor::reuse_address(true));
    acceptor_.bind({net::ip::make_address("127.0.0.1"), 0});
    acceptor_.listen();
    port_ = acceptor_.local_endpoint().port();
    accept();
    thread_ = std::thread([this] { io_.run(); });
  }
  ~forwarder() {
    net::post(io_, [this] { io_.stop(); });
    thread_.join();
  }
  std::uint16_t port() const { return port_; }
  void freeze() { frozen_ = true; }
  void thaw() { frozen_ = false; }
  void cut() {
    run_on_io([this] {
      refusing_ = true;
      for (auto& weak : links_)
        if (auto open = weak.lock()) open->close();
      links_.clear();
    });
  }
  void restore() {
    run_on_io([this] { refusing_ = false; });
  }

 private:
  struct link {
    explicit link(net::io_context& io) : client(io), server(io) {}
    void close() {
      boost::system::error_code ignored;
      client.close(ignored);
      server.close(ignored);
    }
    tcp::socket client, server;
  };

  template <class Work>
  void run_on_io(Work work) {
    std::promise<void> done;
    net::post(io_, [&] {
      work();
      done.set_value();
    });
    done.get_future().wait();
  }

  void accept() {
    acceptor_.async_accept([this](boost::system::error_code ec, tcp::socket socket) {
      if (ec) return;
      if (refusing_) {
        socket.close();
      } else {
        auto l = std::make_shared<link>(io_);
        l->client = std::move(socket);
        l->server.connect({net::ip::make_address(target_host_), target_}, ec);
        if (ec) {
          l->close();
        } else {
          links_.push_back(l);
          pump(l, &link::client, &link::server);
          pump(l, &link::server, &link::client);
        }
      }
      accept();
    });
  }

  // Copies one direction; while frozen, the bytes read so far wait in the buffer.
  void pump(std::shared_ptr<link> l, tcp::socket link::*from, tcp::socket link::*to) {
    auto buffer = std::make_shared<std::array<char, 16384>>();
    ((*l).*from)
        .async_read_some(net::buffer(*buffer),
                         [this, l, from, to, buffer](boost::system::error_code ec, std::size_t n) {
                           if (ec) return l->close();
                           deliver(l, from, to, buffer, n);
                         });
  }
  void deliver(std::shared_ptr<link> l, tcp::socket link::*from, tcp::socket link::*to,
               std::shared_ptr<std::array<char, 16384>> buffer, std::size_t n) {
    if (frozen_) {
      auto wait = std::make_shared<net::steady_timer>(io_, 5ms);
      wait->async_wait([this, l, from, to, buffer, n, wait](boost::system::error_code) {
        deliver(l, from, to, buffer, n);
      });
      return;
    }
    net::async_write(((*l).*to), net::buffer(*buffer, n),
                     [this, l, from, to, buffer](boost::system::error_code ec, std::size_t) {
                       if (ec) return l->close();
                       pump(l, from, to);
                     });
  }

  net::io_context io_;
  tcp::acceptor acceptor_{io_};
  std::string target_host_;
  std::uint16_t target_;
  std::uint16_t port_ = 0;
  std::atomic<bool> frozen_{false};
  bool refusing_ = false;  // io thread
  std::vector<std::weak_ptr<link>> links_;
  std::thread thread_;
};

struct manager_store_test : ::testing::Test {
  void SetUp() override {
    if (test_pg_url().empty()) return;
    auto fields = conninfo_fields(test_pg_url());
    const auto host = fields.count("host") ? fields["host"] : "127.0.0.1";
    const auto port = fields.count("port") ? std::stoi(fields["port"]) : 5432;
    proxy = std::make_unique<forwarder>(host, static_cast<std::uint16_t>(port));
    direct.backend = "postgres";
    direct.url = test_pg_url();
    static int counter = 0;
    direct.table_prefix = "ms" + std::to_string(::getpid()) + "_" + std::to_string(counter++);
    through_proxy = direct;
    // The password (the private server requires one) is hex, so it needs no escaping.
    through_proxy.url = "postgresql://" + (fields.count("user") ? fields["user"] : "postgres") +
                        (fields.count("password") ? ":" + fields["password"] : "") +
                        "@127.0.0.1:" + std::to_string(proxy->port()) + "/" +
                        (fields.count("dbname") ? fields["dbname"] : "postgres") +
                        "?connect_timeout=2";
  }

  static register_runner_msg runner_named(const std::string& name) {
    register_runner_msg runner;
    runner.name = name;
    runner.address = "127.0.0.1:" + std::to_string(40000 + name.size());
    runner.groups = {"default"};
    return runner;
  }

  /// Runs `writes` on another thread and reports whether they returned within `limit`.
  template <class Writes>
  static bool returns_within(std::chrono::milliseconds limit, Writes writes) {
    auto done = std::async(std::launch::async, writes);
    const bool returned = done.wait_for(limit) == std::future_status::ready;
    if (!returned) ADD_FAILURE() << "a manager store write blocked its caller";
    done.wait();
    return returned;
  }

  std::unique_ptr<forwarder> proxy;
  storage_settings direct, through_proxy;
};

TEST_F(manager_store_test, writes_return_while_the_database_hangs_and_land_when_it_answers) {
  REQUIRE_POSTGRES();
  auto store = make_manager_store(through_proxy);
  proxy->freeze();
  EXPECT_TRUE(returns_within(2s, [&] {
    store->save_runner(runner_named("runner-a"));
    store->save_assignment("default", {"127.0.0.1:40008", ""});
  }));
  EXPECT_FALSE(store->flush(300ms)) << "nothing can be stored while the server hangs";
  proxy->thaw();
  EXPECT_TRUE(store->flush(30s));

  auto fresh = make_manager_store(direct);
  const auto runners = fresh->load_runners();
  ASSERT_EQ(runners.size(), 1u);
  EXPECT_EQ(runners[0].name, "runner-a");
  EXPECT_EQ(fresh->load_assignments().at("default"),
            (std::vector<std::string>{"127.0.0.1:40008", ""}));
}

TEST_F(manager_store_test, retries_through_an_outage_and_keeps_only_the_latest_state) {
  REQUIRE_POSTGRES();
  auto store = make_manager_store(through_proxy);
  store->save_runner(runner_named("runner-gone"));
  ASSERT_TRUE(store->flush(30s));

  proxy->cut();
  EXPECT_TRUE(returns_within(2s, [&] {
    store->remove_runner(runner_named("runner-gone").address);
    store->save_runner(runner_named("runner-b"));
    store->save_assignment("default", {"a", "b"});
    store->save_assignment("default", {"b", "b"});  // the one that must survive
  }));
  const auto give_up = std::chrono::steady_clock::now() + 30s;
  while (store->reachable() && std::chrono::steady_clock::now() < give_up)
    std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(store->reachable()) << "the store should notice that the server is away";
  EXPECT_FALSE(store->flush(300ms));

  proxy->restore();
  ASSERT_TRUE(store->flush(30s));
  EXPECT_TRUE(store->reachable());

  auto fresh = make_manager_store(direct);
  const auto runners = fresh->load_runners();
  ASSERT_EQ(runners.size(), 1u);
  EXPECT_EQ(runners[0].name, "runner-b");
  EXPECT_EQ(fresh->load_assignments().at("default"), (std::vector<std::string>{"b", "b"}));
}

/// Waits for a fence's completion (it runs on the store's thread).
result<std::size_t> fence(manager_store& store, const std::string& incarnation) {
  auto ended = std::make_shared<std::promise<result<std::size_t>>>();
  auto future = ended->get_future();
  store.fence_runner(incarnation, [ended](result<std::size_t> r) { ended->set_value(r); });
  if (future.wait_for(30s) != std::future_status::ready)
    return failure{errc::deadline_exceeded, "the fence did not complete within 30 s"};
  return future.get();
}

bool lock_is_free(pg::connection& conn, std::int64_t key) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    // A terminated backend lets its locks go as it exits, a moment after the signal.
    if (conn.exec("SELECT pg_try_advisory_lock($1)", {pg::param::text(std::to_string(key))})
            .boolean(0, 0))
      return true;
    std::this_thread::sleep_for(20ms);
  }
  return false;
}

TEST_F(manager_store_test, a_fence_ends_only_that_runner_incarnation_s_sessions_and_their_locks) {
  REQUIRE_POSTGRES();
  const std::string incarnation = "t" + std::to_string(::getpid()) + "frozen";
  const std::int64_t key = 4'200'000 + ::getpid();
  pg::connection frozen(test_pg_url(), runner_session_name(incarnation));
  pg::connection listener(test_pg_url(), runner_session_name(incarnation));
  pg::connection bystander(test_pg_url(), runner_session_name(incarnation + "-other"));
  frozen.exec("SELECT pg_advisory_lock($1)", {pg::param::text(std::to_string(key))});
  pg::connection next_owner(test_pg_url());
  ASSERT_FALSE(
      next_owner.exec("SELECT pg_try_advisory_lock($1)", {pg::param::text(std::to_string(key))})
          .boolean(0, 0));

  auto store = make_manager_store(direct);
  const auto ended = fence(*store, incarnation);
  ASSERT_TRUE(ended.has_value()) << ended.error().message;
  EXPECT_EQ(ended.value(), 2u) << "both sessions of the incarnation, nothing else";
  EXPECT_TRUE(lock_is_free(next_owner, key)) << "the fenced session's lock was not released";
  EXPECT_THROW(frozen.exec("SELECT 1"), pg::error);
  EXPECT_NO_THROW(bystander.exec("SELECT 1"));
  // Nothing left to end: a second fence finds no session.
  const auto again = fence(*store, incarnation);
  ASSERT_TRUE(again.has_value()) << again.error().message;
  EXPECT_EQ(again.value(), 0u);
}

TEST_F(manager_store_test, a_fence_asked_for_while_the_database_is_away_runs_when_it_is_back) {
  REQUIRE_POSTGRES();
  const std::string incarnation = "t" + std::to_string(::getpid()) + "later";
  pg::connection frozen(test_pg_url(), runner_session_name(incarnation));
  auto store = make_manager_store(through_proxy);
  proxy->cut();
  auto ended = std::make_shared<std::promise<result<std::size_t>>>();
  auto future = ended->get_future();
  store->fence_runner(incarnation, [ended](result<std::size_t> r) { ended->set_value(r); });
  const auto give_up = std::chrono::steady_clock::now() + 30s;
  while (store->reachable() && std::chrono::steady_clock::now() < give_up)
    std::this_thread::sleep_for(20ms);
  EXPECT_FALSE(store->reachable()) << "the fence should have found the server away";
  proxy->restore();
  ASSERT_EQ(future.wait_for(30s), std::future_status::ready);
  const auto result = future.get();
  ASSERT_TRUE(result.has_value()) << result.error().message;
  EXPECT_EQ(result.value(), 1u);
  EXPECT_THROW(frozen.exec("SELECT 1"), pg::error);
}

TEST_F(manager_store_test, an_assignment_saved_without_owners_forgets_its_group) {
  REQUIRE_POSTGRES();
  auto store = make_manager_store(direct);
  store->save_assignment("kept", {"a", "b"});
  store->save_assignment("gone", {"a", "a"});
  ASSERT_TRUE(store->flush(30s));
  store->save_assignment("gone", {});
  ASSERT_TRUE(store->flush(30s));
  auto fresh = make_manager_store(direct);
  const auto assignments = fresh->load_assignments();
  ASSERT_EQ(assignments.size(), 1u);
  EXPECT_EQ(assignments.at("kept"), (std::vector<std::string>{"a", "b"}));
}

TEST_F(manager_store_test, pushed_plugins_are_stored_replaced_and_removed_with_their_bytes) {
  REQUIRE_POSTGRES();
  auto store = make_manager_store(direct);
  auto plugin_of = [](const std::string& name, const std::string& version, std::size_t size) {
    pushed_plugin plugin;
    plugin.plugin.name = name;
    plugin.plugin.version = version;
    plugin.plugin.sha256 = std::string(64, version.front());
    plugin.plugin.abi_major = 1;
    plugin.plugin.abi_minor = 2;
    plugin.plugin.size_bytes = size;
    plugin.plugin.entity_types = {"Zeta", "Alpha", "it's \"quoted\", {braced}"};
    plugin.plugin.pushed_at_ms = 1767225600123;
    bytes data(size);
    for (std::size_t i = 0; i < size; ++i) data[i] = static_cast<std::uint8_t>(i * 31);
    plugin.data = std::make_shared<const bytes>(std::move(data));
    return plugin;
  };
  store->save_plugin(plugin_of("cart", "1", 1000));
  store->save_plugin(plugin_of("wishlist", "1", 3 * 1024 * 1024 + 7));
  store->save_plugin(plugin_of("cart", "2", 2000));  // replaces
  store->save_plugin(plugin_of("gone", "1", 10));
  store->remove_plugin("gone");
  ASSERT_TRUE(store->flush(30s));
  auto fresh = make_manager_store(direct);
  const auto plugins = fresh->load_plugins();
  ASSERT_EQ(plugins.size(), 2u);
  const auto expected_cart = plugin_of("cart", "2", 2000);
  EXPECT_EQ(plugins[0].plugin.name, "cart");
  EXPECT_EQ(plugins[0].plugin.version, "2");
  EXPECT_EQ(plugins[0].plugin.sha256, expected_cart.plugin.sha256);
  EXPECT_EQ(plugins[0].plugin.abi_minor, 2u);
  EXPECT_EQ(plugins[0].plugin.size_bytes, 2000u);
  EXPECT_EQ(plugins[0].plugin.pushed_at_ms, 1767225600123);
  EXPECT_EQ(plugins[0].plugin.entity_types, expected_cart.plugin.entity_types);
  EXPECT_EQ(*plugins[0].data, *expected_cart.data);
  EXPECT_EQ(plugins[1].plugin.name, "wishlist");
  EXPECT_EQ(*plugins[1].data, *plugin_of("wishlist", "1", 3 * 1024 * 1024 + 7).data);
}

}  // namespace
}  // namespace cluster::testing
