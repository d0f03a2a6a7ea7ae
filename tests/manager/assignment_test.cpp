#include "cluster/manager/assignment.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstddef>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace {

using cluster::manager::rebalance;
using cluster::manager::rebalance_result;
using cluster::manager::shard_owners;

constexpr std::size_t shard_count = 300;

std::vector<std::string> runner_ids(std::size_t count) {
  std::vector<std::string> ids;
  for (std::size_t i = 0; i < count; ++i) ids.push_back("runner-" + std::to_string(100 + i));
  return ids;
}

std::map<std::string, std::size_t> load_of(const shard_owners& owners) {
  std::map<std::string, std::size_t> load;
  for (const std::string& owner : owners) ++load[owner];
  return load;
}

bool is_live(const std::vector<std::string>& live, const std::string& id) {
  return std::find(live.begin(), live.end(), id) != live.end();
}

// Every shard is owned by a live runner and loads are floor(n/r) or ceil(n/r), with exactly
// n % r runners at the ceiling.
void expect_balanced(const shard_owners& owners, const std::vector<std::string>& live) {
  const std::set<std::string> distinct(live.begin(), live.end());
  const std::size_t base = owners.size() / distinct.size();
  const std::size_t extra = owners.size() % distinct.size();
  const auto load = load_of(owners);
  std::size_t at_ceiling = 0;
  for (const std::string& id : distinct) {
    const std::size_t shards = load.count(id) ? load.at(id) : 0;
    EXPECT_TRUE(shards == base || shards == base + 1) << id << " owns " << shards;
    if (shards == base + 1) ++at_ceiling;
  }
  for (const auto& [id, shards] : load) {
    EXPECT_TRUE(distinct.count(id)) << "dead owner " << id;
  }
  EXPECT_EQ(at_ceiling, extra);
}

// Shards that a live runner owned before and another runner owns after.
std::size_t count_moves(const shard_owners& before, const shard_owners& after,
                        const std::vector<std::string>& live) {
  std::size_t moves = 0;
  for (std::size_t i = 0; i < before.size(); ++i) {
    if (is_live(live, before[i]) && after[i] != before[i]) ++moves;
  }
  return moves;
}

std::size_t count_orphans(const shard_owners& owners, const std::vector<std::string>& live) {
  return static_cast<std::size_t>(std::count_if(
      owners.begin(), owners.end(), [&](const std::string& id) { return !is_live(live, id); }));
}

// Fewest moves that can balance `owners` over `live`. A runner with c shards and target t must
// give away at least max(0, c - t) shards, and orphans fill deficits for free. Targets are base
// or base + 1 with n % r runners at base + 1; each ceiling slot given to a runner holding more
// than base saves exactly one move, and no other choice saves anything, so the minimum is
// sum(max(0, c - base)) - min(n % r, runners holding more than base).
std::size_t minimum_moves(const shard_owners& owners, const std::vector<std::string>& live) {
  const std::set<std::string> distinct(live.begin(), live.end());
  const std::size_t base = owners.size() / distinct.size();
  const std::size_t extra = owners.size() % distinct.size();
  const auto load = load_of(owners);
  std::size_t excess = 0;
  std::size_t above_base = 0;
  for (const std::string& id : distinct) {
    const std::size_t shards = load.count(id) ? load.at(id) : 0;
    if (shards > base) {
      excess += shards - base;
      ++above_base;
    }
  }
  return excess - std::min(extra, above_base);
}

}  // namespace

TEST(rebalance, assigns_every_shard_to_exactly_one_runner_from_empty) {
  for (const std::size_t runners : {1U, 2U, 3U, 7U}) {
    const auto live = runner_ids(runners);
    const rebalance_result result = rebalance(shard_owners(shard_count), live);
    ASSERT_EQ(result.owners.size(), shard_count);
    for (const std::string& owner : result.owners) EXPECT_TRUE(is_live(live, owner)) << owner;
    EXPECT_EQ(result.assigned, shard_count);
    EXPECT_EQ(result.moved, 0U);
    expect_balanced(result.owners, live);
  }
}

TEST(rebalance, balances_a_skewed_assignment_within_one_shard) {
  // One runner owns everything; six more join.
  const auto live = runner_ids(7);
  const rebalance_result result = rebalance(shard_owners(shard_count, live[0]), live);
  expect_balanced(result.owners, live);
  EXPECT_EQ(result.assigned, 0U);
  // 300 = 7 * 42 + 6: the old owner keeps 43, the only ceiling slot it can use.
  EXPECT_EQ(result.moved, shard_count - 43);
  EXPECT_EQ(load_of(result.owners).at(live[0]), 43U);
}

TEST(rebalance, gives_a_joining_runner_only_its_fair_share_taken_from_the_others) {
  for (const std::size_t runners : {1U, 3U, 7U}) {
    auto live = runner_ids(runners);
    const shard_owners before = rebalance(shard_owners(shard_count), live).owners;
    live.push_back("runner-new");
    const rebalance_result result = rebalance(before, live);
    expect_balanced(result.owners, live);
    // The newcomer gets floor(n / (r + 1)): ceiling slots go to runners that already hold more.
    const std::size_t fair_share = shard_count / (runners + 1);
    EXPECT_EQ(result.moved, fair_share) << runners << " runners";
    EXPECT_EQ(result.moved, minimum_moves(before, live));
    EXPECT_EQ(result.assigned, 0U);
    for (std::size_t i = 0; i < shard_count; ++i) {
      if (result.owners[i] != before[i]) {
        EXPECT_EQ(result.owners[i], "runner-new") << i;
      }
    }
  }
}

TEST(rebalance, changes_only_the_owners_of_a_leaving_runners_shards) {
  for (const std::size_t runners : {2U, 3U, 7U}) {
    auto live = runner_ids(runners);
    const shard_owners before = rebalance(shard_owners(shard_count), live).owners;
    const std::string leaving = live[1];
    live.erase(live.begin() + 1);
    const rebalance_result result = rebalance(before, live);
    expect_balanced(result.owners, live);
    EXPECT_EQ(result.moved, 0U);
    EXPECT_EQ(result.assigned, load_of(before).at(leaving));
    for (std::size_t i = 0; i < shard_count; ++i) {
      if (before[i] != leaving) {
        EXPECT_EQ(result.owners[i], before[i]) << i;
      }
    }
  }
}

TEST(rebalance, moves_nothing_when_already_balanced) {
  const auto live = runner_ids(7);
  const shard_owners balanced = rebalance(shard_owners(shard_count), live).owners;
  const rebalance_result result = rebalance(balanced, live);
  EXPECT_EQ(result.owners, balanced);
  EXPECT_EQ(result.moved, 0U);
  EXPECT_EQ(result.assigned, 0U);
}

TEST(rebalance, limits_balancing_moves_but_still_assigns_every_orphan) {
  // runner-100 owns shards 1..150; shards 151..300 belong to a dead runner.
  const auto live = runner_ids(3);
  shard_owners current(shard_count, "dead");
  std::fill(current.begin(), current.begin() + 150, live[0]);

  const rebalance_result none = rebalance(current, live, 0);
  EXPECT_EQ(none.moved, 0U);
  EXPECT_EQ(none.assigned, 150U);
  EXPECT_EQ(count_orphans(none.owners, live), 0U);
  EXPECT_EQ(load_of(none.owners).at(live[0]), 150U);

  const rebalance_result some = rebalance(current, live, 10);
  EXPECT_EQ(some.moved, 10U);
  EXPECT_EQ(some.assigned, 150U);
  EXPECT_EQ(count_orphans(some.owners, live), 0U);
  EXPECT_EQ(load_of(some.owners).at(live[0]), 140U);

  const rebalance_result all = rebalance(current, live);
  EXPECT_EQ(all.moved, 50U);
  expect_balanced(all.owners, live);
}

TEST(rebalance, reaches_the_unlimited_move_count_through_limited_steps) {
  const auto live = runner_ids(5);
  shard_owners current(shard_count);
  for (std::size_t i = 0; i < shard_count; ++i) current[i] = live[i % 2];  // two runners hold all
  const std::size_t unlimited = rebalance(current, live).moved;

  std::size_t total = 0;
  for (int step = 0; step < 1000; ++step) {
    const rebalance_result result = rebalance(current, live, 7);
    EXPECT_LE(result.moved, 7U);
    total += result.moved;
    current = result.owners;
    if (result.moved == 0) break;
  }
  EXPECT_EQ(total, unlimited);
  expect_balanced(current, live);
}

TEST(rebalance, leaves_every_shard_unowned_without_live_runners) {
  const auto owners = rebalance(shard_owners(shard_count), runner_ids(3)).owners;
  for (const auto& live : {std::vector<std::string>{}, std::vector<std::string>{""}}) {
    const rebalance_result result = rebalance(owners, live);
    EXPECT_EQ(result.owners, shard_owners(shard_count));
    EXPECT_EQ(result.moved, 0U);
    EXPECT_EQ(result.assigned, 0U);
  }
}

TEST(rebalance, treats_unknown_owner_ids_as_dead) {
  const std::vector<std::string> live = {"a", "b"};
  const shard_owners current = {"a", "ghost", "b", "ghost", "", "a"};
  const rebalance_result result = rebalance(current, live);
  EXPECT_EQ(result.assigned, 3U);
  EXPECT_EQ(result.moved, 0U);
  expect_balanced(result.owners, live);
  EXPECT_EQ(result.owners[0], "a");
  EXPECT_EQ(result.owners[2], "b");
  EXPECT_EQ(result.owners[5], "a");
}

TEST(rebalance, breaks_ties_by_runner_id_and_shard_number) {
  // Orphans, in shard order, go to the least loaded runner, the smallest id on ties.
  const rebalance_result result = rebalance(shard_owners(5), {"b", "a", "c"});
  EXPECT_EQ(result.owners, (shard_owners{"a", "b", "c", "a", "b"}));
}

TEST(rebalance, is_deterministic_for_the_same_input) {
  std::mt19937 rng(42);
  const auto ids = runner_ids(9);
  shard_owners current(shard_count);
  for (std::string& owner : current) owner = ids[rng() % ids.size()];
  std::vector<std::string> live(ids.begin(), ids.begin() + 6);
  const rebalance_result first = rebalance(current, live, 20);

  // Neither the order of live runners nor duplicates change the outcome.
  std::vector<std::string> shuffled = live;
  shuffled.push_back(live[2]);
  std::shuffle(shuffled.begin(), shuffled.end(), rng);
  const rebalance_result second = rebalance(current, shuffled, 20);
  EXPECT_EQ(second.owners, first.owners);
  EXPECT_EQ(second.moved, first.moved);
  EXPECT_EQ(second.assigned, first.assigned);
}

TEST(rebalance, handles_a_group_without_shards) {
  const rebalance_result result = rebalance(shard_owners{}, {"a"});
  EXPECT_TRUE(result.owners.empty());
  EXPECT_EQ(result.moved, 0U);
  EXPECT_EQ(result.assigned, 0U);
}

TEST(rebalance, keeps_balance_with_minimal_moves_over_random_joins_and_leaves) {
  std::mt19937 rng(20240601);
  const auto pool = runner_ids(16);
  for (const std::size_t shards : {1U, 7U, 64U, 300U}) {
    shard_owners current(shards);
    std::vector<std::string> live;
    for (int step = 0; step < 300; ++step) {
      const unsigned action = rng() % 10;
      if (action < 4 && live.size() < pool.size()) {
        // A runner joins.
        std::vector<std::string> absent;
        for (const auto& id : pool) {
          if (!is_live(live, id)) absent.push_back(id);
        }
        live.push_back(absent[rng() % absent.size()]);
      } else if (action < 8 && !live.empty()) {
        // A runner leaves.
        live.erase(live.begin() + static_cast<std::ptrdiff_t>(rng() % live.size()));
      } else {
        // Arbitrary starting points: owners scrambled, including dead and unknown ids.
        for (std::string& owner : current) {
          const std::size_t pick = rng() % (pool.size() + 2);
          owner = pick < pool.size() ? pool[pick] : (pick == pool.size() ? "" : "unknown");
        }
      }

      const rebalance_result result = rebalance(current, live);
      ASSERT_EQ(result.owners.size(), shards);
      if (live.empty()) {
        EXPECT_EQ(result.owners, shard_owners(shards));
      } else {
        expect_balanced(result.owners, live);
        EXPECT_EQ(result.assigned, count_orphans(current, live));
        EXPECT_EQ(result.moved, count_moves(current, result.owners, live));
        EXPECT_EQ(result.moved, minimum_moves(current, live)) << "step " << step;
      }
      // A second pass over a balanced assignment is a no-op.
      const rebalance_result again = rebalance(result.owners, live);
      EXPECT_EQ(again.owners, result.owners);
      EXPECT_EQ(again.moved, 0U);
      current = result.owners;
      if (::testing::Test::HasFailure()) return;
    }
  }
}

namespace {

using cluster::manager::eligible_runners;
using cluster::manager::runner_types;

using ids = std::vector<std::string>;

TEST(eligible_runners, are_the_runners_having_every_type_when_any_has_the_full_set) {
  const ids types = {"Cart", "Greeter"};
  EXPECT_EQ(eligible_runners(
                types,
                {{"b", {"Greeter", "Cart"}}, {"a", {"Cart"}}, {"c", {"Cart", "Greeter", "Other"}}}),
            (ids{"b", "c"}));
}

TEST(eligible_runners, are_those_having_the_most_types_when_none_has_all) {
  const ids types = {"A", "B", "C"};
  EXPECT_EQ(eligible_runners(types, {{"r1", {"A"}}, {"r2", {"B", "C"}}, {"r3", {"C", "A"}}}),
            (ids{"r2", "r3"}));
}

TEST(eligible_runners, are_every_runner_when_they_all_have_the_same_types) {
  EXPECT_EQ(eligible_runners({"A"}, {{"r2", {"A"}}, {"r1", {"A"}}}), (ids{"r1", "r2"}));
  // Types of the group nobody has yet (not settled, or only declared elsewhere) decide nothing.
  EXPECT_EQ(eligible_runners({"A", "New"}, {{"r2", {"A"}}, {"r1", {"A"}}}), (ids{"r1", "r2"}));
  EXPECT_EQ(eligible_runners({}, {{"r2", {"A"}}, {"r1", {}}}), (ids{"r1", "r2"}));
  EXPECT_EQ(eligible_runners({"A"}, {{"r2", {}}, {"r1", {}}}), (ids{"r1", "r2"}));
}

TEST(eligible_runners, count_only_the_group_types_each_once) {
  // r1's types of other groups and its repeated entry do not outweigh r2's real one.
  EXPECT_EQ(eligible_runners({"A", "B"}, {{"r1", {"A", "A", "X", "Y"}}, {"r2", {"A", "B"}}}),
            (ids{"r2"}));
}

TEST(eligible_runners, ignore_empty_and_duplicate_ids) {
  EXPECT_EQ(eligible_runners({"A"}, {{"", {"A"}}, {"r1", {}}, {"r1", {"A"}}, {"r2", {}}}),
            (ids{"r1"}));
  EXPECT_TRUE(eligible_runners({"A"}, {}).empty());
}

TEST(eligible_runners, never_leave_a_shard_with_a_runner_lacking_a_type_another_has) {
  // Every combination of three types over four runners: whatever the rebalance does with the
  // eligible set, an owner never lacks a type some other runner has when one has them all.
  const ids types = {"A", "B", "C"};
  for (unsigned mask = 0; mask < (1u << 12); ++mask) {
    std::vector<runner_types> runners;
    for (unsigned r = 0; r < 4; ++r) {
      runner_types runner{"r" + std::to_string(r), {}};
      for (unsigned t = 0; t < 3; ++t)
        if (mask & (1u << (r * 3 + t))) runner.entity_types.push_back(types[t]);
      runners.push_back(runner);
    }
    const auto eligible = eligible_runners(types, runners);
    ASSERT_FALSE(eligible.empty());
    std::size_t most = 0;
    for (const auto& runner : runners) most = std::max(most, runner.entity_types.size());
    for (const auto& runner : runners) {
      const bool chosen = std::find(eligible.begin(), eligible.end(), runner.id) != eligible.end();
      EXPECT_EQ(chosen, runner.entity_types.size() == most) << "mask " << mask << " " << runner.id;
    }
    const auto owners = rebalance(shard_owners(30), eligible).owners;
    for (const auto& owner : owners) EXPECT_TRUE(is_live(eligible, owner));
  }
}

}  // namespace
