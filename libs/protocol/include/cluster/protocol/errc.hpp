#pragma once
// Error codes shared by every process and carried on the wire in `reply.code`.
// The numbers are part of the wire protocol (docs/protocol.md): never renumber.

#include <cstdint>
#include <string_view>

namespace cluster {

enum class errc : std::uint32_t {
  ok = 0,
  malformed_frame = 1,      ///< body is not a valid envelope; the connection is closed
  unsupported_version = 2,  ///< handshake with another protocol version
  unknown_kind = 3,         ///< message kind this peer does not handle
  unknown_entity_type = 4,  ///< no runner serves that entity type
  unknown_rpc = 5,          ///< the entity type has no such RPC
  bad_payload = 6,          ///< the payload does not decode as the RPC's request
  application_error = 7,    ///< the handler failed with a typed error (`reply.error` is its tag)
  defect = 8,               ///< the handler threw an unexpected exception
  not_owner = 9,            ///< this runner does not own the entity's shard (retriable)
  mailbox_full = 10,        ///< the entity's mailbox is at its bound
  deadline_exceeded = 11,   ///< no reply before the request's deadline
  no_runner = 12,           ///< the shard is not assigned to any runner (retriable)
  unavailable = 13,         ///< peer unreachable or connection lost (retriable)
  shutting_down = 14,       ///< the peer is stopping and takes no new work (retriable)
  frame_too_large = 15,     ///< the frame exceeds the size limit; the connection is closed
  invalid_request = 16,     ///< a well-formed message with invalid fields
  too_many_requests = 17,   ///< in-flight limit of the connection reached
  storage_error = 18,       ///< the storage backend failed (retriable)
  handshake_required = 19,  ///< a message arrived before the hello handshake
  unauthorized = 20,        ///< no, unknown or invalid credentials; the connection is closed
  forbidden = 21,           ///< the peer's proven role may not do this; the connection stays
  /// An entity's stored state changed since this activation read it (another activation
  /// committed first): nothing was written. Inside runners; callers see NotOwner.
  state_conflict = 22,
  /// The caller interrupted the request (interrupt, a closed connection) before it ended.
  cancelled = 23,
};

/// Stable, human-readable name of an error code (as printed by clusterctl and the gateway).
constexpr std::string_view to_string(errc code) {
  switch (code) {
    case errc::ok:
      return "Ok";
    case errc::malformed_frame:
      return "MalformedFrame";
    case errc::unsupported_version:
      return "UnsupportedVersion";
    case errc::unknown_kind:
      return "UnknownKind";
    case errc::unknown_entity_type:
      return "UnknownEntityType";
    case errc::unknown_rpc:
      return "UnknownRpc";
    case errc::bad_payload:
      return "BadPayload";
    case errc::application_error:
      return "ApplicationError";
    case errc::defect:
      return "Defect";
    case errc::not_owner:
      return "NotOwner";
    case errc::mailbox_full:
      return "MailboxFull";
    case errc::deadline_exceeded:
      return "DeadlineExceeded";
    case errc::no_runner:
      return "NoRunner";
    case errc::unavailable:
      return "Unavailable";
    case errc::shutting_down:
      return "ShuttingDown";
    case errc::frame_too_large:
      return "FrameTooLarge";
    case errc::invalid_request:
      return "InvalidRequest";
    case errc::too_many_requests:
      return "TooManyRequests";
    case errc::storage_error:
      return "StorageError";
    case errc::handshake_required:
      return "HandshakeRequired";
    case errc::unauthorized:
      return "Unauthorized";
    case errc::forbidden:
      return "Forbidden";
    case errc::cancelled:
      return "Cancelled";
    case errc::state_conflict:
      return "StateConflict";
  }
  return "Unknown";
}

/// Errors a router may retry against a fresh assignment: the request never ran.
constexpr bool is_routing_retriable(errc code) {
  return code == errc::not_owner || code == errc::no_runner || code == errc::unavailable ||
         code == errc::shutting_down;
}

}  // namespace cluster
