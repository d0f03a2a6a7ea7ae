#include "cluster/manager/assignment.hpp"

#include <algorithm>
#include <map>
#include <optional>
#include <set>

namespace cluster::manager {
namespace {

// Live runner state while rebalancing. Runners are kept sorted by id, so a lower index wins ties.
struct runner {
  const std::string* id;
  std::vector<std::size_t> shards;  // shard indices it owns, ascending before balancing
  std::size_t target = 0;
};

std::optional<std::size_t> index_of(const std::vector<std::string>& sorted_ids,
                                    const std::string& id) {
  const auto it = std::lower_bound(sorted_ids.begin(), sorted_ids.end(), id);
  if (it == sorted_ids.end() || *it != id) return std::nullopt;
  return static_cast<std::size_t>(it - sorted_ids.begin());
}

}  // namespace

rebalance_result rebalance(const shard_owners& current, std::vector<std::string> live_runners,
                           std::size_t max_moves) {
  std::sort(live_runners.begin(), live_runners.end());
  live_runners.erase(std::unique(live_runners.begin(), live_runners.end()), live_runners.end());
  std::erase(live_runners, std::string());

  rebalance_result result;
  result.owners.assign(current.size(), std::string());
  if (live_runners.empty()) return result;

  std::vector<runner> runners;
  runners.reserve(live_runners.size());
  for (const std::string& id : live_runners) runners.push_back({&id, {}, 0});

  std::vector<std::size_t> orphans;
  for (std::size_t shard = 0; shard < current.size(); ++shard) {
    if (const auto owner = index_of(live_runners, current[shard])) {
      runners[*owner].shards.push_back(shard);
    } else {
      orphans.push_back(shard);
    }
  }

  // Orphans go one at a time to the least loaded runner. While a shard is unassigned the least
  // loaded runner holds at most floor(n/r), so no receiver ends above ceil(n/r): filling orphans
  // first never makes the balancing below move more than the minimum.
  for (const std::size_t shard : orphans) {
    const auto least = std::min_element(
        runners.begin(), runners.end(),
        [](const runner& a, const runner& b) { return a.shards.size() < b.shards.size(); });
    least->shards.push_back(shard);
    ++result.assigned;
  }
  for (runner& r : runners) std::sort(r.shards.begin(), r.shards.end());

  // Fair share: n % r runners hold one shard more than the others. Giving those extra slots to
  // the runners that already hold the most shards minimizes the shards that must leave them.
  const std::size_t base = current.size() / runners.size();
  const std::size_t extra = current.size() % runners.size();
  std::vector<runner*> by_load;
  by_load.reserve(runners.size());
  for (runner& r : runners) by_load.push_back(&r);
  std::stable_sort(by_load.begin(), by_load.end(), [](const runner* a, const runner* b) {
    return a->shards.size() > b->shards.size();
  });
  for (std::size_t i = 0; i < by_load.size(); ++i) by_load[i]->target = base + (i < extra ? 1 : 0);

  // Each move takes a shard from a runner above its target to one below it, so every move is
  // needed and any prefix of them (under max_moves) is progress towards the same fixed point.
  // The most loaded donor gives to the least loaded receiver first to shrink the spread fastest.
  while (result.moved < max_moves) {
    runner* donor = nullptr;
    runner* receiver = nullptr;
    for (runner& r : runners) {
      if (r.shards.size() > r.target && (!donor || r.shards.size() > donor->shards.size())) {
        donor = &r;
      }
      if (r.shards.size() < r.target && (!receiver || r.shards.size() < receiver->shards.size())) {
        receiver = &r;
      }
    }
    // Both exist or neither does: loads and targets have the same total.
    if (!donor || !receiver) break;
    // Donors received no orphans (a runner lifted to ceil(n/r) by orphans is among the most
    // loaded, so it got a ceiling target), hence this is a real move. The highest-numbered shard
    // goes, so that repeated limited rebalances keep the low shards stable.
    receiver->shards.push_back(donor->shards.back());
    donor->shards.pop_back();
    ++result.moved;
  }

  for (const runner& r : runners) {
    result.limited = result.limited || r.shards.size() > r.target;
    for (const std::size_t shard : r.shards) result.owners[shard] = *r.id;
  }
  return result;
}

std::vector<std::string> eligible_runners(const std::vector<std::string>& group_types,
                                          const std::vector<runner_types>& runners) {
  const std::set<std::string> wanted(group_types.begin(), group_types.end());
  // id → how many of the wanted types it has; a repeated id keeps its best entry.
  std::map<std::string, std::size_t> counts;
  for (const runner_types& runner : runners) {
    if (runner.id.empty()) continue;
    std::set<std::string> has;
    for (const auto& type : runner.entity_types)
      if (wanted.count(type)) has.insert(type);
    auto& count = counts[runner.id];
    count = std::max(count, has.size());
  }
  std::size_t most = 0;
  for (const auto& [id, count] : counts) most = std::max(most, count);
  std::vector<std::string> eligible;
  for (const auto& [id, count] : counts)
    if (count == most) eligible.push_back(id);
  return eligible;
}

}  // namespace cluster::manager
