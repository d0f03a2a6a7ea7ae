#pragma once
// The roles a peer can prove, and sets of them as bitmasks (the permission tables).

#include <cstdint>
#include <optional>
#include <string_view>

namespace cluster {

enum class role : std::uint8_t { manager, runner, proxy, client, admin };
inline constexpr int role_count = 5;

using role_mask = std::uint8_t;

constexpr role_mask mask_of(role r) { return static_cast<role_mask>(1u << static_cast<int>(r)); }
template <class... Roles>
constexpr role_mask mask_of(role first, Roles... rest) {
  return static_cast<role_mask>(mask_of(first) | mask_of(rest...));
}
inline constexpr role_mask every_role = (1u << role_count) - 1;
/// The roles that listen on a port: what a connecting client may talk to.
inline constexpr role_mask any_server_role = mask_of(role::manager, role::runner, role::proxy);

constexpr std::string_view to_string(role r) {
  switch (r) {
    case role::manager:
      return "manager";
    case role::runner:
      return "runner";
    case role::proxy:
      return "proxy";
    case role::client:
      return "client";
    case role::admin:
      return "admin";
  }
  return "unknown";
}

constexpr std::optional<role> parse_role(std::string_view text) {
  for (int i = 0; i < role_count; ++i)
    if (to_string(static_cast<role>(i)) == text) return static_cast<role>(i);
  return std::nullopt;
}

}  // namespace cluster
