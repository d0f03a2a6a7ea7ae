#pragma once
// What a caller presenting a bearer token may reach: the token check (by digest) and the
// allowlist of entity types and RPCs. Shared by the HTTP gateway (gateway.bearer_token,
// gateway.expose) and the proxy's Effect RPC listener (proxy.effect_token,
// proxy.effect_expose), so both read the same list the same way.

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cluster/protocol/result.hpp"

namespace cluster::security {

/// What may be called: whole entity types, single RPCs of a type, or all.
class expose_list {
 public:
  /// Entries "Type", "Type/Rpc" or "*" (everything). A malformed entry ("", "/Rpc",
  /// "Type/", "A/B/C") is a failure naming it and `setting`.
  static result<expose_list> parse(const std::vector<std::string>& entries,
                                   std::string_view setting = "gateway.expose");
  static expose_list everything();
  /// Allocation-free: the list is short and scanned in place.
  bool allows(std::string_view type, std::string_view rpc) const;

 private:
  struct entry {
    std::string type;
    std::string rpc;  ///< empty: every RPC of the type
  };
  bool all_ = false;
  std::vector<entry> entries_;
};

using token_digest = std::array<std::uint8_t, 32>;

/// SHA-256 of a bearer token: holders keep and compare digests only, so comparing takes the
/// same time whatever the lengths and contents of the two tokens.
token_digest digest_of_token(std::string_view token);

/// The token of an `Authorization: Bearer <token>` value (the scheme in any case, RFC 7235;
/// spaces around the token dropped); nullopt for another scheme or none.
std::optional<std::string_view> bearer_token_of(std::string_view authorization);

/// Whether `presented` is the token whose digest is `expected` (constant time; an empty
/// token never matches).
bool token_matches(std::string_view presented, const token_digest& expected);

}  // namespace cluster::security
