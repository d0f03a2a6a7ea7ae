#pragma once
// Where the storage is: the `[cluster] storage` backend name and the `[storage]` section.

#include <chrono>
#include <cstdint>
#include <string>

namespace cluster {

/// The bound of storage.max_state_bytes: a state travels as one statement parameter (twice
/// its size as hex) and is held whole in memory.
inline constexpr std::uint32_t max_state_bytes_limit = 256u * 1024 * 1024;

struct storage_settings {
  std::string backend = "memory";  ///< `[cluster] storage`: "memory" or "postgres"
  std::string url;                 ///< libpq conninfo or URI; empty: built from the fields below
  std::string host = "127.0.0.1";
  std::uint16_t port = 5432;
  std::string user = "postgres";
  std::string password;
  std::string database = "cluster";
  /// libpq `sslmode` and `sslrootcert` of a connection built from the fields above (a `url`
  /// carries its own): empty = libpq's default. In AWS "verify-full" with the RDS CA bundle
  /// of the image, so a database reached over the network proves its name.
  std::string sslmode;
  std::string sslrootcert;
  std::string table_prefix = "cluster";
  std::chrono::milliseconds poll_interval{1000};  ///< reply polling when a notification is missed
  std::chrono::milliseconds retention{7LL * 24 * 3600 *
                                      1000};  ///< processed messages kept this long
  std::uint32_t batch_size = 512;             ///< rows per statement and per replay read
  /// A persisted message whose attempts were cut short (a crash of its runner or plugin) this
  /// many times is not run again: it is dead-lettered with an error reply.
  std::uint32_t max_attempts = 3;  ///< 1..1000
  /// The largest entity state a handler may set (its msgpack bytes); the runner refuses a
  /// bigger one (the handler's call fails, nothing is written). 1 .. max_state_bytes_limit.
  std::uint32_t max_state_bytes = 1024 * 1024;
  /// The sessions' `application_name` (set by the process, not configured: a runner's
  /// names its incarnation so that the manager can end its sessions).
  std::string application_name = "cluster-sst";

  /// The libpq connection string (the password is included: never log it).
  std::string conninfo() const;
  /// The same with the password masked, for logs.
  std::string describe() const;
};

}  // namespace cluster
