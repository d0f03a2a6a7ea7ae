// The router (libs/client: cluster/client/router.hpp) against small fake runners: real
// connections on 127.0.0.1, port 0, everything on one io_context driven by the test thread,
// the same single-threaded model as the processes.

#include "cluster/client/router.hpp"

#include <gtest/gtest.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "cluster/net/server.hpp"
#include "cluster/protocol/codec.hpp"
#include "cluster/protocol/shard.hpp"

namespace {

using namespace std::chrono_literals;
using cluster::assignment_snapshot;
using cluster::errc;
using cluster::message_kind;
using cluster::milliseconds;
using cluster::reply_msg;
using cluster::request_msg;
using cluster::steady_clock;
namespace asio = cluster::asio;

// Runs the io_context until `done` holds or `limit` passes; returns `done()`.
bool run_until(asio::io_context& io, const std::function<bool()>& done, milliseconds limit = 10s) {
  const auto deadline = steady_clock::now() + limit;
  while (!done() && steady_clock::now() < deadline) {
    io.run_for(5ms);
    if (io.stopped()) io.restart();
  }
  return done();
}

// A runner that answers requests as its `answer` says (nullopt: never), by default with its
// own name as the payload, and records what it got.
class fake_runner {
 public:
  using answer_fn = std::function<std::optional<reply_msg>(const request_msg&)>;

  fake_runner(asio::io_context& io, std::string name)
      : name_(std::move(name)),
        server_(io, cluster::server_options{},
                [this](const cluster::connection_ptr& conn, cluster::envelope&& env) {
                  handle(conn, env);
                }) {
    port_ = server_.listen();
  }
  ~fake_runner() { server_.stop(); }

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  const std::string& name() const { return name_; }
  void stop() { server_.stop(); }
  std::size_t open_connections() const { return server_.connection_count(); }

  /// Answers with `code` (a failure reply) from now on.
  void refuse_with(errc code) {
    answer = [code](const request_msg&) {
      return std::optional<reply_msg>(reply_msg::failure(code, "refused by the fake runner"));
    };
  }

  answer_fn answer = [this](const request_msg&) {
    return std::optional<reply_msg>(reply_msg::success(cluster::pack_bytes(name_)));
  };
  bool close_next = false;  ///< close the connection instead of answering the next request
  std::vector<request_msg> requests;
  std::set<const cluster::connection*> peers;  ///< distinct connections requests came on

  /// Streams: requests are answered with `stream_items` items within their credit, then
  /// {count}; with `close_after_items` >= 0 the connection closes after that many instead.
  int stream_items = -1;
  int close_after_items = -1;
  bool ignore_interrupts = false;
  std::vector<std::uint64_t> interrupts;  ///< ids interrupted
  std::vector<std::uint64_t> request_ids;
  int acks = 0;

 private:
  struct stream_state {
    cluster::connection_ptr conn;
    std::uint64_t id = 0;
    int sent = 0;
    std::uint32_t credit = 0;
    bool done = false;
  };
  std::vector<stream_state> streams_;

  void pump(stream_state& s) {
    cluster::stream_chunk_msg chunk;
    while (s.credit > 0 && s.sent < stream_items) {
      if (close_after_items >= 0 && s.sent == close_after_items) break;
      chunk.items.push_back(cluster::pack_bytes(s.sent++));
      --s.credit;
    }
    if (!chunk.items.empty()) s.conn->send(message_kind::stream_chunk, s.id, chunk);
    if (close_after_items >= 0 && s.sent == close_after_items) {
      s.done = true;
      s.conn->close_after_flush();
    } else if (s.sent == stream_items && !s.done) {
      s.done = true;
      s.conn->send_reply(s.id, reply_msg::success(cluster::pack_bytes(stream_items)));
    }
  }

  bool handle_stream_frames(const cluster::connection_ptr& conn, const cluster::envelope& env) {
    const bool ack = env.kind == static_cast<std::uint32_t>(message_kind::stream_ack);
    const bool interrupt = env.kind == static_cast<std::uint32_t>(message_kind::interrupt);
    if (!ack && !interrupt) return false;
    stream_state* found = nullptr;
    for (auto& s : streams_)
      if (s.conn == conn && s.id == env.id && !s.done) found = &s;
    if (ack) {
      ++acks;
      if (found) {
        found->credit += env.as<cluster::stream_ack_msg>().value().credit;
        pump(*found);
      }
      return true;
    }
    interrupts.push_back(env.id);
    if (ignore_interrupts) return true;
    if (found) found->done = true;
    // A held request (answer gave nullopt) or a stream: both end with Cancelled.
    conn->send_reply(env.id, reply_msg::failure(errc::cancelled, "interrupted"));
    return true;
  }

  void handle(const cluster::connection_ptr& conn, const cluster::envelope& env) {
    if (handle_stream_frames(conn, env)) return;
    if (env.kind != static_cast<std::uint32_t>(message_kind::request)) {
      conn->send_reply(env.id, reply_msg::failure(errc::unknown_kind, "fake runner"));
      return;
    }
    auto request = env.as<request_msg>();
    if (!request) {
      ADD_FAILURE() << "the router sent a malformed request: " << request.error().message;
      return;
    }
    requests.push_back(request.value());
    request_ids.push_back(env.id);
    peers.insert(conn.get());
    if (stream_items >= 0) {
      const auto credit = request.value().credit;
      streams_.push_back({conn, env.id, 0, credit == 0 ? cluster::default_stream_credit : credit});
      pump(streams_.back());
      return;
    }
    if (close_next) {
      close_next = false;
      conn->close();
      return;
    }
    if (auto reply = answer(request.value())) conn->send_reply(env.id, *reply);
  }

  std::string name_;
  cluster::server server_;
  std::uint16_t port_ = 0;
};

// Entity type "Counter" in group "default" with the given shard owners ("" = unassigned).
assignment_snapshot snapshot_of(const std::vector<std::string>& owners, std::uint64_t version) {
  assignment_snapshot snapshot;
  snapshot.version = version;
  snapshot.storage = "memory";
  snapshot.groups.push_back(
      {"default", static_cast<std::uint32_t>(owners.size()), std::vector<std::string>(owners)});
  snapshot.entity_types.push_back(
      {"Counter", "default", {{"Get", false}, {"Put", true}, {"Watch", false, true, true}}});
  std::set<std::string> runners(owners.begin(), owners.end());
  for (const auto& address : runners)
    if (!address.empty()) snapshot.runners.push_back({address, address, {"default"}, "", true, 1});
  return snapshot;
}

// An entity id whose shard (of `shards`) is `shard`.
std::string id_in_shard(std::int32_t shard, std::int32_t shards) {
  for (int i = 0;; ++i) {
    std::string id = "entity-" + std::to_string(i);
    if (cluster::shard_for(id, shards) == shard) return id;
  }
}

request_msg counter_request(std::string entity_id, std::string rpc = "Get") {
  request_msg request;
  request.entity_type = "Counter";
  request.entity_id = std::move(entity_id);
  request.rpc = std::move(rpc);
  return request;
}

bool routed_ok(const std::optional<reply_msg>& reply) { return reply && reply->ok(); }

std::string payload_name(const reply_msg& reply) {
  auto name = cluster::unpack_bytes<std::string>(reply.payload);
  return name ? name.value() : "<not a name>";
}

class router_test : public ::testing::Test {
 protected:
  router_test() : router_(io_, options()) {}
  ~router_test() override {
    if (front_) front_->stop();
    router_.stop();
    runners_.clear();
    // Let the closes and their posted callbacks run before anything is destroyed.
    io_.restart();
    io_.run_for(50ms);
  }

  static cluster::router_options options() {
    cluster::router_options o;
    o.name = "router-test";
    o.connect_timeout = 500ms;
    o.retry_min = 5ms;
    o.retry_max = 50ms;
    return o;
  }

  fake_runner& add_runner(const std::string& name) {
    runners_.push_back(std::make_unique<fake_runner>(io_, name));
    return *runners_.back();
  }

  /// The callback form (what the proxy uses); waits for its one reply.
  std::optional<reply_msg> route(request_msg request, milliseconds budget = 5s) {
    auto out = std::make_shared<std::optional<reply_msg>>();
    auto calls = std::make_shared<int>(0);
    router_.route(std::move(request), steady_clock::now() + budget,
                  [out, calls](reply_msg&& reply) {
                    ++*calls;
                    *out = std::move(reply);
                  });
    run_until(
        io_, [out] { return out->has_value(); }, budget + 5s);
    // Exactly once: nothing else arrives after the reply.
    io_.run_for(20ms);
    EXPECT_EQ(*calls, out->has_value() ? 1 : 0);
    return *out;
  }

  /// Starts the coroutine form; the reply lands in the returned slot.
  std::shared_ptr<std::optional<reply_msg>> start_route(request_msg request,
                                                        milliseconds budget = 5s) {
    auto out = std::make_shared<std::optional<reply_msg>>();
    auto routing = router_.route(std::move(request), steady_clock::now() + budget);
    asio::co_spawn(
        io_,
        [routing = std::move(routing), out]() mutable -> cluster::awaitable<void> {
          auto reply = co_await std::move(routing);
          *out = std::move(reply);
        },
        asio::detached);
    return out;
  }

  // A front server that routes what its clients send, as the proxy does, so a test can
  // watch a routed stream and interrupt from the caller's side.
  static cluster::routed_set& set_of(const cluster::connection_ptr& conn) {
    if (!conn->attachment) conn->attachment = std::make_shared<cluster::routed_set>();
    return *static_cast<cluster::routed_set*>(conn->attachment.get());
  }

  void front_message(const cluster::connection_ptr& conn, cluster::envelope&& env) {
    auto& set = set_of(conn);
    switch (static_cast<message_kind>(env.kind)) {
      case message_kind::request:
        router_.route(
            env.as<request_msg>().value(), steady_clock::now() + front_budget_,
            [conn, id = env.id](reply_msg&& reply) { conn->send_reply(id, reply); }, set, conn,
            env.id);
        return;
      case message_kind::interrupt:
        if (auto* routed = set.find(env.id)) router_.interrupt(*routed);
        return;
      case message_kind::stream_ack:
        if (auto* routed = set.find(env.id))
          router_.ack(*routed, env.as<cluster::stream_ack_msg>().value().credit);
        return;
      default:
        return;
    }
  }

  /// A client connection to a fresh front server.
  cluster::connection_ptr front_client() {
    front_ = std::make_unique<cluster::server>(
        io_, cluster::server_options{},
        [this](const cluster::connection_ptr& conn, cluster::envelope&& env) {
          front_message(conn, std::move(env));
        });
    front_->on_disconnect = [this](const cluster::connection_ptr& conn) {
      for (auto* routed : set_of(conn).all()) router_.interrupt(*routed);
    };
    const auto port = front_->listen();
    auto result = std::make_shared<std::optional<cluster::result<cluster::connection_ptr>>>();
    auto connect = cluster::connect_to(
        {"127.0.0.1", port}, {cluster::protocol_version, "client", "front-test"}, {}, 2s,
        [](const cluster::connection_ptr&, cluster::envelope&&) {}, {});
    asio::co_spawn(
        io_,
        [connect = std::move(connect), result]() mutable -> cluster::awaitable<void> {
          auto connected = co_await std::move(connect);
          result->emplace(std::move(connected));
        },
        asio::detached);
    EXPECT_TRUE(run_until(io_, [result] { return result->has_value(); }));
    if (!result->has_value() || !result->value()) return nullptr;
    return result->value().value();
  }

  struct streamed {
    std::vector<int> items;
    std::optional<reply_msg> reply;
    std::uint64_t id = 0;
  };

  /// A streaming call through the front; the client acks every `ack_every` items.
  std::shared_ptr<streamed> stream_call(const cluster::connection_ptr& client, request_msg request,
                                        std::uint32_t ack_every) {
    auto out = std::make_shared<streamed>();
    auto held = std::make_shared<std::uint32_t>(0);
    std::weak_ptr<cluster::connection> weak = client;
    out->id = client->call_stream(
        message_kind::request, request, request.credit, 5s,
        [out, held, ack_every, weak](std::vector<cluster::bytes>&& items) {
          for (const auto& item : items)
            out->items.push_back(cluster::unpack_bytes<int>(item).value());
          *held += static_cast<std::uint32_t>(items.size());
          auto c = weak.lock();
          if (ack_every > 0 && *held >= ack_every && c) {
            c->ack(out->id, *held);
            *held = 0;
          }
        },
        [out](reply_msg&& reply) { out->reply = std::move(reply); });
    return out;
  }

  asio::io_context io_;
  cluster::router router_;
  std::vector<std::unique_ptr<fake_runner>> runners_;
  std::unique_ptr<cluster::server> front_;
  milliseconds front_budget_{5000};
};

}  // namespace

TEST_F(router_test, routes_each_request_to_the_runner_that_owns_its_shard) {
  auto& a = add_runner("a");
  auto& b = add_runner("b");
  router_.update(snapshot_of({a.address(), b.address()}, 1));
  const auto in_a = id_in_shard(1, 2);
  const auto in_b = id_in_shard(2, 2);

  const auto first = route(counter_request(in_a));
  ASSERT_TRUE(first.has_value());
  EXPECT_TRUE(first->ok()) << first->message;
  EXPECT_EQ(payload_name(*first), "a");
  const auto second = route(counter_request(in_b));
  ASSERT_TRUE(second.has_value());
  EXPECT_EQ(payload_name(*second), "b");

  ASSERT_EQ(a.requests.size(), 1u);
  EXPECT_EQ(a.requests[0].entity_id, in_a);
  ASSERT_EQ(b.requests.size(), 1u);
  EXPECT_EQ(b.requests[0].entity_id, in_b);

  const auto located = router_.locate("Counter", in_b, "Get");
  ASSERT_TRUE(located.has_value());
  EXPECT_EQ(located.value().group, "default");
  EXPECT_EQ(located.value().shard, 2);
  EXPECT_EQ(located.value().owner, b.address());
}

TEST_F(router_test, sends_the_time_left_before_the_deadline_as_timeout_ms) {
  auto& a = add_runner("a");
  router_.update(snapshot_of({a.address()}, 1));
  const auto reply = route(counter_request("x"), 3s);
  ASSERT_TRUE(reply.has_value());
  ASSERT_EQ(a.requests.size(), 1u);
  EXPECT_GT(a.requests[0].timeout_ms, 0u);
  EXPECT_LE(a.requests[0].timeout_ms, 3000u);
}

TEST_F(router_test, retries_not_owner_against_the_new_assignment) {
  auto& old_owner = add_runner("old");
  auto& new_owner = add_runner("new");
  old_owner.refuse_with(errc::not_owner);
  router_.update(snapshot_of({old_owner.address()}, 1));

  auto reply = start_route(counter_request("moving"));
  // The shard moved: once the old owner has said so, the manager's next snapshot arrives.
  ASSERT_TRUE(run_until(io_, [&] { return !old_owner.requests.empty(); }));
  router_.update(snapshot_of({new_owner.address()}, 2));
  ASSERT_TRUE(run_until(io_, [reply] { return reply->has_value(); }));
  EXPECT_TRUE((*reply)->ok()) << (*reply)->message;
  EXPECT_EQ(payload_name(**reply), "new");
  ASSERT_EQ(new_owner.requests.size(), 1u);
}

TEST_F(router_test, retries_unavailable_and_shutting_down_until_the_owner_answers) {
  auto& a = add_runner("a");
  int refusals = 0;
  a.answer = [&refusals](const request_msg&) -> std::optional<reply_msg> {
    ++refusals;
    if (refusals == 1) return reply_msg::failure(errc::unavailable, "warming up");
    if (refusals == 2) return reply_msg::failure(errc::shutting_down, "restarting");
    return reply_msg::success(cluster::pack_bytes(std::string("a")));
  };
  router_.update(snapshot_of({a.address()}, 1));
  const auto reply = route(counter_request("x"));
  ASSERT_TRUE(reply.has_value());
  EXPECT_TRUE(reply->ok()) << reply->message;
  EXPECT_EQ(a.requests.size(), 3u);
}

TEST_F(router_test, the_callback_form_retries_a_refusal_on_a_pooled_connection_elsewhere) {
  auto& old_owner = add_runner("old");
  auto& new_owner = add_runner("new");
  router_.update(snapshot_of({old_owner.address()}, 1));
  // Opens the pooled connection, so the next call takes the direct (no coroutine) path.
  ASSERT_TRUE(routed_ok(route(counter_request("warm"))));
  old_owner.refuse_with(errc::not_owner);

  auto out = std::make_shared<std::optional<reply_msg>>();
  router_.route(counter_request("moving"), steady_clock::now() + 5s,
                [out](reply_msg&& reply) { *out = std::move(reply); });
  ASSERT_TRUE(run_until(io_, [&] { return old_owner.requests.size() == 2; }));
  router_.update(snapshot_of({new_owner.address()}, 2));
  ASSERT_TRUE(run_until(io_, [out] { return out->has_value(); }));
  EXPECT_EQ(payload_name(**out), "new");
}

TEST_F(router_test, gives_up_with_deadline_exceeded_naming_the_last_failure) {
  auto& a = add_runner("a");
  a.refuse_with(errc::not_owner);
  router_.update(snapshot_of({a.address()}, 1));
  const auto started = steady_clock::now();
  const auto reply = route(counter_request("x"), 300ms);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->code, errc::deadline_exceeded);
  EXPECT_NE(reply->message.find("NotOwner"), std::string::npos) << reply->message;
  EXPECT_GE(a.requests.size(), 2u) << "the refusal was not retried";
  EXPECT_LT(steady_clock::now() - started, 300ms + 3s);
}

TEST_F(router_test, gives_up_with_deadline_exceeded_when_the_owner_is_unreachable) {
  std::string gone;
  {
    auto& a = add_runner("gone");
    gone = a.address();
  }
  runners_.clear();  // its port is closed now
  router_.update(snapshot_of({gone}, 1));
  const auto reply = route(counter_request("x"), 300ms);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->code, errc::deadline_exceeded);
  EXPECT_NE(reply->message.find("Unavailable"), std::string::npos) << reply->message;
}

TEST_F(router_test, answers_no_runner_when_the_shard_stays_unassigned) {
  router_.update(snapshot_of({""}, 1));
  const auto reply = route(counter_request("x"), 200ms);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->code, errc::no_runner);
  EXPECT_NE(reply->message.find("has no runner"), std::string::npos) << reply->message;
}

TEST_F(router_test, answers_no_runner_before_the_first_snapshot) {
  const auto reply = route(counter_request("x"), 100ms);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->code, errc::no_runner);
  const auto located = router_.locate("Counter", "x", "Get");
  ASSERT_FALSE(located.has_value());
  EXPECT_EQ(located.error().code, errc::no_runner);
}

TEST_F(router_test, routes_once_a_snapshot_assigns_the_shard_before_the_deadline) {
  auto& a = add_runner("a");
  router_.update(snapshot_of({""}, 1));
  auto reply = start_route(counter_request("x"));
  // A few NoRunner rounds pass (nothing to observe but time), then the shard gets an owner.
  io_.run_for(30ms);
  EXPECT_FALSE(reply->has_value());
  router_.update(snapshot_of({a.address()}, 2));
  ASSERT_TRUE(run_until(io_, [reply] { return reply->has_value(); }));
  EXPECT_TRUE((*reply)->ok()) << (*reply)->message;
}

TEST_F(router_test, returns_a_failure_that_is_not_retriable_at_once) {
  auto& a = add_runner("a");
  a.answer = [](const request_msg&) {
    auto reply = reply_msg::failure(errc::application_error, "no such counter");
    reply.error = "NotFound";
    return std::optional<reply_msg>(reply);
  };
  router_.update(snapshot_of({a.address()}, 1));
  const auto reply = route(counter_request("x"));
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->code, errc::application_error);
  EXPECT_EQ(reply->error, "NotFound");
  EXPECT_EQ(a.requests.size(), 1u);
}

TEST_F(router_test, refuses_an_unknown_entity_type_or_rpc_without_asking_a_runner) {
  auto& a = add_runner("a");
  router_.update(snapshot_of({a.address()}, 1));
  auto unknown_type = counter_request("x");
  unknown_type.entity_type = "Nope";
  const auto type_reply = route(unknown_type);
  ASSERT_TRUE(type_reply.has_value());
  EXPECT_EQ(type_reply->code, errc::unknown_entity_type);
  const auto rpc_reply = route(counter_request("x", "Nope"));
  ASSERT_TRUE(rpc_reply.has_value());
  EXPECT_EQ(rpc_reply->code, errc::unknown_rpc);
  EXPECT_TRUE(a.requests.empty());
}

TEST_F(router_test, refuses_a_snapshot_whose_owners_do_not_cover_its_shards) {
  auto snapshot = snapshot_of({"127.0.0.1:1"}, 1);
  snapshot.groups[0].shards = 300;  // one owner listed for 300 shards
  router_.update(snapshot);
  const auto located = router_.locate("Counter", "x", "Get");
  ASSERT_FALSE(located.has_value());
  EXPECT_EQ(located.error().code, errc::no_runner);
}

TEST_F(router_test, reuses_one_pooled_connection_per_runner) {
  auto& a = add_runner("a");
  router_.update(snapshot_of({a.address()}, 1));
  // A burst before any connection exists: one connect, the others wait for it.
  std::vector<std::shared_ptr<std::optional<reply_msg>>> burst;
  for (int i = 0; i < 10; ++i)
    burst.push_back(start_route(counter_request("e" + std::to_string(i))));
  ASSERT_TRUE(run_until(io_, [&] {
    for (const auto& r : burst)
      if (!r->has_value()) return false;
    return true;
  }));
  for (int i = 0; i < 10; ++i)
    ASSERT_TRUE(routed_ok(route(counter_request("f" + std::to_string(i)))));
  EXPECT_EQ(a.requests.size(), 20u);
  EXPECT_EQ(a.peers.size(), 1u);
  EXPECT_EQ(a.open_connections(), 1u);
}

TEST_F(router_test, reconnects_and_retries_when_the_pooled_connection_drops_mid_call) {
  auto& a = add_runner("a");
  router_.update(snapshot_of({a.address()}, 1));
  ASSERT_TRUE(routed_ok(route(counter_request("x"))));
  a.close_next = true;  // the runner drops the connection instead of answering
  const auto reply = route(counter_request("x"));
  ASSERT_TRUE(routed_ok(reply)) << (reply ? reply->message : "no reply");
  EXPECT_EQ(a.requests.size(), 3u);
  EXPECT_EQ(a.peers.size(), 2u);
  EXPECT_TRUE(run_until(io_, [&] { return a.open_connections() == 1; }));
}

TEST_F(router_test, closes_pooled_connections_to_runners_that_left_the_cluster) {
  auto& a = add_runner("a");
  auto& b = add_runner("b");
  router_.update(snapshot_of({a.address(), b.address()}, 1));
  ASSERT_TRUE(routed_ok(route(counter_request(id_in_shard(1, 2)))));
  ASSERT_TRUE(routed_ok(route(counter_request(id_in_shard(2, 2)))));
  ASSERT_EQ(a.open_connections(), 1u);
  router_.update(snapshot_of({b.address(), b.address()}, 2));
  EXPECT_TRUE(run_until(io_, [&] { return a.open_connections() == 0; }));
  EXPECT_EQ(b.open_connections(), 1u);
}

TEST_F(router_test, keeps_the_generated_primary_key_of_a_persisted_request_across_retries) {
  auto& old_owner = add_runner("old");
  auto& new_owner = add_runner("new");
  old_owner.refuse_with(errc::not_owner);
  router_.update(snapshot_of({old_owner.address()}, 1));
  auto reply = start_route(counter_request("x", "Put"));
  ASSERT_TRUE(run_until(io_, [&] { return !old_owner.requests.empty(); }));
  router_.update(snapshot_of({new_owner.address()}, 2));
  ASSERT_TRUE(run_until(io_, [reply] { return reply->has_value(); }));
  ASSERT_EQ(new_owner.requests.size(), 1u);
  const auto& first_key = old_owner.requests[0].primary_key;
  ASSERT_TRUE(first_key.has_value());
  EXPECT_EQ(first_key->rfind("auto:", 0), 0u) << *first_key;
  EXPECT_EQ(new_owner.requests[0].primary_key, first_key);

  // A volatile RPC gets none; a caller's own key is kept.
  ASSERT_TRUE(routed_ok(route(counter_request("y"))));
  EXPECT_FALSE(new_owner.requests.back().primary_key.has_value());
  auto keyed = counter_request("z", "Put");
  keyed.primary_key = "order-42";
  ASSERT_TRUE(routed_ok(route(keyed)));
  EXPECT_EQ(new_owner.requests.back().primary_key, std::optional<std::string>("order-42"));
}

TEST_F(router_test, delivers_to_its_own_shards_without_a_connection) {
  auto& remote = add_runner("remote");
  const std::string self = "127.0.0.1:1";  // never connected to
  router_.update(snapshot_of({self, remote.address()}, 1));
  auto local = std::make_shared<std::vector<std::string>>();
  router_.is_local = [self](const std::string& owner) { return owner == self; };
  router_.deliver_locally = [local](request_msg request,
                                    steady_clock::time_point) -> cluster::awaitable<reply_msg> {
    local->push_back(request.entity_id);
    co_return reply_msg::success(cluster::pack_bytes(std::string("self")));
  };
  const auto mine = route(counter_request(id_in_shard(1, 2)));
  ASSERT_TRUE(mine.has_value());
  EXPECT_EQ(payload_name(*mine), "self");
  const auto theirs = route(counter_request(id_in_shard(2, 2)));
  ASSERT_TRUE(theirs.has_value());
  EXPECT_EQ(payload_name(*theirs), "remote");
  EXPECT_EQ(*local, std::vector<std::string>{id_in_shard(1, 2)});
}

namespace {

cluster::plugin_info plugin_with(std::vector<std::string> types, std::string state = "loaded") {
  cluster::plugin_info plugin;
  plugin.name = "plugin";
  plugin.version = "1.0.0";
  plugin.state = std::move(state);
  plugin.entity_types = std::move(types);
  return plugin;
}

// `owners` as snapshot_of, with each runner's plugins as `plugins` says (runners it does not
// name list none).
assignment_snapshot snapshot_with_plugins(
    const std::vector<std::string>& owners, std::uint64_t version,
    const std::map<std::string, std::vector<cluster::plugin_info>>& plugins,
    const std::vector<std::string>& more_runners = {}) {
  auto snapshot = snapshot_of(owners, version);
  for (const auto& address : more_runners)
    snapshot.runners.push_back({address, address, {"default"}, "", true, 0});
  for (auto& runner : snapshot.runners)
    if (auto it = plugins.find(runner.address); it != plugins.end()) runner.plugins = it->second;
  return snapshot;
}

}  // namespace

TEST_F(router_test, waits_for_the_shard_to_move_when_its_owner_lacks_the_type) {
  auto& lacking = add_runner("lacking");
  auto& having = add_runner("having");
  // The owner lists plugins, none with Counter (a failed one does not count), while the
  // other runner has it: a rollout the manager is resolving.
  const std::map<std::string, std::vector<cluster::plugin_info>> plugins = {
      {lacking.address(), {plugin_with({"Other"}), plugin_with({"Counter"}, "failed")}},
      {having.address(), {plugin_with({"Counter"})}}};
  router_.update(snapshot_with_plugins({lacking.address()}, 1, plugins, {having.address()}));
  EXPECT_TRUE(router_.lacks_type(lacking.address(), "Counter"));
  EXPECT_FALSE(router_.lacks_type(having.address(), "Counter"));
  EXPECT_FALSE(router_.lacks_type(lacking.address(), "Other"));

  auto callback = std::make_shared<std::optional<reply_msg>>();
  router_.route(counter_request("moving"), steady_clock::now() + 5s,
                [callback](reply_msg&& reply) { *callback = std::move(reply); });
  auto coroutine = start_route(counter_request("moving"));
  run_until(
      io_, [] { return false; }, 100ms);
  EXPECT_FALSE(callback->has_value());
  EXPECT_FALSE(coroutine->has_value());
  router_.update(snapshot_with_plugins({having.address()}, 2, plugins, {lacking.address()}));
  ASSERT_TRUE(run_until(io_, [&] { return callback->has_value() && coroutine->has_value(); }));
  EXPECT_EQ(payload_name(**callback), "having");
  EXPECT_EQ(payload_name(**coroutine), "having");
  EXPECT_TRUE(lacking.requests.empty()) << "a runner without the type was asked";
}

TEST_F(router_test, gives_up_with_deadline_exceeded_when_the_owner_keeps_lacking_the_type) {
  auto& lacking = add_runner("lacking");
  auto& having = add_runner("having");
  router_.update(snapshot_with_plugins({lacking.address()}, 1,
                                       {{lacking.address(), {plugin_with({"Other"})}},
                                        {having.address(), {plugin_with({"Counter"})}}},
                                       {having.address()}));
  const auto reply = route(counter_request("x"), 200ms);
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->code, errc::deadline_exceeded);
  EXPECT_NE(reply->message.find("does not have entity type 'Counter'"), std::string::npos)
      << reply->message;
}

TEST_F(router_test, retries_unknown_entity_type_from_an_owner_while_another_runner_has_it) {
  auto& stale = add_runner("stale");
  auto& fresh = add_runner("fresh");
  // Neither lists plugins (so neither is known to lack the type), but the owner says it has
  // no Counter: its registration is behind. Both forms retry until the shard moves.
  stale.refuse_with(errc::unknown_entity_type);
  const auto in_stale = id_in_shard(1, 2);
  router_.update(snapshot_of({stale.address(), fresh.address()}, 1));
  auto callback = std::make_shared<std::optional<reply_msg>>();
  router_.route(counter_request(in_stale), steady_clock::now() + 5s,
                [callback](reply_msg&& reply) { *callback = std::move(reply); });
  auto coroutine = start_route(counter_request(in_stale));
  ASSERT_TRUE(run_until(io_, [&] { return stale.requests.size() >= 4; }));
  EXPECT_FALSE(callback->has_value());
  EXPECT_FALSE(coroutine->has_value());
  router_.update(snapshot_of({fresh.address(), fresh.address()}, 2));
  ASSERT_TRUE(run_until(io_, [&] { return callback->has_value() && coroutine->has_value(); }));
  EXPECT_EQ(payload_name(**callback), "fresh");
  EXPECT_EQ(payload_name(**coroutine), "fresh");
}

TEST_F(router_test, returns_unknown_entity_type_at_once_when_no_other_runner_has_the_type) {
  auto& only = add_runner("only");
  auto& other = add_runner("other");
  only.refuse_with(errc::unknown_entity_type);
  // The other runner lists plugins without Counter: nobody else could serve it.
  router_.update(snapshot_with_plugins(
      {only.address()}, 1, {{other.address(), {plugin_with({"Other"})}}}, {other.address()}));
  const auto reply = route(counter_request("x"));
  ASSERT_TRUE(reply.has_value());
  EXPECT_EQ(reply->code, errc::unknown_entity_type);
  EXPECT_EQ(only.requests.size(), 1u);
  const auto coroutine = start_route(counter_request("y"));
  ASSERT_TRUE(run_until(io_, [&] { return coroutine->has_value(); }));
  EXPECT_EQ((*coroutine)->code, errc::unknown_entity_type);
  EXPECT_EQ(only.requests.size(), 2u);
}

request_msg watch_request(std::string entity_id, std::uint32_t credit) {
  auto request = counter_request(std::move(entity_id), "Watch");
  request.credit = credit;
  return request;
}

TEST_F(router_test, streams_items_end_to_end_with_the_callers_credit) {
  auto& a = add_runner("a");
  a.stream_items = 500;
  router_.update(snapshot_of({a.address()}, 1));
  auto client = front_client();
  ASSERT_NE(client, nullptr);
  auto out = stream_call(client, watch_request("w", 6), 3);
  ASSERT_TRUE(run_until(io_, [out] { return out->reply.has_value(); }));
  ASSERT_TRUE(out->reply->ok()) << out->reply->message;
  ASSERT_EQ(out->items.size(), 500u);
  for (int i = 0; i < 500; ++i) ASSERT_EQ(out->items[static_cast<std::size_t>(i)], i);
  // The runner got the caller's credit and every ack: the router added none of its own.
  ASSERT_EQ(a.requests.size(), 1u);
  EXPECT_EQ(a.requests[0].credit, 6u);
  EXPECT_GE(a.acks, (500 - 6) / 6);
}

TEST_F(router_test, a_stream_is_retried_elsewhere_while_no_item_was_sent) {
  auto& old_owner = add_runner("old");
  auto& new_owner = add_runner("new");
  old_owner.refuse_with(errc::not_owner);
  new_owner.stream_items = 3;
  router_.update(snapshot_of({old_owner.address()}, 1));
  auto client = front_client();
  ASSERT_NE(client, nullptr);
  auto out = stream_call(client, watch_request("w", 0), 0);
  ASSERT_TRUE(run_until(io_, [&] { return !old_owner.requests.empty(); }));
  router_.update(snapshot_of({new_owner.address()}, 2));
  ASSERT_TRUE(run_until(io_, [out] { return out->reply.has_value(); }));
  EXPECT_TRUE(out->reply->ok()) << out->reply->message;
  EXPECT_EQ(out->items, (std::vector<int>{0, 1, 2}));
}

TEST_F(router_test, a_runner_lost_after_an_item_ends_the_stream_with_unavailable) {
  auto& a = add_runner("a");
  a.stream_items = 10;
  a.close_after_items = 2;
  router_.update(snapshot_of({a.address()}, 1));
  auto client = front_client();
  ASSERT_NE(client, nullptr);
  auto out = stream_call(client, watch_request("w", 0), 0);
  ASSERT_TRUE(run_until(io_, [out] { return out->reply.has_value(); }));
  EXPECT_EQ(out->reply->code, errc::unavailable) << out->reply->message;
  EXPECT_EQ(out->items, (std::vector<int>{0, 1}));
  io_.run_for(100ms);
  EXPECT_EQ(a.requests.size(), 1u) << "a stream that sent items was tried again";
}

TEST_F(router_test, an_interrupt_reaches_the_runner_under_its_own_id) {
  auto& a = add_runner("a");
  a.answer = [](const request_msg&) { return std::optional<reply_msg>(); };  // a long handler
  router_.update(snapshot_of({a.address()}, 1));
  auto client = front_client();
  ASSERT_NE(client, nullptr);
  // Two in flight, so the router has to find the right one.
  auto first = stream_call(client, counter_request("x"), 0);
  auto second = stream_call(client, counter_request("y"), 0);
  ASSERT_TRUE(run_until(io_, [&] { return a.requests.size() == 2; }));
  client->interrupt(second->id);
  ASSERT_TRUE(run_until(io_, [second] { return second->reply.has_value(); }));
  EXPECT_EQ(second->reply->code, errc::cancelled);
  ASSERT_EQ(a.interrupts.size(), 1u);
  EXPECT_EQ(a.interrupts[0], a.request_ids[1]);
  EXPECT_FALSE(first->reply.has_value());
}

TEST_F(router_test, an_interrupt_while_waiting_for_a_retry_answers_cancelled) {
  auto& a = add_runner("a");
  router_.update(snapshot_of({""}, 1));  // nobody owns the shard: the router waits
  auto client = front_client();
  ASSERT_NE(client, nullptr);
  auto out = stream_call(client, counter_request("x"), 0);
  io_.run_for(50ms);
  client->interrupt(out->id);
  const auto asked = steady_clock::now();
  ASSERT_TRUE(run_until(io_, [out] { return out->reply.has_value(); }));
  EXPECT_EQ(out->reply->code, errc::cancelled) << out->reply->message;
  EXPECT_LT(steady_clock::now() - asked, 3s) << "the router kept waiting for its deadline";
  EXPECT_TRUE(a.requests.empty());
}

TEST_F(router_test, a_caller_that_goes_away_interrupts_what_it_had_in_flight) {
  auto& a = add_runner("a");
  a.answer = [](const request_msg&) { return std::optional<reply_msg>(); };
  router_.update(snapshot_of({a.address()}, 1));
  auto client = front_client();
  ASSERT_NE(client, nullptr);
  auto out = stream_call(client, counter_request("x"), 0);
  ASSERT_TRUE(run_until(io_, [&] { return a.requests.size() == 1; }));
  client->close();
  ASSERT_TRUE(run_until(io_, [&] { return a.interrupts.size() == 1; }));
  EXPECT_EQ(a.interrupts[0], a.request_ids[0]);
}
