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

/// A live runner of a shard group and the entity types of that group it counts as having.
struct runner_types {
  std::string id;
  std::vector<std::string> entity_types;
};

/// The runners that may own a group's shards, in id order: of `runners`, those having the
/// most of `group_types` (each counted once; types outside the list do not count), so that
/// a shard never goes to a runner lacking a type another runner has. When some runner has
/// every type, exactly the runners having all of them. Runners with the same count are all
/// eligible; no types at all (or none that any runner has): every runner. Duplicate and
/// empty ids are ignored, as by `rebalance`.
std::vector<std::string> eligible_runners(const std::vector<std::string>& group_types,
                                          const std::vector<runner_types>& runners);

}  // namespace cluster::manager
