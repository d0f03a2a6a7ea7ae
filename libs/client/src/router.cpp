#include "cluster/client/router.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cstdio>
#include <limits>
#include <random>

#include "cluster/protocol/cron_status.hpp"
#include "cluster/protocol/shard.hpp"

namespace cluster {

std::string generated_request_key() {
  static thread_local std::mt19937_64 random{std::random_device{}()};
  char text[40];
  std::snprintf(text, sizeof(text), "auto:%016llx%016llx",
                static_cast<unsigned long long>(random()),
                static_cast<unsigned long long>(random()));
  return text;
}

routed_set::~routed_set() {
  // Requests still routing outlive the set: they must not unlink from it later.
  for (auto* request = head_; request != nullptr;) {
    auto* next = request->next_;
    request->set_ = nullptr;
    request->prev_ = request->next_ = nullptr;
    request = next;
  }
}

routed_request* routed_set::find(std::uint64_t caller_id) const {
  for (auto* request = head_; request != nullptr; request = request->next_)
    if (request->caller_id == caller_id) return request;
  return nullptr;
}

std::vector<routed_request*> routed_set::all() const {
  std::vector<routed_request*> requests;
  for (auto* request = head_; request != nullptr; request = request->next_)
    requests.push_back(request);
  return requests;
}

void routed_set::link(routed_request& request) {
  request.set_ = this;
  request.prev_ = nullptr;
  request.next_ = head_;
  if (head_ != nullptr) head_->prev_ = &request;
  head_ = &request;
}

void routed_set::unlink(routed_request& request) {
  if (request.set_ == nullptr) return;
  if (request.prev_ != nullptr)
    request.prev_->next_ = request.next_;
  else
    request.set_->head_ = request.next_;
  if (request.next_ != nullptr) request.next_->prev_ = request.prev_;
  request.set_ = nullptr;
  request.prev_ = request.next_ = nullptr;
}

namespace {

reply_msg interrupted_reply() {
  return reply_msg::failure(errc::cancelled, "interrupted by the caller");
}

}  // namespace

router::router(asio::io_context& io, router_options options)
    : io_(io), options_(std::move(options)) {}

void router::update(assignment_snapshot snapshot) {
  snapshot_ = std::move(snapshot);
  index_plugins();
  // Drop pooled connections to runners that left the cluster.
  for (auto it = pool_.begin(); it != pool_.end();) {
    const bool known = std::any_of(snapshot_.runners.begin(), snapshot_.runners.end(),
                                   [&](const runner_info& r) { return r.address == it->first; });
    if (!known) {
      it->second->close();
      it = pool_.erase(it);
    } else {
      ++it;
    }
  }
}

namespace {

bool serves_group(const runner_info& runner, const std::string& group) {
  return std::find(runner.groups.begin(), runner.groups.end(), group) != runner.groups.end();
}

// A plugin listed as failed serves nothing (an older version that still serves is listed
// apart, as loaded); a draining one finishes what it runs.
bool has_type(const runner_info& runner, const std::string& type) {
  if (runner.plugins.empty()) return true;  // older runners, and in-process registries
  for (const auto& plugin : runner.plugins) {
    if (plugin.state == "failed") continue;
    if (std::find(plugin.entity_types.begin(), plugin.entity_types.end(), type) !=
        plugin.entity_types.end())
      return true;
  }
  return false;
}

}  // namespace

void router::index_plugins() {
  lacking_.clear();
  servers_.clear();
  for (const auto& type : snapshot_.entity_types) {
    auto& servers = servers_[type.name];
    for (const auto& runner : snapshot_.runners) {
      if (!serves_group(runner, type.group)) continue;
      if (has_type(runner, type.name)) {
        servers.push_back(runner.address);
      } else {
        lacking_[runner.address].insert(type.name);
      }
    }
  }
}

bool router::lacks_type(const std::string& address, const std::string& entity_type) const {
  if (lacking_.empty()) return false;
  auto it = lacking_.find(address);
  return it != lacking_.end() && it->second.count(entity_type) > 0;
}

bool router::is_retriable(const reply_msg& reply, const request_msg& request,
                          const std::string& owner) const {
  if (is_routing_retriable(reply.code)) return true;
  if (reply.code != errc::unknown_entity_type) return false;
  // The answering runner lacks the type: worth waiting for the shard to move only if
  // another runner has it. (The callback form passes no owner: it asks the snapshot.)
  std::string answered = owner;
  if (answered.empty()) {
    auto located = locate(request.entity_type, request.entity_id, std::string());
    if (located) answered = located.value().owner;
  }
  auto it = servers_.find(request.entity_type);
  if (it == servers_.end()) return false;
  return std::any_of(it->second.begin(), it->second.end(),
                     [&](const std::string& address) { return address != answered; });
}

result<entity_location> router::locate(const std::string& entity_type, const std::string& entity_id,
                                       const std::string& rpc) const {
  const auto* type = snapshot_.find_entity_type(entity_type);
  if (type == nullptr) {
    if (snapshot_.version == 0 || snapshot_.entity_types.empty())
      return failure{errc::no_runner, "no assignments received yet"};
    return failure{errc::unknown_entity_type, "unknown entity type '" + entity_type + "'"};
  }
  // A cron job's or a singleton's runner answers `$cron_status` itself (clusterctl cron list).
  constexpr std::uint32_t singleton_flag = 4;  // CLUSTER_ENTITY_SINGLETON of <cluster/plugin_abi.h>
  const bool cron_status = rpc == cron_status_rpc && (!type->options.cron_schedule.empty() ||
                                                      (type->options.flags & singleton_flag) != 0);
  if (!rpc.empty() && type->find_rpc(rpc) == nullptr && !cron_status)
    return failure{errc::unknown_rpc, "entity type '" + entity_type + "' has no RPC '" + rpc + "'"};
  const auto* group = snapshot_.find_group(type->group);
  if (group == nullptr || group->shards == 0)
    return failure{errc::no_runner, "no runner serves shard group '" + type->group + "'"};
  // A snapshot whose owners do not match its shard count is refused, not indexed past.
  if (group->owners.size() != group->shards ||
      group->shards > static_cast<std::uint32_t>(std::numeric_limits<std::int32_t>::max()))
    return failure{errc::no_runner, "shard group '" + type->group + "' lists " +
                                        std::to_string(group->owners.size()) + " owners for " +
                                        std::to_string(group->shards) + " shards"};
  const auto shard = shard_for(entity_id, static_cast<std::int32_t>(group->shards));
  const auto* info = rpc.empty() ? nullptr : type->find_rpc(rpc);
  return entity_location{type->group, shard, group->owners[static_cast<std::size_t>(shard - 1)],
                         info != nullptr && info->stream};
}

void router::ensure_primary_key(request_msg& request) const {
  // A persisted request keeps one identity across retries: if its runner dies after storing
  // it, the retry finds the stored message (and its reply) instead of running it again.
  if (request.primary_key && !request.primary_key->empty()) return;
  const auto* type = snapshot_.find_entity_type(request.entity_type);
  const auto* rpc = type ? type->find_rpc(request.rpc) : nullptr;
  if (rpc && rpc->persisted) request.primary_key = generated_request_key();
}

connection_ptr router::ready_connection(const request_msg& request, bool* stream) const {
  auto located = locate(request.entity_type, request.entity_id, request.rpc);
  if (!located || located.value().owner.empty()) return nullptr;
  if (stream != nullptr) *stream = located.value().stream;
  const std::string& owner = located.value().owner;
  if (is_local && deliver_locally && is_local(owner)) return nullptr;
  if (lacks_type(owner, request.entity_type)) return nullptr;  // the coroutine form waits
  auto it = pool_.find(owner);
  if (it == pool_.end() || !it->second->is_open()) return nullptr;
  return it->second;
}

reply_msg router::expired(const reply_msg& last) {
  // Nobody to ask is a clearer answer than a timeout: keep NoRunner as the code.
  if (last.code == errc::no_runner) return last;
  return reply_msg::failure(errc::deadline_exceeded,
                            "deadline passed; last failure: " + last.error + ": " + last.message);
}

awaitable<reply_msg> router::retry(request_msg request, steady_clock::time_point deadline,
                                   reply_msg last) {
  if (steady_clock::now() + options_.retry_min >= deadline) co_return expired(last);
  co_await sleep_for(options_.retry_min);
  auto again = route(std::move(request), deadline);
  co_return co_await std::move(again);
}

std::optional<reply_msg> router::unsendable(result<entity_location>& located,
                                            const std::string& entity_type, bool& final) const {
  if (!located) {
    final = !is_routing_retriable(located.error().code);
    return reply_msg::failure(std::move(located).error());
  }
  const entity_location& location = located.value();
  if (location.owner.empty())
    return reply_msg::failure(errc::no_runner, "shard " + std::to_string(location.shard) +
                                                   " of group '" + location.group +
                                                   "' has no runner");
  // Its plugins say it does not have the type yet: the manager moves the shard to a runner
  // that has it (or the owner loads it) and a later snapshot says so.
  if (lacks_type(location.owner, entity_type))
    return reply_msg::failure(
        errc::not_owner,
        "runner " + location.owner + " does not have entity type '" + entity_type + "'");
  return std::nullopt;
}

awaitable<reply_msg> router::route(request_msg request, steady_clock::time_point deadline) {
  milliseconds backoff = options_.retry_min;
  ensure_primary_key(request);
  reply_msg last = reply_msg::failure(errc::no_runner, "not routed");
  while (true) {
    auto located = locate(request.entity_type, request.entity_id, request.rpc);
    bool final = false;
    if (auto why = unsendable(located, request.entity_type, final)) {
      if (final) co_return std::move(*why);
      last = std::move(*why);
    } else if (const entity_location& location = located.value();
               is_local && deliver_locally && is_local(location.owner)) {
      auto delivery = deliver_locally(request, deadline);
      last = co_await std::move(delivery);
      if (!is_retriable(last, request, location.owner)) co_return last;
    } else {
      auto connect = connection_to(location.owner, deadline);
      auto conn = co_await std::move(connect);
      if (!conn) {
        // Whatever stopped the connection, the request did not run: worth another try.
        last = reply_msg::failure(errc::unavailable, std::move(conn).error().message);
      } else {
        const auto left = std::chrono::duration_cast<milliseconds>(deadline - steady_clock::now());
        request.timeout_ms = static_cast<std::uint32_t>(std::max<std::int64_t>(1, left.count()));
        auto call = conn.value()->async_call(message_kind::request, request,
                                             std::max(left, milliseconds(1)));
        last = co_await std::move(call);
        if (!is_retriable(last, request, location.owner)) co_return last;
      }
    }
    if (steady_clock::now() + backoff >= deadline) co_return expired(last);
    co_await sleep_for(backoff);
    backoff = std::min(backoff * 2, options_.retry_max);
  }
}

awaitable<result<connection_ptr>> router::connection_to(const std::string& address,
                                                        steady_clock::time_point deadline) {
  while (true) {
    if (auto it = pool_.find(address); it != pool_.end()) {
      if (it->second->is_open()) co_return it->second;
      pool_.erase(it);
    }
    auto waiting = connecting_.find(address);
    if (waiting == connecting_.end()) break;
    auto event = waiting->second;
    error_code ignored;
    co_await event->async_wait(asio::redirect_error(use_awaitable, ignored));
    if (steady_clock::now() >= deadline)
      co_return failure{errc::unavailable, "timed out waiting for a connection to " + address};
    if (pool_.find(address) == pool_.end())
      co_return failure{errc::unavailable, "cannot connect to " + address};
  }
  auto target = parse_host_port(address);
  if (!target) co_return failure{errc::unavailable, "bad runner address '" + address + "'"};
  auto event = std::make_shared<asio::steady_timer>(io_, steady_clock::time_point::max());
  connecting_[address] = event;
  const auto left = std::chrono::duration_cast<milliseconds>(deadline - steady_clock::now());
  hello_msg hello{protocol_version, options_.role, options_.name};
  connection::message_handler refuse = [](const connection_ptr& conn, envelope&& env) {
    // Runners never send requests on a routing connection: refuse anything but replies.
    conn->send_reply(env.id, reply_msg::failure(errc::unknown_kind, "routing connection"));
  };
  std::function<void()> on_close;
  auto connect = connect_to(*target, hello, options_.limits,
                            std::clamp(left, milliseconds(1), options_.connect_timeout), refuse,
                            on_close, mask_of(role::runner));
  auto connected = co_await std::move(connect);
  connecting_.erase(address);
  event->cancel();
  if (connected) pool_[address] = connected.value();
  co_return connected;
}

bool router::is_persisted(const std::string& entity_type, const std::string& rpc) const {
  const auto* type = snapshot_.find_entity_type(entity_type);
  const auto* info = type ? type->find_rpc(rpc) : nullptr;
  return info != nullptr && info->persisted;
}

bool router::retry_tracked(const routed_request& track, const reply_msg& reply,
                           const std::string& owner) const {
  // Once an item reached the caller, a new try would repeat it: the failure ends the stream.
  if (track.streamed || track.interrupted) return false;
  return is_retriable(reply, track.request, owner);
}

void router::send_try(const connection_ptr& conn, const std::shared_ptr<routed_request>& track,
                      milliseconds timeout, connection::reply_callback done) {
  track->request.timeout_ms = static_cast<std::uint32_t>(timeout.count());
  track->conn = conn;
  if (!track->stream) {
    track->call_id = conn->call(message_kind::request, track->request, timeout, std::move(done));
    return;
  }
  auto forward = [track, weak = std::weak_ptr<connection>(conn)](std::vector<bytes>&& items) {
    if (items.empty()) return;
    track->streamed = true;
    if (track->on_items) {
      track->on_items(std::move(items));
      return;
    }
    if (track->caller && track->caller->is_open()) {
      track->caller->send(message_kind::stream_chunk, track->caller_id,
                          stream_chunk_msg{std::move(items)});
      return;
    }
    // Nobody consumes them: take them as consumed, so the producer runs to its end.
    if (auto runner = weak.lock())
      runner->ack(track->call_id, static_cast<std::uint32_t>(items.size()));
  };
  track->call_id = conn->call_stream(message_kind::request, track->request, track->request.credit,
                                     timeout, std::move(forward), std::move(done));
}

awaitable<reply_msg> router::send_try(connection_ptr conn, std::shared_ptr<routed_request> track,
                                      milliseconds timeout) {
  return asio::async_initiate<decltype(use_awaitable), void(reply_msg)>(
      [this, conn = std::move(conn), track = std::move(track), timeout](auto handler) {
        auto shared = std::make_shared<decltype(handler)>(std::move(handler));
        send_try(conn, track, timeout,
                 [shared](reply_msg&& reply) { (*shared)(std::move(reply)); });
      },
      use_awaitable);
}

awaitable<reply_msg> router::route_tracked(std::shared_ptr<routed_request> track,
                                           std::optional<reply_msg> first_failure) {
  milliseconds backoff = options_.retry_min;
  reply_msg last = reply_msg::failure(errc::no_runner, "not routed");
  if (first_failure) {
    last = std::move(*first_failure);
    if (steady_clock::now() + backoff >= track->deadline) co_return expired(last);
    co_await sleep_for(backoff);
  }
  while (true) {
    if (track->interrupted) co_return interrupted_reply();
    auto located = locate(track->request.entity_type, track->request.entity_id, track->request.rpc);
    bool final = false;
    if (auto why = unsendable(located, track->request.entity_type, final)) {
      if (final) co_return std::move(*why);
      last = std::move(*why);
    } else if (const entity_location& location = located.value();
               is_local && deliver_locally && is_local(location.owner)) {
      const std::string owner = location.owner;
      auto delivery = deliver_locally(track->request, track->deadline);
      last = co_await std::move(delivery);
      if (!retry_tracked(*track, last, owner)) co_return last;
    } else {
      track->stream = location.stream;
      const std::string owner = location.owner;
      auto connect = connection_to(owner, track->deadline);
      auto conn = co_await std::move(connect);
      if (track->interrupted) co_return interrupted_reply();
      if (!conn) {
        last = reply_msg::failure(errc::unavailable, std::move(conn).error().message);
      } else {
        const auto left =
            std::chrono::duration_cast<milliseconds>(track->deadline - steady_clock::now());
        auto attempt = send_try(conn.value(), track, std::max(left, milliseconds(1)));
        last = co_await std::move(attempt);
        track->conn = nullptr;
        if (!retry_tracked(*track, last, owner)) {
          if (track->interrupted && is_routing_retriable(last.code)) co_return interrupted_reply();
          co_return last;
        }
      }
    }
    if (steady_clock::now() + backoff >= track->deadline) co_return expired(last);
    co_await sleep_for(backoff);
    backoff = std::min(backoff * 2, options_.retry_max);
  }
}

void router::interrupt(routed_request& request) {
  if (request.interrupted) return;
  request.interrupted = true;
  if (request.conn) request.conn->interrupt(request.call_id);
}

void router::ack(routed_request& request, std::uint32_t credit) {
  if (request.conn) request.conn->ack(request.call_id, credit);
}

void router::stop() {
  for (auto& [address, conn] : pool_) conn->close();
  pool_.clear();
}

}  // namespace cluster
