// dist/lambda as AWS Lambda runs it: the bundle's own files, then `bootstrap` as a real
// child process against a Runtime API served by this test on loopback, in front of real
// cluster processes (manager, runner, proxy). Also cluster-gateway as a real process.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "child_process.hpp"
#include "cluster/security/credentials_folder.hpp"
#include "cluster_fixture.hpp"
#include "http_client.hpp"

namespace cluster::testing {
namespace {

using json = nlohmann::json;
namespace fs = std::filesystem;
using namespace std::chrono_literals;

const std::string bin = CLUSTER_BIN_DIR;
const fs::path bundle = CLUSTER_LAMBDA_BUNDLE_DIR;

std::int64_t unix_now_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

bool is_elf(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  in.read(magic, 4);
  return in.gcount() == 4 && magic[0] == 0x7f && magic[1] == 'E' && magic[2] == 'L' &&
         magic[3] == 'F';
}

// DT_NEEDED entries of an ELF file, from `readelf -d`.
std::vector<std::string> needed_libraries(const fs::path& path) {
  int status = 0;
  const auto out = run_command("readelf -d '" + path.string() + "' 2>&1", status);
  EXPECT_EQ(status, 0) << out;
  std::vector<std::string> needed;
  std::istringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.find("(NEEDED)") == std::string::npos) continue;
    const auto open = line.find('[');
    const auto close = line.find(']', open);
    if (open != std::string::npos && close != std::string::npos)
      needed.push_back(line.substr(open + 1, close - open - 1));
  }
  return needed;
}

// Sets environment variables for the children started in its lifetime, then restores them.
class scoped_env {
 public:
  explicit scoped_env(const std::map<std::string, std::string>& values) {
    for (const auto& [name, value] : values) {
      const char* old = std::getenv(name.c_str());
      saved_.emplace_back(name, old ? std::optional<std::string>(old) : std::nullopt);
      setenv(name.c_str(), value.c_str(), 1);
    }
  }
  ~scoped_env() {
    for (const auto& [name, old] : saved_) {
      if (old) {
        setenv(name.c_str(), old->c_str(), 1);
      } else {
        unsetenv(name.c_str());
      }
    }
  }
  scoped_env(const scoped_env&) = delete;
  scoped_env& operator=(const scoped_env&) = delete;

 private:
  std::vector<std::pair<std::string, std::optional<std::string>>> saved_;
};

// The AWS Lambda Runtime API, as far as a custom runtime sees it: /next hands out queued
// events (long-polling while there are none); /response and /error posts are recorded.
class fake_runtime_api {
 public:
  explicit fake_runtime_api(asio::io_context& io) : state_(std::make_shared<state>(io)) {
    const tcp::endpoint endpoint(asio::ip::make_address("127.0.0.1"), 0);
    state_->acceptor.open(endpoint.protocol());
    state_->acceptor.bind(endpoint);
    state_->acceptor.listen();
    asio::co_spawn(io, accept_loop(state_), asio::detached);
  }
  ~fake_runtime_api() {
    state_->stopped = true;
    error_code ignored;
    state_->acceptor.close(ignored);
  }
  fake_runtime_api(const fake_runtime_api&) = delete;
  fake_runtime_api& operator=(const fake_runtime_api&) = delete;

  std::uint16_t port() const { return state_->acceptor.local_endpoint().port(); }
  std::string address() const { return "127.0.0.1:" + std::to_string(port()); }

  /// Queues an invocation; returns its request id.
  std::string queue(const json& event) {
    const std::string id = "request-" + std::to_string(++state_->next_id);
    state_->events.push_back({id, event.is_string() ? event.get<std::string>() : event.dump()});
    return id;
  }
  /// Posted results by request id: the parsed body of …/response or …/error.
  const std::map<std::string, json>& responses() const { return state_->responses; }
  const std::map<std::string, json>& errors() const { return state_->errors; }
  const std::vector<json>& init_errors() const { return state_->init_errors; }
  std::size_t next_polls() const { return state_->next_polls; }

 private:
  struct state {
    explicit state(asio::io_context& io) : acceptor(io) {}
    tcp::acceptor acceptor;
    bool stopped = false;
    int next_id = 0;
    std::size_t next_polls = 0;
    std::deque<std::pair<std::string, std::string>> events;
    std::map<std::string, json> responses, errors;
    std::vector<json> init_errors;
  };
  using state_ptr = std::shared_ptr<state>;

  static awaitable<void> accept_loop(state_ptr self) {
    while (!self->stopped) {
      tcp::socket socket(co_await asio::this_coro::executor);
      error_code ec;
      co_await self->acceptor.async_accept(socket, asio::redirect_error(use_awaitable, ec));
      if (ec) break;
      asio::co_spawn(self->acceptor.get_executor(), serve(self, std::move(socket)), asio::detached);
    }
  }

  static awaitable<void> serve(state_ptr self, tcp::socket socket) {
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer;
    const std::string prefix = "/2018-06-01/runtime/";
    for (;;) {
      http::request<http::string_body> request;
      error_code ec;
      co_await http::async_read(stream, buffer, request, asio::redirect_error(use_awaitable, ec));
      if (ec) break;
      http::response<http::string_body> response{http::status::accepted, request.version()};
      response.set(http::field::content_type, "application/json");
      response.body() = R"({"status":"OK"})";
      const std::string target(request.target());
      if (target == prefix + "invocation/next" && request.method() == http::verb::get) {
        ++self->next_polls;
        while (self->events.empty() && !self->stopped) {
          auto pause = sleep_for(10ms);
          co_await std::move(pause);
        }
        if (self->stopped) break;
        auto [id, event] = self->events.front();
        self->events.pop_front();
        response.result(http::status::ok);
        response.set("Lambda-Runtime-Aws-Request-Id", id);
        response.set("Lambda-Runtime-Deadline-Ms", std::to_string(unix_now_ms() + 60000));
        response.set("Lambda-Runtime-Invoked-Function-Arn",
                     "arn:aws:lambda:us-east-1:000000000000:function:test");
        response.body() = event;
      } else if (target == prefix + "init/error" && request.method() == http::verb::post) {
        self->init_errors.push_back(json::parse(request.body(), nullptr, false));
      } else if (target.rfind(prefix + "invocation/", 0) == 0 &&
                 request.method() == http::verb::post) {
        const auto rest = target.substr(prefix.size() + std::string("invocation/").size());
        const auto slash = rest.find('/');
        const auto id = rest.substr(0, slash);
        const auto kind = slash == std::string::npos ? "" : rest.substr(slash + 1);
        auto body = json::parse(request.body(), nullptr, false);
        if (kind == "response") {
          self->responses[id] = body;
        } else if (kind == "error") {
          self->errors[id] = body;
        } else {
          response.result(http::status::not_found);
        }
      } else {
        response.result(http::status::not_found);
      }
      response.keep_alive(request.keep_alive());
      response.prepare_payload();
      co_await http::async_write(stream, response, asio::redirect_error(use_awaitable, ec));
      if (ec || !request.keep_alive()) break;
    }
    error_code ignored;
    stream.socket().close(ignored);
  }

  state_ptr state_;
};

json url_event(const std::string& method, const std::string& path, const std::string& body = "",
               bool base64 = false) {
  json event = {{"version", "2.0"},
                {"routeKey", "$default"},
                {"rawPath", path},
                {"rawQueryString", ""},
                {"headers", {{"content-type", "application/json"}, {"host", "example"}}},
                {"requestContext",
                 {{"http",
                   {{"method", method},
                    {"path", path},
                    {"protocol", "HTTP/1.1"},
                    {"sourceIp", "127.0.0.1"}}}}},
                {"isBase64Encoded", base64}};
  if (!body.empty()) event["body"] = body;
  return event;
}

// The response's statusCode and its body parsed as JSON.
std::pair<int, json> unpack(const json& response) {
  if (!response.is_object() || !response.contains("statusCode") || !response.contains("body"))
    return {0, nullptr};
  return {response["statusCode"].get<int>(),
          json::parse(response["body"].get<std::string>(), nullptr, false)};
}

bool is_error_json(const json& body) {
  return body.is_object() && body.contains("error") && body["error"].is_string() &&
         body.contains("message") && body["message"].is_string();
}

class lambda_bundle : public ::testing::Test {
 protected:
  void SetUp() override {
    dir = fs::temp_directory_path() /
          ("cluster-lambda-" + std::to_string(::getpid()) + "-" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir);
    manager_port = free_port();
    proxy_port = free_port();
    manager = "127.0.0.1:" + std::to_string(manager_port);
    // The cluster, clusterctl and the Lambda authenticate with these (as deployed).
    const auto credentials = (dir / "credentials").string();
    fs::remove_all(credentials);
    ASSERT_TRUE(write_credentials_folder(credentials).has_value());
    ::setenv("CLUSTER_SECURITY_CREDENTIALS_DIR", credentials.c_str(), 1);
  }
  void TearDown() override {
    children.clear();  // SIGTERM, then SIGKILL, by PID
    if (!HasFailure()) fs::remove_all(dir);
  }

  child_process& start(const std::string& name, const std::string& program,
                       const std::vector<std::string>& args) {
    children.push_back(
        std::make_unique<child_process>(program, args, (dir / (name + ".log")).string()));
    return *children.back();
  }
  void start_cluster() {
    start("manager", bin + "/cluster-manager",
          {"--set", "manager.port=" + std::to_string(manager_port)});
    start("runner", bin + "/cluster-runner",
          {"--set", "runner.name=runner-1", "--set", "runner.port=0", "--set",
           "runner.manager=" + manager, "--set",
           "runner.plugins=" + std::string(CLUSTER_PLUGIN_DIR)});
    start(
        "proxy", bin + "/cluster-proxy",
        {"--set", "proxy.port=" + std::to_string(proxy_port), "--set", "proxy.manager=" + manager});
  }
  // Ready once the proxy answers the seed call (shards assigned and known to the proxy).
  bool cluster_ready() {
    const auto deadline = std::chrono::steady_clock::now() + 30s;
    while (std::chrono::steady_clock::now() < deadline) {
      int status = 0;
      run_command(bin + "/clusterctl --proxy 127.0.0.1:" + std::to_string(proxy_port) +
                      " --timeout-ms 2000 call Greeter Test GreetVolatile '{\"name\":\"x\"}' "
                      ">/dev/null 2>&1",
                  status);
      if (status == 0) return true;
      std::this_thread::sleep_for(100ms);
    }
    return false;
  }
  child_process& start_bootstrap(const fake_runtime_api& api, std::uint16_t proxy,
                                 std::map<std::string, std::string> extra_env = {}) {
    extra_env["AWS_LAMBDA_RUNTIME_API"] = api.address();
    if (!extra_env.count("CLUSTER_GATEWAY_PROXY"))
      extra_env["CLUSTER_GATEWAY_PROXY"] = "127.0.0.1:" + std::to_string(proxy);
    const scoped_env env(extra_env);
    return start("bootstrap", (bundle / "bootstrap").string(), {});
  }
  std::string log(const std::string& name) { return read_file(dir / (name + ".log")); }

  asio::io_context io;
  fs::path dir;
  std::uint16_t manager_port = 0, proxy_port = 0;
  std::string manager;
  std::vector<std::unique_ptr<child_process>> children;
};

TEST_F(lambda_bundle, every_elf_file_finds_its_needed_libraries_in_lib) {
  ASSERT_TRUE(fs::exists(bundle / "bin" / "cluster-lambda")) << bundle;
  ASSERT_TRUE(fs::exists(bundle / "lib" / "ld-linux-x86-64.so.2"));
  std::size_t elf_files = 0;
  for (const auto* sub : {"bin", "lib"}) {
    for (const auto& entry : fs::directory_iterator(bundle / sub)) {
      if (!entry.is_regular_file() || !is_elf(entry.path())) continue;
      ++elf_files;
      for (const auto& needed : needed_libraries(entry.path()))
        EXPECT_TRUE(fs::exists(bundle / "lib" / needed))
            << entry.path() << " needs " << needed << ", which lib/ lacks";
    }
  }
  EXPECT_GE(elf_files, 3u);  // the binary, the loader, libc at least
  // libstdc++ and libgcc are linked statically: lib/ holds glibc's pieces only.
  EXPECT_FALSE(fs::exists(bundle / "lib" / "libstdc++.so.6"));
  EXPECT_FALSE(fs::exists(bundle / "lib" / "libgcc_s.so.1"));
}

TEST_F(lambda_bundle, bootstrap_is_an_executable_script_that_runs_the_bundled_loader) {
  struct stat info {};
  ASSERT_EQ(::stat((bundle / "bootstrap").c_str(), &info), 0);
  EXPECT_TRUE(info.st_mode & S_IXUSR);
  EXPECT_TRUE(info.st_mode & S_IXOTH);
  const auto script = read_file(bundle / "bootstrap");
  EXPECT_EQ(script.rfind("#!/bin/sh\n", 0), 0u);
  EXPECT_NE(script.find("lib/ld-linux-x86-64.so.2"), std::string::npos) << script;
  EXPECT_NE(script.find("LAMBDA_TASK_ROOT"), std::string::npos) << script;
}

TEST_F(lambda_bundle, the_binary_fails_cleanly_without_the_runtime_api) {
  int status = 0;
  const auto out = run_command("env -i '" + (bundle / "bootstrap").string() + "' 2>&1", status);
  EXPECT_NE(status, 0) << out;
  EXPECT_NE(out.find("AWS_LAMBDA_RUNTIME_API"), std::string::npos) << out;
  EXPECT_EQ(std::count(out.begin(), out.end(), '\n'), 1) << out;
  // Directly through the bundled loader, as bootstrap does, from another directory.
  const auto direct =
      run_command("cd / && env -i '" + (bundle / "lib" / "ld-linux-x86-64.so.2").string() +
                      "' --library-path '" + (bundle / "lib").string() + "' '" +
                      (bundle / "bin" / "cluster-lambda").string() + "' 2>&1",
                  status);
  EXPECT_NE(status, 0) << direct;
  EXPECT_NE(direct.find("AWS_LAMBDA_RUNTIME_API"), std::string::npos) << direct;
}

TEST_F(lambda_bundle, serves_function_url_events_through_a_real_cluster) {
  start_cluster();
  ASSERT_TRUE(cluster_ready()) << log("proxy");
  fake_runtime_api api(io);
  start_bootstrap(api, proxy_port, {{"LAMBDA_TASK_ROOT", bundle.string()}});
  const auto root = api.queue(url_event("GET", "/"));
  const auto greet = api.queue(url_event("POST", "/Greeter/alice/Greet", R"({"name":"Alice"})"));
  const auto encoded =
      api.queue(url_event("POST", "/Greeter/bob/Greet", "eyJuYW1lIjoiQm9iIn0=", true));
  const auto unknown_rpc = api.queue(url_event("POST", "/Greeter/alice/NoSuchRpc", "{}"));
  const auto bad_json = api.queue(url_event("POST", "/Greeter/alice/Greet", "{not json"));
  const auto not_found = api.queue(url_event("GET", "/no/such/path/here"));
  ASSERT_TRUE(run_until(
      io, [&api] { return api.responses().size() == 6; }, 60000ms))
      << log("bootstrap");
  EXPECT_TRUE(api.errors().empty());

  auto [status, body] = unpack(api.responses().at(root));
  EXPECT_EQ(status, 200);
  EXPECT_EQ(body["message"], "Hello, John! from Test Greeter 216");
  EXPECT_EQ(api.responses().at(root)["headers"]["content-type"], "application/json");

  std::tie(status, body) = unpack(api.responses().at(greet));
  EXPECT_EQ(status, 200);
  const std::string message = body.value("message", "");
  EXPECT_EQ(message.rfind("Hello, Alice! from alice Greeter ", 0), 0u) << body;

  std::tie(status, body) = unpack(api.responses().at(encoded));
  EXPECT_EQ(status, 200);
  EXPECT_EQ(body.value("message", "").rfind("Hello, Bob! from bob Greeter ", 0), 0u) << body;

  std::tie(status, body) = unpack(api.responses().at(unknown_rpc));
  EXPECT_EQ(status, 404);
  EXPECT_TRUE(is_error_json(body)) << body;
  EXPECT_EQ(body["error"], "UnknownRpc");

  std::tie(status, body) = unpack(api.responses().at(bad_json));
  EXPECT_EQ(status, 400);
  EXPECT_TRUE(is_error_json(body)) << body;

  std::tie(status, body) = unpack(api.responses().at(not_found));
  EXPECT_EQ(status, 404);
  EXPECT_TRUE(is_error_json(body)) << body;
}

TEST_F(lambda_bundle, answers_503_while_the_proxy_is_unreachable) {
  fake_runtime_api api(io);
  start_bootstrap(api, free_port());
  const auto id = api.queue(url_event("GET", "/"));
  ASSERT_TRUE(run_until(
      io, [&api] { return api.responses().size() == 1; }, 60000ms))
      << log("bootstrap");
  const auto [status, body] = unpack(api.responses().at(id));
  EXPECT_EQ(status, 503);
  EXPECT_TRUE(is_error_json(body)) << body;
}

TEST_F(lambda_bundle, posts_an_invocation_error_for_an_event_that_is_not_a_function_url) {
  fake_runtime_api api(io);
  start_bootstrap(api, free_port());
  const auto id = api.queue(json{{"Records", json::array()}});
  const auto next = api.queue(url_event("POST", "/a/b"));  // still serving afterwards
  ASSERT_TRUE(run_until(
      io, [&api] { return api.errors().size() == 1 && api.responses().size() == 1; }, 60000ms))
      << log("bootstrap");
  const auto& error = api.errors().at(id);
  EXPECT_EQ(error["errorType"], "InvalidEvent");
  EXPECT_TRUE(error["errorMessage"].is_string());
  EXPECT_EQ(unpack(api.responses().at(next)).first, 404);
}

TEST_F(lambda_bundle, posts_an_init_error_and_exits_on_a_bad_proxy_port) {
  fake_runtime_api api(io);
  auto& runtime = start_bootstrap(api, 0, {{"CLUSTER_GATEWAY_PROXY", "127.0.0.1:not-a-port"}});
  ASSERT_TRUE(run_until(
      io, [&api] { return api.init_errors().size() == 1; }, 30000ms))
      << log("bootstrap");
  EXPECT_NE(api.init_errors()[0].value("errorMessage", "").find("CLUSTER_GATEWAY_PROXY"),
            std::string::npos);
  EXPECT_TRUE(api.init_errors()[0]["errorType"].is_string());
  std::optional<int> exit_status;
  ASSERT_TRUE(run_until(io, [&] {
    exit_status = runtime.stop(0, 0ms);
    return exit_status.has_value();
  }));
  EXPECT_NE(*exit_status, 0);
  EXPECT_EQ(api.next_polls(), 0u);
}

TEST_F(lambda_bundle, stops_with_exit_code_zero_on_sigterm) {
  fake_runtime_api api(io);
  auto& runtime = start_bootstrap(api, free_port());
  ASSERT_TRUE(run_until(
      io, [&api] { return api.next_polls() == 1; }, 30000ms))
      << log("bootstrap");
  EXPECT_EQ(runtime.stop(SIGTERM, 10000ms), std::optional<int>(0)) << log("bootstrap");
}

TEST_F(lambda_bundle, cluster_gateway_serves_http_and_stops_on_sigterm) {
  start_cluster();
  ASSERT_TRUE(cluster_ready()) << log("proxy");
  const auto port = free_port();
  auto& gateway = start("gateway", bin + "/cluster-gateway",
                        {"--set", "gateway.port=" + std::to_string(port), "--set",
                         "gateway.proxy=127.0.0.1:" + std::to_string(proxy_port)});
  http_result result;
  const auto deadline = std::chrono::steady_clock::now() + 30s;
  while (std::chrono::steady_clock::now() < deadline) {
    result = http_call(io, port, "GET", "/", "", 5000ms);
    if (result.status != 0) break;
    std::this_thread::sleep_for(50ms);
  }
  ASSERT_EQ(result.status, 200u) << result.error << log("gateway");
  EXPECT_EQ(result.json()["message"], "Hello, John! from Test Greeter 216");
  EXPECT_EQ(gateway.stop(SIGTERM, 10000ms), std::optional<int>(0)) << log("gateway");
}

}  // namespace
}  // namespace cluster::testing
