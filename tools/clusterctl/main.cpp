// clusterctl: one call through a proxy, the manager's view of the cluster, or a bounded wait
// until the cluster (or a gateway, or a call) is ready.
//
//   clusterctl [--proxy H:P] [--manager H:P] [--timeout-ms N] call [--key K] [--deliver-at-ms T]
//              [--stream | --discard] <EntityType> <entityId> <Rpc> '<json>'   (Ctrl-C: interrupt)
//   clusterctl [--manager H:P] [--proxy H:P] status [--json]
//   clusterctl [--manager H:P] dead-letters list [--json] | replay ID | drop ID   (admin)
//   clusterctl [--manager H:P] runners unregister ADDRESS                     (admin)
//   clusterctl [--manager H:P] plugin push FILE (admin) | list [--json] | rm NAME (admin)
//   clusterctl keys init DIR | keys public KEYFILE
//   Credentials: [--key-file F] [--trust-file F] [--tls on|off], else the environment, SST
//   links or ./.local/credentials (cluster/process/tool_credentials.hpp).
//   clusterctl [...] wait [--timeout-s N] [--interval-ms N] [--watch [LABEL=]PID]... CONDITION...
//       CONDITION: manager | runners N [--exactly] | shards [--balanced] | runner NAME
//                | gateway URL | call [--key K] <EntityType> <entityId> <Rpc> '<json>'
//
// Exit codes: 0 success (or every condition met), 1 failure (or the wait's deadline passed;
// the last observed state goes to stderr), 2 bad command line.

#include <spdlog/spdlog.h>
#include <sys/wait.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "cluster/launch/launch.hpp"
#include "cluster/net/connection.hpp"
#include "cluster/plugin_abi.h"
#include "cluster/process/config.hpp"
#include "cluster/process/defaults.hpp"
#include "cluster/process/tool_credentials.hpp"
#include "cluster/protocol/codec.hpp"
#include "cluster/protocol/cron_status.hpp"
#include "cluster/security/credentials_folder.hpp"
#include "cluster/security/digest.hpp"
#include "top.hpp"

namespace {

using namespace cluster;
using json = nlohmann::json;
namespace beast = boost::beast;
namespace http = beast::http;

/// One connection as `role` that ignores unsolicited frames: what every verb opens.
awaitable<result<connection_ptr>> connect_as(host_port target, std::string role,
                                             connection_limits limits, milliseconds timeout) {
  // GCC 12 destroys temporaries of a co_await full-expression twice: build first.
  hello_msg hello{protocol_version, std::move(role), "clusterctl"};
  connection::message_handler ignore = [](const connection_ptr&, envelope&&) {};
  std::function<void()> on_close;
  auto connect = connect_to(target, hello, limits, timeout, ignore, on_close);
  co_return co_await std::move(connect);
}

struct options {
  std::string proxy = defaults::proxy_address();
  std::string manager = defaults::manager_address();
  milliseconds timeout{10000};
  tool_credentials credentials;
};

int fail(const std::string& name, const std::string& message) {
  std::cerr << "error: " << name << ": " << message << "\n";
  return 1;
}

// One round trip on a fresh connection; the reply or a failure reply.
// `wanted`: the role whose key to use (admin for the verbs that change the cluster).
template <class Fields>
reply_msg round_trip(const options& opts, const std::string& address, role wanted,
                     message_kind kind, const Fields& fields, milliseconds timeout) {
  asio::io_context io(1);
  reply_msg result = reply_msg::failure(errc::unavailable, "no reply");
  auto target = parse_host_port(address);
  if (!target) return reply_msg::failure(errc::invalid_request, "bad address '" + address + "'");
  auto request = opts.credentials;
  request.wanted = wanted;
  auto security = load_tool_credentials(request);
  if (!security)
    return reply_msg::failure(errc::invalid_request, "credentials: " + security.error().message);
  connection_limits limits;
  limits.security = security.value();
  asio::co_spawn(
      io,
      [target = *target, kind, fields = &fields, timeout, out = &result, limits,
       claimed = std::string(to_string(wanted))]() -> awaitable<void> {
        // With authentication the key's role replaces the claimed one.
        auto connect = connect_as(target, claimed, limits, timeout);
        auto connected = co_await std::move(connect);
        if (!connected) {
          // Keep the refusal's code (Unauthorized, Forbidden); unreachable is Unavailable.
          *out = reply_msg::failure(connected.error().code, connected.error().message);
          co_return;
        }
        const connection_ptr conn = connected.value();
        // A request's own timeout travels with it: leave the proxy time to answer it.
        const auto wait = kind == message_kind::request ? timeout + milliseconds(500) : timeout;
        auto call = conn->async_call(kind, *fields, wait);
        *out = co_await std::move(call);
        conn->close();
      },
      asio::detached);
  io.run();
  return result;
}

std::string describe(const reply_msg& reply) { return reply.error + ": " + reply.message; }

// --- keys -------------------------------------------------------------------------------

int keys_init_command(const std::string& dir) {
  if (auto written = write_credentials_folder(dir); !written)
    return fail("keys init", written.error().message);
  std::cout << "wrote " << dir << "/{manager,runner,proxy,client,admin}.key and " << dir
            << "/trust\n";
  return 0;
}

int keys_public_command(const std::string& file) {
  auto key = signing_key::load_file(file);
  if (!key) return fail("keys public", key.error().message);
  std::cout << to_base64(key.value().public_half()) << "\n";
  return 0;
}

// --- call -------------------------------------------------------------------------------

struct call_args {
  std::optional<std::string> key;
  std::optional<std::int64_t> deliver_at_ms;
  std::string type, id, rpc, body;
};

result<request_msg> entity_request(const call_args& args, milliseconds timeout) {
  request_msg request;
  request.entity_type = args.type;
  request.entity_id = args.id;
  request.rpc = args.rpc;
  request.primary_key = args.key;
  request.deliver_at_ms = args.deliver_at_ms;
  json body = json::parse(args.body, nullptr, false);
  if (body.is_discarded())
    return failure{errc::invalid_request, "InvalidJson: '" + args.body + "' is not JSON"};
  const auto packed = json::to_msgpack(body);
  request.payload.assign(packed.begin(), packed.end());
  request.timeout_ms = static_cast<std::uint32_t>(timeout.count());
  return request;
}

// MessagePack as one line of JSON (an empty payload is null).
result<std::string> payload_json(const bytes& payload) {
  if (payload.empty()) return std::string("null");
  try {
    return json::from_msgpack(payload).dump();
  } catch (const json::exception& e) {
    return failure{errc::bad_payload,
                   std::string("BadReply: reply is not MessagePack: ") + e.what()};
  }
}

// The reply as one line of JSON, or a failure whose message is "<ErrorName>: <detail>".
result<std::string> call_entity(const options& opts, const call_args& args, milliseconds timeout) {
  auto request = entity_request(args, timeout);
  if (!request) return std::move(request).error();
  const auto reply =
      round_trip(opts, opts.proxy, role::client, message_kind::request, request.value(), timeout);
  if (!reply.ok()) return failure{reply.code, describe(reply)};
  return payload_json(reply.payload);
}

// Prints a failure of call_entity as "error: <ErrorName>: <detail>".
int print_failure(const failure& f) {
  std::cerr << "error: " << f.message << "\n";
  return 1;
}

// `call` itself: a plain, streaming (--stream) or discarded (--discard) call. A streaming
// call prints each item as one line of JSON as it arrives and acks it once printed (so a
// slow terminal or pipe slows the producer), then the final reply as {"final": ...}.
// SIGINT sends an interrupt and waits up to `grace` for the request's own reply
// (Cancelled, usually); a second SIGINT stops waiting.
class interruptible_call {
 public:
  static constexpr milliseconds grace{2000};

  interruptible_call(const options& opts, host_port target, connection_limits limits,
                     request_msg request, bool stream)
      : opts_(opts),
        target_(std::move(target)),
        limits_(std::move(limits)),
        request_(std::move(request)),
        stream_(stream) {}

  /// The final reply (or why there is none); items went to stdout meanwhile.
  reply_msg run() {
    signals_.async_wait([this](const error_code& ec, int) { on_signal(ec); });
    asio::co_spawn(io_, start(), asio::detached);
    io_.run();
    return reply_.value_or(reply_msg::failure(errc::unavailable, "no reply"));
  }
  int item_failures() const { return item_failures_; }

 private:
  awaitable<void> start() {
    auto connect = connect_as(target_, "client", limits_, opts_.timeout);
    auto connected = co_await std::move(connect);
    if (!connected) {
      finish(reply_msg::failure(connected.error().code, connected.error().message));
      co_return;
    }
    if (reply_) co_return;  // interrupted while connecting
    conn_ = connected.value();
    // The request's own timeout travels with it: leave the proxy time to answer it.
    const auto wait = opts_.timeout + milliseconds(500);
    auto done = [this](reply_msg&& reply) { finish(std::move(reply)); };
    if (!stream_) {
      id_ = conn_->call(message_kind::request, request_, wait, done);
      co_return;
    }
    id_ = conn_->call_stream(
        message_kind::request, request_, window, wait,
        [this](std::vector<bytes>&& items) { print_items(items); }, done);
  }

  void print_items(const std::vector<bytes>& items) {
    for (const auto& item : items) {
      auto line = payload_json(item);
      if (line)
        std::cout << line.value() << "\n";
      else
        ++item_failures_;
    }
    std::cout.flush();
    consumed_ += static_cast<std::uint32_t>(items.size());
    if (consumed_ >= window / 2 && conn_) {
      conn_->ack(id_, consumed_);
      consumed_ = 0;
    }
  }

  void on_signal(const error_code& ec) {
    if (ec || reply_) return;
    if (interrupted_ || !conn_) {
      finish(reply_msg::failure(errc::cancelled, "interrupted; no reply waited for"));
      return;
    }
    interrupted_ = true;
    conn_->interrupt(id_);
    grace_timer_.expires_after(grace);
    grace_timer_.async_wait([this](const error_code& timer_ec) {
      if (!timer_ec && !reply_)
        finish(reply_msg::failure(errc::cancelled, "interrupted; no reply within " +
                                                       std::to_string(grace.count()) + " ms"));
    });
    signals_.async_wait([this](const error_code& next, int) { on_signal(next); });
  }

  void finish(reply_msg&& reply) {
    if (reply_) return;
    reply_ = std::move(reply);
    error_code ignored;
    signals_.cancel(ignored);
    grace_timer_.cancel();
    if (conn_) conn_->close();
  }

  static constexpr std::uint32_t window = default_stream_credit;
  const options& opts_;
  host_port target_;
  connection_limits limits_;
  request_msg request_;
  bool stream_;
  asio::io_context io_{1};
  asio::signal_set signals_{io_, SIGINT};
  asio::steady_timer grace_timer_{io_};
  std::optional<reply_msg> reply_;
  connection_ptr conn_;
  std::uint64_t id_ = 0;
  std::uint32_t consumed_ = 0;
  bool interrupted_ = false;
  int item_failures_ = 0;
};

int call_command(const options& opts, const call_args& args, bool stream, bool discard) {
  auto built = entity_request(args, opts.timeout);
  if (!built) return print_failure(built.error());
  request_msg request = std::move(built).value();
  request.discard = discard;
  auto target = parse_host_port(opts.proxy);
  if (!target) return fail("InvalidRequest", "bad address '" + opts.proxy + "'");
  auto wanted = opts.credentials;
  wanted.wanted = role::client;
  auto security = load_tool_credentials(wanted);
  if (!security) return fail("InvalidRequest", "credentials: " + security.error().message);
  connection_limits limits;
  limits.security = security.value();
  interruptible_call call(opts, *target, limits, std::move(request), stream);
  const reply_msg reply = call.run();
  if (!reply.ok()) return fail(reply.error, reply.message);
  if (call.item_failures() > 0)
    return fail("BadReply", std::to_string(call.item_failures()) + " items were not MessagePack");
  if (discard) {
    std::cout << "accepted\n";
    return 0;
  }
  auto text = payload_json(reply.payload);
  if (!text) return print_failure(text.error());
  std::cout << (stream ? "{\"final\":" + text.value() + "}" : text.value()) << "\n";
  return 0;
}

// --- status -----------------------------------------------------------------------------

result<assignment_snapshot> fetch_status(const options& opts, milliseconds timeout) {
  const auto reply =
      round_trip(opts, opts.manager, role::client, message_kind::get_status, empty_msg{}, timeout);
  if (!reply.ok()) return failure{reply.code, describe(reply)};
  auto snapshot = unpack_bytes<assignment_snapshot>(reply.payload);
  if (!snapshot) return failure{errc::bad_payload, "BadReply: status reply does not decode"};
  return snapshot;
}

std::size_t unassigned_shards(const assignment_snapshot& snapshot) {
  std::size_t unassigned = 0;
  for (const auto& group : snapshot.groups)
    for (const auto& owner : group.owners) unassigned += owner.empty() ? 1 : 0;
  return unassigned;
}

json plugin_json(const plugin_info& plugin) {
  json out = {{"name", plugin.name},     {"version", plugin.version},
              {"sha256", plugin.sha256}, {"file", plugin.file},
              {"state", plugin.state},   {"entity_types", plugin.entity_types}};
  if (!plugin.error.empty()) out["error"] = plugin.error;
  return out;
}

// "greeter 1.2.0 loaded [Greeter]", "broken 0.1.0 failed: why".
std::string plugin_text(const plugin_info& plugin) {
  std::string text = plugin.name + " " + plugin.version + " " + plugin.state;
  if (!plugin.error.empty()) text += ": " + plugin.error;
  if (!plugin.entity_types.empty()) {
    text += " [";
    for (std::size_t i = 0; i < plugin.entity_types.size(); ++i)
      text += (i ? ", " : "") + plugin.entity_types[i];
    text += "]";
  }
  return text;
}

int status(const options& opts, bool as_json) {
  auto fetched = fetch_status(opts, opts.timeout);
  if (!fetched) return print_failure(fetched.error());
  const auto& snapshot = fetched.value();
  const std::size_t unassigned = unassigned_shards(snapshot);
  json out = {
      {"storage", snapshot.storage},    {"manager", opts.manager},  {"proxy", opts.proxy},
      {"version", snapshot.version},    {"runners", json::array()}, {"groups", json::array()},
      {"unassigned_shards", unassigned}};
  for (const auto& runner : snapshot.runners) {
    json plugins = json::array();
    for (const auto& plugin : runner.plugins) plugins.push_back(plugin_json(plugin));
    out["runners"].push_back({{"name", runner.name},
                              {"address", runner.address},
                              {"shards", runner.shards},
                              {"healthy", runner.healthy},
                              {"plugins", std::move(plugins)}});
  }
  for (const auto& group : snapshot.groups)
    out["groups"].push_back({{"name", group.group}, {"shards", group.shards}});
  out["entity_types"] = json::array();
  for (const auto& type : snapshot.entity_types) {
    json rpcs = json::array();
    for (const auto& rpc : type.rpcs)
      rpcs.push_back(
          {{"name", rpc.name}, {"persisted", rpc.persisted}, {"read_only", rpc.read_only}});
    const auto& o = type.options;
    out["entity_types"].push_back({{"name", type.name},
                                   {"group", type.group},
                                   {"rpcs", std::move(rpcs)},
                                   {"options",
                                    {{"keep_alive", (o.flags & CLUSTER_ENTITY_KEEP_ALIVE) != 0},
                                     {"stateful", (o.flags & CLUSTER_ENTITY_STATEFUL) != 0},
                                     {"singleton", (o.flags & CLUSTER_ENTITY_SINGLETON) != 0},
                                     {"cron", (o.flags & CLUSTER_ENTITY_CRON) != 0},
                                     {"mailbox_capacity", o.mailbox_capacity},
                                     {"max_idle_ms", o.max_idle_ms},
                                     {"concurrency", o.concurrency}}}});
  }
  if (as_json) {
    std::cout << out.dump() << "\n";
    return 0;
  }
  std::cout << "storage " << snapshot.storage << ", manager " << opts.manager << ", version "
            << snapshot.version << ", unassigned shards " << unassigned << "\n";
  for (const auto& runner : snapshot.runners) {
    std::cout << "  " << runner.name << "  " << runner.address << "  shards " << runner.shards
              << (runner.healthy ? "  healthy" : "  UNHEALTHY") << "\n";
    for (const auto& plugin : runner.plugins)
      std::cout << "    plugin " << plugin_text(plugin) << "\n";
  }
  for (const auto& type : snapshot.entity_types) {
    std::cout << "  entity " << type.name << " (group " << type.group << "):";
    for (const auto& rpc : type.rpcs)
      std::cout << " " << rpc.name << (rpc.persisted ? "*" : "") << (rpc.read_only ? "(ro)" : "");
    // The options as the runner that registered the type runs it (its config applied).
    const auto& o = type.options;
    std::cout << "  [mailbox " << o.mailbox_capacity << ", idle " << o.max_idle_ms
              << " ms, concurrency " << o.concurrency
              << ((o.flags & CLUSTER_ENTITY_KEEP_ALIVE) != 0 ? ", keep-alive" : "") << "]\n";
  }
  return 0;
}

// --- cron -------------------------------------------------------------------------------

std::string unix_ms_text(std::int64_t ms) {
  const std::time_t seconds = static_cast<std::time_t>(ms / 1000);
  std::tm utc{};
  gmtime_r(&seconds, &utc);
  char text[32];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &utc);
  return text;
}

constexpr std::uint32_t singleton_flag = 4;  // CLUSTER_ENTITY_SINGLETON of <cluster/plugin_abi.h>
constexpr std::uint32_t cron_flag = 8;       // CLUSTER_ENTITY_CRON of <cluster/plugin_abi.h>

// What the runner serving job `type` (its entity `id`: "cron" or "singleton") says of it.
result<cron_status_msg> job_status(const options& opts, const entity_type_info& type,
                                   const std::string& id) {
  request_msg request;
  request.entity_type = type.name;
  request.entity_id = id;
  request.rpc = std::string(cron_status_rpc);
  request.payload = {0x80};  // {}
  request.timeout_ms = static_cast<std::uint32_t>(opts.timeout.count());
  const auto reply =
      round_trip(opts, opts.proxy, role::client, message_kind::request, request, opts.timeout);
  if (!reply.ok()) return failure{reply.code, describe(reply)};
  return unpack_bytes<cron_status_msg>(reply.payload);
}

// Each cron job and singleton of the cluster's catalog, as the runner serving it tells
// (through the proxy).
int cron_list(const options& opts, bool as_json) {
  auto fetched = fetch_status(opts, opts.timeout);
  if (!fetched) return print_failure(fetched.error());
  json out = json::array();
  for (const auto& type : fetched.value().entity_types) {
    if ((type.options.flags & cron_flag) == 0) continue;
    json job = {{"name", type.name},
                {"kind", "cron"},
                {"group", type.group},
                {"schedule", type.options.cron_schedule},
                {"missed", type.options.cron_missed == 1 ? "run_once" : "skip"}};
    if (auto status = job_status(opts, type, "cron")) {
      const auto& s = status.value();
      job["runner"] = s.runner;
      job["last_run"] = s.last_scheduled_ms == 0 ? json(nullptr)
                                                 : json{{"scheduled_ms", s.last_scheduled_ms},
                                                        {"fired_ms", s.last_fired_ms},
                                                        {"outcome", s.last_outcome}};
      job["next_run_ms"] = s.next_ms == 0 ? json(nullptr) : json(s.next_ms);
    } else {
      job["error"] = status.error().message;
    }
    out.push_back(std::move(job));
  }
  for (const auto& type : fetched.value().entity_types) {
    if ((type.options.flags & singleton_flag) == 0) continue;
    json job = {{"name", type.name}, {"kind", "singleton"}, {"group", type.group}};
    if (auto status = job_status(opts, type, "singleton")) {
      const auto& s = status.value();
      job["runner"] = s.runner;
      job["running"] = s.running;
      job["started_ms"] = s.started_ms == 0 ? json(nullptr) : json(s.started_ms);
      job["starts"] = s.starts;
      job["last_outcome"] = s.last_outcome;
    } else {
      job["error"] = status.error().message;
    }
    out.push_back(std::move(job));
  }
  if (as_json) {
    std::cout << out.dump() << "\n";
    return 0;
  }
  if (out.empty()) std::cout << "no cron jobs or singletons in the cluster\n";
  for (const auto& job : out) {
    if (job["kind"] == "singleton") {
      std::cout << job["name"].get<std::string>() << "  singleton  group "
                << job["group"].get<std::string>() << "\n";
      if (job.contains("error")) {
        std::cout << "  error: " << job["error"].get<std::string>() << "\n";
      } else if (job["running"].get<bool>()) {
        std::cout << "  running on " << job["runner"].get<std::string>() << " since "
                  << unix_ms_text(job["started_ms"].get<std::int64_t>()) << " (run "
                  << job["starts"].get<std::uint32_t>() << " there)\n";
      } else {
        std::cout << "  not running on " << job["runner"].get<std::string>()
                  << " (its shard's owner)"
                  << (job["last_outcome"].get<std::string>().empty()
                          ? std::string()
                          : "; last run ended: " + job["last_outcome"].get<std::string>())
                  << "\n";
      }
      continue;
    }
    std::cout << job["name"].get<std::string>() << "  \"" << job["schedule"].get<std::string>()
              << "\"  group " << job["group"].get<std::string>() << "  missed "
              << job["missed"].get<std::string>() << "\n";
    if (job.contains("error")) {
      std::cout << "  error: " << job["error"].get<std::string>() << "\n";
      continue;
    }
    std::cout << "  runner " << job["runner"].get<std::string>() << "\n";
    if (job["last_run"].is_null()) {
      std::cout << "  last run: none here yet\n";
    } else {
      const auto& last = job["last_run"];
      std::cout << "  last run: " << unix_ms_text(last["scheduled_ms"].get<std::int64_t>())
                << " (fired " << unix_ms_text(last["fired_ms"].get<std::int64_t>()) << ") "
                << last["outcome"].get<std::string>() << "\n";
    }
    std::cout << "  next run: "
              << (job["next_run_ms"].is_null()
                      ? std::string("not scheduled yet")
                      : unix_ms_text(job["next_run_ms"].get<std::int64_t>()))
              << "\n";
  }
  return 0;
}

// --- dead-letters -----------------------------------------------------------------------

int dead_letters_list(const options& opts, bool as_json) {
  const auto reply = round_trip(opts, opts.manager, role::admin, message_kind::list_dead_letters,
                                list_dead_letters_msg{}, opts.timeout);
  if (!reply.ok()) return print_failure(failure{reply.code, describe(reply)});
  auto listed = unpack_bytes<dead_letters_msg>(reply.payload);
  if (!listed)
    return print_failure(failure{errc::bad_payload, "BadReply: dead letters do not decode"});
  const auto& letters = listed.value().dead_letters;
  if (as_json) {
    json out = json::array();
    for (const auto& d : letters)
      out.push_back({{"id", d.id},
                     {"entity_type", d.entity_type},
                     {"entity_id", d.entity_id},
                     {"rpc", d.rpc},
                     {"primary_key", d.primary_key},
                     {"shard_group", d.shard_group},
                     {"shard", d.shard},
                     {"attempts", d.attempts},
                     {"last_failure", d.last_failure},
                     {"dead_at_ms", d.dead_at_ms},
                     {"dead_at", unix_ms_text(d.dead_at_ms)}});
    std::cout << out.dump() << "\n";
    return 0;
  }
  if (letters.empty()) {
    std::cout << "no dead letters\n";
    return 0;
  }
  for (const auto& d : letters)
    std::cout << d.id << "  " << d.entity_type << "/" << d.entity_id << " " << d.rpc << "  key "
              << d.primary_key << "  " << d.attempts << " attempts  " << unix_ms_text(d.dead_at_ms)
              << "  " << d.last_failure << "\n";
  return 0;
}

int dead_letter_change(const options& opts, message_kind kind, std::int64_t id) {
  const auto reply =
      round_trip(opts, opts.manager, role::admin, kind, dead_letter_ref_msg{id}, opts.timeout);
  if (!reply.ok()) return print_failure(failure{reply.code, describe(reply)});
  std::cout << "dead letter " << id
            << (kind == message_kind::replay_dead_letter ? " queued to run again" : " dropped")
            << "\n";
  return 0;
}

// --- runners ----------------------------------------------------------------------------

// An admin verb: the manager moves the runner's shards as when it leaves.
int unregister_runner(const options& opts, const std::string& address) {
  const auto reply = round_trip(opts, opts.manager, role::admin, message_kind::unregister_runner,
                                unregister_runner_msg{address}, opts.timeout);
  if (!reply.ok()) return print_failure(failure{reply.code, describe(reply)});
  std::cout << "runner " << address << " unregistered; its shards move to the other runners\n";
  return 0;
}

// --- plugin -----------------------------------------------------------------------------

// The program's own folder: cluster-plugin-describe is installed next to clusterctl.
std::filesystem::path own_folder() {
  std::error_code ec;
  const auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::filesystem::path(".") : self.parent_path();
}

// Runs `program args...` and returns what it printed on stdout and its exit status; its
// stderr goes to ours.
result<std::pair<std::string, int>> run_program(const std::string& program,
                                                const std::vector<std::string>& args) {
  int fds[2];
  if (pipe(fds) != 0) return failure{errc::unavailable, "pipe failed"};
  const pid_t pid = fork();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return failure{errc::unavailable, "fork failed"};
  }
  if (pid == 0) {
    dup2(fds[1], STDOUT_FILENO);
    close(fds[0]);
    close(fds[1]);
    std::vector<char*> argv{const_cast<char*>(program.c_str())};
    for (const auto& arg : args) argv.push_back(const_cast<char*>(arg.c_str()));
    argv.push_back(nullptr);
    execv(program.c_str(), argv.data());
    _exit(127);
  }
  close(fds[1]);
  std::string out;
  char buffer[4096];
  for (ssize_t n; (n = read(fds[0], buffer, sizeof buffer)) != 0;) {
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    out.append(buffer, static_cast<std::size_t>(n));
  }
  close(fds[0]);
  int status = 0;
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return std::make_pair(std::move(out), code);
}

// What the plugin file declares, as the runners' loading code reads it (in a child process
// of its own: clusterctl never loads plugin code).
result<stored_plugin> describe_plugin(const std::string& file) {
  const auto describer = (own_folder() / "cluster-plugin-describe").string();
  auto ran = run_program(describer, {file});
  if (!ran) return std::move(ran).error();
  const auto& [out, code] = ran.value();
  if (code == 127)
    return failure{errc::unavailable, describer + " is missing: it is installed with clusterctl"};
  const json described = json::parse(out, nullptr, false);
  if (code != 0 || !described.is_object()) {
    const std::string why = described.is_object() && described.contains("error")
                                ? described["error"].get<std::string>()
                                : "exit status " + std::to_string(code);
    return failure{errc::invalid_request, "the plugin does not load: " + why};
  }
  try {
    stored_plugin plugin;
    plugin.name = described.at("name").get<std::string>();
    plugin.version = described.at("version").get<std::string>();
    plugin.abi_major = described.at("abi_major").get<std::uint32_t>();
    plugin.abi_minor = described.at("abi_minor").get<std::uint32_t>();
    plugin.entity_types = described.at("entity_types").get<std::vector<std::string>>();
    return plugin;
  } catch (const json::exception& e) {
    return failure{errc::bad_payload, "cluster-plugin-describe printed an unexpected answer: " +
                                          std::string(e.what())};
  }
}

// Every chunk of `data` as push_plugin on one connection (the manager keeps one upload per
// connection), each answered before the next; the last reply carries the stored plugin.
reply_msg push_chunks(const options& opts, stored_plugin plugin, const bytes& data) {
  asio::io_context io(1);
  reply_msg result = reply_msg::failure(errc::unavailable, "no reply");
  auto target = parse_host_port(opts.manager);
  if (!target)
    return reply_msg::failure(errc::invalid_request, "bad address '" + opts.manager + "'");
  auto request = opts.credentials;
  request.wanted = role::admin;
  auto security = load_tool_credentials(request);
  if (!security)
    return reply_msg::failure(errc::invalid_request, "credentials: " + security.error().message);
  connection_limits limits;
  limits.security = security.value();
  asio::co_spawn(
      io,
      [target = *target, plugin = std::move(plugin), data = &data, timeout = opts.timeout,
       out = &result, limits]() -> awaitable<void> {
        auto connect = connect_as(target, "admin", limits, timeout);
        auto connected = co_await std::move(connect);
        if (!connected) {
          *out = reply_msg::failure(connected.error().code, connected.error().message);
          co_return;
        }
        const connection_ptr conn = connected.value();
        push_plugin_msg chunk;
        chunk.plugin = plugin;
        std::size_t offset = 0;
        do {
          const std::size_t size = std::min(push_plugin_chunk_bytes, data->size() - offset);
          chunk.offset = offset;
          chunk.chunk.assign(data->begin() + static_cast<std::ptrdiff_t>(offset),
                             data->begin() + static_cast<std::ptrdiff_t>(offset + size));
          auto call = conn->async_call(message_kind::push_plugin, chunk, timeout);
          *out = co_await std::move(call);
          offset += size;
        } while (out->ok() && offset < data->size());
        conn->close();
      },
      asio::detached);
  io.run();
  return result;
}

int plugin_push(const options& opts, const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) return print_failure(failure{errc::invalid_request, "cannot read " + file});
  const bytes data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (data.empty()) return print_failure(failure{errc::invalid_request, file + " is empty"});
  auto described = describe_plugin(file);
  if (!described) return print_failure(described.error());
  stored_plugin plugin = std::move(described).value();
  plugin.sha256 = security::sha256_hex(data);
  plugin.size_bytes = data.size();
  const auto reply = push_chunks(opts, plugin, data);
  if (!reply.ok()) return print_failure(failure{reply.code, describe(reply)});
  auto stored = unpack_bytes<stored_plugin>(reply.payload);
  if (!stored)
    return print_failure(failure{errc::bad_payload, "BadReply: the reply does not decode"});
  const auto& p = stored.value();
  std::cout << "stored plugin " << p.name << " " << p.version << " (sha256 "
            << p.sha256.substr(0, 12) << ", " << p.size_bytes << " bytes, ABI " << p.abi_major
            << "." << p.abi_minor << ", entity types";
  for (const auto& type : p.entity_types) std::cout << " " << type;
  std::cout << "): every runner fetches and loads it\n";
  return 0;
}

// A stored plugin as one runner holds it: its state, or "missing" / "has <version>".
json runner_plugin_state(const stored_plugin& stored, const runner_info& runner) {
  json out = {{"name", runner.name}, {"address", runner.address}};
  const plugin_info* same_name = nullptr;
  for (const auto& held : runner.plugins) {
    if (held.sha256 == stored.sha256 && held.name == stored.name) {
      out["state"] = held.state;
      if (!held.error.empty()) out["error"] = held.error;
      return out;
    }
    if (held.name == stored.name) same_name = &held;
  }
  out["state"] = "missing";
  if (same_name) {
    out["holds_version"] = same_name->version;
    out["holds_state"] = same_name->state;
  }
  return out;
}

int plugin_list(const options& opts, bool as_json) {
  const auto reply = round_trip(opts, opts.manager, role::client, message_kind::list_plugins,
                                empty_msg{}, opts.timeout);
  if (!reply.ok()) return print_failure(failure{reply.code, describe(reply)});
  auto listed = unpack_bytes<plugins_msg>(reply.payload);
  if (!listed)
    return print_failure(failure{errc::bad_payload, "BadReply: the list does not decode"});
  auto status = fetch_status(opts, opts.timeout);
  if (!status) return print_failure(status.error());
  json out = json::array();
  for (const auto& p : listed.value().plugins) {
    json runners = json::array();
    for (const auto& runner : status.value().runners)
      runners.push_back(runner_plugin_state(p, runner));
    out.push_back({{"name", p.name},
                   {"version", p.version},
                   {"sha256", p.sha256},
                   {"abi_major", p.abi_major},
                   {"abi_minor", p.abi_minor},
                   {"size_bytes", p.size_bytes},
                   {"entity_types", p.entity_types},
                   {"pushed_at_ms", p.pushed_at_ms},
                   {"runners", std::move(runners)}});
  }
  if (as_json) {
    std::cout << out.dump() << "\n";
    return 0;
  }
  if (out.empty()) std::cout << "no plugins are stored in the cluster\n";
  for (const auto& p : out) {
    std::cout << p["name"].get<std::string>() << "  " << p["version"].get<std::string>() << "  "
              << p["sha256"].get<std::string>().substr(0, 12) << "  "
              << p["size_bytes"].get<std::uint64_t>() << " bytes  pushed "
              << unix_ms_text(p["pushed_at_ms"].get<std::int64_t>()) << "\n";
    for (const auto& r : p["runners"]) {
      std::cout << "  " << r["name"].get<std::string>() << "  " << r["state"].get<std::string>();
      if (r.contains("error")) std::cout << ": " << r["error"].get<std::string>();
      if (r.contains("holds_version"))
        std::cout << " (holds " << r["holds_version"].get<std::string>() << ", "
                  << r["holds_state"].get<std::string>() << ")";
      std::cout << "\n";
    }
  }
  return 0;
}

int plugin_remove(const options& opts, const std::string& name) {
  const auto reply = round_trip(opts, opts.manager, role::admin, message_kind::remove_plugin,
                                remove_plugin_msg{name}, opts.timeout);
  if (!reply.ok()) return print_failure(failure{reply.code, describe(reply)});
  std::cout << "plugin " << name << " removed; every runner unloads it\n";
  return 0;
}

// --- wait -------------------------------------------------------------------------------

struct http_answer {
  unsigned status = 0;
  std::string body;
};

// GET `url` (http://HOST[:PORT][/PATH]) on a fresh connection, bounded by `timeout`.
result<http_answer> http_get(const std::string& url, milliseconds timeout) {
  constexpr std::string_view scheme = "http://";
  if (!url.starts_with(scheme))
    return failure{errc::invalid_request, "'" + url + "' is not an http:// URL"};
  const auto rest = std::string_view(url).substr(scheme.size());
  const auto slash = rest.find('/');
  const std::string authority(rest.substr(0, slash));
  const std::string target =
      slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
  std::string host = authority, port = "80";
  if (const auto colon = authority.rfind(':'); colon != std::string::npos) {
    host = authority.substr(0, colon);
    port = authority.substr(colon + 1);
  }
  if (host.empty() || !parse_number<std::uint16_t>(port))
    return failure{errc::invalid_request, "'" + url + "' has no valid host and port"};

  asio::io_context io(1);
  result<http_answer> outcome = failure{errc::unavailable, "no answer"};
  asio::co_spawn(
      io,
      [&io, host, port, target, authority, timeout, out = &outcome]() -> awaitable<void> {
        error_code ec;
        tcp::resolver resolver(io);
        auto resolve = resolver.async_resolve(host, port, asio::redirect_error(use_awaitable, ec));
        const auto endpoints = co_await std::move(resolve);
        if (ec) {
          *out = failure{errc::unavailable, "cannot resolve " + host + ": " + ec.message()};
          co_return;
        }
        beast::tcp_stream stream(io);
        stream.expires_after(timeout);
        auto connect = stream.async_connect(endpoints, asio::redirect_error(use_awaitable, ec));
        co_await std::move(connect);
        http::request<http::empty_body> request{http::verb::get, target, 11};
        request.set(http::field::host, authority);
        request.set(http::field::connection, "close");
        if (!ec) {
          auto write = http::async_write(stream, request, asio::redirect_error(use_awaitable, ec));
          co_await std::move(write);
        }
        beast::flat_buffer buffer;
        http::response<http::string_body> response;
        if (!ec) {
          auto read =
              http::async_read(stream, buffer, response, asio::redirect_error(use_awaitable, ec));
          co_await std::move(read);
        }
        if (ec) {
          *out = failure{errc::unavailable, ec.message()};
          co_return;
        }
        *out = http_answer{response.result_int(), std::move(response.body())};
      },
      asio::detached);
  io.run();
  return outcome;
}

// One observation of the cluster per round, shared by the conditions that read it.
struct observation {
  result<assignment_snapshot> status = failure{errc::unavailable, "not asked"};
};

struct condition {
  std::string what;  // "2 healthy runners", for messages
  bool needs_status = false;
  // True when met; `detail` is what to print when met, or what was observed when not.
  std::function<bool(const observation&, milliseconds timeout, std::string& detail)> check;
};

// Names and shard counts of the runners, for "last observed" messages.
std::string runner_summary(const assignment_snapshot& snapshot) {
  if (snapshot.runners.empty()) return "no runners registered";
  std::map<std::string, std::string> by_name;  // sorted: the manager's order varies
  for (const auto& r : snapshot.runners)
    by_name[r.name] =
        r.name + (r.healthy ? "" : " UNHEALTHY") + " " + std::to_string(r.shards) + " shards";
  std::string text;
  for (const auto& [name, line] : by_name) text += (text.empty() ? "" : ", ") + line;
  return text;
}

condition manager_condition(const options& opts) {
  return {"the manager at " + opts.manager + " to answer", true,
          [manager = opts.manager](const observation& seen, milliseconds, std::string& detail) {
            if (!seen.status) {
              detail = "manager " + manager + ": " + seen.status.error().message;
              return false;
            }
            detail = "manager " + manager + " answers (version " +
                     std::to_string(seen.status.value().version) + ", storage " +
                     seen.status.value().storage + ")";
            return true;
          }};
}

condition runners_condition(std::size_t wanted, bool exactly) {
  auto what = exactly ? "exactly " + std::to_string(wanted) + " runners, all healthy"
                      : std::to_string(wanted) + " healthy runners";
  return {
      what, true, [wanted, exactly](const observation& seen, milliseconds, std::string& detail) {
        if (!seen.status) {
          detail = seen.status.error().message;
          return false;
        }
        const auto& snapshot = seen.status.value();
        std::set<std::string> names;  // sorted: the manager's order varies
        for (const auto& r : snapshot.runners)
          if (r.healthy) names.insert(r.name);
        const std::size_t healthy = names.size();
        const bool met =
            exactly ? healthy == wanted && snapshot.runners.size() == wanted : healthy >= wanted;
        detail = runner_summary(snapshot);
        if (met) {
          detail = std::to_string(healthy) + " healthy runners:";
          for (const auto& name : names) detail += " " + name;
        }
        return met;
      }};
}

condition shards_condition(bool balanced) {
  auto what = std::string("every shard assigned to a healthy runner") +
              (balanced ? ", balanced within one" : "");
  return {what, true, [balanced](const observation& seen, milliseconds, std::string& detail) {
            if (!seen.status) {
              detail = seen.status.error().message;
              return false;
            }
            const auto& snapshot = seen.status.value();
            std::set<std::string> healthy;
            for (const auto& r : snapshot.runners)
              if (r.healthy) healthy.insert(r.address);
            std::size_t total = 0, owned = 0;
            for (const auto& group : snapshot.groups)
              for (const auto& owner : group.owners) {
                ++total;
                owned += healthy.contains(owner) ? 1 : 0;
              }
            std::uint32_t fewest = UINT32_MAX, most = 0;
            for (const auto& r : snapshot.runners)
              if (r.healthy) {
                fewest = std::min(fewest, r.shards);
                most = std::max(most, r.shards);
              }
            const bool is_balanced = healthy.empty() || most - fewest <= 1;
            const bool met = total > 0 && owned == total && (!balanced || is_balanced);
            detail = std::to_string(owned) + " of " + std::to_string(total) +
                     " shards assigned to healthy runners";
            if (!met) detail += " (" + runner_summary(snapshot) + ")";
            return met;
          }};
}

condition runner_condition(const std::string& name) {
  return {"runner " + name + " healthy and owning shards", true,
          [name](const observation& seen, milliseconds, std::string& detail) {
            if (!seen.status) {
              detail = seen.status.error().message;
              return false;
            }
            for (const auto& r : seen.status.value().runners) {
              if (r.name != name) continue;
              if (!r.healthy) {
                detail = name + " is registered but unhealthy";
                return false;
              }
              if (r.shards == 0) {
                detail = name + " is healthy but owns no shards";
                return false;
              }
              detail = name + " is serving " + std::to_string(r.shards) + " shards";
              return true;
            }
            detail = name + " is not registered (" + runner_summary(seen.status.value()) + ")";
            return false;
          }};
}

condition gateway_condition(const std::string& url) {
  return {"the gateway at " + url + " to answer HTTP", false,
          [url](const observation&, milliseconds timeout, std::string& detail) {
            auto answer = http_get(url, timeout);
            if (!answer) {
              detail = "GET " + url + ": " + answer.error().message;
              return false;
            }
            detail = "HTTP " + std::to_string(answer.value().status) + " " + answer.value().body;
            return true;
          }};
}

condition call_condition(const options& opts, const call_args& args) {
  return {"the call " + args.type + " " + args.id + " " + args.rpc + " to succeed", false,
          [opts, args](const observation&, milliseconds timeout, std::string& detail) {
            auto reply = call_entity(opts, args, timeout);
            detail = reply ? reply.value() : reply.error().message;
            return reply.has_value();
          }};
}

struct watched {
  std::string label;
  pid_t pid = 0;
};

struct wait_args {
  long timeout_s = 30;
  long interval_ms = 200;
  std::vector<watched> watch;
};

std::string joined(const std::vector<condition>& conditions) {
  std::string text;
  for (std::size_t i = 0; i < conditions.size(); ++i)
    text += (i == 0 ? "" : " and ") + conditions[i].what;
  return text;
}

int wait_until(const options& opts, const wait_args& args,
               const std::vector<condition>& conditions) {
  using clock = steady_clock;
  const auto deadline = clock::now() + std::chrono::seconds(args.timeout_s);
  launch::exit_watch exits;
  for (const auto& w : args.watch) exits.add(w.pid);
  const bool needs_status =
      std::any_of(conditions.begin(), conditions.end(), [](auto& c) { return c.needs_status; });
  std::vector<std::string> details(conditions.size());
  auto exited = [&](std::size_t i) {
    const auto& w = args.watch[i];
    return fail("Exited", w.label + " (pid " + std::to_string(w.pid) +
                              ") exited while waiting for " + joined(conditions));
  };
  for (;;) {
    if (auto gone = exits.wait_any(milliseconds(0))) return exited(*gone);
    // Each attempt gets the time left, at most --timeout-ms, but never less than a second
    // (or --timeout-ms): a last attempt squeezed into the final millisecond would report a
    // timeout of its own instead of what the cluster looks like.
    const auto left = std::chrono::ceil<milliseconds>(deadline - clock::now());
    const auto attempt = std::min(opts.timeout, std::max(left, milliseconds(1000)));
    observation seen;
    if (needs_status) seen.status = fetch_status(opts, attempt);
    bool all = true;
    for (std::size_t i = 0; i < conditions.size(); ++i)
      all = conditions[i].check(seen, attempt, details[i]) && all;
    if (all) {
      for (const auto& line : details) std::cout << line << "\n";
      return 0;
    }
    const auto now = clock::now();
    if (now >= deadline) {
      std::string last;
      // Conditions that read the same failed status would repeat its error.
      std::vector<std::string> distinct;
      for (const auto& line : details)
        if (std::find(distinct.begin(), distinct.end(), line) == distinct.end())
          distinct.push_back(line);
      for (const auto& line : distinct) last += (last.empty() ? "" : "; ") + line;
      return fail("Timeout", "waited " + std::to_string(args.timeout_s) + "s for " +
                                 joined(conditions) + "; last observed: " + last);
    }
    const auto pause =
        std::min(std::chrono::ceil<milliseconds>(deadline - now), milliseconds(args.interval_ms));
    if (auto gone = exits.wait_any(pause)) return exited(*gone);
  }
}

// --- command line -----------------------------------------------------------------------

// A number option parsed with std::from_chars, accepted in [min, max] (a bound keeps
// deadlines computed from it from overflowing the clock).
template <class T>
CLI::Option* number_option(CLI::App* app, const std::string& name, T& target, T min, T max,
                           const std::string& description) {
  return app
      ->add_option_function<std::string>(
          name,
          [&target, min, max, name](const std::string& text) {
            auto value = parse_number<T>(text);
            if (!value || *value < min || *value > max)
              throw CLI::ValidationError(name, "'" + text + "' is not a number from " +
                                                   std::to_string(min) + " to " +
                                                   std::to_string(max));
            target = *value;
          },
          description)
      ->type_name("N");
}

void add_call_arguments(CLI::App* command, call_args& args) {
  command->add_option("--key", args.key, "primary key: a persisted RPC runs once per key");
  command
      ->add_option_function<std::string>(
          "--deliver-at-ms",
          [&args](const std::string& text) {
            args.deliver_at_ms = parse_number<std::int64_t>(text);
            if (!args.deliver_at_ms)
              throw CLI::ValidationError("--deliver-at-ms", "'" + text + "' is not a number");
          },
          "unix time in ms before which a persisted RPC does not run")
      ->type_name("T");
  command->add_option("EntityType", args.type)->required();
  command->add_option("entityId", args.id)->required();
  command->add_option("Rpc", args.rpc)->required();
  command->add_option("json", args.body, "the request as JSON")->required();
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::err);
  CLI::App app{"Calls entities, shows the cluster and waits until it is ready.", "clusterctl"};
  app.footer(
      "Exit status: 0 on success, 1 on failure or a wait's deadline (error: <ErrorName>: "
      "<message>\n"
      "on stderr), 2 on a bad command line.");
  options opts;
  app.add_option("--proxy", opts.proxy, "proxy HOST:PORT for calls (default " + opts.proxy + ")")
      ->envname("CLUSTER_PROXY_ADDRESS")
      ->type_name("HOST:PORT");
  app.add_option("--manager", opts.manager,
                 "manager HOST:PORT for status (default " + opts.manager + ")")
      ->envname("CLUSTER_MANAGER_ADDRESS")
      ->type_name("HOST:PORT");
  app.add_option("--key-file", opts.credentials.key_file,
                 "private key (default: environment, SST links, ./.local/credentials)")
      ->type_name("FILE");
  app.add_option("--trust-file", opts.credentials.trust_file, "trust list (default: as the key)")
      ->type_name("FILE");
  app.add_option("--tls", opts.credentials.tls, "on: connect over TLS (default: as the key)")
      ->check(CLI::IsMember({"on", "off"}));
  std::int64_t timeout_ms = opts.timeout.count();
  number_option<std::int64_t>(&app, "--timeout-ms", timeout_ms, 1, 86400000,
                              "deadline of one call or status request (default 10000)");
  app.require_subcommand(1, 1);

  call_args call;
  bool call_stream = false, call_discard = false;
  auto* call_cmd = app.add_subcommand("call", "call an entity through the proxy; prints the reply");
  add_call_arguments(call_cmd, call);
  call_cmd->add_flag(
      "--stream", call_stream,
      "a streaming RPC: one JSON line per item as it comes, then {\"final\": reply}");
  call_cmd->add_flag("--discard", call_discard,
                     "fire and forget: prints 'accepted' once the request is accepted");
  call_cmd->fallthrough();

  clusterctl::top_options top;
  top.admin_url = "http://127.0.0.1:9090";
  auto* top_cmd = app.add_subcommand(
      "top", "the dashboard's numbers in the terminal, refreshed every second (Ctrl-C ends it)");
  top_cmd
      ->add_option("--admin", top.admin_url,
                   "the manager's admin endpoint (default " + top.admin_url + ")")
      ->envname("CLUSTER_MANAGER_ADMIN_URL")
      ->type_name("URL");
  top_cmd->add_option("--admin-token", top.token, "its admin token (manager.admin_token)")
      ->envname("CLUSTER_ADMIN_TOKEN");
  number_option<int>(top_cmd, "--frames", top.frames, 1, 1000000,
                     "stop after N refreshes (default: until interrupted)");

  bool as_json = false;
  auto* status_cmd = app.add_subcommand("status", "runners and shard assignment from the manager");
  status_cmd->add_flag("--json", as_json, "one line of JSON");
  status_cmd->fallthrough();

  auto* dead_cmd = app.add_subcommand(
      "dead-letters", "persisted messages not run again after storage.max_attempts (manager)");
  dead_cmd->require_subcommand(1, 1);
  dead_cmd->fallthrough();
  bool dead_json = false;
  auto* dead_list = dead_cmd->add_subcommand(
      "list", "id, entity, RPC, primary key, attempts, dead-lettered at, last failure");
  dead_list->add_flag("--json", dead_json, "one line of JSON");
  std::int64_t dead_id = 0;
  auto* dead_replay = dead_cmd->add_subcommand(
      "replay", "run dead letter ID again (its attempts start over, its error reply goes)");
  dead_replay->add_option("ID", dead_id)->required();
  auto* dead_drop =
      dead_cmd->add_subcommand("drop", "forget dead letter ID; callers keep its error reply");
  dead_drop->add_option("ID", dead_id)->required();
  for (auto* sub : {dead_list, dead_replay, dead_drop}) sub->fallthrough();

  auto* runners_cmd = app.add_subcommand("runners", "change the runner registry (admin)");
  runners_cmd->require_subcommand(1, 1);
  runners_cmd->fallthrough();
  std::string runner_address;
  auto* runners_unregister = runners_cmd->add_subcommand(
      "unregister", "unregister the runner at ADDRESS (host:port); its shards move to the others");
  runners_unregister->add_option("ADDRESS", runner_address)->required();
  runners_unregister->fallthrough();
  auto* plugin_cmd = app.add_subcommand("plugin", "plugins stored in the cluster (manager)");
  plugin_cmd->require_subcommand(1, 1);
  plugin_cmd->fallthrough();
  std::string plugin_file, plugin_name;
  bool plugin_list_json = false;
  auto* plugin_push_cmd = plugin_cmd->add_subcommand(
      "push", "store FILE in the cluster (admin): every runner fetches and loads it");
  plugin_push_cmd->add_option("FILE", plugin_file)->required();
  auto* plugin_list_cmd = plugin_cmd->add_subcommand(
      "list", "stored plugins: version, sha256 and load state on each runner");
  plugin_list_cmd->add_flag("--json", plugin_list_json, "one line of JSON");
  auto* plugin_rm_cmd =
      plugin_cmd->add_subcommand("rm", "remove plugin NAME (admin): every runner unloads it");
  plugin_rm_cmd->add_option("NAME", plugin_name)->required();
  for (auto* sub : {plugin_push_cmd, plugin_list_cmd, plugin_rm_cmd}) sub->fallthrough();
  auto* cron_cmd = app.add_subcommand("cron", "cron jobs of the cluster");
  cron_cmd->require_subcommand(1, 1);
  cron_cmd->fallthrough();
  bool cron_json = false;
  auto* cron_list_cmd = cron_cmd->add_subcommand(
      "list",
      "each cron job (schedule, group, the runner serving it, last and next run) and singleton "
      "(the runner running it, since when)");
  cron_list_cmd->add_flag("--json", cron_json, "one line of JSON");
  cron_list_cmd->fallthrough();
  auto* keys_cmd = app.add_subcommand("keys", "make and inspect cluster credentials");
  keys_cmd->require_subcommand(1, 1);
  std::string keys_dir, key_file;
  auto* keys_init = keys_cmd->add_subcommand(
      "init", "write DIR/<role>.key for every role (mode 0600) and DIR/trust listing them");
  keys_init->add_option("DIR", keys_dir)->required();
  auto* keys_public = keys_cmd->add_subcommand("public", "print the public half of KEYFILE");
  keys_public->add_option("KEYFILE", key_file)->required();

  wait_args wait;
  std::vector<std::string> watch_specs;
  auto* wait_cmd = app.add_subcommand(
      "wait", "wait until every CONDITION holds at once (bounded); prints what was met");
  number_option<long>(wait_cmd, "--timeout-s", wait.timeout_s, 0, 86400, "deadline (default 30)");
  number_option<long>(wait_cmd, "--interval-ms", wait.interval_ms, 1, 60000,
                      "pause between observations (default 200)");
  wait_cmd
      ->add_option("--watch", watch_specs,
                   "[LABEL=]PID: fail at once if that process ends meanwhile")
      ->type_name("[LABEL=]PID");
  wait_cmd->require_subcommand(1, 0);  // any number of conditions, chained
  wait_cmd->fallthrough();
  std::vector<condition> conditions;
  // Conditions are created after parsing (they capture the final options), in command-line order.
  std::vector<std::function<condition()>> pending;

  auto* w_manager = wait_cmd->add_subcommand("manager", "the manager answers");
  w_manager->callback([&] { pending.push_back([&] { return manager_condition(opts); }); });
  std::size_t runner_count = 0;
  bool exactly = false;
  auto* w_runners = wait_cmd->add_subcommand("runners", "at least N healthy runners");
  w_runners->add_option("N", runner_count)->required();
  w_runners->add_flag("--exactly", exactly, "exactly N runners registered, all healthy");
  w_runners->callback([&] {
    pending.push_back([n = runner_count, e = exactly] { return runners_condition(n, e); });
  });
  bool balanced = false;
  auto* w_shards =
      wait_cmd->add_subcommand("shards", "every shard of every group owned by a healthy runner");
  w_shards->add_flag("--balanced", balanced, "and healthy runners' shard counts within one");
  w_shards->callback([&] { pending.push_back([b = balanced] { return shards_condition(b); }); });
  std::string runner_name;
  auto* w_runner = wait_cmd->add_subcommand("runner", "runner NAME healthy and owning shards");
  w_runner->add_option("NAME", runner_name)->required();
  w_runner->callback([&] { pending.push_back([n = runner_name] { return runner_condition(n); }); });
  std::string gateway_url;
  auto* w_gateway = wait_cmd->add_subcommand("gateway", "GET URL gets an HTTP answer (any status)");
  w_gateway->add_option("URL", gateway_url)->required();
  w_gateway->callback(
      [&] { pending.push_back([u = gateway_url] { return gateway_condition(u); }); });
  call_args wait_call;
  auto* w_call = wait_cmd->add_subcommand("call", "a call through the proxy succeeds");
  add_call_arguments(w_call, wait_call);
  w_call->callback(
      [&] { pending.push_back([&, c = wait_call] { return call_condition(opts, c); }); });
  for (auto* sub : {w_manager, w_runners, w_shards, w_runner, w_gateway, w_call})
    sub->fallthrough();

  try {
    app.parse(argc, argv);
    for (const auto& spec : watch_specs) {
      const auto equals = spec.rfind('=');
      const auto label = equals == std::string::npos ? "process" : spec.substr(0, equals);
      auto pid = parse_number<pid_t>(equals == std::string::npos ? spec : spec.substr(equals + 1));
      if (!pid || *pid <= 0) throw CLI::ValidationError("--watch", "'" + spec + "' has no PID");
      wait.watch.push_back({label, *pid});
    }
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  opts.timeout = milliseconds(timeout_ms);

  if (*call_cmd) return call_command(opts, call, call_stream, call_discard);
  if (*status_cmd) return status(opts, as_json);
  if (*top_cmd) return clusterctl::top_command(top);
  if (*keys_init) return keys_init_command(keys_dir);
  if (*keys_public) return keys_public_command(key_file);
  if (*dead_list) return dead_letters_list(opts, dead_json);
  if (*dead_replay) return dead_letter_change(opts, message_kind::replay_dead_letter, dead_id);
  if (*dead_drop) return dead_letter_change(opts, message_kind::drop_dead_letter, dead_id);
  if (*runners_unregister) return unregister_runner(opts, runner_address);
  if (*plugin_push_cmd) return plugin_push(opts, plugin_file);
  if (*plugin_list_cmd) return plugin_list(opts, plugin_list_json);
  if (*plugin_rm_cmd) return plugin_remove(opts, plugin_name);
  if (*cron_list_cmd) return cron_list(opts, cron_json);
  for (auto& make : pending) conditions.push_back(make());
  return wait_until(opts, wait, conditions);
}
