// clusterctl: one call through a proxy, or the manager's view of the cluster.
//
//   clusterctl [--proxy H:P] [--manager H:P] [--timeout-ms N] call [--key K] [--deliver-at-ms T]
//              <EntityType> <entityId> <Rpc> '<json>'
//   clusterctl [--manager H:P] [--proxy H:P] status [--json]

#include <spdlog/spdlog.h>

#include <iostream>
#include <nlohmann/json.hpp>

#include "cluster/net/connection.hpp"

namespace {

using namespace cluster;
using json = nlohmann::json;

struct options {
  std::string proxy = "127.0.0.1:3333";
  std::string manager = "127.0.0.1:8080";
  milliseconds timeout{10000};
  std::vector<std::string> args;  // command and its arguments
};

int usage(int code) {
  (code == 0 ? std::cout : std::cerr)
      << "usage:\n"
         "  clusterctl [--proxy HOST:PORT] [--timeout-ms N] call [--key K] [--deliver-at-ms T]\n"
         "             <EntityType> <entityId> <Rpc> '<json>'\n"
         "  clusterctl [--manager HOST:PORT] [--proxy HOST:PORT] status [--json]\n"
         "defaults: --proxy 127.0.0.1:3333 --manager 127.0.0.1:8080 (or CLUSTER_PROXY_ADDRESS,\n"
         "CLUSTER_MANAGER_ADDRESS)\n";
  return code;
}

int fail(const std::string& name, const std::string& message) {
  std::cerr << "error: " << name << ": " << message << "\n";
  return 1;
}

// One round trip on a fresh connection; the reply or a failure reply.
reply_msg round_trip(const std::string& address, message_kind kind, const request_msg* request,
                     milliseconds timeout) {
  asio::io_context io(1);
  reply_msg result = reply_msg::failure(errc::unavailable, "no reply");
  auto target = parse_host_port(address);
  if (!target) return reply_msg::failure(errc::invalid_request, "bad address '" + address + "'");
  asio::co_spawn(
      io,
      [target = *target, kind, request, timeout, out = &result]() -> awaitable<void> {
        // GCC 12 destroys temporaries of a co_await full-expression twice: build first.
        hello_msg hello{protocol_version, "client", "clusterctl"};
        const connection_limits limits;
        connection::message_handler ignore = [](const connection_ptr&, envelope&&) {};
        std::function<void()> on_close;
        auto connect = connect_to(target, hello, limits, timeout, ignore, on_close);
        auto connected = co_await std::move(connect);
        if (!connected.conn) {
          *out = reply_msg::failure(errc::unavailable, connected.error);
          co_return;
        }
        if (request != nullptr) {
          auto call = connected.conn->async_call(kind, *request, timeout + milliseconds(500));
          *out = co_await std::move(call);
        } else {
          const empty_msg no_fields;
          auto call = connected.conn->async_call(kind, no_fields, timeout);
          *out = co_await std::move(call);
        }
        connected.conn->close();
      },
      asio::detached);
  io.run();
  return result;
}

int call(const options& opts, std::vector<std::string> args) {
  request_msg request;
  while (!args.empty() && args.front().rfind("--", 0) == 0) {
    if (args.size() < 2) return usage(2);
    if (args[0] == "--key") {
      request.primary_key = args[1];
    } else if (args[0] == "--deliver-at-ms") {
      request.deliver_at_ms = std::stoll(args[1]);
    } else {
      return usage(2);
    }
    args.erase(args.begin(), args.begin() + 2);
  }
  if (args.size() != 4) return usage(2);
  request.entity_type = args[0];
  request.entity_id = args[1];
  request.rpc = args[2];
  json body;
  try {
    body = json::parse(args[3]);
  } catch (const json::parse_error& e) {
    return fail("InvalidJson", e.what());
  }
  const auto packed = json::to_msgpack(body);
  request.payload.assign(packed.begin(), packed.end());
  request.timeout_ms = static_cast<std::uint32_t>(opts.timeout.count());
  const auto reply = round_trip(opts.proxy, message_kind::request, &request, opts.timeout);
  if (!reply.ok()) return fail(reply.error, reply.message);
  try {
    std::cout << json::from_msgpack(reply.payload).dump() << "\n";
  } catch (const json::exception& e) {
    return fail("BadReply", std::string("reply is not MessagePack: ") + e.what());
  }
  return 0;
}

int status(const options& opts, const std::vector<std::string>& args) {
  const bool as_json = !args.empty() && args[0] == "--json";
  const auto reply = round_trip(opts.manager, message_kind::get_status, nullptr, opts.timeout);
  if (!reply.ok()) return fail(reply.error, reply.message);
  auto snapshot = unpack_bytes<assignment_snapshot>(reply.payload);
  if (!snapshot) return fail("BadReply", "status reply does not decode");
  std::size_t unassigned = 0;
  for (const auto& group : snapshot->groups)
    for (const auto& owner : group.owners) unassigned += owner.empty() ? 1 : 0;
  json out = {
      {"storage", snapshot->storage},   {"manager", opts.manager},  {"proxy", opts.proxy},
      {"version", snapshot->version},   {"runners", json::array()}, {"groups", json::array()},
      {"unassigned_shards", unassigned}};
  for (const auto& runner : snapshot->runners)
    out["runners"].push_back({{"name", runner.name},
                              {"address", runner.address},
                              {"shards", runner.shards},
                              {"healthy", runner.healthy}});
  for (const auto& group : snapshot->groups)
    out["groups"].push_back({{"name", group.group}, {"shards", group.shards}});
  if (as_json) {
    std::cout << out.dump() << "\n";
    return 0;
  }
  std::cout << "storage " << snapshot->storage << ", manager " << opts.manager << ", version "
            << snapshot->version << ", unassigned shards " << unassigned << "\n";
  for (const auto& runner : snapshot->runners)
    std::cout << "  " << runner.name << "  " << runner.address << "  shards " << runner.shards
              << (runner.healthy ? "  healthy" : "  UNHEALTHY") << "\n";
  for (const auto& type : snapshot->entity_types) {
    std::cout << "  entity " << type.name << " (group " << type.group << "):";
    for (const auto& rpc : type.rpcs) std::cout << " " << rpc.name << (rpc.persisted ? "*" : "");
    std::cout << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::err);
  options opts;
  if (const char* proxy = std::getenv("CLUSTER_PROXY_ADDRESS")) opts.proxy = proxy;
  if (const char* manager = std::getenv("CLUSTER_MANAGER_ADDRESS")) opts.manager = manager;
  int i = 1;
  try {
    for (; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg == "--help" || arg == "-h") return usage(0);
      if (arg.rfind("--", 0) != 0) break;
      if (i + 1 >= argc) return usage(2);
      if (arg == "--proxy") {
        opts.proxy = argv[++i];
      } else if (arg == "--manager") {
        opts.manager = argv[++i];
      } else if (arg == "--timeout-ms") {
        opts.timeout = milliseconds(std::stoll(argv[++i]));
      } else {
        return usage(2);
      }
    }
    if (i >= argc) return usage(2);
    const std::string command = argv[i];
    std::vector<std::string> args(argv + i + 1, argv + argc);
    if (command == "call") return call(opts, std::move(args));
    if (command == "status") return status(opts, args);
    return usage(2);
  } catch (const std::exception& e) {
    return fail("InvalidArgument", e.what());
  }
}
