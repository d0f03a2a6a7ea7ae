#include "cluster/protocol/shard.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <stdexcept>
#include <string>

namespace {

// U+FFFD REPLACEMENT CHARACTER in UTF-8.
constexpr std::string_view fffd = "\xEF\xBF\xBD";

// Random byte strings, valid UTF-8 or not, to exercise every decoder path.
std::string random_bytes(std::mt19937& rng) {
  std::uniform_int_distribution<int> length(0, 24);
  std::uniform_int_distribution<int> byte(0, 255);
  std::string id(static_cast<std::size_t>(length(rng)), '\0');
  for (char& c : id) c = static_cast<char>(byte(rng));
  return id;
}

}  // namespace

// Vectors computed with @effect/cluster 0.39.5's hashString and shard formula.
TEST(shard_mapping, matches_effect_cluster_for_test) {
  EXPECT_EQ(cluster::hash_string("Test"), 1014191315);
  EXPECT_EQ(cluster::shard_for("Test", 300), 216);
}

TEST(shard_mapping, maps_the_empty_id_to_the_hash_seed) {
  EXPECT_EQ(cluster::hash_string(""), 5381);
  EXPECT_EQ(cluster::shard_for("", 300), 282);
}

TEST(shard_mapping, takes_the_absolute_remainder_of_a_negative_hash) {
  EXPECT_EQ(cluster::hash_string("user-1"), -490910200);
  EXPECT_EQ(cluster::shard_for("user-1", 300), 101);
}

TEST(shard_mapping, hashes_non_ascii_ids_as_utf16_code_units) {
  EXPECT_EQ(cluster::hash_string("h\xC3\xA9llo"), 181375403);
  EXPECT_EQ(cluster::shard_for("h\xC3\xA9llo", 300), 204);
}

TEST(shard_mapping, hashes_astral_code_points_as_surrogate_pairs) {
  // U+1F600 is the surrogate pair D83D DE00 in UTF-16.
  EXPECT_EQ(cluster::hash_string("\xF0\x9F\x98\x80"), 5191800);
  EXPECT_EQ(cluster::shard_for("\xF0\x9F\x98\x80", 300), 1);
}

TEST(shard_mapping, uses_the_default_group_settings_of_effect_cluster) {
  EXPECT_EQ(cluster::default_shards_per_group, 300);
  EXPECT_EQ(cluster::default_shard_group, "default");
}

TEST(shard_mapping, always_returns_a_shard_between_one_and_the_shard_count) {
  std::mt19937 rng(12345);
  for (const std::int32_t shards : {1, 2, 7, 300, 1024, 65536}) {
    for (int i = 0; i < 2000; ++i) {
      const std::string id = random_bytes(rng);
      const std::int32_t shard = cluster::shard_for(id, shards);
      ASSERT_GE(shard, 1) << "shards=" << shards;
      ASSERT_LE(shard, shards) << "shards=" << shards;
    }
  }
}

TEST(shard_mapping, depends_on_the_shard_count) {
  std::mt19937 rng(7);
  for (int i = 0; i < 1000; ++i) {
    EXPECT_EQ(cluster::shard_for(random_bytes(rng), 1), 1);
  }
  // Vectors computed with Effect's formula for a group of 7 shards.
  EXPECT_EQ(cluster::shard_for("Test", 7), 5);
  EXPECT_EQ(cluster::shard_for("", 7), 6);
  EXPECT_EQ(cluster::shard_for("h\xC3\xA9llo", 7), 7);
  EXPECT_EQ(cluster::shard_for("\xF0\x9F\x98\x80", 7), 6);
}

TEST(shard_mapping, rejects_a_shard_count_that_is_not_positive) {
  EXPECT_THROW(cluster::shard_for("Test", 0), std::invalid_argument);
  EXPECT_THROW(cluster::shard_for("Test", -300), std::invalid_argument);
}

// Expected substitutions are what JavaScript's `new TextDecoder().decode(bytes)` returns.
TEST(shard_mapping, hashes_invalid_utf8_like_a_text_decoder) {
  struct decoding {
    std::string bytes;
    std::string decoded;
  };
  const std::string r(fffd);
  const decoding cases[] = {
      {"a\xFF"
       "b",
       "a" + r + "b"},  // byte that never starts a sequence
      {"\x80", r},      // lone continuation byte
      {"\xE2\x82", r},  // truncated sequence at the end
      {"\xE2\x82"
       "A",
       r + "A"},                                                 // truncated sequence before ASCII
      {"\xF0\x9F\x98", r},                                       // truncated four-byte sequence
      {"\xC0\x80", r + r},                                       // overlong encoding
      {"\xE0\x80\x80", r + r + r},                               // overlong three-byte encoding
      {"\xED\xA0\x80", r + r + r},                               // encoded UTF-16 surrogate
      {"\xF4\x90\x80\x80", r + r + r + r},                       // above U+10FFFF
      {"\xF0\x9F\x98\xF0\x9F\x98\x80", r + "\xF0\x9F\x98\x80"},  // truncated, then valid
  };
  for (const auto& c : cases) {
    EXPECT_EQ(cluster::hash_string(c.bytes), cluster::hash_string(c.decoded)) << c.decoded;
    EXPECT_EQ(cluster::shard_for(c.bytes, 300), cluster::shard_for(c.decoded, 300)) << c.decoded;
  }
  // Vectors computed with Effect's hashString on the decoded JS strings.
  EXPECT_EQ(cluster::hash_string("\xFF"), 150104);
  EXPECT_EQ(cluster::hash_string("a\xFF"
                                 "b"),
            193707259);
}
