#include "cluster/security/handshake.hpp"

#include <string_view>

namespace cluster {

namespace {

// Length-prefixed, so no field can run into the next.
void append(std::vector<std::uint8_t>& out, std::span<const std::uint8_t> field) {
  const auto n = static_cast<std::uint32_t>(field.size());
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(n >> shift));
  out.insert(out.end(), field.begin(), field.end());
}

void append(std::vector<std::uint8_t>& out, std::string_view text) {
  append(out, std::span(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
}

}  // namespace

std::vector<std::uint8_t> handshake_transcript(handshake_side side, const hello_msg& hello,
                                               const hello_ack_msg& ack,
                                               std::span<const std::uint8_t> channel_binding) {
  std::vector<std::uint8_t> out;
  out.reserve(256);
  append(out, side == handshake_side::server ? std::string_view("cluster-sst handshake server")
                                             : std::string_view("cluster-sst handshake client"));
  append(out, std::to_string(hello.protocol_version));
  append(out, hello.role);
  append(out, hello.name);
  append(out, hello.key);
  append(out, hello.nonce);
  append(out, ack.role);
  append(out, ack.name);
  append(out, ack.key);
  append(out, ack.nonce);
  append(out, channel_binding);
  return out;
}

}  // namespace cluster
