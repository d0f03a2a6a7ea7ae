#pragma once
// The shard manager's assignment algorithm, kept free of I/O so it can be tested exhaustively.

#include <cstddef>
#include <limits>
#include <string>
#include <vector>

namespace cluster::manager {

/// Owner of each shard of one group: owners[i] is the runner id owning shard i + 1, "" if none.
using shard_owners = std::vector<std::string>;

/// Outcome of one rebalance of a shard group.
struct rebalance_result {
  /// The new owner of every shard.
  shard_owners owners;
  /// Shards taken from one live runner and given to another.
  std::size_t moved = 0;
  /// Shards that were unowned or owned by a runner that is not live, now given to a live runner.
  std::size_t assigned = 0;
  /// max_moves stopped the balancing short: another call would move more shards.
  bool limited = false;
};

/// Computes the next assignment of one shard group.
/// - shards owned by a runner not in `live_runners` (or unowned) are assigned, always, to the
///   least loaded live runners;
/// - then shards move from runners above their fair share to runners below it, at most
///   `max_moves` moves (moves of shards from live runners; assigning orphaned shards does not
///   count);
/// - fair share: every runner ends with floor(n/r) or ceil(n/r) shards when unlimited;
/// - moves as few shards as possible; deterministic (ties broken by runner id order, shards by
///   number);
/// - no live runners: every shard unowned.
///
/// Duplicate and empty ids in `live_runners` are ignored ("" means "no owner").
rebalance_result rebalance(const shard_owners& current, std::vector<std::string> live_runners,
                           std::size_t max_moves = std::numeric_limits<std::size_t>::max());

}  // namespace cluster::manager
