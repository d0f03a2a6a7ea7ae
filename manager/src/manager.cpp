#include "cluster/manager/manager.hpp"

#include <spdlog/spdlog.h>

namespace cluster::manager {

std::vector<config_section> manager_config::sections() {
  std::vector<config_section> sections;
  common.declare(sections);
  common.declare_storage(sections);
  sections.emplace_back("manager");
  sections.back()
      .key("host", &host)
      .key("port", &port)
      .key("shards_per_group", &shards_per_group)
      .key("reconnect_grace_ms", &reconnect_grace);
  return sections;
}

manager::manager(asio::io_context& io, manager_config config, std::unique_ptr<manager_store> store)
    : io_(io),
      config_(std::move(config)),
      store_(std::move(store)),
      server_(
          io, server_options{config_.host, config_.port, 4096, config_.common.limits()},
          [this](const connection_ptr& conn, envelope&& env) { on_message(conn, std::move(env)); }),
      grace_timer_(io) {
  server_.on_disconnect = [this](const connection_ptr& conn) { on_disconnect(conn); };
}

void manager::start() {
  if (config_.shards_per_group == 0)
    throw config_error("manager.shards_per_group must be positive");
  groups_ = store_->load_assignments();
  for (auto& [group, owners] : groups_) owners.resize(config_.shards_per_group);
  // Runners from a previous life must register again over a live connection; until then
  // their shards keep their owners so that a manager restart moves nothing.
  for (auto& runner : store_->load_runners()) {
    const std::string address = runner.address;  // not runner.address: it is moved below
    runners_.emplace(address, runner_entry{std::move(runner), {}, true});
  }
  if (!runners_.empty()) {
    grace_timer_.expires_after(config_.reconnect_grace);
    grace_timer_.async_wait([this](const error_code& ec) {
      if (ec) return;
      std::vector<std::string> missing;
      for (const auto& [address, entry] : runners_)
        if (entry.restored) missing.push_back(address);
      for (const auto& address : missing)
        remove_runner(address, "did not reconnect after a manager restart");
    });
    spdlog::info("restored {} runners and the assignment of {} groups from storage",
                 runners_.size(), groups_.size());
  }
  for (const auto& [address, entry] : runners_)
    for (const auto& type : entry.registration.entity_types) entity_types_.emplace(type.name, type);
  server_.listen();
  spdlog::info("manager listening on {}:{} ({} storage, {} shards per group)", config_.host,
               server_.port(), store_->backend_name(), config_.shards_per_group);
}

void manager::stop() {
  grace_timer_.cancel();
  server_.stop();
}

assignment_snapshot manager::snapshot() const {
  assignment_snapshot snap;
  snap.version = version_;
  snap.storage = store_->backend_name();
  std::map<std::string, std::uint32_t> shard_counts;
  for (const auto& [group, owners] : groups_) {
    snap.groups.push_back(
        shard_group_assignment{group, static_cast<std::uint32_t>(owners.size()), owners});
    for (const auto& owner : owners)
      if (!owner.empty()) ++shard_counts[owner];
  }
  for (const auto& [name, type] : entity_types_) snap.entity_types.push_back(type);
  for (const auto& [address, entry] : runners_) {
    runner_info info;
    info.name = entry.registration.name;
    info.address = address;
    info.groups = entry.registration.groups;
    info.version = entry.registration.version;
    auto conn = entry.conn.lock();
    info.healthy = conn && conn->is_open();
    info.shards = shard_counts[address];
    snap.runners.push_back(std::move(info));
  }
  return snap;
}

void manager::on_message(const connection_ptr& conn, envelope&& env) {
  std::string error;
  switch (static_cast<message_kind>(env.kind)) {
    case message_kind::register_runner: {
      auto msg = env.as<register_runner_msg>(&error);
      if (!msg) {
        conn->send_reply(env.id,
                         reply_msg::failure(errc::invalid_request,
                                            "register_runner has the wrong shape: " + error));
        return;
      }
      register_runner(conn, env.id, std::move(*msg));
      return;
    }
    case message_kind::unregister_runner: {
      auto msg = env.as<unregister_runner_msg>(&error);
      if (!msg) {
        conn->send_reply(env.id,
                         reply_msg::failure(errc::invalid_request,
                                            "unregister_runner has the wrong shape: " + error));
        return;
      }
      auto it = runners_.find(msg->address);
      if (it == runners_.end() || it->second.conn.lock() != conn) {
        conn->send_reply(env.id, reply_msg::failure(errc::invalid_request,
                                                    "runner " + msg->address +
                                                        " is not registered on this connection"));
        return;
      }
      remove_runner(msg->address, "unregistered");
      conn->send_reply(env.id, reply_msg{});
      return;
    }
    case message_kind::subscribe_assignments: {
      subscribers_.push_back(conn);
      conn->send_reply(env.id, reply_msg{});
      conn->send(message_kind::assignments, 0, snapshot());
      return;
    }
    case message_kind::get_status:
      conn->send_reply(env.id, reply_msg::success(pack_bytes(snapshot())));
      return;
    default:
      conn->send_reply(env.id, reply_msg::failure(errc::unknown_kind,
                                                  "the manager does not handle message kind " +
                                                      std::to_string(env.kind)));
  }
}

void manager::register_runner(const connection_ptr& conn, std::uint64_t id,
                              register_runner_msg&& msg) {
  if (!parse_host_port(msg.address) || msg.groups.empty()) {
    conn->send_reply(id,
                     reply_msg::failure(errc::invalid_request,
                                        "a runner needs a host:port address and a shard group"));
    return;
  }
  if (auto it = runners_.find(msg.address); it != runners_.end()) {
    auto previous = it->second.conn.lock();
    if (previous && previous != conn && previous->is_open()) {
      // Same address, new process: the old connection belongs to a dead or stale runner.
      spdlog::warn("runner {} registered again from a new connection", msg.address);
      previous->close();
    }
  }
  for (const auto& type : msg.entity_types) {
    auto [it, inserted] = entity_types_.emplace(type.name, type);
    if (!inserted && (it->second.group != type.group || it->second.rpcs.size() != type.rpcs.size()))
      spdlog::warn("runner {} declares entity type {} differently from other runners", msg.address,
                   type.name);
  }
  for (const auto& group : msg.groups)
    if (!groups_.count(group)) groups_[group] = shard_owners(config_.shards_per_group);
  spdlog::info("runner {} ({}) registered for groups [{}]", msg.name, msg.address,
               fmt::join(msg.groups, ", "));
  store_->save_runner(msg);
  const std::string address = msg.address;
  runners_[address] = runner_entry{std::move(msg), conn};
  conn->send_reply(id, reply_msg{});
  rebalance_all(true);
}

void manager::on_disconnect(const connection_ptr& conn) {
  std::erase_if(subscribers_, [&](const std::weak_ptr<connection>& weak) {
    auto live = weak.lock();
    return !live || live == conn;
  });
  for (const auto& [address, entry] : runners_) {
    if (entry.conn.lock() == conn) {
      remove_runner(address, "connection lost");
      return;
    }
  }
}

void manager::remove_runner(const std::string& address_ref, const std::string& why) {
  const std::string address = address_ref;  // the caller's reference may be the erased key
  auto it = runners_.find(address);
  if (it == runners_.end()) return;
  spdlog::info("runner {} ({}) left: {}", it->second.registration.name, address, why);
  runners_.erase(it);
  store_->remove_runner(address);
  rebalance_all(true);
}

void manager::rebalance_all(bool force_publish) {
  bool changed = force_publish;
  for (auto& [group, owners] : groups_) {
    std::vector<std::string> live;
    for (const auto& [address, entry] : runners_) {
      auto conn = entry.conn.lock();
      const bool serves =
          std::find(entry.registration.groups.begin(), entry.registration.groups.end(), group) !=
          entry.registration.groups.end();
      if (serves && ((conn && conn->is_open()) || entry.restored)) live.push_back(address);
    }
    if (live.empty()) continue;  // keep owners until some runner of the group is back
    auto result = rebalance(owners, live);
    if (result.owners != owners) {
      spdlog::info("group '{}': {} shards assigned, {} moved across {} runners", group,
                   result.assigned, result.moved, live.size());
      owners = std::move(result.owners);
      store_->save_assignment(group, owners);
      changed = true;
    }
  }
  if (changed) publish();
}

void manager::publish() {
  ++version_;
  const auto snap = snapshot();
  std::erase_if(subscribers_, [](const std::weak_ptr<connection>& weak) { return weak.expired(); });
  for (const auto& weak : subscribers_)
    if (auto conn = weak.lock()) conn->send(message_kind::assignments, 0, snap);
}

}  // namespace cluster::manager
