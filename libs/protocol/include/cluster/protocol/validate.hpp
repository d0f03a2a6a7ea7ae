#pragma once
// The checks every request passes where it enters a process (proxy, runner, gateway), before
// it reaches storage or a plugin: names and ids are valid UTF-8 without NUL and within their
// bounds, `deliver_at_ms` within a year. A request that fails gets InvalidRequest naming the
// field, so one bad call fails only itself (PostgreSQL would refuse the row and with it the
// whole store round).

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "cluster/protocol/messages.hpp"
#include "cluster/protocol/result.hpp"

namespace cluster {

struct request_limits {
  /// Longest entity id and primary key, in bytes (`cluster.max_id_bytes`).
  std::uint32_t max_id_bytes = 1024;
  /// Longest entity type and RPC name, in bytes (fixed, like plugin names).
  std::uint32_t max_name_bytes = 255;
  /// How far ahead `deliver_at_ms` may be; earlier than now is fine (it runs at once).
  std::int64_t max_deliver_ahead_ms = 365LL * 24 * 60 * 60 * 1000;
};

/// The offset of the first byte that makes `text` invalid UTF-8 (RFC 3629: no overlong
/// forms, no surrogates, nothing past U+10FFFF, nothing truncated), or nullopt. ASCII runs
/// are checked eight bytes at a time.
std::optional<std::size_t> invalid_utf8_offset(std::string_view text);

/// True when `text` is valid UTF-8 without NUL: what a PostgreSQL text column takes.
bool is_clean_text(std::string_view text);

/// `text` with every invalid byte and every NUL replaced by U+FFFD, for text that must be
/// stored whatever it holds (a handler's error message).
std::string to_clean_text(std::string_view text);

/// Checks one text field: valid UTF-8, no NUL, at most `max_bytes` bytes. The failure names
/// `field` and says what is wrong ("entity_id is not valid UTF-8 (byte 0xff at offset 0)").
result<void> validate_text_field(std::string_view field, std::string_view text,
                                 std::size_t max_bytes);

/// Checks every field of `request` against `limits`; `now_ms` is the current unix time in
/// milliseconds (deliver_at_ms is bounded from it).
result<void> validate_request(const request_msg& request, const request_limits& limits,
                              std::int64_t now_ms);
/// The same, against the system clock.
result<void> validate_request(const request_msg& request, const request_limits& limits);

}  // namespace cluster
