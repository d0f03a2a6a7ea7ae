#pragma once
// Which public keys speak for which role: the only thing a verifier needs.
//
// Text form: entries `role=BASE64` (a raw 32-byte Ed25519 public key) separated by commas,
// spaces or newlines; a line starting with `#` is a comment. A role may list several keys
// (rotation); a key belongs to one role.

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "cluster/protocol/result.hpp"
#include "cluster/security/keys.hpp"
#include "cluster/security/roles.hpp"

namespace cluster {

class trust_list {
 public:
  static result<trust_list> parse(std::string_view text);
  static result<trust_list> load_file(const std::string& path);

  /// Fails when the key is already listed (under any role).
  result<void> add(role r, const public_key& key);
  std::optional<role> role_of(const public_key& key) const;
  bool empty() const { return entries_.empty(); }
  std::string to_text() const;

 private:
  std::vector<std::pair<role, public_key>> entries_;
};

}  // namespace cluster
