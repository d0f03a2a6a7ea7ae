#include "cluster_fixture.hpp"

#include <gtest/gtest.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "cluster/process/tool_credentials.hpp"

namespace cluster::testing {

bool run_until(asio::io_context& io, const std::function<bool()>& done, milliseconds timeout) {
  const auto deadline = steady_clock::now() + timeout;
  while (!done()) {
    if (steady_clock::now() >= deadline) return false;
    io.run_for(milliseconds(5));
    if (io.stopped()) io.restart();
  }
  return true;
}

request_msg make_request(const std::string& type, const std::string& id, const std::string& rpc,
                         const nlohmann::json& payload) {
  request_msg request;
  request.entity_type = type;
  request.entity_id = id;
  request.rpc = rpc;
  const auto packed = nlohmann::json::to_msgpack(payload);
  request.payload.assign(packed.begin(), packed.end());
  return request;
}

nlohmann::json reply_json(const reply_msg& reply) {
  try {
    return nlohmann::json::from_msgpack(reply.payload);
  } catch (const nlohmann::json::exception&) {
    return nlohmann::json::object();
  }
}

std::string test_plugin(const std::string& name) {
  return std::string(CLUSTER_TEST_PLUGIN_DIR) + "/lib" + name + ".so";
}

in_process_cluster::in_process_cluster(
    const std::function<void(proxy::proxy_config&)>& tweak_proxy) {
  spdlog::set_level(spdlog::level::warn);
  manager::manager_config manager_config;
  manager_config.port = 0;
  manager_ = std::make_unique<manager::manager>(io, manager_config,
                                                std::make_unique<memory_manager_store>());
  manager_->start();
  proxy::proxy_config proxy_config;
  proxy_config.port = 0;
  proxy_config.manager = manager_address();
  proxy_config.request_timeout = milliseconds(10000);
  if (tweak_proxy) tweak_proxy(proxy_config);
  proxy_ = std::make_unique<proxy::proxy>(io, proxy_config);
  proxy_->start();
}

in_process_cluster::~in_process_cluster() {
  if (client_) client_->close();
  proxy_->stop();
  for (auto& runner : runners_) runner->stop();
  manager_->stop();
  // Let running handlers finish (as the real process drains on SIGTERM), then let closes
  // and cancellations run before the objects go away.
  run_until(io, [this] {
    for (const auto* list : {&runners_, &stopped_runners_})
      for (const auto& runner : *list)
        if (!runner->stopped()) return false;
    return true;
  });
  run_until(
      io, [] { return false; }, milliseconds(100));
  runners_.clear();
  proxy_.reset();
  manager_.reset();
}

std::string in_process_cluster::manager_address() const {
  return "127.0.0.1:" + std::to_string(manager_->port());
}

std::string in_process_cluster::proxy_address() const {
  return "127.0.0.1:" + std::to_string(proxy_->port());
}

host::runner& in_process_cluster::add_runner(
    const std::function<void(host::runner_config&)>& tweak) {
  host::runner_config config;
  config.name = "runner-" + std::to_string(next_runner_++);
  config.port = 0;
  config.manager = manager_address();
  config.plugins = {CLUSTER_PLUGIN_DIR, test_plugin("probe_plugin")};
  if (tweak) tweak(config);
  runners_.push_back(std::make_unique<host::runner>(io, config));
  runners_.back()->start();
  return *runners_.back();
}

void in_process_cluster::stop_runner(std::size_t index) {
  runners_.at(index)->stop();
  // Its coroutines still hold `this`: keep the object until the cluster goes away.
  stopped_runners_.push_back(std::move(runners_.at(index)));
  runners_.erase(runners_.begin() + static_cast<std::ptrdiff_t>(index));
}

bool in_process_cluster::wait_until_balanced(std::size_t runners, milliseconds timeout) {
  return run_until(
      io,
      [&] {
        const auto snap = manager_->snapshot();
        if (snap.runners.size() != runners) return false;
        const auto* group = snap.find_group("default");
        if (group == nullptr) return false;
        // Moves between live runners are rate-limited: wait until they are all done.
        std::map<std::string, std::size_t> counts;
        for (const auto& owner : group->owners) {
          if (owner.empty()) return false;
          ++counts[owner];
        }
        if (counts.size() != runners) return false;
        const auto [fewest, most] =
            std::minmax_element(counts.begin(), counts.end(),
                                [](const auto& a, const auto& b) { return a.second < b.second; });
        if (most->second - fewest->second > 1) return false;
        if (proxy_->snapshot().version != snap.version) return false;
        std::size_t owned = 0;
        for (const auto& runner : runners_) {
          if (runner->owned_shards() != counts[runner->address()]) return false;
          owned += runner->held_shards();
        }
        return owned == group->owners.size();
      },
      timeout);
}

connection_ptr connect_client(asio::io_context& io, const std::string& address,
                              milliseconds timeout) {
  return connect_as(io, address, "admin", {}, timeout);
}

connection_ptr connect_as(asio::io_context& io, const std::string& address, const std::string& role,
                          connection::message_handler on_push, milliseconds timeout) {
  connection_ptr result;
  bool done = false;
  if (!on_push) on_push = [](const connection_ptr&, envelope&&) {};
  asio::co_spawn(
      io,
      [address, role, on_push, timeout, out = &result, finished = &done]() -> awaitable<void> {
        hello_msg hello{protocol_version, role, "test"};
        connection_limits limits;
        // Against real processes (process_cluster_test sets the folder): the role's own key.
        if (std::getenv("CLUSTER_SECURITY_CREDENTIALS_DIR")) {
          tool_credentials wanted;
          wanted.wanted = parse_role(role).value_or(cluster::role::client);
          auto security = load_tool_credentials(wanted);
          if (security) limits.security = security.value();
        }
        std::function<void()> on_close;
        auto connect =
            connect_to(*parse_host_port(address), hello, limits, timeout, on_push, on_close);
        auto connected = co_await std::move(connect);
        *out = connected ? connected.value() : nullptr;
        *finished = true;
      },
      asio::detached);
  run_until(
      io, [&] { return done; }, timeout + milliseconds(1000));
  return result;
}

connection_ptr in_process_cluster::connect(const std::string& address) {
  return connect_client(io, address);
}

reply_msg in_process_cluster::call(const request_msg& request, milliseconds timeout) {
  return call_all({request}, timeout).front();
}

std::vector<reply_msg> in_process_cluster::call_all(const std::vector<request_msg>& requests,
                                                    milliseconds timeout) {
  if (!client_ || !client_->is_open()) client_ = connect(proxy_address());
  std::vector<reply_msg> replies(requests.size(),
                                 reply_msg::failure(errc::unavailable, "no client connection"));
  if (!client_) return replies;
  std::size_t pending = requests.size();
  for (std::size_t i = 0; i < requests.size(); ++i) {
    client_->call(message_kind::request, requests[i], timeout,
                  [&replies, &pending, i](reply_msg&& reply) {
                    replies[i] = std::move(reply);
                    --pending;
                  });
  }
  EXPECT_TRUE(run_until(
      io, [&] { return pending == 0; }, timeout + milliseconds(1000)));
  return replies;
}

}  // namespace cluster::testing
