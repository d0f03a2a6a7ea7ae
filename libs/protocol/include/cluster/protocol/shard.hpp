#pragma once
// Entity-to-shard mapping. It must agree bit for bit with @effect/cluster 0.39.5 so that a
// TypeScript client and this cluster route the same entity id to the same shard.

#include <cstdint>
#include <string_view>

namespace cluster {

/// Number of shards in a shard group unless configured otherwise (Effect Cluster's default).
inline constexpr std::int32_t default_shards_per_group = 300;

/// Name of the shard group entities belong to unless their entity type says otherwise.
inline constexpr std::string_view default_shard_group = "default";

/// Effect Cluster's hashString over the UTF-16 code units of a UTF-8 id.
///
/// Invalid UTF-8 decodes to U+FFFD exactly as a JavaScript TextDecoder does (one U+FFFD per
/// maximal ill-formed subsequence), so any byte string hashes like its decoded JS string.
std::int32_t hash_string(std::string_view utf8_id);

/// 1-based shard number of an entity id: abs(hash_string(id) % shards_per_group) + 1.
///
/// Throws std::invalid_argument if `shards_per_group` is not positive.
std::int32_t shard_for(std::string_view entity_id, std::int32_t shards_per_group);

}  // namespace cluster
