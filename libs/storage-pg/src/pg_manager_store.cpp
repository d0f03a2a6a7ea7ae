#include "cluster/storage-pg/pg_manager_store.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

#include "cluster/protocol/codec.hpp"
#include "cluster/storage-pg/postgres.hpp"

namespace cluster {

namespace {

constexpr std::chrono::milliseconds first_retry{100};
constexpr std::chrono::milliseconds last_retry{5000};
/// How long closing the store waits for writes still queued.
constexpr std::chrono::milliseconds closing_flush{5000};

/// Writes not stored yet, newest value per key: a runner's row (nullopt: delete it) and a
/// group's owners. Only the latest value of a key matters, so a long outage queues at most
/// one entry per runner and group.
struct changes {
  struct runner_row {
    std::string name;
    bytes registration;
  };
  std::map<std::string, std::optional<runner_row>> runners;
  std::map<std::string, std::vector<std::string>> groups;
  std::map<std::string, std::optional<pushed_plugin>> plugins;  // nullopt: delete it

  bool empty() const { return runners.empty() && groups.empty() && plugins.empty(); }
  std::size_t size() const { return runners.size() + groups.size() + plugins.size(); }
  /// Puts back a batch that failed, under the changes made since (those are newer).
  void restore_under(changes&& failed) {
    runners.merge(failed.runners);
    groups.merge(failed.groups);
    plugins.merge(failed.plugins);
  }
};

/// The manager's state in PostgreSQL. The session belongs to one worker thread: the
/// manager's thread only queues changes under `mutex_`, so neither a slow database nor a
/// reconnect during a failover ever delays its pings and rebalances.
class pg_manager_store final : public manager_store {
 public:
  /// Start-up: connects, migrates and reads the stored state on the calling thread.
  explicit pg_manager_store(const storage_settings& settings) : settings_(settings) {
    session_ = std::make_unique<pg::connection>(settings_.conninfo(), settings_.application_name);
    pg::migrate(*session_, settings_.table_prefix);
    runners_at_start_ = read_runners(*session_);
    assignments_at_start_ = read_assignments(*session_);
    plugins_at_start_ = read_plugins(*session_);
    worker_ = std::thread([this] { work(); });
  }
  ~pg_manager_store() override {
    if (!flush(closing_flush))
      spdlog::error("manager storage: {} changes were not stored before the manager stopped",
                    queued_size());
    {
      std::lock_guard lock(mutex_);
      closing_ = true;
    }
    wake_.notify_all();
    worker_.join();
  }

  std::string backend_name() const override { return "postgres"; }

  void save_runner(const register_runner_msg& runner) override {
    queue([&](changes& c) {
      c.runners[runner.address] = changes::runner_row{runner.name, pack_bytes(runner)};
    });
  }
  void remove_runner(const std::string& address) override {
    queue([&](changes& c) { c.runners[address] = std::nullopt; });
  }
  void save_assignment(const std::string& group, const std::vector<std::string>& owners) override {
    queue([&](changes& c) { c.groups[group] = owners; });
  }
  void save_plugin(const pushed_plugin& plugin) override {
    queue([&](changes& c) { c.plugins[plugin.plugin.name] = plugin; });
  }
  void remove_plugin(const std::string& name) override {
    queue([&](changes& c) { c.plugins[name] = std::nullopt; });
  }
  std::vector<pushed_plugin> load_plugins() override { return std::move(plugins_at_start_); }
  std::vector<register_runner_msg> load_runners() override { return runners_at_start_; }
  std::map<std::string, std::vector<std::string>> load_assignments() override {
    return assignments_at_start_;
  }

  bool flush(std::chrono::milliseconds timeout) override {
    std::unique_lock lock(mutex_);
    const std::uint64_t wanted = queued_count_;
    return stored_.wait_for(lock, timeout, [&] { return stored_count_ >= wanted; });
  }
  bool reachable() const override { return reachable_; }

  void fence_runner(const std::string& incarnation, fence_done done) override {
    {
      std::lock_guard lock(mutex_);
      fences_.push_back(fence_job{incarnation, std::move(done)});
    }
    wake_.notify_one();
  }

 private:
  struct fence_job {
    std::string incarnation;
    fence_done done;
  };

  template <class Change>
  void queue(Change&& change) {
    {
      std::lock_guard lock(mutex_);
      change(queued_);
      ++queued_count_;
    }
    wake_.notify_one();
  }
  std::size_t queued_size() {
    std::lock_guard lock(mutex_);
    return queued_.size();
  }

  // Worker thread from here on.
  void work() {
    auto retry = first_retry;
    std::unique_lock lock(mutex_);
    while (true) {
      wake_.wait(lock, [&] { return closing_ || !queued_.empty() || !fences_.empty(); });
      if (queued_.empty() && fences_.empty()) return;  // closing, nothing left
      std::deque<fence_job> fences = std::exchange(fences_, {});
      changes batch = std::exchange(queued_, {});
      const std::uint64_t covered = queued_count_;
      lock.unlock();
      // Fences first: the new owners of a dead runner's shards wait for the locks it holds.
      while (!fences.empty() && fence(fences.front())) fences.pop_front();
      const bool stored = batch.empty() || store(batch);
      lock.lock();
      if (stored) {
        stored_count_ = covered;
        stored_.notify_all();
      } else {
        queued_.restore_under(std::move(batch));
      }
      if (fences.empty() && stored) {
        retry = first_retry;
        continue;
      }
      // Unfinished fences go back before the ones asked for since.
      for (auto it = fences.rbegin(); it != fences.rend(); ++it) fences_.push_front(std::move(*it));
      // Bounded backoff; closing cuts it short (the destructor's flush already gave up).
      if (wake_.wait_for(lock, retry, [&] { return closing_; })) {
        for (auto& job : std::exchange(fences_, {}))
          job.done(failure{errc::storage_error, "the manager stopped before the fence ran"});
        return;
      }
      retry = std::min(retry * 2, last_retry);
    }
  }

  /// Ends the sessions of one runner incarnation; false when it should be retried.
  bool fence(fence_job& job) {
    try {
      if (!session_ || !session_->healthy())
        session_ =
            std::make_unique<pg::connection>(settings_.conninfo(), settings_.application_name);
      // In the select list, not the WHERE clause: only the rows the filter keeps are
      // terminated, whatever order the planner evaluates conditions in.
      auto rows = session_->exec(
          "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = "
          "$1 AND pid <> pg_backend_pid()",
          {pg::param::text(runner_session_name(job.incarnation))});
      std::string pids;
      std::size_t ended = 0;
      for (int r = 0; r < rows.rows(); ++r) {
        if (!rows.boolean(r, 1)) continue;
        pids += (ended++ > 0 ? ", " : "") + rows.text(r, 0);
      }
      reachable_ = true;
      if (ended > 0)
        spdlog::info(
            "fenced runner incarnation {}: ended its {} storage sessions (backend pids {})",
            job.incarnation, ended, pids);
      job.done(ended);
      return true;
    } catch (const pg::error& e) {
      if (!e.retriable) {
        // No permission to end other sessions (pg_signal_backend), for one: retrying will not
        // help; the locks go when the runner's connections do.
        spdlog::error("cannot fence runner incarnation {}: {}", job.incarnation, e.what());
        job.done(failure{errc::storage_error, "the storage refused to end the runner's sessions"});
        return true;
      }
      reachable_ = false;
      if (session_ && !session_->healthy()) session_.reset();
      return false;
    }
  }

  /// One transaction for the whole batch; false when it should be retried.
  bool store(const changes& batch) {
    try {
      if (!session_ || !session_->healthy())
        session_ =
            std::make_unique<pg::connection>(settings_.conninfo(), settings_.application_name);
      pg::transaction(*session_, [&] {
        for (const auto& [address, row] : batch.runners) {
          if (row) {
            session_->exec("INSERT INTO " + table("runners") +
                               " (address, name, registration) VALUES ($1, $2, $3) ON CONFLICT "
                               "(address) DO UPDATE SET name = excluded.name, registration = "
                               "excluded.registration, updated_at = now()",
                           {pg::param::text(address), pg::param::text(row->name),
                            pg::param::bytes(row->registration)});
          } else {
            session_->exec("DELETE FROM " + table("runners") + " WHERE address = $1",
                           {pg::param::text(address)});
          }
        }
        for (const auto& [group, owners] : batch.groups) {
          if (owners.empty()) {
            session_->exec("DELETE FROM " + table("shards") + " WHERE shard_group = $1",
                           {pg::param::text(group)});
            continue;
          }
          pg::array_literal shards, names;
          for (std::size_t i = 0; i < owners.size(); ++i) {
            shards.number(static_cast<std::int64_t>(i + 1));
            names.text(owners[i]);
          }
          session_->exec("INSERT INTO " + table("shards") +
                             " (shard_group, shard, owner) SELECT $1, s, o FROM unnest($2::int[], "
                             "$3::text[]) AS t(s, o) ON CONFLICT (shard_group, shard) DO UPDATE "
                             "SET owner = excluded.owner WHERE " +
                             table("shards") + ".owner <> excluded.owner",
                         {pg::param::text(group), shards.param(), names.param()});
        }
        for (const auto& [name, plugin] : batch.plugins) {
          if (!plugin) {
            session_->exec("DELETE FROM " + table("plugins") + " WHERE name = $1",
                           {pg::param::text(name)});
            continue;
          }
          const stored_plugin& p = plugin->plugin;
          pg::array_literal types;
          for (const auto& type : p.entity_types) types.text(type);
          session_->exec(
              "INSERT INTO " + table("plugins") +
                  " (name, version, sha256, abi_major, abi_minor, entity_types, size, bytes, "
                  "pushed_at) VALUES ($1, $2, $3, $4, $5, $6::text[], $7, $8, "
                  "to_timestamp($9::bigint / 1000.0)) ON CONFLICT (name) DO UPDATE SET "
                  "version = excluded.version, sha256 = excluded.sha256, abi_major = "
                  "excluded.abi_major, abi_minor = excluded.abi_minor, entity_types = "
                  "excluded.entity_types, size = excluded.size, bytes = excluded.bytes, "
                  "pushed_at = excluded.pushed_at",
              {pg::param::text(name), pg::param::text(p.version), pg::param::text(p.sha256),
               pg::param::text(std::to_string(p.abi_major)),
               pg::param::text(std::to_string(p.abi_minor)), types.param(),
               pg::param::text(std::to_string(p.size_bytes)), pg::param::bytes(*plugin->data),
               pg::param::text(std::to_string(p.pushed_at_ms))});
        }
      });
      if (!reachable_.exchange(true))
        spdlog::info("manager storage is reachable again; {} queued changes stored", batch.size());
      return true;
    } catch (const pg::error& e) {
      if (!e.retriable) {
        // Retrying a statement the server refuses would loop forever; drop this batch.
        spdlog::error("manager storage refused {} changes: {}", batch.size(), e.what());
        return true;
      }
      if (reachable_.exchange(false))
        spdlog::warn(
            "manager storage unavailable ({}); the manager keeps serving from memory and "
            "retries",
            e.what());
      if (session_ && !session_->healthy()) session_.reset();
      return false;
    }
  }

  std::vector<register_runner_msg> read_runners(pg::connection& conn) const {
    std::vector<register_runner_msg> out;
    auto rows = conn.exec("SELECT registration FROM " + table("runners"));
    for (int r = 0; r < rows.rows(); ++r)
      if (auto runner = unpack_bytes<register_runner_msg>(rows.bytea(r, 0)))
        out.push_back(std::move(runner).value());
    return out;
  }
  std::map<std::string, std::vector<std::string>> read_assignments(pg::connection& conn) const {
    std::map<std::string, std::vector<std::string>> out;
    auto rows = conn.exec("SELECT shard_group, shard, owner FROM " + table("shards") +
                          " ORDER BY shard_group, shard");
    for (int r = 0; r < rows.rows(); ++r) {
      auto& owners = out[rows.text(r, 0)];
      const auto shard = static_cast<std::size_t>(rows.integer(r, 1));
      if (owners.size() < shard) owners.resize(shard);
      owners[shard - 1] = rows.text(r, 2);
    }
    return out;
  }
  std::vector<pushed_plugin> read_plugins(pg::connection& conn) const {
    std::vector<pushed_plugin> out;
    auto rows = conn.exec(
        "SELECT name, version, sha256, abi_major, abi_minor, size, "
        "(extract(epoch FROM pushed_at) * 1000)::bigint, bytes FROM " +
        table("plugins") + " ORDER BY name");
    std::map<std::string, std::size_t> index;
    for (int r = 0; r < rows.rows(); ++r) {
      pushed_plugin plugin;
      plugin.plugin.name = rows.text(r, 0);
      plugin.plugin.version = rows.text(r, 1);
      plugin.plugin.sha256 = rows.text(r, 2);
      plugin.plugin.abi_major = static_cast<std::uint32_t>(rows.integer(r, 3));
      plugin.plugin.abi_minor = static_cast<std::uint32_t>(rows.integer(r, 4));
      plugin.plugin.size_bytes = static_cast<std::uint64_t>(rows.integer(r, 5));
      plugin.plugin.pushed_at_ms = rows.integer(r, 6);
      plugin.data = std::make_shared<const bytes>(rows.bytea(r, 7));
      index[plugin.plugin.name] = out.size();
      out.push_back(std::move(plugin));
    }
    // Entity types in their pushed order, without parsing PostgreSQL's array syntax.
    auto types = conn.exec("SELECT name, t FROM " + table("plugins") +
                           ", unnest(entity_types) WITH ORDINALITY AS u(t, i) ORDER BY name, i");
    for (int r = 0; r < types.rows(); ++r)
      if (auto it = index.find(types.text(r, 0)); it != index.end())
        out[it->second].plugin.entity_types.push_back(types.text(r, 1));
    return out;
  }
  std::string table(const char* name) const { return settings_.table_prefix + "_" + name; }

  const storage_settings settings_;
  std::vector<register_runner_msg> runners_at_start_;
  std::map<std::string, std::vector<std::string>> assignments_at_start_;
  std::vector<pushed_plugin> plugins_at_start_;

  std::mutex mutex_;
  std::condition_variable wake_;    // queued changes or closing, for the worker
  std::condition_variable stored_;  // stored_count_ moved, for flush()
  changes queued_;
  std::deque<fence_job> fences_;
  std::uint64_t queued_count_ = 0;  // writes queued since opening
  std::uint64_t stored_count_ = 0;  // of those, how many are stored
  bool closing_ = false;
  std::atomic<bool> reachable_{true};

  std::unique_ptr<pg::connection> session_;  // the worker's (the constructor's before it)
  std::thread worker_;
};

}  // namespace

std::unique_ptr<manager_store> make_pg_manager_store(const storage_settings& settings) {
  return std::make_unique<pg_manager_store>(settings);
}

}  // namespace cluster
