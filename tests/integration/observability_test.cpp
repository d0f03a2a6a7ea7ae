// The admin endpoints of the real binaries: /metrics that promtool accepts, /healthz and
// /readyz, the manager's dashboard and /api/cluster, the admin token, JSON logs, and one
// trace across gateway, proxy and runner received by a local OTLP/HTTP receiver.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <set>
#include <thread>

#include "cluster/http/http.hpp"
#include "process_cluster.hpp"

namespace cluster::testing {
namespace {

using namespace std::chrono_literals;
using nlohmann::json;

/// An OTLP/HTTP JSON receiver on its own thread: keeps every body posted to /v1/traces.
class otlp_receiver {
 public:
  otlp_receiver() {
    server_.route("/v1/traces", [this](const http::request& req) -> awaitable<http::response> {
      std::lock_guard lock(mutex_);
      bodies_.push_back(req.body());
      co_return http::response{200, "application/json", "{}", {}};
    });
    server_.listen("127.0.0.1", 0);
    thread_ = std::thread([this] { io_.run(); });
  }
  ~otlp_receiver() {
    asio::post(io_, [this] { server_.close(); });
    work_.reset();
    thread_.join();
  }
  std::string url() const {
    return "http://127.0.0.1:" + std::to_string(server_.local_endpoint().port()) + "/v1/traces";
  }
  /// service.name → the spans it exported (each span object with its trace and ids).
  std::multimap<std::string, json> spans() {
    std::lock_guard lock(mutex_);
    std::multimap<std::string, json> out;
    for (const auto& body : bodies_) {
      const auto doc = json::parse(body, nullptr, false);
      if (doc.is_discarded()) continue;
      for (const auto& resource : doc.value("resourceSpans", json::array())) {
        std::string service;
        for (const auto& a : resource["resource"].value("attributes", json::array()))
          if (a.value("key", "") == "service.name") service = a["value"].value("stringValue", "");
        for (const auto& scope : resource.value("scopeSpans", json::array()))
          for (const auto& span : scope.value("spans", json::array())) out.emplace(service, span);
      }
    }
    return out;
  }

 private:
  asio::io_context io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_{
      asio::make_work_guard(io_)};
  http::server server_{io_, http::server_limits{16, 8 * 1024 * 1024, milliseconds(10000)}};
  std::thread thread_;
  std::mutex mutex_;
  std::vector<std::string> bodies_;
};

class observability : public process_cluster_test {
 protected:
  /// Starts manager, two runners, proxy and gateway, each with an admin port.
  void start_all(const std::vector<std::string>& common = {}) {
    for (const auto* name : {"manager", "runner-1", "runner-2", "proxy", "gateway"})
      admin_port[name] = free_port();
    const auto with = [&](const std::string& section, const std::string& name) {
      auto args = common;
      args.insert(args.end(),
                  {"--set", section + ".admin_port=" + std::to_string(admin_port[name])});
      return args;
    };
    start_manager(with("manager", "manager"));
    start_runner(1, with("runner", "runner-1"));
    start_runner(2, with("runner", "runner-2"));
    start_proxy(with("proxy", "proxy"));
    gateway_port = free_port();
    auto gateway = with("gateway", "gateway");
    gateway.insert(gateway.end(), {"--set", "gateway.host=127.0.0.1", "--set",
                                   "gateway.port=" + std::to_string(gateway_port), "--set",
                                   "gateway.proxy=127.0.0.1:" + std::to_string(proxy_port)});
    start("gateway", "cluster-gateway", gateway);
    ASSERT_TRUE(ready(2));
  }
  std::string admin(const std::string& name, const std::string& path) const {
    return "http://127.0.0.1:" + std::to_string(admin_port.at(name)) + path;
  }
  /// The answer, or status 0 and the reason as the body when there is none (callers check
  /// the status; polls retry).
  http::fetched get(const std::string& url, const std::string& token = "") {
    http::fetch_options options;
    if (!token.empty()) options.headers.emplace_back("Authorization", "Bearer " + token);
    auto got = http::fetch_blocking(url, options);
    return got ? got.value() : http::fetched{0, "", url + ": " + got.error().message};
  }
  std::string log(const std::string& name) {
    std::ifstream in(dir / (name + ".log"));
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }
  std::map<std::string, std::uint16_t> admin_port;
  std::uint16_t gateway_port = 0;
};

TEST_F(observability, every_process_serves_metrics_promtool_accepts_and_says_it_is_ready) {
  start_all();
  auto home = get("http://127.0.0.1:" + std::to_string(gateway_port) + "/");
  ASSERT_EQ(home.status, 200u) << home.body;
  for (const auto& [name, port] : admin_port) {
    const auto health = get(admin(name, "/healthz"));
    EXPECT_EQ(health.status, 200u) << name;
    EXPECT_EQ(health.body, "ok\n") << name;
    EXPECT_TRUE(wait_for([&] { return get(admin(name, "/readyz")).body == "ready\n"; }, 20s))
        << name << ": " << get(admin(name, "/readyz")).body;
    const auto metrics = get(admin(name, "/metrics"));
    ASSERT_EQ(metrics.status, 200u) << name;
    EXPECT_NE(metrics.body.find("process_resident_memory_bytes "), std::string::npos) << name;
    const auto file = dir / (name + ".prom");
    std::ofstream(file) << metrics.body;
    const auto check =
        "promtool check metrics < " + file.string() + " > " + file.string() + ".check 2>&1";
    EXPECT_EQ(std::system(check.c_str()), 0) << name << " /metrics fails promtool:\n"
                                             << std::ifstream(file.string() + ".check").rdbuf();
  }
  // The call through the gateway was counted by every hop, by type, RPC and code.
  const auto counted = [&](const std::string& name, const std::string& needle) {
    return get(admin(name, "/metrics")).body.find(needle) != std::string::npos;
  };
  EXPECT_TRUE(
      counted("gateway", "cluster_gateway_http_requests_total{method=\"GET\",status=\"200\"} 1"));
  EXPECT_TRUE(
      counted("proxy",
              "cluster_proxy_requests_total{entity_type=\"Greeter\",rpc=\"Greet\",code=\"Ok\"} 1"));
  EXPECT_TRUE(
      counted(
          "runner-1",
          "cluster_runner_requests_total{entity_type=\"Greeter\",rpc=\"Greet\",code=\"Ok\"} 1") ||
      counted(
          "runner-2",
          "cluster_runner_requests_total{entity_type=\"Greeter\",rpc=\"Greet\",code=\"Ok\"} 1"));
  EXPECT_TRUE(counted("runner-1", "cluster_runner_shards_owned{group=\"default\"} 150"));
  EXPECT_TRUE(
      counted("manager", "cluster_manager_shards{group=\"default\",state=\"assigned\"} 300"));
  // An unknown entity type is counted without becoming a label.
  int status = 0;
  clusterctl("call NoSuchType x Y '{}'", status);
  EXPECT_NE(status, 0);
  EXPECT_TRUE(wait_for([&] { return counted("proxy", "entity_type=\"_unknown\""); }, 5s));
  EXPECT_FALSE(counted("proxy", "NoSuchType"));
}

TEST_F(observability, the_dashboard_api_shows_runners_shards_and_live_call_rates) {
  start_all();
  int status = 0;
  for (int i = 0; i < 40; ++i)
    clusterctl("call Greeter u" + std::to_string(i) + " GreetVolatile '{\"name\":\"x\"}'", status);
  json doc;
  ASSERT_TRUE(wait_for(
      [&] {
        doc = json::parse(get(admin("manager", "/api/cluster")).body, nullptr, false);
        if (doc.is_discarded() || doc["runners"].size() != 2) return false;
        for (const auto& r : doc["runners"])
          if (!r["metrics"]["ok"].get<bool>() || r["metrics"]["rss_bytes"].get<double>() <= 0)
            return false;
        for (const auto& t : doc["entity_types"])
          if (t["name"] == "Greeter") return t["active_entities"].get<double>() >= 40;
        return false;
      },
      20s))
      << doc.dump();
  ASSERT_EQ(doc["groups"].size(), 1u);
  const auto& owners = doc["groups"][0]["owners"];
  ASSERT_EQ(owners.size(), 300u);
  std::set<int> seen;
  for (const auto& o : owners) seen.insert(o.get<int>());
  EXPECT_EQ(seen, (std::set<int>{0, 1}));
  bool joined = false;
  for (const auto& e : doc["events"]) joined = joined || e["kind"] == "runner_joined";
  EXPECT_TRUE(joined) << doc["events"].dump();
  // The page itself, and its files, come from the manager.
  const auto page = get(admin("manager", "/dashboard"));
  EXPECT_EQ(page.status, 200u);
  EXPECT_NE(page.body.find("/dashboard/dashboard.js"), std::string::npos);
  EXPECT_EQ(get(admin("manager", "/dashboard/dashboard.js")).status, 200u);
  EXPECT_EQ(get(admin("manager", "/dashboard/nothing.js")).status, 404u);
  // Call rates come from the runners' metrics while calls go on.
  std::atomic<bool> stop{false};
  std::thread load([&] {
    int code = 0;
    for (int i = 0; i < 400 && !stop; ++i)
      clusterctl("call Greeter u" + std::to_string(i % 40) + " GreetVolatile '{\"name\":\"x\"}'",
                 code);
  });
  const bool rates = wait_for(
      [&] {
        doc = json::parse(get(admin("manager", "/api/cluster")).body, nullptr, false);
        if (doc.is_discarded()) return false;
        for (const auto& t : doc["entity_types"])
          if (t["name"] == "Greeter" && t["calls_per_s"].get<double>() > 0 &&
              t["p99_ms"].is_number())
            return true;
        return false;
      },
      20s);
  stop = true;
  load.join();
  EXPECT_TRUE(rates) << doc.dump();
  // Headless Chromium shows both runners and all 300 shards (when the browser is installed:
  // scripts/dev deps installs it).
  if (std::system("command -v chromium > /dev/null 2>&1") == 0) {
    const auto check =
        std::string("node ") + CLUSTER_SOURCE_DIR + "/tests/dashboard/dashboard-test.mjs --url " +
        admin("manager", "/dashboard") + " --expect-runners 2 --expect-shards 300 --screenshot " +
        (dir / "dashboard.png").string() + " > " + (dir / "chromium.log").string() + " 2>&1";
    EXPECT_EQ(std::system(check.c_str()), 0) << std::ifstream(dir / "chromium.log").rdbuf();
  }
}

TEST_F(observability, one_gateway_call_is_one_trace_across_gateway_proxy_and_runner) {
  otlp_receiver receiver;
  start_all({"--set", "trace.otlp_endpoint=" + receiver.url(), "--set", "trace.sample_ratio=1"});
  const std::string trace_id = "0af7651916cd43dd8448eb211c80319c";
  http::fetch_options options;
  options.headers.emplace_back("traceparent", "00-" + trace_id + "-b7ad6b7169203331-01");
  auto got = http::fetch_blocking(
      "http://127.0.0.1:" + std::to_string(gateway_port) + "/Greeter/Test/Greet",
      {.method = "POST",
       .body = R"({"name":"John"})",
       .content_type = "application/json",
       .headers = options.headers});
  ASSERT_TRUE(got) << got.error().message;
  ASSERT_EQ(got.value().status, 200u) << got.value().body;
  std::map<std::string, json> of_trace;  // service → its span of this trace
  ASSERT_TRUE(wait_for(
      [&] {
        of_trace.clear();
        for (const auto& [service, span] : receiver.spans())
          if (span.value("traceId", "") == trace_id) of_trace[service] = span;
        return of_trace.size() >= 3;
      },
      15s))
      << "services with spans of the trace: " << of_trace.size();
  ASSERT_TRUE(of_trace.count("cluster-gateway"));
  ASSERT_TRUE(of_trace.count("cluster-proxy"));
  ASSERT_TRUE(of_trace.count("cluster-runner"));
  // Each hop's parent is the hop before it; the gateway's is the caller's.
  EXPECT_EQ(of_trace["cluster-gateway"]["parentSpanId"], "b7ad6b7169203331");
  EXPECT_EQ(of_trace["cluster-proxy"]["parentSpanId"], of_trace["cluster-gateway"]["spanId"]);
  EXPECT_EQ(of_trace["cluster-runner"]["parentSpanId"], of_trace["cluster-proxy"]["spanId"]);
}

TEST_F(observability, the_admin_token_guards_everything_but_health_and_the_page) {
  admin_port["manager"] = free_port();
  start_manager({"--set", "manager.admin_port=" + std::to_string(admin_port["manager"]), "--set",
                 "manager.admin_token=s3cret"});
  ASSERT_TRUE(wait_for([&] { return get(admin("manager", "/healthz")).status == 200; }, 10s));
  EXPECT_EQ(get(admin("manager", "/readyz")).status, 200u);
  EXPECT_EQ(get(admin("manager", "/metrics")).status, 401u);
  EXPECT_EQ(get(admin("manager", "/api/cluster")).status, 401u);
  EXPECT_EQ(get(admin("manager", "/api/cluster"), "wrong").status, 401u);
  EXPECT_EQ(get(admin("manager", "/metrics"), "s3cret").status, 200u);
  EXPECT_EQ(get(admin("manager", "/metrics?token=s3cret")).status, 200u);
  EXPECT_EQ(get(admin("manager", "/dashboard")).status, 200u);
}

TEST_F(observability, json_logs_are_one_object_per_line) {
  start_manager({"--set", "log.format=json"});
  start_runner(1, {"--set", "log.format=json"});
  ASSERT_TRUE(ready(1));
  std::istringstream lines(log("runner-1"));
  std::string line;
  int objects = 0, runner_lines = 0;
  while (std::getline(lines, line)) {
    if (line.empty()) continue;
    const auto j = json::parse(line, nullptr, false);
    ASSERT_FALSE(j.is_discarded()) << line;
    // The runner's own lines, and its plugin hosts' (which log as it does).
    const std::string process = j.value("process", "");
    EXPECT_TRUE(process == "runner-1" || process.rfind("plugin ", 0) == 0) << line;
    runner_lines += process == "runner-1" ? 1 : 0;
    EXPECT_TRUE(j["time"].is_string() && j["level"].is_string() && j["message"].is_string())
        << line;
    ++objects;
  }
  EXPECT_GT(objects, 0);
  EXPECT_GT(runner_lines, 0);
}

}  // namespace
}  // namespace cluster::testing
