#pragma once
// Singletons and cron jobs on a runner: entities that run without callers.
//
// A singleton (entity id "singleton") runs where its shard is served: when the shard enters
// `serving` here (persisted_messages::on_shard_serving) it is activated and its run (RPC 0)
// called; a run that returns or fails while the shard is still served here is called again
// after a backoff. When the shard moves away or the runner stops, the entity host asks it to
// stop (stop_requested, sleeps end at once); the shard's lock goes only once its entities are
// passivated, so the run has returned before another runner can take the lock and start it:
// never two at once.
//
// A cron job (entity id "cron") keeps its bookkeeping (the last tick: scheduled, fired,
// outcome) as the entity's stored state. When its shard serves here the runner reads it,
// applies the missed-ticks policy and stores the next tick as a persisted message due at its
// time, primary key `cron:<scheduled_ms>`: a tick is stored once whoever stores it, the
// shard's lock holder runs it once, and the next owner's replay runs one that was stored but
// not processed. Once a tick's reply is stored the bookkeeping is written and the next tick
// stored.
//
// Thread: the runner's io_context thread.

#include <map>
#include <memory>
#include <optional>
#include <string>

#include "cluster/cron.hpp"
#include "cluster/host/entity_host.hpp"
#include "cluster/host/persisted_messages.hpp"
#include "cluster/process/gate.hpp"
#include "cluster/protocol/cron_status.hpp"

namespace cluster::host {

/// A cron job's bookkeeping, stored as the state of its entity (MessagePack map).
struct cron_bookkeeping {
  std::int64_t last_scheduled_ms = 0;  ///< 0: it never ran
  std::int64_t last_fired_ms = 0;
  std::string last_outcome;  ///< "ok", or the error of the last tick's reply
  std::int64_t next_ms = 0;  ///< the tick stored to run next (0: none yet)
  CLUSTER_WIRE_FIELDS(cron_bookkeeping, last_scheduled_ms, last_fired_ms, last_outcome, next_ms);
};

/// The tick to store after `last_scheduled_ms` (0: never ran) at `now_ms`, by the policy
/// (CLUSTER_CRON_*): the next one after the last if it is still ahead; else, for missed ticks,
/// the first missed one at once (run once) or the next one after now (skip).
std::int64_t next_cron_tick(const cron_schedule& schedule, std::uint32_t missed,
                            std::int64_t last_scheduled_ms, std::int64_t now_ms);

class jobs {
 public:
  /// `shards_of(group)`: the shard count of a group by the latest assignment (0: unknown).
  jobs(asio::io_context& io, entity_host& entities, persisted_messages& persisted,
       message_store& store, const entity_registry& registry,
       std::function<std::int32_t(const std::string& group)> shards_of);
  ~jobs();
  jobs(const jobs&) = delete;
  jobs& operator=(const jobs&) = delete;

  /// The shard serves here now: starts its singletons and cron jobs.
  void shard_serving(const std::string& group, std::int32_t shard);
  /// The runner is stopping: singletons are asked to stop, nothing starts again.
  void stop();

  /// What `clusterctl cron list` shows of one job served here.
  struct cron_status {
    std::string name;
    std::string group;
    std::string schedule;
    cron_bookkeeping bookkeeping;
  };
  std::vector<cron_status> crons() const;
  /// The `$cron_status` answer for job `name` (zeros when it has not started here).
  cron_status_msg cron_status_of(const std::string& name, const std::string& runner) const;
  /// The `$cron_status` answer for singleton `name`: running here or not, since when.
  cron_status_msg singleton_status_of(const std::string& name, const std::string& runner) const;
  /// Singletons whose run is in progress here.
  std::size_t running_singletons() const;

  /// Each singleton run holds it while it runs: a graceful stop waits for runs to return.
  gate* in_flight = nullptr;
  /// First delay before a singleton's run is called again; doubles up to 30 s.
  milliseconds restart_backoff{1000};

 private:
  struct singleton_run {
    std::int32_t shard = 0;
    bool running = false;
    std::int64_t started_ms = 0;  // unix ms of the run in progress or the last one
    std::uint32_t starts = 0;
    std::string last_outcome;  // how the last run ended ("" while none has)
    milliseconds backoff{0};
    std::unique_ptr<asio::steady_timer> again;
  };
  struct cron_job {
    std::int32_t shard = 0;
    std::string group;
    std::string schedule;
    std::int64_t version = 0;  // of its stored bookkeeping
    cron_bookkeeping bookkeeping;
    std::uint64_t generation = 0;  // bumped when its shard serves here again
    bool loaded = false;
  };

  bool serving(const std::string& group, std::int32_t shard) const;
  void run_singleton(const std::string& name);
  void singleton_done(const std::string& name, reply_msg&& reply, steady_clock::time_point started);
  void start_cron(const entity_type& type, std::int32_t shard);
  void store_tick(const std::string& name, std::int64_t scheduled_ms);
  void tick_done(const std::string& name, std::uint64_t generation, std::int64_t scheduled_ms,
                 reply_msg&& reply);
  void save_bookkeeping(const std::string& name);

  asio::io_context& io_;
  entity_host& entities_;
  persisted_messages& persisted_;
  message_store& store_;
  const entity_registry& registry_;
  std::function<std::int32_t(const std::string&)> shards_of_;
  std::map<std::string, singleton_run> singletons_;
  std::map<std::string, cron_job> crons_;
  std::uint64_t generation_ = 0;
  bool stopped_ = false;
  bool bookkeeping_warned_ = false;  // a store without state: said once
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace cluster::host
