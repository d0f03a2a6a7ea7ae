#pragma once
// The manager's store: its interface and the memory backend (storage-pg has PostgreSQL's).

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "cluster/protocol/messages.hpp"
#include "cluster/protocol/result.hpp"

namespace cluster {

/// The `application_name` of a runner incarnation's storage sessions: how the manager finds
/// them to end them (fits PostgreSQL's 63 bytes for incarnations up to 48 characters).
inline std::string runner_session_name(const std::string& incarnation) {
  return "cluster-runner/" + incarnation;
}

/// A plugin stored in the cluster (clusterctl plugin push): its metadata and its bytes,
/// shared because they may be large (up to manager.max_plugin_bytes) and never change.
struct pushed_plugin {
  stored_plugin plugin;
  std::shared_ptr<const bytes> data;
};

/// The manager's durable state: registered runners, shard owners per group and pushed
/// plugins.
///
/// Called from the manager's event-loop thread. Writes return at once and never wait for
/// the storage: a durable backend stores them later, in order, and keeps retrying while the
/// storage is away (the manager's memory is authoritative while it lives). The loads are
/// for start-up: a durable backend answers them with what it read when it was opened.
class manager_store {
 public:
  virtual ~manager_store() = default;
  virtual std::string backend_name() const = 0;
  virtual void save_runner(const register_runner_msg& runner) = 0;
  virtual void remove_runner(const std::string& address) = 0;
  /// owners[i] is the address owning shard i + 1 of `group`, "" if none. Empty `owners`
  /// forgets the group (no runner serves it any more).
  virtual void save_assignment(const std::string& group,
                               const std::vector<std::string>& owners) = 0;
  /// Stores `plugin`, replacing a stored plugin of the same name.
  virtual void save_plugin(const pushed_plugin& plugin) = 0;
  virtual void remove_plugin(const std::string& name) = 0;
  virtual std::vector<register_runner_msg> load_runners() = 0;
  virtual std::map<std::string, std::vector<std::string>> load_assignments() = 0;
  virtual std::vector<pushed_plugin> load_plugins() = 0;
  /// Blocks up to `timeout` until every write made so far is stored; false when some are
  /// not. For shutdown and tests only: never on an event loop.
  virtual bool flush(std::chrono::milliseconds /*timeout*/) { return true; }
  /// Did the latest attempt to reach the storage succeed?
  virtual bool reachable() const { return true; }

  /// How many sessions a fence ended, or why it could not run.
  using fence_done = std::function<void(result<std::size_t>)>;
  /// Ends every storage session of the runner incarnation `incarnation` (a runner the manager
  /// declared dead), so the shard locks those sessions hold go now rather than when the
  /// runner wakes up or its TCP connections time out. Returns at once; the backend retries
  /// while the storage is away. `done` runs once, on the store's own thread (the memory
  /// backend, which has no sessions: inside the call, with 0).
  virtual void fence_runner(const std::string& /*incarnation*/, fence_done done) { done(0); }
};

/// Keeps the state in memory: lost with the process.
class memory_manager_store final : public manager_store {
 public:
  std::string backend_name() const override { return "memory"; }
  void save_runner(const register_runner_msg& runner) override {
    runners_[runner.address] = runner;
  }
  void remove_runner(const std::string& address) override { runners_.erase(address); }
  std::vector<register_runner_msg> load_runners() override {
    std::vector<register_runner_msg> out;
    for (const auto& [address, runner] : runners_) out.push_back(runner);
    return out;
  }
  void save_assignment(const std::string& group, const std::vector<std::string>& owners) override {
    if (owners.empty()) {
      assignments_.erase(group);
    } else {
      assignments_[group] = owners;
    }
  }
  std::map<std::string, std::vector<std::string>> load_assignments() override {
    return assignments_;
  }
  void save_plugin(const pushed_plugin& plugin) override { plugins_[plugin.plugin.name] = plugin; }
  void remove_plugin(const std::string& name) override { plugins_.erase(name); }
  std::vector<pushed_plugin> load_plugins() override {
    std::vector<pushed_plugin> out;
    for (const auto& [name, plugin] : plugins_) out.push_back(plugin);
    return out;
  }

 private:
  std::map<std::string, register_runner_msg> runners_;
  std::map<std::string, std::vector<std::string>> assignments_;
  std::map<std::string, pushed_plugin> plugins_;
};

}  // namespace cluster
