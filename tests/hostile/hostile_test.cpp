// Hostile input on every listening port of the real binaries: the
// manager, both runners and the proxy (framed MessagePack) and the gateway (HTTP) get random
// bytes, a 4 GB length prefix, half frames that stall, MessagePack announcing huge
// containers, unknown kinds and fields of the wrong type, and more connections than they
// accept. Afterwards every process is still running, answers on every port, a call through
// the proxy succeeds and no process grew by more than a bounded amount of memory.
//
// The clients here are plain blocking POSIX sockets with poll() deadlines: the test wants
// to send exactly the bytes a hostile peer would, which the protocol library never would.

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <random>
#include <thread>

#include "child_process.hpp"
#include "cluster/protocol/codec.hpp"

namespace cluster::testing {
namespace {

using namespace std::chrono_literals;
using namespace std::string_literals;
using std::chrono::milliseconds;
using std::chrono::steady_clock;

const std::string bin = CLUSTER_BIN_DIR;

// Generous upper bounds, never expectations of speed.
constexpr auto close_deadline = 30s;
constexpr auto reply_deadline = 20s;

// Measured growth is a few MiB (ASan builds included); a receiver that committed announced
// frame sizes up front would grow by hundreds.
constexpr long rss_growth_limit_kb = 64 * 1024;

std::string text_of(const cluster::frame& frame) { return std::string(frame.data(), frame.size()); }

template <class Fields>
std::string frame_of(message_kind kind, std::uint64_t id, const Fields& fields) {
  return text_of(encode_frame(kind, id, fields));
}

// A frame around a body given as bytes (the body may be anything at all).
std::string framed(const std::string& body) {
  const auto size = static_cast<std::uint32_t>(body.size());
  std::string out{static_cast<char>(size >> 24), static_cast<char>(size >> 16),
                  static_cast<char>(size >> 8), static_cast<char>(size)};
  return out + body;
}

std::string hello_frame() {
  // Admin: the one role every port admits (runner ports refuse clients at hello).
  return frame_of(message_kind::hello, 0, hello_msg{protocol_version, "admin", "hostile"});
}

/// One blocking TCP connection to a loopback port; every read has a deadline.
class raw_client {
 public:
  explicit raw_client(std::uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    address.sin_port = htons(port);
    if (::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  ~raw_client() {
    if (fd_ >= 0) ::close(fd_);
  }
  raw_client(const raw_client&) = delete;
  raw_client& operator=(const raw_client&) = delete;

  bool connected() const { return fd_ >= 0; }
  bool peer_closed() const { return peer_closed_; }
  /// Everything received and not yet consumed by read_frame / read_http.
  const std::string& received() const { return buffer_; }

  /// Sends everything; false once the peer closed or reset (expected with hostile input).
  bool send(const std::string& data) {
    std::size_t sent = 0;
    while (fd_ >= 0 && sent < data.size()) {
      const auto n = ::send(fd_, data.data() + sent, data.size() - sent, MSG_NOSIGNAL);
      if (n <= 0) return false;
      sent += static_cast<std::size_t>(n);
    }
    return fd_ >= 0;
  }

  /// Receives once (waiting until `deadline`); false on timeout, close or error.
  bool receive_some(steady_clock::time_point deadline) {
    if (fd_ < 0 || peer_closed_) return false;
    const auto left = std::chrono::duration_cast<milliseconds>(deadline - steady_clock::now());
    if (left.count() <= 0) return false;
    pollfd p{fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return false;
    char chunk[16 * 1024];
    const auto n = ::recv(fd_, chunk, sizeof(chunk), 0);
    if (n <= 0) {
      peer_closed_ = true;  // EOF, or a reset (ECONNRESET): both close the connection
      return false;
    }
    if (buffer_.size() < (1u << 20)) buffer_.append(chunk, static_cast<std::size_t>(n));
    return true;
  }

  /// True once the peer closed the connection within `timeout` (data meanwhile is kept).
  bool closed_within(steady_clock::duration timeout) {
    const auto deadline = steady_clock::now() + timeout;
    while (!peer_closed_ && steady_clock::now() < deadline) receive_some(deadline);
    return peer_closed_;
  }

  /// The next frame, nullopt on timeout, close or an undecodable frame.
  std::optional<envelope> read_frame(steady_clock::duration timeout = reply_deadline) {
    const auto deadline = steady_clock::now() + timeout;
    while (buffer_.size() < frame_header_size)
      if (!receive_some(deadline)) return std::nullopt;
    unsigned char header[frame_header_size];
    std::copy_n(reinterpret_cast<const unsigned char*>(buffer_.data()), frame_header_size, header);
    const std::size_t size = decode_frame_header(header);
    while (buffer_.size() < frame_header_size + size)
      if (!receive_some(deadline)) return std::nullopt;
    auto env = decode_envelope(buffer_.data() + frame_header_size, size, decode_limits{});
    buffer_.erase(0, frame_header_size + size);
    if (!env) return std::nullopt;
    return std::move(env).value();
  }

  /// The reply with `id`, skipping pushes; nullopt on timeout or close.
  std::optional<reply_msg> read_reply(std::uint64_t id) {
    const auto deadline = steady_clock::now() + reply_deadline;
    while (steady_clock::now() < deadline) {
      auto env = read_frame(deadline - steady_clock::now());
      if (!env) return std::nullopt;
      if (env->kind != static_cast<std::uint32_t>(message_kind::reply) || env->id != id) continue;
      auto reply = env->as<reply_msg>();
      if (!reply) return std::nullopt;
      return std::move(reply).value();
    }
    return std::nullopt;
  }

  /// Sends hello and waits for hello_ack.
  bool handshake() {
    if (!send(hello_frame())) return false;
    auto ack = read_frame();
    return ack && ack->kind == static_cast<std::uint32_t>(message_kind::hello_ack);
  }

  /// Sends a ping and waits for the pong with the same id.
  bool ping(std::uint64_t id = 4242) {
    if (!send(frame_of(message_kind::ping, id, empty_msg{}))) return false;
    const auto deadline = steady_clock::now() + reply_deadline;
    while (steady_clock::now() < deadline) {
      auto env = read_frame(deadline - steady_clock::now());
      if (!env) return false;
      if (env->kind == static_cast<std::uint32_t>(message_kind::pong) && env->id == id) return true;
    }
    return false;
  }

  /// Reads one HTTP response (headers and a Content-Length body); its status, or nullopt.
  std::optional<int> read_http(steady_clock::duration timeout = reply_deadline) {
    const auto deadline = steady_clock::now() + timeout;
    std::size_t end = std::string::npos;
    while ((end = buffer_.find("\r\n\r\n")) == std::string::npos)
      if (!receive_some(deadline)) return std::nullopt;
    const std::string head = buffer_.substr(0, end + 4);
    if (head.rfind("HTTP/1.1 ", 0) != 0 || head.size() < 12) return std::nullopt;
    const int status = std::stoi(head.substr(9, 3));
    std::size_t length = 0;
    std::string lower = head;
    for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    if (const auto at = lower.find("content-length:"); at != std::string::npos)
      length = std::stoul(lower.substr(at + 15));
    while (buffer_.size() < head.size() + length)
      if (!receive_some(deadline)) return std::nullopt;
    buffer_.erase(0, head.size() + length);
    if (status == 100) return read_http(deadline - steady_clock::now());
    return status;
  }

 private:
  int fd_ = -1;
  bool peer_closed_ = false;
  std::string buffer_;
};

/// Every reply among the complete frames in `bytes` is an error (never a success).
void expect_only_error_replies(const std::string& bytes, const std::string& where) {
  std::size_t at = 0;
  while (bytes.size() - at >= frame_header_size) {
    unsigned char header[frame_header_size];
    std::copy_n(reinterpret_cast<const unsigned char*>(bytes.data() + at), frame_header_size,
                header);
    const std::size_t size = decode_frame_header(header);
    if (bytes.size() - at - frame_header_size < size) break;
    auto env = decode_envelope(bytes.data() + at + frame_header_size, size, {});
    ASSERT_TRUE(env.has_value()) << where << ": the server sent an undecodable frame: "
                                 << env.error().message;
    if (env.value().kind == static_cast<std::uint32_t>(message_kind::reply)) {
      auto reply = env.value().as<reply_msg>();
      ASSERT_TRUE(reply.has_value()) << where;
      EXPECT_FALSE(reply.value().ok()) << where << ": hostile input got a successful reply";
    }
    at += frame_header_size + size;
  }
}

/// VmRSS of a process in KiB, or -1.
long rss_kb(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line))
    if (line.rfind("VmRSS:", 0) == 0) return std::stol(line.substr(6));
  return -1;
}

bool wait_for(const std::function<bool()>& done, steady_clock::duration timeout = 20s) {
  const auto deadline = steady_clock::now() + timeout;
  while (!done()) {
    if (steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(50ms);
  }
  return true;
}

struct cluster_options {
  int handshake_timeout_ms = 3000;
  int frame_body_timeout_ms = 3000;
  int gateway_read_timeout_ms = 3000;
  int max_connections = 0;  ///< 0: the processes' default
};

/// A listening port under attack and the process behind it.
struct target {
  std::string name;
  std::uint16_t port = 0;
  bool http = false;
  child_process* process = nullptr;
};

class hostile_input : public ::testing::Test {
 protected:
  void TearDown() override {
    // SIGTERM, then SIGKILL, by PID; clients of the manager first.
    while (!children_.empty()) children_.pop_back();
    if (!HasFailure()) std::filesystem::remove_all(dir_);
  }

  void start_cluster(const cluster_options& options = {}) {
    dir_ = std::filesystem::temp_directory_path() /
           ("cluster-hostile-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_);
    const auto manager_port = free_port(), proxy_port = free_port(), gateway_port = free_port();
    manager_ = "127.0.0.1:" + std::to_string(manager_port);
    proxy_ = "127.0.0.1:" + std::to_string(proxy_port);
    std::vector<std::string> common{
        "--set", "cluster.handshake_timeout_ms=" + std::to_string(options.handshake_timeout_ms),
        "--set", "cluster.frame_body_timeout_ms=" + std::to_string(options.frame_body_timeout_ms),
        // These raw clients claim roles in hello; what an unauthenticated peer meets on an
        // authenticating port is security_test's subject.
        "--set", "security.auth=false"};
    if (options.max_connections > 0) {
      common.push_back("--set");
      common.push_back("cluster.max_connections=" + std::to_string(options.max_connections));
    }
    auto with_common = [&](std::vector<std::string> args) {
      args.insert(args.end(), common.begin(), common.end());
      return args;
    };
    targets_.push_back(
        {"manager", manager_port, false,
         &start("manager", "cluster-manager",
                with_common({"--set", "manager.port=" + std::to_string(manager_port)}))});
    for (int n = 1; n <= 2; ++n) {
      const auto port = free_port();
      targets_.push_back(
          {"runner-" + std::to_string(n), port, false,
           &start("runner-" + std::to_string(n), "cluster-runner",
                  with_common({"--set", "runner.name=runner-" + std::to_string(n), "--set",
                               "runner.port=" + std::to_string(port), "--set",
                               "runner.manager=" + manager_, "--set",
                               "runner.plugins=" + std::string(CLUSTER_PLUGIN_DIR)}))});
    }
    targets_.push_back({"proxy", proxy_port, false,
                        &start("proxy", "cluster-proxy",
                               with_common({"--set", "proxy.port=" + std::to_string(proxy_port),
                                            "--set", "proxy.manager=" + manager_}))});
    targets_.push_back(
        {"gateway", gateway_port, true,
         &start("gateway", "cluster-gateway",
                with_common({"--set", "gateway.port=" + std::to_string(gateway_port), "--set",
                             "gateway.proxy=" + proxy_, "--set",
                             "gateway.read_timeout_ms=" +
                                 std::to_string(options.gateway_read_timeout_ms)}))});

    ASSERT_TRUE(wait_for([&] {
      int status = 0;
      const auto out = clusterctl("status --json", status);
      return status == 0 && out.find("\"unassigned_shards\":0") != std::string::npos &&
             out.find("runner-2") != std::string::npos && out.find("runner-1") != std::string::npos;
    })) << "the cluster did not come up";
    // Warm up: pooled proxy → runner connections to both runners, the gateway's proxy
    // connection, lazily allocated state; then take the memory baseline.
    for (int i = 0; i < 20; ++i) {
      int status = 0;
      clusterctl("call Greeter warm-" + std::to_string(i) + " GreetVolatile '{\"name\":\"x\"}'",
                 status);
    }
    ASSERT_TRUE(wait_for([&] { return call_works(); })) << "no call through the proxy";
    ASSERT_TRUE(wait_for([&] { return http_get_works(gateway().port); }));
    for (const auto& t : targets_) rss_before_[t.name] = rss_kb(t.process->pid());
  }

  child_process& start(const std::string& name, const std::string& program,
                       const std::vector<std::string>& args) {
    children_.push_back(std::make_unique<child_process>(bin + "/" + program, args,
                                                        (dir_ / (name + ".log")).string()));
    return *children_.back();
  }

  std::string clusterctl(const std::string& args, int& status) {
    return run_command(bin + "/clusterctl --timeout-ms 10000 --manager " + manager_ + " --proxy " +
                           proxy_ + " " + args + " 2>&1",
                       status);
  }

  bool call_works() {
    int status = 0;
    const auto out = clusterctl("call Greeter Test GreetVolatile '{\"name\":\"x\"}'", status);
    return status == 0 && out.find("Hello, x!") != std::string::npos;
  }

  static bool ping_works(std::uint16_t port) {
    raw_client client(port);
    return client.connected() && client.handshake() && client.ping();
  }

  static bool http_get_works(std::uint16_t port) {
    raw_client client(port);
    return client.connected() &&
           client.send("GET / HTTP/1.1\r\nHost: hostile\r\nConnection: close\r\n\r\n") &&
           client.read_http() == 200;
  }

  bool port_works(const target& t) { return t.http ? http_get_works(t.port) : ping_works(t.port); }

  const target& gateway() const { return targets_.back(); }

  /// Every process runs, answers on its port, calls work end to end, memory is bounded.
  void expect_everything_still_works() {
    for (const auto& t : targets_) {
      EXPECT_TRUE(t.process->running()) << t.name << " died; see " << (dir_ / (t.name + ".log"));
    }
    for (const auto& t : targets_) {
      EXPECT_TRUE(wait_for([&] { return port_works(t); })) << t.name << " stopped answering";
    }
    EXPECT_TRUE(wait_for([&] { return call_works(); })) << "calls through the proxy fail";
    expect_memory_bounded();
  }

  void expect_memory_bounded() {
    std::string growth = "RSS growth (KiB):";
    for (const auto& t : targets_) {
      const long now = rss_kb(t.process->pid());
      ASSERT_GT(now, 0) << t.name;
      EXPECT_LT(now - rss_before_[t.name], rss_growth_limit_kb)
          << t.name << " grew from " << rss_before_[t.name] << " KiB to " << now << " KiB";
      growth += " " + t.name + " " + std::to_string(now - rss_before_[t.name]);
    }
    std::cout << growth << std::endl;
  }

  std::filesystem::path dir_;
  std::string manager_, proxy_;
  std::vector<std::unique_ptr<child_process>> children_;
  std::vector<target> targets_;
  std::map<std::string, long> rss_before_;
};

TEST_F(hostile_input, random_bytes_on_every_port_close_the_connection_and_nothing_else) {
  start_cluster();
  std::mt19937 rng(4);  // fixed: the same bytes every run
  for (const auto& t : targets_) {
    for (const bool after_hello : {false, true}) {
      if (after_hello && t.http) continue;
      const std::string where = t.name + (after_hello ? " after hello" : " before hello");
      raw_client client(t.port);
      ASSERT_TRUE(client.connected()) << where;
      if (after_hello) {
        ASSERT_TRUE(client.handshake()) << where;
      }
      std::string noise(64 * 1024, '\0');
      for (char& c : noise) c = static_cast<char>(rng());
      client.send(noise);
      EXPECT_TRUE(client.closed_within(close_deadline)) << where << ": still open";
      if (!t.http) expect_only_error_replies(client.received(), where);
    }
  }
  expect_everything_still_works();
}

TEST_F(hostile_input, a_4_gb_length_prefix_gets_frame_too_large_and_a_close_on_every_port) {
  start_cluster();
  for (const auto& t : targets_) {
    if (t.http) continue;
    for (const bool after_hello : {false, true}) {
      const std::string where = t.name + (after_hello ? " after hello" : " before hello");
      raw_client client(t.port);
      ASSERT_TRUE(client.connected()) << where;
      if (after_hello) {
        ASSERT_TRUE(client.handshake()) << where;
      }
      client.send(
          "\xff\xff\xff\xff"
          "abcdefgh"s);
      auto reply = client.read_frame();
      ASSERT_TRUE(reply.has_value()) << where << ": no answer";
      EXPECT_EQ(reply->kind, static_cast<std::uint32_t>(message_kind::reply)) << where;
      EXPECT_EQ(reply->id, 0u) << where;
      auto fields = reply->as<reply_msg>();
      ASSERT_TRUE(fields.has_value()) << where;
      EXPECT_EQ(fields.value().code, errc::frame_too_large)
          << where << ": " << fields.value().message;
      EXPECT_TRUE(client.closed_within(close_deadline)) << where << ": still open";
    }
  }
  // HTTP: the same 4 bytes, and a Content-Length of 4 GB.
  {
    raw_client client(gateway().port);
    client.send(
        "\xff\xff\xff\xff"
        "abcdefgh\r\n\r\n"s);
    EXPECT_TRUE(client.closed_within(close_deadline));
  }
  {
    raw_client client(gateway().port);
    client.send(
        "POST /Greeter/x/GreetVolatile HTTP/1.1\r\nHost: hostile\r\n"
        "Content-Length: 4294967295\r\n\r\nabc");
    EXPECT_EQ(client.read_http(), 413);
    EXPECT_TRUE(client.closed_within(close_deadline));
  }
  expect_everything_still_works();
}

TEST_F(hostile_input, a_stalled_half_frame_is_closed_after_its_timeout_while_others_are_served) {
  start_cluster();
  std::vector<std::pair<std::string, std::unique_ptr<raw_client>>> stalled;
  request_msg request;
  request.entity_type = "Greeter";
  request.entity_id = "stall";
  request.rpc = "GreetVolatile";
  request.payload = pack_bytes(std::map<std::string, std::string>{{"name", "x"}});
  const std::string request_frame = frame_of(message_kind::request, 1, request);
  const std::string hello = hello_frame();
  for (const auto& t : targets_) {
    if (t.http) {
      auto headers = std::make_unique<raw_client>(t.port);
      headers->send("POST /Greeter/x/GreetVolatile HTTP/1.1\r\nHost: hos");
      stalled.emplace_back(t.name + " half headers", std::move(headers));
      auto body = std::make_unique<raw_client>(t.port);
      body->send(
          "POST /Greeter/x/GreetVolatile HTTP/1.1\r\nHost: hostile\r\n"
          "Content-Length: 100\r\n\r\n{\"name\": \"");
      stalled.emplace_back(t.name + " half body", std::move(body));
      continue;
    }
    auto before = std::make_unique<raw_client>(t.port);
    before->send(hello.substr(0, hello.size() / 2));
    stalled.emplace_back(t.name + " half hello", std::move(before));
    auto after = std::make_unique<raw_client>(t.port);
    ASSERT_TRUE(after->handshake()) << t.name;
    after->send(request_frame.substr(0, request_frame.size() / 2));
    stalled.emplace_back(t.name + " half request", std::move(after));
    auto header_only = std::make_unique<raw_client>(t.port);
    ASSERT_TRUE(header_only->handshake()) << t.name;
    header_only->send(request_frame.substr(0, frame_header_size));
    stalled.emplace_back(t.name + " header only", std::move(header_only));
  }
  // While they stall, everybody else is served on every port.
  for (const auto& t : targets_) EXPECT_TRUE(port_works(t)) << t.name << " while stalled";
  EXPECT_TRUE(call_works()) << "a call through the proxy while connections stall";
  for (auto& [what, client] : stalled) {
    EXPECT_TRUE(client->closed_within(close_deadline)) << what << " was never closed";
    if (what.find("gateway") == std::string::npos)
      expect_only_error_replies(client->received(), what);
  }
  expect_everything_still_works();
}

TEST_F(hostile_input, messagepack_announcing_huge_containers_is_refused_as_malformed) {
  start_cluster();
  const std::vector<std::pair<std::string, std::string>> bodies = {
      {"array32 of 4G elements", "\xdd\xff\xff\xff\xff\x01\x02"s},
      {"map32 of 4G pairs", "\xdf\xff\xff\xff\xff\x01\x02"s},
      {"fields: array32", "\x93\x03\x01\xdd\xff\xff\xff\xff\x00"s},
      {"fields: map32", "\x93\x03\x01\xdf\xff\xff\xff\xff\xa1k\x01"s},
      {"fields: str32 of 4 GB", "\x93\x03\x01\xdb\xff\xff\xff\xf0xy"s},
      {"fields: bin32 of 4 GB", "\x93\x03\x01\xc6\xff\xff\xff\xf0xy"s},
      {"fields: ext32 of 4 GB", "\x93\x03\x01\xc9\xff\xff\xff\xf0\x01xy"s},
      {"request with entity_type: array32",
       "\x93\x03\x01\x81\xab"
       "entity_type"
       "\xdd\xff\xff\xff\xff\xa1x"s},
      {"array16 of 65535 elements with one", "\x93\x03\x01\xdc\xff\xff\x00"s},
      {"10000 nested arrays", "\x93\x03\x01"s + std::string(10000, '\x91') + "\x00"s},
  };
  for (const auto& t : targets_) {
    if (t.http) continue;
    for (const auto& [what, body] : bodies) {
      for (const bool after_hello : {false, true}) {
        const std::string where =
            t.name + ": " + what + (after_hello ? " after hello" : " before hello");
        raw_client client(t.port);
        ASSERT_TRUE(client.connected()) << where;
        if (after_hello) {
          ASSERT_TRUE(client.handshake()) << where;
        }
        client.send(framed(body));
        auto reply = client.read_frame();
        ASSERT_TRUE(reply.has_value()) << where << ": no answer";
        auto fields = reply->as<reply_msg>();
        ASSERT_TRUE(fields.has_value()) << where;
        EXPECT_EQ(fields.value().code, errc::malformed_frame)
            << where << ": " << fields.value().message;
        EXPECT_TRUE(client.closed_within(close_deadline)) << where << ": still open";
      }
    }
  }
  // A well-formed request whose payload announces a huge array: the runner's SDK refuses it
  // as BadPayload and the connection stays usable.
  {
    raw_client client(targets_[3].port);  // the proxy
    ASSERT_TRUE(client.handshake());
    request_msg request;
    request.entity_type = "Greeter";
    request.entity_id = "Test";
    request.rpc = "GreetVolatile";
    request.payload = bytes{0xdd, 0xff, 0xff, 0xff, 0xff, 0x01};
    client.send(frame_of(message_kind::request, 7, request));
    auto reply = client.read_reply(7);
    ASSERT_TRUE(reply.has_value());
    EXPECT_EQ(reply->code, errc::bad_payload) << reply->message;
    EXPECT_TRUE(client.ping());
  }
  // The gateway's counterpart: JSON bodies that are wide, or an announced huge size.
  {
    std::string wide = "[";
    for (int i = 0; i < 200000; ++i) wide += "0,";
    wide += "0]";
    raw_client client(gateway().port);
    client.send("POST /Greeter/x/GreetVolatile HTTP/1.1\r\nHost: hostile\r\nContent-Length: " +
                std::to_string(wide.size()) + "\r\n\r\n" + wide);
    EXPECT_EQ(client.read_http(), 400);
  }
  expect_everything_still_works();
}

// JSON nested as deep as the gateway's body limit allows: the gateway answers instead of
// overflowing its stack while converting the body to MessagePack.
TEST_F(hostile_input, the_gateway_survives_json_nested_as_deep_as_its_body_limit) {
  start_cluster();
  for (const std::size_t depth : {1000u, 100000u, 500000u}) {
    const std::string body = std::string(depth, '[') + std::string(depth, ']');
    raw_client client(gateway().port);
    client.send("POST /Greeter/x/GreetVolatile HTTP/1.1\r\nHost: hostile\r\nContent-Length: " +
                std::to_string(body.size()) + "\r\n\r\n" + body);
    const auto status = client.read_http();
    ASSERT_TRUE(status.has_value()) << "no answer to JSON nested " << depth << " deep";
    EXPECT_GE(*status, 400);
    EXPECT_LT(*status, 500);
  }
  expect_everything_still_works();
}

TEST_F(hostile_input, unknown_kinds_and_fields_of_the_wrong_type_get_error_replies) {
  start_cluster();
  // Fields packed by hand: a map from name to a value of the wrong type.
  auto map_of = [](const std::string& key, auto value) {
    return std::map<std::string, decltype(value)>{{key, value}};
  };
  struct message {
    std::string what;
    message_kind kind;
    std::string frame;
    bool must_fail;  // false: any answer will do (e.g. get_status ignores its fields)
  };
  std::uint64_t id = 100;
  auto make = [&](const std::string& what, std::uint32_t kind, const auto& fields,
                  bool must_fail = true) {
    ++id;
    return message{what, static_cast<message_kind>(kind),
                   frame_of(static_cast<message_kind>(kind), id, fields), must_fail};
  };
  const std::vector<message> messages = {
      make("kind 13", 13, empty_msg{}),
      make("kind 200", 200, empty_msg{}),
      make("kind 2^32-1", 0xFFFFFFFFu, empty_msg{}),
      make("kind 0", 0, empty_msg{}),
      make("request with an integer entity_type", 3, map_of("entity_type", 42)),
      make("request with a map for rpc", 3, map_of("rpc", map_of("a", 1))),
      make("request with a negative timeout_ms", 3, map_of("timeout_ms", -5)),
      make("request with a float deliver_at_ms", 3, map_of("deliver_at_ms", 1.5)),
      make("request whose fields are an array", 3, std::vector<int>{1, 2, 3}),
      make("request whose fields are a string", 3, std::string("request")),
      make("request with integer keys", 3, std::map<int, std::string>{{1, "Greeter"}}),
      make("register_runner with wrong types", 7, map_of("entity_types", std::string("all"))),
      make("unregister_runner with a bool address", 8, map_of("address", true)),
      make("a second hello with wrong types", 1, map_of("protocol_version", std::string("one"))),
      make("get_status with integer fields", 11, 5, false),
  };
  // Kinds nobody answers; the connection must stay usable after them.
  const std::vector<std::string> unanswered = {
      frame_of(message_kind::reply, 999, map_of("code", std::string("bad"))),
      frame_of(message_kind::pong, 998, std::vector<int>{1}),
      frame_of(message_kind::hello_ack, 997, 12),
  };
  for (const auto& t : targets_) {
    if (t.http) continue;
    raw_client client(t.port);
    ASSERT_TRUE(client.handshake()) << t.name;
    std::uint64_t expected_id = 100;
    for (const auto& m : messages) {
      ++expected_id;
      ASSERT_TRUE(client.send(m.frame)) << t.name << ": " << m.what;
      auto reply = client.read_reply(expected_id);
      ASSERT_TRUE(reply.has_value()) << t.name << ": no reply to " << m.what;
      if (m.must_fail) {
        EXPECT_FALSE(reply->ok()) << t.name << ": " << m.what << " succeeded";
        EXPECT_FALSE(reply->error.empty()) << t.name << ": " << m.what;
      }
    }
    for (const auto& frame : unanswered) ASSERT_TRUE(client.send(frame)) << t.name;
    EXPECT_TRUE(client.ping()) << t.name << ": the connection is not usable any more";
  }
  // Before hello: anything but a well-formed hello of version 1 is refused, then closed.
  const std::vector<std::pair<std::string, errc>> first_messages = {
      {frame_of(message_kind::request, 5, map_of("entity_type", std::string("Greeter"))),
       errc::handshake_required},
      {frame_of(message_kind::hello, 5, map_of("protocol_version", std::string("one"))),
       errc::malformed_frame},
      {frame_of(message_kind::hello, 5, hello_msg{99, "client", "future"}),
       errc::unsupported_version},
      {frame_of(static_cast<message_kind>(77), 5, empty_msg{}), errc::handshake_required},
  };
  for (const auto& t : targets_) {
    if (t.http) continue;
    for (const auto& [frame, code] : first_messages) {
      raw_client client(t.port);
      client.send(frame);
      auto reply = client.read_reply(5);
      ASSERT_TRUE(reply.has_value()) << t.name << ": no reply before hello";
      EXPECT_EQ(reply->code, code) << t.name << ": " << reply->message;
      EXPECT_TRUE(client.closed_within(close_deadline)) << t.name;
    }
  }
  // HTTP: unknown methods, paths and bodies get a 4xx answer.
  const std::vector<std::string> requests = {
      "BREW / HTTP/1.1\r\nHost: hostile\r\n\r\n",
      "GET /Greeter/x/GreetVolatile HTTP/1.1\r\nHost: hostile\r\n\r\n",
      "GET /no/such/path/here HTTP/1.1\r\nHost: hostile\r\n\r\n",
      "POST /%zz/x/GreetVolatile HTTP/1.1\r\nHost: hostile\r\nContent-Length: 2\r\n\r\n{}",
      "POST /Greeter/x/GreetVolatile HTTP/1.1\r\nHost: hostile\r\nContent-Length: 9\r\n\r\n{not "
      "json",
      "POST /Greeter/x/GreetVolatile HTTP/1.1\r\nHost: hostile\r\nContent-Length: 12\r\n\r\n"
      "{\"name\": 42}",
      "POST /Nope/x/Nope HTTP/1.1\r\nHost: hostile\r\nContent-Length: 2\r\n\r\n{}",
      "GET / HTTP/1.1\r\nHost: hostile\r\nContent-Length: -1\r\n\r\n",
      "GET / HTTP/1.1\r\nHost: hostile\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
      "NOT HTTP AT ALL\r\n\r\n",
  };
  for (const auto& request : requests) {
    raw_client client(gateway().port);
    client.send(request);
    const auto status = client.read_http();
    ASSERT_TRUE(status.has_value()) << "no answer to " << request;
    EXPECT_GE(*status, 400) << request;
    EXPECT_LT(*status, 500) << request;
  }
  expect_everything_still_works();
}

TEST_F(hostile_input, connections_beyond_the_limit_are_refused_and_open_ones_keep_working) {
  cluster_options options;
  options.max_connections = 48;
  options.gateway_read_timeout_ms = 60000;  // idle keep-alive connections must stay open
  start_cluster(options);
  constexpr std::size_t most = 5000;  // an upper bound for the search, above every default
  for (const auto& t : targets_) {
    std::vector<std::unique_ptr<raw_client>> open;
    bool refused = false;
    while (!refused && open.size() < most) {
      auto client = std::make_unique<raw_client>(t.port);
      ASSERT_TRUE(client->connected()) << t.name;
      if (t.http) {
        client->send("GET /nope HTTP/1.1\r\nHost: hostile\r\n\r\n");
        refused = client->read_http() != 404;
      } else {
        client->send(hello_frame());
        auto answer = client->read_frame();
        if (answer && answer->kind == static_cast<std::uint32_t>(message_kind::reply)) {
          auto reply = answer->as<reply_msg>();
          EXPECT_TRUE(reply && reply.value().code == errc::too_many_requests) << t.name;
        }
        refused = !answer || answer->kind != static_cast<std::uint32_t>(message_kind::hello_ack);
      }
      if (!refused) open.push_back(std::move(client));
    }
    ASSERT_TRUE(refused) << t.name << " accepted " << most << " connections";
    ASSERT_FALSE(open.empty()) << t.name << " refused every connection";
    // Open connections are unaffected, and so are calls that use the runners' existing
    // connections from the proxy.
    if (t.http) {
      for (auto* client : {open.front().get(), open.back().get()}) {
        client->send("GET / HTTP/1.1\r\nHost: hostile\r\n\r\n");
        EXPECT_EQ(client->read_http(), 200) << t.name;
      }
    } else {
      EXPECT_TRUE(open.front()->ping()) << t.name;
      EXPECT_TRUE(open.back()->ping()) << t.name;
    }
    if (t.name.rfind("runner", 0) == 0) {
      EXPECT_TRUE(call_works()) << "while " << t.name << " is full";
    }
    if (t.name == "manager" || t.name.rfind("runner", 0) == 0) {
      // Clients only get their share: a quarter stays for the cluster's own processes, so a
      // runner can still register (and a proxy or a runner still route) through the flood.
      raw_client member(t.port);
      ASSERT_TRUE(member.connected()) << t.name;
      member.send(
          frame_of(message_kind::hello, 0, hello_msg{protocol_version, "runner", "late-runner"}));
      const auto ack = member.read_frame();
      EXPECT_TRUE(ack && ack->kind == static_cast<std::uint32_t>(message_kind::hello_ack))
          << t.name << " refused a runner while full of clients";
    }
    std::cout << t.name << " accepted " << open.size() << " more connections, then refused one"
              << std::endl;
    open.clear();
    EXPECT_TRUE(wait_for([&] { return port_works(t); })) << t.name << " after closing them";
  }
  expect_everything_still_works();
}

// A header announcing a frame of nearly max_frame_bytes, then a stall: the receiver must not
// commit the announced size up front on every such connection.
TEST_F(hostile_input, memory_stays_bounded_while_many_connections_announce_maximal_frames) {
  cluster_options options;
  options.frame_body_timeout_ms = 30000;  // the memory is measured while they stall
  options.gateway_read_timeout_ms = 30000;
  start_cluster(options);
  constexpr int per_port = 48;
  std::vector<std::unique_ptr<raw_client>> stalled;
  for (const auto& t : targets_) {
    for (int i = 0; i < per_port; ++i) {
      auto client = std::make_unique<raw_client>(t.port);
      ASSERT_TRUE(client->connected()) << t.name;
      if (t.http) {
        client->send(
            "POST /Greeter/x/GreetVolatile HTTP/1.1\r\nHost: hostile\r\n"
            "Content-Length: 1000000\r\n\r\n{\"name\":");
      } else {
        if (i % 2 == 1) {
          ASSERT_TRUE(client->handshake()) << t.name;
        }
        const std::uint32_t size = 8 * 1024 * 1024;  // max_frame_bytes, the default
        client->send(std::string{static_cast<char>(size >> 24), static_cast<char>(size >> 16),
                                 static_cast<char>(size >> 8), static_cast<char>(size)} +
                     "\x93\x03\x01");
      }
      stalled.push_back(std::move(client));
    }
  }
  // Every stalled connection is in place once each port answers a fresh one.
  for (const auto& t : targets_) EXPECT_TRUE(port_works(t)) << t.name;
  expect_memory_bounded();
  stalled.clear();
  expect_everything_still_works();
}

}  // namespace
}  // namespace cluster::testing
