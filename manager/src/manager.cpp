#include "cluster/manager/manager.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <limits>
#include <set>

#include "cluster/storage-pg/stores.hpp"

namespace cluster::manager {

namespace {

// Room for the frame around a snapshot: the envelope, and the reply that wraps it for
// get_status.
constexpr std::size_t frame_overhead = 4096;

// MessagePack sizes, rounded up (str8 counted as str16), for bounds computed without
// encoding 300 copies of an address.
std::size_t packed_str_bytes(std::size_t length) {
  return length + (length < 32 ? 1 : length < 65536 ? 3 : 5);
}
std::size_t packed_array_header_bytes(std::size_t count) {
  return count < 16 ? 1 : count < 65536 ? 3 : 5;
}

// Peer-supplied text for a log line: bounded, and printable whatever it holds.
std::string printable(std::string_view text) {
  constexpr std::size_t shown = 80;
  if (text.size() <= shown) return to_clean_text(text);
  return to_clean_text(text.substr(0, shown)) + "... (" + std::to_string(text.size()) + " bytes)";
}

}  // namespace

std::vector<config_section> manager_config::sections() {
  std::vector<config_section> sections;
  common.declare(sections);
  common.declare_storage(sections);
  sections.emplace_back("manager");
  common.declare_admin(sections.back());
  sections.back()
      .key("host", &host)
      .key("port", &port)
      .key("shards_per_group", &shards_per_group)
      .key("reconnect_grace_ms", &reconnect_grace)
      .key("health_check_interval_ms", &health_check_interval)
      .key("health_timeout_ms", &health_timeout)
      .key("probe_attempts", &probe_attempts)
      .key("probe_timeout_ms", &probe_timeout)
      .key("max_moves_per_rebalance", &max_moves_per_rebalance)
      .key("rebalance_interval_ms", &rebalance_interval)
      .key("plugin_settle_ms", &plugin_settle)
      .key("max_groups_per_runner", &limits.registration.max_groups)
      .key("max_entity_types_per_runner", &limits.registration.max_entity_types)
      .key("max_plugins_per_runner", &limits.registration.max_plugins)
      .key("max_snapshot_bytes", &limits.max_snapshot_bytes)
      .key("max_plugin_bytes", &limits.max_plugin_bytes)
      .key("max_plugin_total_bytes", &limits.max_plugin_total_bytes);
  return sections;
}

namespace {

// docs/security.md "Permissions": runners join, proxies and runners follow the assignment,
// every role reads status and the stored plugins, only admins change what others registered,
// dead letters and the stored plugins; runners (and admins) fetch plugin bytes.
std::shared_ptr<const permissions> manager_permissions() {
  auto allowed = std::make_shared<permissions>(every_role);
  allowed->allow(message_kind::register_runner, mask_of(role::runner))
      .allow(message_kind::unregister_runner, mask_of(role::runner, role::admin))
      .allow(message_kind::subscribe_assignments, mask_of(role::runner, role::proxy, role::admin))
      .allow(message_kind::get_status, every_role)
      .allow(message_kind::list_dead_letters, mask_of(role::admin))
      .allow(message_kind::replay_dead_letter, mask_of(role::admin))
      .allow(message_kind::drop_dead_letter, mask_of(role::admin))
      .allow(message_kind::push_plugin, mask_of(role::admin))
      .allow(message_kind::list_plugins, every_role)
      .allow(message_kind::remove_plugin, mask_of(role::admin))
      .allow(message_kind::fetch_plugin, mask_of(role::runner, role::admin));
  return allowed;
}

}  // namespace

manager::manager(asio::io_context& io, manager_config config, std::unique_ptr<manager_store> store)
    : io_(io),
      config_(std::move(config)),
      store_(std::move(store)),
      server_(
          io,
          server_options{config_.host,
                         config_.port,
                         config_.common.max_connections,
                         config_.common.limits(),
                         {"runner", "proxy"},
                         manager_permissions()},
          [this](const connection_ptr& conn, envelope&& env) { on_message(conn, std::move(env)); }),
      ping_timer_(io),
      expiry_timer_(io),
      rebalance_timer_(io),
      settle_timer_(io) {
  server_.on_disconnect = [this](const connection_ptr& conn) { on_disconnect(conn); };
}

void manager::start() {
  if (config_.shards_per_group == 0)
    throw config_error("manager.shards_per_group must be positive");
  dead_letters_ = make_dead_letter_store(io_, config_.common.storage);
  restore_from_store();
  restore_plugins();
  server_.listen();
  start_observing();
  asio::co_spawn(io_, health_loop(), asio::detached);
  schedule_expiry();
  spdlog::info("manager listening on {}:{} ({} storage, {} shards per group)", config_.host,
               server_.port(), store_->backend_name(), config_.shards_per_group);
}

void manager::stop(std::function<void()> on_stopped) {
  stopped_ = true;
  *alive_ = false;
  if (view_) view_->stop();
  ping_timer_.cancel();
  expiry_timer_.cancel();
  rebalance_timer_.cancel();
  settle_timer_.cancel();
  server_.stop();
  dead_letters_.reset();  // drops queued operations: their connections are closed
  // Nothing is left in flight: every store call returned before its handler did.
  if (on_stopped) asio::post(io_, std::move(on_stopped));
}

void manager::restore_from_store() {
  // Runners from a previous life must register again over a live connection; until then
  // their shards keep their owners so that a manager restart moves nothing.
  const auto keep_until = steady_clock::now() + config_.reconnect_grace;
  std::size_t dropped_runners = 0;
  for (auto& runner : store_->load_runners()) {
    const std::string address = runner.address;  // not runner.address: it is moved below
    // A registration this manager would refuse (an older version stored it) must not make
    // the snapshot, and with it `clusterctl status`, fail after every restart.
    if (auto refused = admit_registration(runner); !refused) {
      spdlog::warn("dropping runner {} from storage: {}", printable(address),
                   refused.error().message);
      store_->remove_runner(address);
      ++dropped_runners;
      continue;
    }
    // Types from a previous life have settled: they decided the stored assignment.
    for (const auto& type : runner.entity_types)
      type_since_.emplace(type.name, steady_clock::time_point::min());
    runners_.emplace(address, runner_entry{std::move(runner), {}, keep_until, next_generation_++});
  }
  std::set<std::string> served;
  for (const auto& [address, entry] : runners_)
    served.insert(entry.registration.groups.begin(), entry.registration.groups.end());
  std::size_t dropped_groups = 0;
  for (auto& [group, owners] : store_->load_assignments()) {
    if (!served.count(group)) {
      store_->save_assignment(group, {});
      ++dropped_groups;
      continue;
    }
    owners.resize(config_.shards_per_group);
    // Only addresses of known runners: anything else is orphaned and assigned again.
    for (auto& owner : owners)
      if (!owner.empty() && !runners_.count(owner)) owner.clear();
    groups_.emplace(group, std::move(owners));
  }
  forget_unserved();  // collects the entity types; every stored group is served here
  if (dropped_runners > 0 || dropped_groups > 0)
    spdlog::warn(
        "dropped {} runners and {} shard groups from storage (invalid, or no runner "
        "serves them)",
        dropped_runners, dropped_groups);
  if (!runners_.empty())
    spdlog::info("restored {} runners and the assignment of {} groups from storage",
                 runners_.size(), groups_.size());
}

std::size_t manager::snapshot_limit() const {
  const std::size_t frame = config_.common.max_frame_bytes;
  const std::size_t accepted = frame > 2 * frame_overhead ? frame - frame_overhead : frame / 2;
  return config_.limits.max_snapshot_bytes == 0
             ? accepted
             : std::min<std::size_t>(config_.limits.max_snapshot_bytes, accepted);
}

std::size_t manager::subscriber_count() const {
  return static_cast<std::size_t>(std::count_if(subscribers_.begin(), subscribers_.end(),
                                                [](const auto& weak) { return !weak.expired(); }));
}

std::size_t manager::snapshot_bound(const register_runner_msg* registration,
                                    const stored_plugin* plugin) const {
  // The snapshot without owners, encoded; the owners are added by arithmetic.
  assignment_snapshot snap;
  snap.version = std::numeric_limits<std::uint64_t>::max();
  snap.storage = store_->backend_name();
  std::size_t longest_address = registration ? registration->address.size() : 0;
  std::set<std::string> groups;
  auto add_runner = [&](const register_runner_msg& runner) {
    runner_info info;
    info.name = runner.name;
    info.address = runner.address;
    info.groups = runner.groups;
    info.version = runner.version;
    info.shards = std::numeric_limits<std::uint32_t>::max();
    info.plugins = runner.plugins;
    info.admin_address = runner.admin_address;
    snap.runners.push_back(std::move(info));
    groups.insert(runner.groups.begin(), runner.groups.end());
  };
  if (registration) add_runner(*registration);
  for (const auto& [address, entry] : runners_) {
    if (registration && address == registration->address) continue;
    longest_address = std::max(longest_address, address.size());
    add_runner(entry.registration);
  }
  for (const auto& [name, type] : entity_types_) snap.entity_types.push_back(type);
  if (registration)
    for (const auto& type : registration->entity_types)
      if (!entity_types_.count(type.name)) snap.entity_types.push_back(type);
  for (const auto& [name, stored] : plugins_)
    if (!plugin || name != plugin->name) snap.pushed_plugins.push_back(stored.plugin);
  if (plugin) {
    snap.pushed_plugins.push_back(*plugin);
    snap.pushed_plugins.back().pushed_at_ms = std::numeric_limits<std::int64_t>::max();
  }
  const std::size_t shards = config_.shards_per_group;
  for (const auto& group : groups)
    snap.groups.push_back(
        shard_group_assignment{group, std::numeric_limits<std::uint32_t>::max(), {}});
  // Each group's empty owner list (one byte) becomes `shards` owners.
  const std::size_t owners_bytes =
      packed_array_header_bytes(shards) - 1 + shards * packed_str_bytes(longest_address);
  return pack_bytes(snap).size() + groups.size() * owners_bytes;
}

result<void> manager::admit_registration(const register_runner_msg& registration) const {
  BOOST_OUTCOME_TRY(validate_registration(registration, config_.limits.registration));
  if (!parse_host_port(registration.address))
    return failure{errc::invalid_request,
                   "address '" + printable(registration.address) + "' is not host:port"};
  // The dashboard dials it: host:port or nothing, never a URL of the runner's choosing.
  if (!registration.admin_address.empty() && !parse_host_port(registration.admin_address))
    return failure{
        errc::invalid_request,
        "admin address '" + printable(registration.admin_address) + "' is not host:port"};
  const std::size_t bytes = snapshot_bytes_with(registration);
  if (bytes > snapshot_limit())
    return failure{errc::invalid_request,
                   "with this runner the assignment snapshot could reach " + std::to_string(bytes) +
                       " bytes, more than the " + std::to_string(snapshot_limit()) +
                       " its subscribers accept (cluster.max_frame_bytes, "
                       "manager.max_snapshot_bytes): declare fewer groups or entity types"};
  return success();
}

void manager::forget_unserved() {
  std::set<std::string> served, declared;
  for (const auto& [address, entry] : runners_) {
    served.insert(entry.registration.groups.begin(), entry.registration.groups.end());
    for (const auto& type : entry.registration.entity_types) declared.insert(type.name);
  }
  for (auto it = groups_.begin(); it != groups_.end();) {
    if (served.count(it->first)) {
      ++it;
      continue;
    }
    spdlog::info("shard group '{}' has no runner any more; its assignment is dropped", it->first);
    store_->save_assignment(it->first, {});
    it = groups_.erase(it);
  }
  // The union of what the registrations declare: during a rollout one runner may have an
  // RPC the others do not have yet, and the router must not refuse it as unknown.
  std::map<std::string, entity_type_info> types;
  for (const auto& [address, entry] : runners_) {
    for (const auto& type : entry.registration.entity_types) {
      auto [it, inserted] = types.emplace(type.name, type);
      if (inserted) continue;
      for (const auto& rpc : type.rpcs)
        if (it->second.find_rpc(rpc.name) == nullptr) it->second.rpcs.push_back(rpc);
    }
  }
  entity_types_ = std::move(types);
  std::erase_if(type_since_, [&](const auto& type) { return !declared.count(type.first); });
}

bool manager::is_live(const runner_entry& entry) const {
  auto conn = entry.conn.lock();
  return (conn && conn->is_open()) || entry.keep_until.has_value();
}

awaitable<void> manager::health_loop() {
  while (!stopped_) {
    const auto now = steady_clock::now();
    for (const auto& [address, entry] : runners_) {
      auto conn = entry.conn.lock();
      if (!conn || !conn->is_open()) continue;
      if (now - conn->last_heard() > config_.health_timeout) {
        // Its disconnect handler probes the runner before any shard moves.
        spdlog::warn("runner {} ({}) sent nothing for {} ms; dropping its connection",
                     entry.registration.name, address,
                     std::chrono::duration_cast<milliseconds>(now - conn->last_heard()).count());
        conn->close();
      } else {
        conn->send(message_kind::ping, next_ping_id_++, empty_msg{});
      }
    }
    ping_timer_.expires_after(config_.health_check_interval);
    error_code ec;
    co_await ping_timer_.async_wait(asio::redirect_error(use_awaitable, ec));
  }
}

void manager::schedule_expiry() {
  std::optional<steady_clock::time_point> earliest;
  for (const auto& [address, entry] : runners_)
    if (entry.keep_until && !entry.conn.lock())
      earliest = earliest ? std::min(*earliest, *entry.keep_until) : *entry.keep_until;
  if (!earliest || stopped_) {
    expiry_timer_.cancel();
    return;
  }
  expiry_timer_.expires_at(*earliest);
  expiry_timer_.async_wait([this](const error_code& ec) {
    if (!ec && !stopped_) expire_kept_runners();
  });
}

void manager::expire_kept_runners() {
  const auto now = steady_clock::now();
  std::vector<std::string> expired;
  for (const auto& [address, entry] : runners_)
    if (entry.keep_until && *entry.keep_until <= now && !entry.conn.lock())
      expired.push_back(address);
  for (const auto& address : expired)
    remove_runner(address, "did not register again in time", true);
  schedule_expiry();
}

std::vector<std::string> manager::eligible_for(const std::string& group,
                                               steady_clock::time_point now) const {
  std::vector<std::string> group_types;
  for (const auto& [name, type] : entity_types_) {
    if (type.group != group) continue;
    auto since = type_since_.find(name);
    // A type that just appeared is not counted yet: the other runners may be loading it.
    // (Compared so that min(), a type restored from storage, cannot overflow.)
    if (since == type_since_.end() || since->second <= now - config_.plugin_settle)
      group_types.push_back(name);
  }
  std::vector<runner_types> live;
  for (const auto& [address, entry] : runners_) {
    const auto& groups = entry.registration.groups;
    if (std::find(groups.begin(), groups.end(), group) == groups.end() || !is_live(entry)) continue;
    runner_types runner{address, {}};
    for (const auto& type : entry.registration.entity_types)
      runner.entity_types.push_back(type.name);
    // A type it just dropped still counts: the others may be dropping it too.
    for (const auto& [name, gone_at] : entry.departed)
      if (now - gone_at < config_.plugin_settle) runner.entity_types.push_back(name);
    live.push_back(std::move(runner));
  }
  return eligible_runners(group_types, live);
}

void manager::schedule_settle() {
  const auto now = steady_clock::now();
  std::optional<steady_clock::time_point> next;
  auto consider = [&](steady_clock::time_point since) {
    if (since == steady_clock::time_point::min()) return;
    const auto at = since + config_.plugin_settle;
    if (at > now) next = next ? std::min(*next, at) : at;
  };
  for (const auto& [name, since] : type_since_) consider(since);
  for (auto& [address, entry] : runners_) {
    std::erase_if(entry.departed,
                  [&](const auto& gone) { return now - gone.second >= config_.plugin_settle; });
    for (const auto& [name, gone_at] : entry.departed) consider(gone_at);
  }
  if (!next || stopped_) return;
  settle_timer_.expires_at(*next);
  settle_timer_.async_wait([this](const error_code& ec) {
    if (ec || stopped_) return;
    rebalance_all(false);
  });
}

void manager::schedule_rebalance() {
  rebalance_timer_.expires_at(last_rebalance_ + config_.rebalance_interval);
  rebalance_timer_.async_wait([this](const error_code& ec) {
    if (!ec && !stopped_ && rebalance_pending_) rebalance_all(false);
  });
}

awaitable<void> manager::probe_runner(std::string address, std::uint64_t generation) {
  auto current = [&]() -> runner_entry* {
    auto it = runners_.find(address);
    return it == runners_.end() || it->second.generation != generation ? nullptr : &it->second;
  };
  std::string last_error = "bad address";
  const auto target = parse_host_port(address);
  for (std::uint32_t attempt = 0; target && attempt < config_.probe_attempts; ++attempt) {
    if (attempt > 0) co_await sleep_for(config_.probe_timeout / 2);
    if (stopped_ || !current()) co_return;
    const hello_msg hello{protocol_version, "manager", "manager"};
    connection::message_handler ignore = [](const connection_ptr&, envelope&&) {};
    std::function<void()> on_close;
    auto connect = connect_to(*target, hello, config_.common.limits(), config_.probe_timeout,
                              ignore, on_close, mask_of(role::runner));
    auto connected = co_await std::move(connect);
    if (connected) connected.value()->close();
    if (stopped_ || !current()) co_return;
    if (connected) {
      spdlog::warn(
          "runner {} lost its manager connection but answers; it keeps its shards "
          "for up to {} ms while it registers again",
          address, config_.reconnect_grace.count());
      co_return;
    }
    last_error = connected.error().message;
  }
  if (current())
    remove_runner(address, "connection lost and not reachable (" + last_error + ")", true);
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
  for (const auto& [name, plugin] : plugins_) snap.pushed_plugins.push_back(plugin.plugin);
  for (const auto& [address, entry] : runners_) {
    runner_info info;
    info.name = entry.registration.name;
    info.address = address;
    info.groups = entry.registration.groups;
    info.version = entry.registration.version;
    info.plugins = entry.registration.plugins;
    info.admin_address = entry.registration.admin_address;
    auto conn = entry.conn.lock();
    info.healthy = conn && conn->is_open();
    info.shards = shard_counts[address];
    snap.runners.push_back(std::move(info));
  }
  return snap;
}

void manager::on_message(const connection_ptr& conn, envelope&& env) {
  switch (static_cast<message_kind>(env.kind)) {
    case message_kind::register_runner: {
      auto msg = env.as<register_runner_msg>();
      if (!msg) {
        conn->send_reply(env.id, reply_msg::failure(errc::invalid_request,
                                                    "register_runner has the wrong shape: " +
                                                        msg.error().message));
        return;
      }
      register_runner(conn, env.id, std::move(msg).value());
      return;
    }
    case message_kind::unregister_runner: {
      auto msg = env.as<unregister_runner_msg>();
      if (!msg) {
        conn->send_reply(env.id, reply_msg::failure(errc::invalid_request,
                                                    "unregister_runner has the wrong shape: " +
                                                        msg.error().message));
        return;
      }
      unregister_runner(conn, env.id, msg.value().address);
      return;
    }
    case message_kind::subscribe_assignments:
      subscribe(conn, env.id);
      return;
    case message_kind::get_status:
      conn->send_reply(env.id, reply_msg::success(pack_bytes(snapshot())));
      return;
    case message_kind::list_dead_letters:
    case message_kind::replay_dead_letter:
    case message_kind::drop_dead_letter:
      serve_dead_letters(conn, std::move(env));
      return;
    case message_kind::push_plugin:
    case message_kind::list_plugins:
    case message_kind::remove_plugin:
    case message_kind::fetch_plugin:
      serve_plugins(conn, std::move(env));
      return;
    default:
      conn->send_reply(env.id, reply_msg::failure(errc::unknown_kind,
                                                  "the manager does not handle message kind " +
                                                      std::to_string(env.kind)));
  }
}

void manager::unregister_runner(const connection_ptr& conn, std::uint64_t id,
                                const std::string& address) {
  auto it = runners_.find(address);
  const bool own = it != runners_.end() && it->second.conn.lock() == conn;
  if (own) {
    remove_runner(address, "unregistered", false);
    conn->send_reply(id, reply_msg{});
    return;
  }
  if (conn->peer_role != "admin") {
    spdlog::warn(
        "refused unregister_runner of {} from {} (role {}, name {}): not its own "
        "registration",
        printable(address), conn->peer(), printable(conn->peer_role), printable(conn->peer_name));
    conn->send_reply(id, reply_msg::failure(errc::forbidden,
                                            "runner " + printable(address) +
                                                " is not registered on this connection; only an "
                                                "admin may unregister another runner"));
    return;
  }
  if (it == runners_.end()) {
    conn->send_reply(id, reply_msg::failure(errc::invalid_request,
                                            "no runner is registered at " + printable(address)));
    return;
  }
  // A runner that is still connected releases its shards when the next snapshot gives them
  // to others. One without a connection may only be frozen: fence it, as when it is
  // declared dead, so its shard locks go now.
  auto live = it->second.conn.lock();
  const bool connected = live && live->is_open();
  spdlog::warn("runner {} ({}) unregistered by admin {} ({})", it->second.registration.name,
               address, printable(conn->peer_name), conn->peer());
  remove_runner(address, "unregistered by an admin", !connected);
  conn->send_reply(id, reply_msg{});
}

void manager::subscribe(const connection_ptr& conn, std::uint64_t id) {
  // One subscription per connection: a repeat is answered but adds nothing (a subscriber
  // already has the current snapshot, and will get each change once).
  const bool subscribed = std::any_of(subscribers_.begin(), subscribers_.end(),
                                      [&](const auto& weak) { return weak.lock() == conn; });
  conn->send_reply(id, reply_msg{});
  if (subscribed) return;
  subscribers_.push_back(conn);
  conn->send(message_kind::assignments, 0, snapshot());
}

void manager::serve_dead_letters(const connection_ptr& conn, envelope&& env) {
  if (!dead_letters_) {
    conn->send_reply(env.id, reply_msg::failure(errc::invalid_request,
                                                "dead letters need the postgres storage backend"));
    return;
  }
  // The reply goes out on the io_context thread once the store answers, if the caller waits.
  std::weak_ptr<connection> weak = conn;
  const auto id = env.id;
  if (static_cast<message_kind>(env.kind) == message_kind::list_dead_letters) {
    auto msg = env.as<list_dead_letters_msg>();
    if (!msg) {
      conn->send_reply(
          id, reply_msg::failure(errc::invalid_request,
                                 "list_dead_letters has the wrong shape: " + msg.error().message));
      return;
    }
    dead_letters_->list(
        msg.value().limit, [weak, id](result<std::vector<dead_letter_info>> listed) {
          auto caller = weak.lock();
          if (!caller) return;
          if (!listed) {
            caller->send_reply(id, reply_msg::failure(listed.error()));
            return;
          }
          caller->send_reply(
              id, reply_msg::success(pack_bytes(dead_letters_msg{std::move(listed).value()})));
        });
    return;
  }
  auto msg = env.as<dead_letter_ref_msg>();
  if (!msg) {
    conn->send_reply(id, reply_msg::failure(
                             errc::invalid_request,
                             "a dead letter request has the wrong shape: " + msg.error().message));
    return;
  }
  const bool replay = static_cast<message_kind>(env.kind) == message_kind::replay_dead_letter;
  const auto letter = msg.value().id;
  auto done = [weak, id, letter, replay](result<bool> changed) {
    auto caller = weak.lock();
    if (!caller) return;
    if (!changed) {
      caller->send_reply(id, reply_msg::failure(changed.error()));
    } else if (!changed.value()) {
      caller->send_reply(id, reply_msg::failure(errc::invalid_request,
                                                "no dead letter " + std::to_string(letter)));
    } else {
      spdlog::info("dead letter {} {}", letter, replay ? "replayed" : "dropped");
      caller->send_reply(id, reply_msg{});
    }
  };
  if (replay) {
    dead_letters_->replay(letter, std::move(done));
  } else {
    dead_letters_->drop(letter, std::move(done));
  }
}

void manager::register_runner(const connection_ptr& conn, std::uint64_t id,
                              register_runner_msg&& msg) {
  // Checked before anything is stored: a registration decides the size of every snapshot.
  if (auto refused = admit_registration(msg); !refused) {
    spdlog::warn("refused register_runner from {} (role {}, name {}): {}", conn->peer(),
                 printable(conn->peer_role), printable(conn->peer_name), refused.error().message);
    conn->send_reply(id, reply_msg::failure(refused.error()));
    return;
  }
  const auto now = steady_clock::now();
  // Types an earlier registration of the same runner declared, and when they went.
  std::map<std::string, steady_clock::time_point> departed;
  bool update = false;
  if (auto it = runners_.find(msg.address); it != runners_.end()) {
    auto previous = it->second.conn.lock();
    // The same connection again: the runner's plugins changed. It is the same runner, so
    // its shards stay unless the new types move them.
    update = previous == conn;
    if (previous && previous != conn && previous->is_open()) {
      // Same address, new process: the old connection belongs to a dead or stale runner.
      spdlog::warn("runner {} registered again from a new connection", msg.address);
      previous->close();
    }
    departed = std::move(it->second.departed);
    for (const auto& type : it->second.registration.entity_types) departed.emplace(type.name, now);
    for (const auto& type : msg.entity_types) departed.erase(type.name);
  }
  for (const auto& type : msg.entity_types) {
    type_since_.emplace(type.name, now);
    auto it = entity_types_.find(type.name);
    if (it != entity_types_.end() &&
        (it->second.group != type.group || it->second.rpcs.size() != type.rpcs.size()))
      spdlog::warn("runner {} declares entity type {} differently from other runners", msg.address,
                   type.name);
  }
  for (const auto& group : msg.groups)
    if (!groups_.count(group)) groups_[group] = shard_owners(config_.shards_per_group);
  if (update) {
    spdlog::info("runner {} ({}) updated its registration: {} entity types, {} plugins", msg.name,
                 msg.address, msg.entity_types.size(), msg.plugins.size());
  } else {
    spdlog::info("runner {} ({}) registered for groups [{}]", msg.name, msg.address,
                 fmt::join(msg.groups, ", "));
  }
  {
    // The same process (incarnation) registering again is no join; a restarted one is.
    const auto known = runners_.find(msg.address);
    const bool same =
        known != runners_.end() && known->second.registration.incarnation == msg.incarnation;
    if (view_) record_registration(same ? &known->second.registration : nullptr, msg);
  }
  store_->save_runner(msg);
  const std::string address = msg.address;
  runners_[address] =
      runner_entry{std::move(msg), conn, std::nullopt, next_generation_++, std::move(departed)};
  forget_unserved();  // it may have registered before with other groups
  conn->send_reply(id, reply_msg{});
  rebalance_all(true);
}

void manager::on_disconnect(const connection_ptr& conn) {
  uploads_.erase(conn.get());  // an upload cut short stores nothing
  std::erase_if(subscribers_, [&](const std::weak_ptr<connection>& weak) {
    auto live = weak.lock();
    return !live || live == conn;
  });
  for (auto& [address, entry] : runners_) {
    if (entry.conn.lock() != conn) continue;
    // Shards move only once the runner is confirmed gone: a dropped connection alone may be
    // a network blip or a slow manager, and moving every shard of a live runner is costly.
    entry.conn.reset();
    entry.keep_until = steady_clock::now() + config_.reconnect_grace;
    entry.generation = next_generation_++;
    spdlog::warn("runner {} ({}) lost its connection; probing it", entry.registration.name,
                 address);
    asio::co_spawn(io_, probe_runner(address, entry.generation), asio::detached);
    schedule_expiry();
    publish();  // its health changed
    return;
  }
}

void manager::remove_runner(const std::string& address_ref, const std::string& why, bool fence) {
  const std::string address = address_ref;  // the caller's reference may be the erased key
  auto it = runners_.find(address);
  if (it == runners_.end()) return;
  spdlog::info("runner {} ({}) left: {}", it->second.registration.name, address, why);
  if (view_)
    view_->record("runner_left",
                  "runner " + it->second.registration.name + " (" + address + ") left: " + why);
  const std::string name = it->second.registration.name;
  const std::string incarnation = it->second.registration.incarnation;
  runners_.erase(it);
  store_->remove_runner(address);
  // A runner declared dead may only be frozen: its storage sessions would keep its shard
  // locks (and its shards unserved) for as long as it stays so. Ending them lets the new
  // owners take the locks on their next try; if it wakes, it finds its sessions gone.
  if (fence && !incarnation.empty()) {
    store_->fence_runner(incarnation, [name, address](result<std::size_t> ended) {
      // The store's thread: log only, the manager's state is its loop's.
      if (!ended)
        spdlog::warn("runner {} ({}) could not be fenced: {}", name, address,
                     ended.error().message);
      else
        spdlog::info("runner {} ({}) fenced: {} storage sessions ended", name, address,
                     ended.value());
    });
  }
  forget_unserved();
  rebalance_all(true);
}

void manager::rebalance_all(bool force_publish) {
  bool changed = force_publish;
  const auto now = steady_clock::now();
  // Orphaned shards are assigned at once; moves between live runners are rate-limited so
  // that joins during a rolling deploy do not turn into a storm of moves.
  std::size_t budget =
      now - last_rebalance_ >= config_.rebalance_interval ? config_.max_moves_per_rebalance : 0;
  bool limited = false;
  for (auto& [group, owners] : groups_) {
    // Shards of a runner lacking a type others have are taken from it at once, like those
    // of a runner that left: it would answer UnknownEntityType for them.
    const auto live = eligible_for(group, now);
    // Runners of the group that are away keep their shards until they are declared gone;
    // a group no registered runner serves was dropped (forget_unserved).
    if (live.empty()) continue;
    auto result = rebalance(owners, live, budget);
    limited = limited || result.limited;
    budget -= std::min(budget, result.moved);
    if (result.owners != owners) {
      spdlog::info("group '{}': {} shards assigned, {} moved across {} runners{}", group,
                   result.assigned, result.moved, live.size(),
                   limited ? " (more moves follow, rate-limited)" : "");
      if (result.moved > 0) last_rebalance_ = now;
      if (shard_moves_ != nullptr) shard_moves_->inc(result.moved + result.assigned);
      if (view_)
        view_->record("shards_moved", "group " + group + ": " + std::to_string(result.assigned) +
                                          " shards assigned, " + std::to_string(result.moved) +
                                          " moved across " + std::to_string(live.size()) +
                                          " runners");
      owners = std::move(result.owners);
      store_->save_assignment(group, owners);
      changed = true;
    }
  }
  rebalance_pending_ = limited;
  if (limited) schedule_rebalance();
  schedule_settle();
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
