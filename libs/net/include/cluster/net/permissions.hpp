#pragma once
// Which proven roles may connect to a port and send each message kind there.
//
// Checked by the connection before any handler sees a message, so a handler only ever runs
// for peers allowed to send its kind. A denial is answered `forbidden` and logged.

#include <array>

#include "cluster/protocol/messages.hpp"
#include "cluster/security/roles.hpp"

namespace cluster {

class permissions {
 public:
  /// `admitted`: the roles that may connect at all (others are refused at hello). Every
  /// kind starts denied to everyone, except ping (every admitted role).
  explicit permissions(role_mask admitted) : admitted_(admitted) {
    kinds_.fill(0);
    allow(message_kind::ping, every_role);
  }
  permissions& allow(message_kind kind, role_mask roles) {
    kinds_[static_cast<std::uint32_t>(kind)] = roles;
    return *this;
  }
  bool admits(role r) const { return (admitted_ & mask_of(r)) != 0; }
  /// Kinds past the table (unknown to this build) go to the handler, which answers
  /// UnknownKind.
  bool allows(std::uint32_t kind, role r) const {
    return kind >= kinds_.size() || (kinds_[kind] & mask_of(r)) != 0;
  }

 private:
  role_mask admitted_;
  std::array<role_mask, message_kind_count> kinds_;
};

}  // namespace cluster
