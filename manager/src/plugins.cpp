// The plugins stored in the cluster: uploads from `clusterctl plugin push` (admin), their
// list, their removal, and the chunks runners fetch. The bytes stay in the manager's memory
// (and in the store, for the next start); the snapshot carries only their metadata.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>

#include "cluster/manager/manager.hpp"
#include "cluster/protocol/assert.hpp"

namespace cluster::manager {

namespace {

std::int64_t unix_ms_now() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

bool same_file(const stored_plugin& a, const stored_plugin& b) {
  return a.name == b.name && a.version == b.version && a.sha256 == b.sha256 &&
         a.abi_major == b.abi_major && a.abi_minor == b.abi_minor && a.size_bytes == b.size_bytes &&
         a.entity_types == b.entity_types;
}

std::string short_hash(const std::string& sha256) { return sha256.substr(0, 12); }

}  // namespace

void manager::restore_plugins() {
  for (auto& stored : store_->load_plugins()) {
    const std::string name = stored.plugin.name;
    std::string why;
    if (auto valid = validate_stored_plugin(stored.plugin, config_.limits.registration); !valid)
      why = valid.error().message;
    else if (!stored.data || stored.data->size() != stored.plugin.size_bytes)
      why = "its stored bytes do not have its size";
    else if (security::sha256_hex(*stored.data) != stored.plugin.sha256)
      why = "its stored bytes do not match its sha256";
    if (!why.empty()) {
      spdlog::warn("dropping stored plugin '{}': {}", to_clean_text(name.substr(0, 128)), why);
      store_->remove_plugin(name);
      continue;
    }
    plugins_.emplace(name, std::move(stored));
  }
  if (!plugins_.empty()) spdlog::info("restored {} pushed plugins from storage", plugins_.size());
}

result<void> manager::admit_plugin(const stored_plugin& plugin) const {
  BOOST_OUTCOME_TRY(validate_stored_plugin(plugin, config_.limits.registration));
  const auto& limits = config_.limits;
  if (plugin.size_bytes > limits.max_plugin_bytes)
    return failure{errc::invalid_request, "the plugin is " + std::to_string(plugin.size_bytes) +
                                              " bytes; at most " +
                                              std::to_string(limits.max_plugin_bytes) +
                                              " are allowed (manager.max_plugin_bytes)"};
  std::uint64_t total = plugin.size_bytes;
  std::size_t count = 1;
  for (const auto& [name, stored] : plugins_) {
    if (name == plugin.name) continue;  // replaced
    total += stored.plugin.size_bytes;
    ++count;
  }
  if (count > limits.registration.max_plugins)
    return failure{errc::invalid_request,
                   "the cluster stores at most " + std::to_string(limits.registration.max_plugins) +
                       " plugins (manager.max_plugins_per_runner): remove one first"};
  if (total > limits.max_plugin_total_bytes)
    return failure{errc::invalid_request, "with this plugin the stored plugins would take " +
                                              std::to_string(total) + " bytes, more than the " +
                                              std::to_string(limits.max_plugin_total_bytes) +
                                              " allowed (manager.max_plugin_total_bytes)"};
  const std::size_t bytes = snapshot_bound(nullptr, &plugin);
  if (bytes > snapshot_limit())
    return failure{errc::invalid_request, "with this plugin the assignment snapshot could reach " +
                                              std::to_string(bytes) + " bytes, more than the " +
                                              std::to_string(snapshot_limit()) +
                                              " its subscribers accept"};
  return success();
}

void manager::serve_plugins(const connection_ptr& conn, envelope&& env) {
  const auto kind = static_cast<message_kind>(env.kind);
  auto refuse = [&](const std::string& what, const failure& why) {
    conn->send_reply(env.id, reply_msg::failure(errc::invalid_request,
                                                what + " has the wrong shape: " + why.message));
  };
  switch (kind) {
    case message_kind::push_plugin: {
      auto msg = env.as<push_plugin_msg>();
      if (!msg) {
        uploads_.erase(conn.get());
        refuse("push_plugin", msg.error());
        return;
      }
      push_plugin(conn, env.id, std::move(msg).value());
      return;
    }
    case message_kind::list_plugins: {
      plugins_msg out;
      for (const auto& [name, plugin] : plugins_) out.plugins.push_back(plugin.plugin);
      conn->send_reply(env.id, reply_msg::success(pack_bytes(out)));
      return;
    }
    case message_kind::remove_plugin: {
      auto msg = env.as<remove_plugin_msg>();
      if (!msg) {
        refuse("remove_plugin", msg.error());
        return;
      }
      remove_plugin(conn, env.id, msg.value().name);
      return;
    }
    case message_kind::fetch_plugin: {
      auto msg = env.as<fetch_plugin_msg>();
      if (!msg) {
        refuse("fetch_plugin", msg.error());
        return;
      }
      fetch_plugin(conn, env.id, msg.value());
      return;
    }
    default:
      CLUSTER_ASSERT(false, "serve_plugins gets the plugin kinds only");
  }
}

void manager::push_plugin(const connection_ptr& conn, std::uint64_t id, push_plugin_msg&& msg) {
  auto refuse = [&](const std::string& why) {
    // A refused chunk ends the upload: the next one must start again at offset 0.
    uploads_.erase(conn.get());
    spdlog::warn("refused a plugin upload from {} ({}): {}", conn->peer(),
                 to_clean_text(conn->peer_name.substr(0, 80)), why);
    conn->send_reply(id, reply_msg::failure(errc::invalid_request, why));
  };
  if (msg.chunk.size() > push_plugin_chunk_bytes)
    return refuse("a chunk is " + std::to_string(msg.chunk.size()) + " bytes; at most " +
                  std::to_string(push_plugin_chunk_bytes) + " are allowed");
  auto it = uploads_.find(conn.get());
  if (msg.offset == 0) {
    if (auto admitted = admit_plugin(msg.plugin); !admitted)
      return refuse(admitted.error().message);
    it = uploads_.insert_or_assign(conn.get(), plugin_upload{msg.plugin, {}}).first;
  } else if (it == uploads_.end()) {
    return refuse("no upload is in progress on this connection: the first chunk has offset 0");
  } else if (msg.offset != it->second.data.size()) {
    return refuse("a chunk at offset " + std::to_string(msg.offset) + ", expected " +
                  std::to_string(it->second.data.size()) + ": chunks go in order");
  } else if (!same_file(msg.plugin, it->second.plugin)) {
    return refuse("a chunk describes another plugin than the upload's first chunk");
  }
  plugin_upload& upload = it->second;
  if (upload.data.size() + msg.chunk.size() > upload.plugin.size_bytes)
    return refuse("the chunks pass the " + std::to_string(upload.plugin.size_bytes) +
                  " bytes the plugin claims");
  upload.data.insert(upload.data.end(), msg.chunk.begin(), msg.chunk.end());
  if (upload.data.size() < upload.plugin.size_bytes) {
    conn->send_reply(id, reply_msg{});
    return;
  }
  const std::string digest = security::sha256_hex(upload.data);
  if (digest != upload.plugin.sha256)
    return refuse("the upload's sha256 is " + digest + ", not the " + upload.plugin.sha256 +
                  " it claims; nothing is stored");
  // Other uploads may have finished meanwhile: the bounds are checked again.
  if (auto admitted = admit_plugin(upload.plugin); !admitted)
    return refuse(admitted.error().message);
  pushed_plugin stored{std::move(upload.plugin),
                       std::make_shared<const bytes>(std::move(upload.data))};
  uploads_.erase(it);
  const std::string name = stored.plugin.name;
  stored.plugin.pushed_at_ms = unix_ms_now();
  const auto previous = plugins_.find(name);
  spdlog::info(
      "plugin '{}' {} stored ({} bytes, sha256 {}){}, pushed by {} ({})", stored.plugin.name,
      stored.plugin.version, stored.plugin.size_bytes, short_hash(stored.plugin.sha256),
      previous == plugins_.end() ? ""
                                 : ", replacing " + previous->second.plugin.version + " (" +
                                       short_hash(previous->second.plugin.sha256) + ")",
      to_clean_text(conn->peer_name.substr(0, 80)), conn->peer());
  if (view_)
    view_->record("plugin_pushed", "plugin " + stored.plugin.name + " " + stored.plugin.version +
                                       " pushed by " +
                                       to_clean_text(conn->peer_name.substr(0, 80)));
  store_->save_plugin(stored);
  const auto reply = pack_bytes(stored.plugin);
  plugins_.insert_or_assign(name, std::move(stored));
  conn->send_reply(id, reply_msg::success(reply));
  publish();
}

void manager::remove_plugin(const connection_ptr& conn, std::uint64_t id, const std::string& name) {
  auto it = plugins_.find(name);
  if (it == plugins_.end()) {
    conn->send_reply(id, reply_msg::failure(errc::invalid_request,
                                            "no stored plugin is named '" +
                                                to_clean_text(name.substr(0, 128)) + "'"));
    return;
  }
  spdlog::info("plugin '{}' {} removed by {} ({})", name, it->second.plugin.version,
               to_clean_text(conn->peer_name.substr(0, 80)), conn->peer());
  if (view_)
    view_->record("plugin_removed", "plugin " + name + " " + it->second.plugin.version +
                                        " removed by " +
                                        to_clean_text(conn->peer_name.substr(0, 80)));
  plugins_.erase(it);
  store_->remove_plugin(name);
  conn->send_reply(id, reply_msg{});
  publish();
}

void manager::fetch_plugin(const connection_ptr& conn, std::uint64_t id,
                           const fetch_plugin_msg& msg) {
  const pushed_plugin* found = nullptr;
  for (const auto& [name, plugin] : plugins_)
    if (plugin.plugin.sha256 == msg.sha256) found = &plugin;
  if (found == nullptr) {
    // Removed or replaced since the snapshot the runner read: the next one says so.
    conn->send_reply(
        id, reply_msg::failure(errc::invalid_request, "no stored plugin has sha256 " +
                                                          to_clean_text(msg.sha256.substr(0, 64))));
    return;
  }
  const bytes& data = *found->data;
  if (msg.offset > data.size()) {
    conn->send_reply(
        id, reply_msg::failure(errc::invalid_request, "offset " + std::to_string(msg.offset) +
                                                          " is past the plugin's " +
                                                          std::to_string(data.size()) + " bytes"));
    return;
  }
  const std::size_t most = std::clamp<std::size_t>(msg.max_bytes, 1, push_plugin_chunk_bytes);
  const auto begin = data.begin() + static_cast<std::ptrdiff_t>(msg.offset);
  const auto count = std::min<std::size_t>(most, data.size() - msg.offset);
  plugin_chunk_msg chunk{data.size(), bytes(begin, begin + static_cast<std::ptrdiff_t>(count))};
  conn->send_reply(id, reply_msg::success(pack_bytes(chunk)));
}

}  // namespace cluster::manager
