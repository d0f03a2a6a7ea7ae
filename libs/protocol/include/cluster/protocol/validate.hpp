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

/// True when `text` is 64 lowercase hex digits: how sha256 digests travel.
bool is_sha256_hex(std::string_view text);

/// What one runner may declare in register_runner. The manager checks a registration against
/// these before it stores anything, and again for registrations loaded from storage.
struct registration_limits {
  std::uint32_t max_address_bytes = 255;  ///< host:port, as a DNS name plus port fits
  std::uint32_t max_runner_name_bytes = 255;
  std::uint32_t max_version_bytes = 255;
  /// The runner's incarnation (16 hex digits today; 48 keep its session name within
  /// PostgreSQL's 63-byte application_name).
  std::uint32_t max_incarnation_bytes = 48;
  std::uint32_t max_groups = 64;  ///< shard groups per runner (`manager.max_groups_per_runner`)
  std::uint32_t max_group_bytes = 64;
  /// Entity types per runner (`manager.max_entity_types_per_runner`).
  std::uint32_t max_entity_types = 256;
  std::uint32_t max_rpcs_per_type = 256;
  /// Entity type and RPC names, as request_limits::max_name_bytes.
  std::uint32_t max_name_bytes = 255;
  /// Plugin files a runner lists (loaded, failed and draining ones), each naming at most
  /// max_entity_types types (`manager.max_plugins_per_runner`).
  std::uint32_t max_plugins = 64;
  /// A plugin's `file` (a path, or "push:<name>").
  std::uint32_t max_plugin_file_bytes = 1024;
  /// A plugin's `error`: why its file was refused (runners cut longer messages).
  std::uint32_t max_plugin_error_bytes = 1024;
};

/// Checks every field of a registration: texts are valid UTF-8 without NUL and within their
/// bounds, the address, the groups and the names are not empty, and the counts of groups,
/// entity types, RPCs and plugins (and the entity types each plugin names) are within theirs. The
/// failure (InvalidRequest) names the field and the limit, e.g. "groups has 150 entries; at most 64
/// are allowed". Whether the address parses as host:port is the caller's check (parse_host_port
/// lives in the net layer).
result<void> validate_registration(const register_runner_msg& registration,
                                   const registration_limits& limits);

/// Checks a plugin pushed to the cluster (clusterctl plugin push): its name is a file name
/// runners can write as `<name>.so` (1–128 bytes of letters, digits, '.', '_' and '-', not
/// starting with '.'), `version` at most max_version_bytes, `sha256` 64 lowercase hex digits,
/// at most max_entity_types entity types with valid names, and a size from 1 byte up.
result<void> validate_stored_plugin(const stored_plugin& plugin, const registration_limits& limits);

}  // namespace cluster
