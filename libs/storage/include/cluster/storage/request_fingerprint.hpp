#pragma once
// What binds a primary key to its request: a persisted message is stored with the SHA-256
// of its entity type, entity id, RPC and payload, so that the same key sent with another
// request is refused instead of answered with someone else's reply.

#include <array>
#include <cstdint>
#include <string_view>

#include "cluster/protocol/messages.hpp"
#include "cluster/protocol/result.hpp"

namespace cluster {

using request_fingerprint = std::array<std::uint8_t, 32>;

/// SHA-256 over a version tag and each field as its 8-byte little-endian length followed by
/// its bytes, so that no two different (type, id, rpc, payload) can hash the same input
/// ("ab"+"c" and "a"+"bc" differ). Part of the stored data: never change it, tag a new one.
/// Allocation-free on the caller's side (a per-thread digest context); safe on any thread.
request_fingerprint fingerprint_of(const request_msg& request);

inline constexpr std::string_view primary_key_reused_message =
    "primary key reused with a different request";

/// The answer to a primary key that was stored with a different request.
inline failure primary_key_reused() {
  return failure{errc::invalid_request, std::string(primary_key_reused_message)};
}

}  // namespace cluster
