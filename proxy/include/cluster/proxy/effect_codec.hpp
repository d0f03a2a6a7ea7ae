#pragma once
// The framings of @effect/rpc's socket protocol, as `RpcSerialization.layerNdjson` and
// `layerMsgPack` write them: one JSON object per line, or back-to-back MessagePack values
// in msgpackr's dialect. msgpackr (what Effect's MsgPack uses) writes objects as "records":
// `d4 72 <id>` and the array of keys define structure <id> (0x40..0x7f), the values follow;
// later the bare byte <id> starts another object of that shape. Its decoder, in turn, reads
// standard maps as JS `Map`s, which Effect's schemas reject: so replies are written as
// records too. Messages are nlohmann::json values both ways.
//
// Used by the proxy's Effect listener; no I/O, no threads.

#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

#include "cluster/protocol/result.hpp"

namespace cluster::proxy {

enum class effect_framing {
  detect,   ///< from the connection's first byte: '{' (or whitespace) NDJSON, else MessagePack
  ndjson,   ///< RpcSerialization.layerNdjson
  msgpack,  ///< RpcSerialization.layerMsgPack
};

/// "auto" / "ndjson" / "msgpack" (proxy.effect_serialization); nullopt otherwise.
std::optional<effect_framing> parse_effect_framing(std::string_view text);
std::string_view to_string(effect_framing framing);

/// Splits a connection's bytes into messages. A message longer than `max_message_bytes`
/// or one that does not parse is an error; the connection is then beyond repair.
class effect_reader {
 public:
  effect_reader(effect_framing framing, std::size_t max_message_bytes);

  void append(std::string_view bytes);
  /// The next whole message; nullopt while it has not all arrived.
  result<std::optional<nlohmann::json>> next();
  /// The framing in use (detect until the first byte arrived).
  effect_framing framing() const { return framing_; }

 private:
  result<std::optional<nlohmann::json>> next_line();
  result<std::optional<nlohmann::json>> next_msgpack();

  effect_framing framing_;
  std::size_t max_message_bytes_;
  std::string buffer_;
  std::size_t start_ = 0;  // where the unread bytes of buffer_ begin
  // MessagePack: a value cut short at this buffer size is not retried until more came.
  std::size_t incomplete_at_ = 0;
};

/// One message as `framing` writes it (a line for NDJSON). `framing` must not be detect.
std::string encode_effect_message(const nlohmann::json& message, effect_framing framing);

/// msgpackr's dialect on its own (exposed for tests): one value, or an error (the text says
/// where); nullopt when `bytes` ends before the value does. `used` gets its length.
result<std::optional<nlohmann::json>> decode_msgpackr(std::string_view bytes, std::size_t& used);
std::string encode_msgpackr(const nlohmann::json& value);

}  // namespace cluster::proxy
