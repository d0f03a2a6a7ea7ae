#include "process_cluster.hpp"

#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <iostream>
#include <set>
#include <sstream>

#include "cluster/security/credentials_folder.hpp"

namespace cluster::testing {

using namespace std::chrono_literals;

namespace {
const std::string bin = CLUSTER_BIN_DIR;
int fixture_counter = 0;
}  // namespace

std::string test_pg_url() {
  const char* url = std::getenv("CLUSTER_TEST_PG_URL");
  return url ? url : "";
}

void process_cluster_test::SetUp() {
  const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
  dir = std::filesystem::temp_directory_path() /
        ("cluster-proc-" + std::to_string(::getpid()) + "-" + name);
  std::filesystem::create_directories(dir);
  prefix = "p" + std::to_string(::getpid()) + "_" + std::to_string(fixture_counter++);
  manager_port = free_port();
  proxy_port = free_port();
  for (int i = 0; i < 4; ++i) runner_ports.push_back(free_port());
  run_log = (dir / "runs.log").string();
  owner_log = (dir / "owners.log").string();
  ::setenv("CLUSTER_PROBE_RUN_LOG", run_log.c_str(), 1);
  ::setenv("CLUSTER_PROBE_OWNER_LOG", owner_log.c_str(), 1);
  // Every process and clusterctl of the test authenticates with these, as on `scripts/dev up`.
  credentials = (dir / "credentials").string();
  std::filesystem::remove_all(credentials);
  auto written = write_credentials_folder(credentials);
  ASSERT_TRUE(written.has_value()) << written.error().message;
  ::setenv("CLUSTER_SECURITY_CREDENTIALS_DIR", credentials.c_str(), 1);
}

void process_cluster_test::TearDown() {
  slots.clear();
  ended.clear();
  // In-process clusters later in this binary do not authenticate.
  ::unsetenv("CLUSTER_SECURITY_CREDENTIALS_DIR");
  if (!HasFailure() && !dir.empty()) std::filesystem::remove_all(dir);
}

std::vector<std::string> process_cluster_test::storage() const {
  if (!use_postgres) return {"--set", "cluster.storage=memory"};
  return {"--set", "cluster.storage=postgres",       "--set", "storage.url=" + pg_url,
          "--set", "storage.table_prefix=" + prefix, "--set", "storage.poll_interval_ms=200"};
}

child_process& process_cluster_test::start(const std::string& name, const std::string& program,
                                           std::vector<std::string> args) {
  auto log = (dir / (name + ".log")).string();
  if (auto it = slots.find(name); it != slots.end()) ended.push_back(std::move(it->second));
  slots[name] = std::make_unique<child_process>(bin + "/" + program, args, log);
  return *slots[name];
}

child_process& process_cluster_test::start_manager(std::vector<std::string> extra) {
  auto args = storage();
  args.insert(args.end(), {"--set", "manager.port=" + std::to_string(manager_port)});
  args.insert(args.end(), extra.begin(), extra.end());
  return start("manager", "cluster-manager", args);
}

child_process& process_cluster_test::start_runner(int n, std::vector<std::string> extra) {
  auto args = storage();
  args.insert(args.end(), {"--set", "runner.name=runner-" + std::to_string(n), "--set",
                           "runner.port=" + std::to_string(runner_ports.at(n - 1)), "--set",
                           "runner.manager=127.0.0.1:" + std::to_string(manager_port), "--set",
                           "runner.plugins=" + std::string(CLUSTER_PLUGIN_DIR) + "," +
                               CLUSTER_TEST_PLUGIN_DIR + "/libprobe_plugin.so"});
  args.insert(args.end(), extra.begin(), extra.end());
  return start("runner-" + std::to_string(n), "cluster-runner", args);
}

child_process& process_cluster_test::start_proxy(std::vector<std::string> extra) {
  std::vector<std::string> args{"--set", "proxy.port=" + std::to_string(proxy_port),
                                "--set", "proxy.manager=127.0.0.1:" + std::to_string(manager_port),
                                "--set", "proxy.request_timeout_ms=30000"};
  args.insert(args.end(), extra.begin(), extra.end());
  return start("proxy", "cluster-proxy", args);
}

std::optional<int> process_cluster_test::end(const std::string& name, int signal,
                                             std::chrono::milliseconds timeout) {
  auto it = slots.find(name);
  if (it == slots.end()) return std::nullopt;
  auto status = it->second->stop(signal, timeout);
  ended.push_back(std::move(it->second));
  slots.erase(it);
  return status;
}

nlohmann::json process_cluster_test::status() {
  int code = 0;
  auto out = run_command(bin + "/clusterctl --manager 127.0.0.1:" + std::to_string(manager_port) +
                             " status --json 2>/dev/null",
                         code);
  return code == 0 ? nlohmann::json::parse(out, nullptr, false) : nlohmann::json();
}

bool process_cluster_test::wait_for(const std::function<bool()>& done,
                                    std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(50ms);
  }
  return true;
}

bool process_cluster_test::ready(std::size_t runners) {
  std::string output;
  const int code = clusterctl_wait(
      "runners " + std::to_string(runners) + " --exactly shards --balanced", 30s, output);
  if (code != 0) std::cerr << "clusterctl wait exited with " << code << ": " << output;
  return code == 0;
}

int process_cluster_test::clusterctl_wait(const std::string& conditions,
                                          std::chrono::seconds timeout, std::string& output) {
  int code = 0;
  // Moves between live runners are rate-limited, so a join finishes a little after the
  // registration: look often.
  output = run_command(bin + "/clusterctl --manager 127.0.0.1:" + std::to_string(manager_port) +
                           " --proxy 127.0.0.1:" + std::to_string(proxy_port) +
                           " --timeout-ms 5000 wait --interval-ms 50 --timeout-s " +
                           std::to_string(timeout.count()) + " " + conditions + " 2>&1",
                       code);
  return code;
}

std::string process_cluster_test::busiest_runner() {
  auto s = status();
  std::string busiest;
  int most = -1;
  if (s.is_object())
    for (const auto& r : s["runners"])
      if (r["shards"].get<int>() > most) {
        most = r["shards"].get<int>();
        busiest = r["name"].get<std::string>();
      }
  return busiest;
}

std::string process_cluster_test::clusterctl(const std::string& args, int& code) {
  return run_command(bin + "/clusterctl --proxy 127.0.0.1:" + std::to_string(proxy_port) +
                         " --timeout-ms 30000 " + args + " 2>&1",
                     code);
}

std::int64_t time_until_all_answer(std::uint16_t proxy_port, int entities,
                                   std::chrono::milliseconds limit,
                                   const std::string& persisted_tag) {
  asio::io_context io;
  const auto start = steady_clock::now();
  connection_ptr conn;
  std::set<std::pair<int, bool>> pending;  // (entity, persisted)
  for (int i = 0; i < entities; ++i) {
    pending.insert({i, false});
    if (!persisted_tag.empty()) pending.insert({i, true});
  }
  std::size_t outstanding = 0;
  while (!pending.empty() && steady_clock::now() - start < limit) {
    if (!conn || !conn->is_open()) {
      conn = connect_client(io, "127.0.0.1:" + std::to_string(proxy_port), milliseconds(1000));
      if (!conn) continue;
    }
    // One round: every call still unanswered is sent again with a short deadline.
    for (const auto& [i, persisted] : pending) {
      const std::string id = "spread-" + std::to_string(i);
      auto request =
          persisted ? make_request("Probe", id, "Append", {{"sender", persisted_tag}, {"value", i}})
                    : make_request("Probe", id, "Echo", {{"text", "x"}});
      if (persisted) request.primary_key = persisted_tag + "-" + std::to_string(i);
      request.timeout_ms = persisted ? 600 : 250;
      ++outstanding;
      conn->call(message_kind::request, request, milliseconds(persisted ? 700 : 300),
                 [&, key = std::make_pair(i, persisted)](reply_msg&& reply) {
                   --outstanding;
                   if (reply.ok()) pending.erase(key);
                 });
    }
    run_until(
        io, [&] { return outstanding == 0; }, milliseconds(2000));
  }
  if (conn) conn->close();
  run_until(
      io, [] { return false; }, milliseconds(20));
  return std::chrono::duration_cast<milliseconds>(steady_clock::now() - start).count();
}

std::size_t load_generator::result::failed() const {
  std::size_t total = 0;
  for (const auto& [what, count] : failures) total += count;
  return total;
}

load_generator::load_generator(std::uint16_t proxy_port, options opts)
    : proxy_port_(proxy_port), options_(opts), thread_([this] { run(); }) {}

load_generator::~load_generator() {
  stopping_ = true;
  if (thread_.joinable()) thread_.join();
}

bool load_generator::wait_answered(std::size_t n, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (answered_ < n) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(10ms);
  }
  return true;
}

load_generator::result load_generator::stop() {
  stopping_ = true;
  if (thread_.joinable()) thread_.join();
  std::lock_guard lock(mutex_);
  return result_;
}

void load_generator::run() {
  asio::io_context io;
  std::vector<connection_ptr> conns(static_cast<std::size_t>(options_.clients));
  for (auto& slot : conns) slot = connect_client(io, "127.0.0.1:" + std::to_string(proxy_port_));
  std::size_t next = 0, outstanding = 0;
  std::function<void(std::size_t)> send_next = [&](std::size_t c) {
    if (stopping_ || !conns[c]) return;
    const std::size_t n = next++;
    const bool persisted = options_.persisted && (!options_.volatile_calls || n % 2 == 0);
    const std::string entity =
        "load-" + std::to_string(n % static_cast<std::size_t>(options_.entities));
    auto request = persisted
                       ? make_request("Probe", entity, "Append", {{"sender", "c"}, {"value", n}})
                       : make_request("Probe", entity, "Echo", {{"text", "x"}});
    if (persisted) request.primary_key = "key-" + std::to_string(n);
    request.timeout_ms = options_.timeout_ms;
    ++outstanding;
    {
      std::lock_guard lock(mutex_);
      ++result_.sent;
    }
    conns[c]->call(message_kind::request, request, milliseconds(options_.timeout_ms + 1000),
                   [&, c, persisted](reply_msg&& reply) {
                     --outstanding;
                     {
                       std::lock_guard lock(mutex_);
                       if (reply.ok()) {
                         ++result_.ok;
                         if (persisted) ++result_.persisted_ok;
                       } else {
                         ++result_.failures[std::string(persisted ? "Append " : "Echo ") +
                                            reply.error + ": " + reply.message];
                       }
                     }
                     ++answered_;
                     send_next(c);
                   });
  };
  for (std::size_t c = 0; c < conns.size(); ++c)
    for (int w = 0; w < options_.window; ++w) send_next(c);
  run_until(
      io, [&] { return stopping_.load(); }, std::chrono::hours(1));
  run_until(
      io, [&] { return outstanding == 0; }, milliseconds(options_.timeout_ms + 5000));
  for (auto& conn : conns)
    if (conn) conn->close();
  run_until(
      io, [] { return false; }, milliseconds(50));
}

std::vector<std::string> overlapping_owners(const std::string& owner_log) {
  struct span {
    std::int64_t first = 0, last = 0;
  };
  // entity → "pid/activation" → span
  std::map<std::string, std::map<std::string, span>> runs;
  std::ifstream log(owner_log);
  for (std::string line; std::getline(log, line);) {
    std::istringstream fields(line);
    std::string entity, pid, activation;
    std::int64_t at = 0;
    if (!(fields >> entity >> pid >> activation >> at)) continue;
    auto [it, inserted] = runs[entity].try_emplace(pid + "/" + activation, span{at, at});
    if (!inserted) {
      it->second.first = std::min(it->second.first, at);
      it->second.last = std::max(it->second.last, at);
    }
  }
  std::vector<std::string> problems;
  for (const auto& [entity, owners] : runs)
    for (auto a = owners.begin(); a != owners.end(); ++a)
      for (auto b = std::next(a); b != owners.end(); ++b)
        if (a->second.first <= b->second.last && b->second.first <= a->second.last)
          problems.push_back("entity " + entity + " ran in " + a->first + " and " + b->first +
                             " at overlapping times");
  return problems;
}

}  // namespace cluster::testing
