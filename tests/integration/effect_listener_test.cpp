// The proxy's Effect RPC listener from a raw socket, in front of an in-process cluster:
// the socket protocol's messages (Request, Ack, Interrupt, Ping, Eof) in NDJSON and in
// msgpackr's MessagePack, answered by Exit, Chunk, Pong and Defect; the errors each kind of
// bad input gets; the token and the expose list. The Effect client itself is exercised by
// tests/effect (node), against the real binaries.
#include <gtest/gtest.h>

#include <set>

#include "cluster/protocol/shard.hpp"
#include "cluster/proxy/effect_codec.hpp"
#include "cluster_fixture.hpp"

namespace cluster::testing {
namespace {

using nlohmann::json;
using proxy::effect_framing;

std::uint16_t free_port() {
  asio::io_context io;
  tcp::acceptor probe(io, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
  return probe.local_endpoint().port();
}

/// One client connection speaking the socket protocol; reads run on the cluster's io.
class effect_socket {
 public:
  effect_socket(asio::io_context& io, std::uint16_t port, effect_framing framing)
      : io_(io), socket_(io), reader_(effect_framing::detect, 1 << 24), framing_(framing) {
    socket_.connect(tcp::endpoint(asio::ip::make_address("127.0.0.1"), port));
  }
  // The read in progress holds `this`: it must end before the object does.
  ~effect_socket() {
    error_code ignored;
    socket_.close(ignored);
    run_until(
        io_, [this] { return !reading_; }, milliseconds(2000));
  }
  effect_socket(const effect_socket&) = delete;
  effect_socket& operator=(const effect_socket&) = delete;

  void send(const json& message) { send_raw(proxy::encode_effect_message(message, framing_)); }
  void send_raw(const std::string& bytes) { asio::write(socket_, asio::buffer(bytes)); }

  /// The next message, or nullopt once the server closed or `timeout` passed.
  std::optional<json> next(milliseconds timeout = milliseconds(10000)) {
    std::optional<json> out;
    run_until(
        io_,
        [&] {
          auto ready = reader_.next();
          EXPECT_TRUE(ready) << ready.error().message;
          if (!ready) return true;
          if (ready.value()) {
            out = std::move(*ready.value());
            return true;
          }
          if (closed_) return true;
          if (!reading_) read_some();
          return false;
        },
        timeout);
    return out;
  }

  /// Messages until `done(message)` holds; everything read on the way is returned.
  std::vector<json> until(const std::function<bool(const json&)>& done,
                          milliseconds timeout = milliseconds(10000)) {
    std::vector<json> seen;
    const auto deadline = steady_clock::now() + timeout;
    while (steady_clock::now() < deadline) {
      auto message = next(std::chrono::duration_cast<milliseconds>(deadline - steady_clock::now()));
      if (!message) break;
      seen.push_back(*message);
      if (done(*message)) break;
    }
    return seen;
  }

  bool closed_by_server(milliseconds timeout = milliseconds(5000)) {
    while (auto message = next(timeout)) {
    }
    return closed_;
  }

 private:
  void read_some() {
    reading_ = true;
    socket_.async_read_some(asio::buffer(buffer_), [this](const error_code& ec, std::size_t n) {
      reading_ = false;
      if (ec) {
        closed_ = true;
        return;
      }
      reader_.append(std::string_view(buffer_.data(), n));
    });
  }

  asio::io_context& io_;
  tcp::socket socket_;
  proxy::effect_reader reader_;
  effect_framing framing_;
  std::array<char, 16384> buffer_{};
  bool reading_ = false;
  bool closed_ = false;
};

json request(const std::string& id, const std::string& tag, const std::string& entity, json payload,
             json headers = json::array()) {
  return json{{"_tag", "Request"},
              {"id", id},
              {"tag", tag},
              {"payload", {{"entityId", entity}, {"payload", std::move(payload)}}},
              {"traceId", "0af7651916cd43dd8448eb211c80319c"},
              {"spanId", "b7ad6b7169203331"},
              {"sampled", true},
              {"headers", std::move(headers)}};
}

bool exit_of(const json& message, const std::string& id) {
  return message.value("_tag", "") == "Exit" && message.value("requestId", "") == id;
}

class effect_listener_test : public ::testing::Test {
 protected:
  void start(const std::function<void(proxy::proxy_config&)>& tweak = {}) {
    port_ = free_port();
    cluster_ = std::make_unique<in_process_cluster>([&](proxy::proxy_config& config) {
      config.effect_port = port_;
      if (tweak) tweak(config);
    });
    cluster_->add_runner();
    ASSERT_TRUE(cluster_->wait_until_balanced(1));
    ASSERT_EQ(cluster_->proxy().effect_port(), port_);
  }
  effect_socket connect(effect_framing framing = effect_framing::ndjson) {
    return effect_socket(cluster_->io, port_, framing);
  }

  std::uint16_t port_ = 0;
  std::unique_ptr<in_process_cluster> cluster_;
};

TEST_F(effect_listener_test, greets_in_ndjson_and_in_msgpack) {
  start();
  for (auto framing : {effect_framing::ndjson, effect_framing::msgpack}) {
    auto client = connect(framing);
    client.send(request("1", "Greet", "Test", {{"name", "John"}}));
    auto reply = client.next();
    ASSERT_TRUE(reply) << "framing " << to_string(framing);
    EXPECT_EQ(*reply, json::parse(R"({"_tag":"Exit","requestId":"1","exit":{"_tag":"Success",
        "value":{"message":"Hello, John! from Test Greeter 216"}}})"));
    // The prefixed form of EntityProxy.toRpcGroup(Greeter, { prefix: "Greeter." }).
    client.send(request("2", "Greeter.GreetVolatile", "Test", {{"name", "Jane"}}));
    reply = client.next();
    ASSERT_TRUE(reply);
    EXPECT_EQ((*reply)["exit"]["value"]["message"], "Hello, Jane! from Test Greeter 216");
    // @effect/cluster 0.60's fire-and-forget twin: accepted, a void success.
    client.send(request("3", "Greeter.GreetDiscard", "Test", {{"name", "Jo"}}));
    reply = client.next();
    ASSERT_TRUE(reply);
    EXPECT_EQ((*reply)["exit"], json::parse(R"({"_tag":"Success"})")) << *reply;
  }
}

TEST_F(effect_listener_test, answers_pings_and_many_requests_in_flight_on_one_connection) {
  start();
  auto client = connect();
  std::string burst;
  constexpr int calls = 300;
  for (int i = 0; i < calls; ++i)
    burst += proxy::encode_effect_message(
        request(std::to_string(i), "GreetVolatile", "e" + std::to_string(i % 37), {{"name", "n"}}),
        effect_framing::ndjson);
  burst += proxy::encode_effect_message(json{{"_tag", "Ping"}}, effect_framing::ndjson);
  client.send_raw(burst);
  std::set<std::string> answered;
  bool pong = false;
  client.until([&](const json& message) {
    if (message["_tag"] == "Pong") {
      pong = true;
    } else {
      EXPECT_EQ(message["_tag"], "Exit") << message;
      EXPECT_EQ(message["exit"]["_tag"], "Success") << message;
      answered.insert(message.value("requestId", ""));
    }
    return static_cast<int>(answered.size()) == calls && pong;
  });
  EXPECT_EQ(static_cast<int>(answered.size()), calls);
  EXPECT_TRUE(pong);
}

TEST_F(effect_listener_test, bad_requests_fail_alone_and_the_connection_stays) {
  start();
  auto client = connect();
  client.send(request("1", "NoSuchRpc", "x", json::object()));
  client.send(request("2", "Greet", "x", {{"name", 5}}));
  client.send(request("3", "Reject", "x", json::object()));
  client.send(request("4", "Fail", "x", json::object()));
  client.send(json{{"_tag", "Request"}, {"id", "5"}, {"tag", "Greet"}, {"payload", "nope"}});
  client.send(request("6", "Greet", std::string(5000, 'x'), {{"name", "n"}}));  // too long
  client.send(request("7", "Greet", "x", {{"name", "after"}}));
  std::map<std::string, json> exits;
  client.until([&](const json& message) {
    EXPECT_EQ(message["_tag"], "Exit") << message;
    exits[message.value("requestId", "")] = message["exit"];
    return exits.size() == 7;
  });
  ASSERT_EQ(exits.size(), 7u);
  EXPECT_EQ(exits["1"]["cause"]["_tag"], "Die");
  EXPECT_EQ(exits["1"]["cause"]["defect"]["name"], "UnknownRpc");
  EXPECT_NE(exits["1"]["cause"]["defect"]["message"].get<std::string>().find(
                "Unknown request tag: NoSuchRpc"),
            std::string::npos);
  EXPECT_EQ(exits["2"]["cause"]["defect"]["name"], "BadPayload") << exits["2"];
  EXPECT_EQ(exits["3"]["cause"]["_tag"], "Fail");
  EXPECT_EQ(exits["3"]["cause"]["error"]["_tag"], "Rejected");
  EXPECT_EQ(exits["3"]["cause"]["error"]["message"], "probe rejected the request");
  EXPECT_EQ(exits["4"]["cause"]["defect"]["name"], "Defect") << exits["4"];
  EXPECT_EQ(exits["5"]["cause"]["defect"]["name"], "InvalidRequest") << exits["5"];
  EXPECT_EQ(exits["6"]["cause"]["defect"]["name"], "InvalidRequest") << exits["6"];
  EXPECT_EQ(exits["7"]["_tag"], "Success") << exits["7"];
  EXPECT_EQ(exits["7"]["value"]["message"],
            "Hello, after! from x Greeter " + std::to_string(shard_for("x", 300)));
}

TEST_F(effect_listener_test, a_frame_that_does_not_parse_gets_a_defect_and_a_hang_up) {
  start();
  auto client = connect();
  client.send_raw("{\"_tag\": \"Request\", \n");
  auto defect = client.next();
  ASSERT_TRUE(defect);
  EXPECT_EQ((*defect)["_tag"], "Defect");
  EXPECT_TRUE(client.closed_by_server());
  // The listener serves the next connection as before.
  auto next = connect(effect_framing::msgpack);
  next.send(request("1", "Greet", "Test", {{"name", "John"}}));
  auto reply = next.next();
  ASSERT_TRUE(reply);
  EXPECT_EQ((*reply)["exit"]["_tag"], "Success");
}

TEST_F(effect_listener_test, a_stream_sends_chunks_as_the_client_acknowledges_them) {
  start();
  auto client = connect();
  client.send(request("9", "GreetMany", "s", {{"name", "Ann"}, {"count", 200}}));
  std::vector<json> items;
  std::optional<json> final_exit;
  client.until([&](const json& message) {
    if (message["_tag"] == "Chunk") {
      for (auto& value : message["values"]) items.push_back(value);
      client.send(json{{"_tag", "Ack"}, {"requestId", "9"}});
      return false;
    }
    final_exit = message["exit"];
    return exit_of(message, "9");
  });
  ASSERT_TRUE(final_exit);
  EXPECT_EQ((*final_exit)["_tag"], "Success") << *final_exit;
  ASSERT_EQ(items.size(), 200u) << "a stream longer than the first credit needs the acks";
  for (std::size_t i = 0; i < items.size(); ++i) EXPECT_EQ(items[i]["index"], i);
}

TEST_F(effect_listener_test, an_interrupt_cancels_the_running_handler) {
  start();
  auto client = connect();
  client.send(request("1", "Sleep", "sleepy", {{"ms", 20000}}));
  run_until(
      cluster_->io, [] { return false; }, milliseconds(200));
  const auto asked = steady_clock::now();
  client.send(json{{"_tag", "Interrupt"}, {"requestId", "1"}, {"interruptors", json::array()}});
  auto reply = client.next(milliseconds(5000));
  ASSERT_TRUE(reply);
  EXPECT_TRUE(exit_of(*reply, "1")) << *reply;
  EXPECT_EQ((*reply)["exit"]["cause"]["_tag"], "Interrupt") << *reply;
  EXPECT_LT(steady_clock::now() - asked, milliseconds(3000));
  // The entity is free again at once.
  client.send(request("2", "Echo", "sleepy", {{"text", "hi"}}));
  reply = client.next(milliseconds(3000));
  ASSERT_TRUE(reply);
  EXPECT_EQ((*reply)["exit"]["_tag"], "Success") << *reply;
}

TEST_F(effect_listener_test, a_token_is_required_once_set_and_the_expose_list_holds) {
  start([](proxy::proxy_config& config) {
    config.effect_token = "s3cret-token";
    config.effect_expose = {"Greeter/Greet"};
  });
  const json good = json::array({json::array({"Authorization", "Bearer s3cret-token"})});
  {
    auto client = connect();
    client.send(request("1", "Greet", "Test", {{"name", "John"}}, good));
    auto reply = client.next();
    ASSERT_TRUE(reply);
    EXPECT_EQ((*reply)["exit"]["_tag"], "Success") << *reply;
    client.send(request("2", "GreetVolatile", "Test", {{"name", "John"}}, good));
    reply = client.next();
    ASSERT_TRUE(reply);
    EXPECT_EQ((*reply)["exit"]["cause"]["defect"]["name"], "Forbidden") << *reply;
  }
  for (const json& headers :
       {json::array(), json::array({json::array({"authorization", "Bearer wrong"})})}) {
    auto client = connect();
    client.send(request("1", "Greet", "Test", {{"name", "John"}}, headers));
    auto reply = client.next();
    ASSERT_TRUE(reply);
    EXPECT_EQ((*reply)["exit"]["cause"]["defect"]["name"], "Unauthorized") << *reply;
    EXPECT_EQ((*reply)["exit"]["cause"]["defect"]["message"].get<std::string>().find("s3cret"),
              std::string::npos);
    EXPECT_TRUE(client.closed_by_server());
  }
}

}  // namespace
}  // namespace cluster::testing
