// Authentication, roles and TLS on the real binaries (docs/security.md): a peer without the
// cluster's credentials, with a key that is not trusted, with a key claiming another role,
// replaying a recorded handshake, sending what its role may not, or sitting in the middle of
// a TLS connection is refused with the right error, while legitimate calls keep working.

#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <mutex>
#include <thread>

#include "cluster/net/connection.hpp"
#include "cluster/security/credentials_folder.hpp"
#include "cluster/security/handshake.hpp"
#include "process_cluster.hpp"

namespace cluster::testing {
namespace {

using namespace std::chrono_literals;

// One process's view: a key and what it trusts, as a client context.
std::shared_ptr<const security_context> context_from(const std::string& key_file,
                                                     const std::string& trust_file, role as,
                                                     tls_mode tls = tls_mode::off) {
  auto key = signing_key::load_file(key_file);
  auto trust = trust_list::load_file(trust_file);
  EXPECT_TRUE(key.has_value() && trust.has_value());
  return make_security_context(std::move(key).value(), std::move(trust).value(), as, tls);
}

// Connects and calls on a private io_context driven by the test thread.
class client {
 public:
  result<connection_ptr> connect(std::uint16_t port, std::shared_ptr<const security_context> ctx,
                                 const std::string& claimed_role = "client") {
    connection_limits limits;
    limits.security = std::move(ctx);
    auto out = std::make_shared<std::optional<result<connection_ptr>>>();
    hello_msg hello{protocol_version, claimed_role, "security-test"};
    connection::message_handler ignore = [](const connection_ptr&, envelope&&) {};
    std::function<void()> on_close;
    auto op = connect_to(host_port{"127.0.0.1", port}, hello, limits, 5000ms, ignore, on_close);
    asio::co_spawn(
        io_,
        [op = std::move(op), out]() mutable -> awaitable<void> {
          auto connected = co_await std::move(op);
          out->emplace(std::move(connected));
        },
        asio::detached);
    run_until([&] { return out->has_value(); });
    if (!out->has_value()) return failure{errc::defect, "connect_to never finished"};
    return std::move(**out);
  }

  template <class Fields>
  reply_msg call(const connection_ptr& conn, message_kind kind, const Fields& fields) {
    auto reply = std::make_shared<std::optional<reply_msg>>();
    conn->call(kind, fields, 5000ms, [reply](reply_msg&& r) { reply->emplace(std::move(r)); });
    run_until([&] { return reply->has_value(); });
    return reply->value_or(reply_msg::failure(errc::defect, "no answer"));
  }

 private:
  void run_until(const std::function<bool()>& done) {
    const auto deadline = steady_clock::now() + 15s;
    while (!done() && steady_clock::now() < deadline) {
      io_.run_for(10ms);
      if (io_.stopped()) io_.restart();
    }
  }
  asio::io_context io_;
};

// A TCP relay on its own thread between a client and `target`: passive (forwards bytes and
// records what passes) or a TLS man in the middle (terminates TLS on both sides with its own
// throwaway certificate and forwards the plaintext).
class relay {
 public:
  relay(std::uint16_t target, bool terminate_tls) : target_(target), acceptor_(io_) {
    if (terminate_tls) {
      // Any key will do for the certificate; the relay never authenticates itself.
      mitm_ =
          make_security_context(signing_key::generate(), trust_list{}, role::proxy, tls_mode::on);
    }
    const tcp::endpoint endpoint(asio::ip::make_address("127.0.0.1"), 0);
    acceptor_.open(endpoint.protocol());
    acceptor_.bind(endpoint);
    acceptor_.listen();
    port_ = acceptor_.local_endpoint().port();
    asio::co_spawn(io_, accept_loop(), asio::detached);
    thread_ = std::thread([this] { io_.run(); });
  }
  ~relay() {
    io_.stop();
    thread_.join();
  }
  std::uint16_t port() const { return port_; }
  std::string seen() {
    std::lock_guard lock(mutex_);
    return seen_;
  }

 private:
  awaitable<void> accept_loop() {
    for (;;) {
      error_code ec;
      auto socket = co_await acceptor_.async_accept(asio::redirect_error(use_awaitable, ec));
      if (ec) co_return;
      asio::co_spawn(io_, serve(std::make_shared<tcp::socket>(std::move(socket))), asio::detached);
    }
  }

  awaitable<void> serve(std::shared_ptr<tcp::socket> downstream) {
    auto upstream = std::make_shared<tcp::socket>(io_);
    error_code ec;
    co_await upstream->async_connect({asio::ip::make_address("127.0.0.1"), target_},
                                     asio::redirect_error(use_awaitable, ec));
    if (ec) co_return;
    // The sockets live as long as either direction's pump (the TLS streams sit on them).
    std::function<void()> close_both = [downstream, upstream] {
      error_code ignored;
      downstream->close(ignored);
      upstream->close(ignored);
    };
    if (!mitm_) {
      asio::co_spawn(io_, pump(downstream, upstream, true, close_both), asio::detached);
      asio::co_spawn(io_, pump(upstream, downstream, true, close_both), asio::detached);
      co_return;
    }
    using tls_stream = asio::ssl::stream<tcp::socket&>;
    auto down = std::make_shared<tls_stream>(*downstream, *mitm_->tls_server);
    auto up = std::make_shared<tls_stream>(*upstream, *mitm_->tls_client);
    co_await down->async_handshake(asio::ssl::stream_base::server,
                                   asio::redirect_error(use_awaitable, ec));
    if (ec) co_return;
    co_await up->async_handshake(asio::ssl::stream_base::client,
                                 asio::redirect_error(use_awaitable, ec));
    if (ec) co_return;
    asio::co_spawn(io_, pump(down, up, false, close_both), asio::detached);
    asio::co_spawn(io_, pump(up, down, false, close_both), asio::detached);
  }

  // Copies `from` to `to` until either fails, then `close_both`; `record` keeps what passed.
  template <class From, class To>
  awaitable<void> pump(std::shared_ptr<From> from, std::shared_ptr<To> to, bool record,
                       std::function<void()> close_both) {
    std::array<char, 16384> buffer{};
    for (;;) {
      error_code ec;
      const auto n = co_await from->async_read_some(asio::buffer(buffer),
                                                    asio::redirect_error(use_awaitable, ec));
      if (ec) break;
      if (record) {
        std::lock_guard lock(mutex_);
        seen_.append(buffer.data(), n);
      }
      co_await asio::async_write(*to, asio::buffer(buffer.data(), n),
                                 asio::redirect_error(use_awaitable, ec));
      if (ec) break;
    }
    close_both();
  }

  std::uint16_t target_;
  asio::io_context io_;
  tcp::acceptor acceptor_;
  std::uint16_t port_ = 0;
  std::shared_ptr<security_context> mitm_;
  std::mutex mutex_;
  std::string seen_;
  std::thread thread_;
};

// Blocking frames on a plain socket, to send exactly the bytes of a recorded handshake.
struct raw_socket {
  asio::io_context io;
  tcp::socket socket{io};
  explicit raw_socket(std::uint16_t port) {
    socket.connect({asio::ip::make_address("127.0.0.1"), port});
  }
  void send(const std::string& bytes_out) { asio::write(socket, asio::buffer(bytes_out)); }
  envelope receive() {
    unsigned char header[frame_header_size];
    asio::read(socket, asio::buffer(header));
    std::vector<char> body(decode_frame_header(header));
    asio::read(socket, asio::buffer(body));
    return decode_envelope(body.data(), body.size(), decode_limits{}).value();
  }
};

template <class Fields>
std::string frame_bytes(message_kind kind, std::uint64_t id, const Fields& fields) {
  const auto frame = encode_frame(kind, id, fields);
  return std::string(frame.data(), frame.size());
}

class security : public process_cluster_test {
 protected:
  void start_cluster(std::vector<std::string> extra = {}) {
    start_manager(extra);
    start_runner(1, extra);
    start_runner(2, extra);
    start_proxy(extra);
    ASSERT_TRUE(ready(2));
  }
  std::string key(role r) const { return credentials_key_path(credentials, r); }
  std::string trust() const { return credentials_trust_path(credentials); }
  std::shared_ptr<const security_context> as(role r, tls_mode tls = tls_mode::off) const {
    return context_from(key(r), trust(), r, tls);
  }
  /// Through the proxy, or through whatever listens on `port`.
  void expect_greeting_works(std::uint16_t port = 0) {
    int code = 0;
    const auto out = run_command(std::string(CLUSTER_BIN_DIR) + "/clusterctl --proxy 127.0.0.1:" +
                                     std::to_string(port ? port : proxy_port) +
                                     " call Greeter Alice Greet '{\"name\":\"Alice\"}' 2>&1",
                                 code);
    EXPECT_EQ(code, 0) << out;
    EXPECT_NE(out.find("Hello, Alice!"), std::string::npos) << out;
  }
  client peer;
};

TEST_F(security, a_peer_without_credentials_is_refused_on_every_port) {
  start_cluster();
  for (const std::uint16_t port : {manager_port, proxy_port, runner_ports[0], runner_ports[1]}) {
    auto refused = peer.connect(port, nullptr);
    ASSERT_FALSE(refused.has_value()) << "port " << port;
    EXPECT_EQ(refused.error().code, errc::unauthorized) << refused.error().message;
    EXPECT_NE(refused.error().message.find("requires authentication"), std::string::npos)
        << refused.error().message;
  }
  int code = 0;
  const auto out = clusterctl("call Greeter Alice Greet '{\"name\":\"Alice\"}' 2>&1", code);
  EXPECT_EQ(code, 0) << out;  // the same tool with the cluster's credentials
  ::setenv("CLUSTER_SECURITY_AUTH", "false", 1);
  const auto without = run_command(
      std::string(CLUSTER_BIN_DIR) +
          "/clusterctl --manager 127.0.0.1:" + std::to_string(manager_port) + " status 2>&1",
      code);
  ::unsetenv("CLUSTER_SECURITY_AUTH");
  EXPECT_NE(code, 0);
  EXPECT_NE(without.find("Unauthorized"), std::string::npos) << without;
}

TEST_F(security, an_impostor_runner_with_an_untrusted_key_cannot_register) {
  start_cluster();
  // Its own key, and the cluster's public trust list (so it can check the manager).
  auto impostor = make_security_context(signing_key::generate(),
                                        trust_list::load_file(trust()).value(), role::runner);
  auto refused = peer.connect(manager_port, impostor, "runner");
  ASSERT_FALSE(refused.has_value());
  EXPECT_EQ(refused.error().code, errc::unauthorized);
  EXPECT_NE(refused.error().message.find("not in this cluster's trust list"), std::string::npos)
      << refused.error().message;
  EXPECT_EQ(status()["runners"].size(), 2u);
  expect_greeting_works();
}

TEST_F(security, a_client_key_cannot_claim_the_runner_or_admin_role) {
  start_cluster();
  for (const role claimed : {role::runner, role::admin, role::manager}) {
    auto key_of_client = signing_key::load_file(key(role::client)).value();
    auto lying =
        make_security_context(key_of_client, trust_list::load_file(trust()).value(), claimed);
    auto refused = peer.connect(manager_port, lying);
    ASSERT_FALSE(refused.has_value()) << to_string(claimed);
    EXPECT_EQ(refused.error().code, errc::unauthorized);
    EXPECT_NE(refused.error().message.find("belongs to role client, not " +
                                           std::string(to_string(claimed))),
              std::string::npos)
        << refused.error().message;
  }
  expect_greeting_works();
}

TEST_F(security, a_replayed_handshake_is_refused) {
  start_cluster();
  const auto client_key = signing_key::load_file(key(role::client)).value();
  hello_msg hello{protocol_version, "client", "recorded"};
  hello.key.assign(client_key.public_half().begin(), client_key.public_half().end());
  hello.nonce = random_bytes(handshake_nonce_bytes);
  const auto hello_frame = frame_bytes(message_kind::hello, 0, hello);

  // The genuine handshake, as an eavesdropper records it.
  std::string auth_frame;
  {
    raw_socket genuine(proxy_port);
    genuine.send(hello_frame);
    const auto ack = genuine.receive().as<hello_ack_msg>().value();
    const auto signed_part = handshake_transcript(handshake_side::client, hello, ack, {});
    const auto sig = client_key.sign(signed_part);
    auth_frame = frame_bytes(message_kind::auth, 1, auth_msg{bytes(sig.begin(), sig.end())});
    genuine.send(auth_frame);
    const auto verdict = genuine.receive().as<reply_msg>().value();
    ASSERT_TRUE(verdict.ok()) << verdict.message;
  }
  // The same bytes again: the proxy's fresh nonce makes the old signature worthless.
  raw_socket replay(proxy_port);
  replay.send(hello_frame);
  const auto ack = replay.receive();
  ASSERT_EQ(ack.kind, static_cast<std::uint32_t>(message_kind::hello_ack));
  replay.send(auth_frame);
  const auto verdict = replay.receive().as<reply_msg>().value();
  EXPECT_EQ(verdict.code, errc::unauthorized);
  EXPECT_NE(verdict.message.find("does not verify"), std::string::npos) << verdict.message;
  expect_greeting_works();
}

TEST_F(security, each_role_may_send_only_its_own_verbs) {
  start_cluster();
  auto as_client = peer.connect(manager_port, as(role::client));
  ASSERT_TRUE(as_client.has_value()) << as_client.error().message;
  const auto& conn = as_client.value();
  EXPECT_TRUE(peer.call(conn, message_kind::get_status, empty_msg{}).ok());
  register_runner_msg fake;
  fake.name = "fake";
  fake.address = "127.0.0.1:1";
  fake.groups = {"default"};
  for (const auto& [kind, what] : std::vector<std::pair<message_kind, std::string>>{
           {message_kind::subscribe_assignments, "subscribe"},
           {message_kind::list_dead_letters, "dead letters"}}) {
    const auto denied = peer.call(conn, kind, empty_msg{});
    EXPECT_EQ(denied.code, errc::forbidden) << what << ": " << denied.message;
  }
  EXPECT_EQ(peer.call(conn, message_kind::register_runner, fake).code, errc::forbidden);
  EXPECT_EQ(peer.call(conn, message_kind::unregister_runner,
                      unregister_runner_msg{"127.0.0.1:" + std::to_string(runner_ports[0])})
                .code,
            errc::forbidden);
  EXPECT_TRUE(conn->is_open());  // a denial leaves the connection usable
  EXPECT_TRUE(peer.call(conn, message_kind::get_status, empty_msg{}).ok());

  // A runner's key registers only what is on its own connection.
  auto as_runner = peer.connect(manager_port, as(role::runner));
  ASSERT_TRUE(as_runner.has_value()) << as_runner.error().message;
  const auto forged =
      peer.call(as_runner.value(), message_kind::unregister_runner,
                unregister_runner_msg{"127.0.0.1:" + std::to_string(runner_ports[0])});
  EXPECT_EQ(forged.code, errc::forbidden) << forged.message;
  EXPECT_EQ(status()["runners"].size(), 2u);

  // The admin may read dead letters (this cluster stores in memory, so it is told so).
  auto as_admin = peer.connect(manager_port, as(role::admin));
  ASSERT_TRUE(as_admin.has_value()) << as_admin.error().message;
  const auto listed =
      peer.call(as_admin.value(), message_kind::list_dead_letters, list_dead_letters_msg{});
  EXPECT_NE(listed.code, errc::forbidden) << listed.message;

  // Clients call through the proxy, never a runner directly.
  auto on_runner = peer.connect(runner_ports[0], as(role::client));
  ASSERT_FALSE(on_runner.has_value());
  EXPECT_EQ(on_runner.error().code, errc::forbidden) << on_runner.error().message;
  expect_greeting_works();
}

TEST_F(security, without_tls_a_tap_reads_the_payload) {
  start_cluster();
  relay tap(proxy_port, false);
  expect_greeting_works(tap.port());
  // The control for the TLS test below: the tap does see plaintext.
  EXPECT_NE(tap.seen().find("Alice"), std::string::npos);
}

TEST_F(security, with_tls_on_traffic_is_encrypted_plain_peers_are_refused_and_a_relay_fails) {
  {
    // What `DEV_SECURITY_TLS=on scripts/dev up` leaves for the tools.
    std::ofstream tls_choice(std::filesystem::path(credentials) / "tls");
    tls_choice << "on\n";
  }
  start_cluster({"--set", "security.tls=on"});
  expect_greeting_works();
  relay tap(proxy_port, false);
  expect_greeting_works(tap.port());
  EXPECT_FALSE(tap.seen().empty());
  EXPECT_EQ(tap.seen().find("Alice"), std::string::npos) << "plaintext on a TLS connection";

  auto plain = peer.connect(proxy_port, as(role::client));
  ASSERT_FALSE(plain.has_value());
  EXPECT_EQ(plain.error().code, errc::unauthorized);
  EXPECT_NE(plain.error().message.find("requires TLS"), std::string::npos) << plain.error().message;

  relay man_in_the_middle(proxy_port, true);
  auto relayed = peer.connect(man_in_the_middle.port(), as(role::client, tls_mode::on));
  ASSERT_FALSE(relayed.has_value());
  EXPECT_EQ(relayed.error().code, errc::unauthorized);
  EXPECT_NE(relayed.error().message.find("does not verify"), std::string::npos)
      << relayed.error().message;

  auto direct = peer.connect(proxy_port, as(role::client, tls_mode::on));
  ASSERT_TRUE(direct.has_value()) << direct.error().message;
  EXPECT_TRUE(direct.value()->encrypted());
}

}  // namespace
}  // namespace cluster::testing
