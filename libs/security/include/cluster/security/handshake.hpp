#pragma once
// What each side of the handshake signs (docs/security.md "Handshake").
//
// Both signatures cover the whole exchange: both roles, names, keys and nonces, and the TLS
// session's exporter value when there is one. A fresh nonce from the other side makes each
// signature single-use (a recorded handshake does not replay), and the exporter ties it to
// this TLS session (a man in the middle who terminates TLS on both sides has two sessions
// with different values, so the signatures it relays do not verify).

#include <cstdint>
#include <span>
#include <vector>

#include "cluster/protocol/messages.hpp"

namespace cluster {

enum class handshake_side { server, client };

/// The bytes `side` signs; `ack.signature` is not part of them.
std::vector<std::uint8_t> handshake_transcript(handshake_side side, const hello_msg& hello,
                                               const hello_ack_msg& ack,
                                               std::span<const std::uint8_t> channel_binding);

inline constexpr std::size_t handshake_nonce_bytes = 32;

}  // namespace cluster
