#pragma once
// What `clusterctl cron list` asks the runner serving a cron job or a singleton, and its answer.

#include <cstdint>
#include <string>
#include <string_view>

#include "cluster/protocol/wire_fields.hpp"

namespace cluster {

/// The RPC name `clusterctl cron list` calls on a cron job's entity ("cron") or a singleton's
/// ("singleton"): the runner serving it answers with a cron_status_msg itself (a plugin's RPC
/// of that name is never called).
inline constexpr std::string_view cron_status_rpc = "$cron_status";

/// What a runner says about a cron job or a singleton it serves (`clusterctl cron list`).
struct cron_status_msg {
  std::string name;
  std::string group;
  std::string schedule;
  std::string runner;
  bool loaded = false;  ///< its bookkeeping was read (false: it is only being taken over)
  std::int64_t last_scheduled_ms = 0;
  std::int64_t last_fired_ms = 0;
  std::string last_outcome;
  std::int64_t next_ms = 0;
  // Singletons: whether its run is in progress here, since when (unix ms), and how many
  // runs this runner has started (a restart after a failure counts; 1 while all is well).
  bool running = false;
  std::int64_t started_ms = 0;
  std::uint32_t starts = 0;
  CLUSTER_WIRE_FIELDS(cron_status_msg, name, group, schedule, runner, loaded, last_scheduled_ms,
                      last_fired_ms, last_outcome, next_ms, running, started_ms, starts);
};

}  // namespace cluster
