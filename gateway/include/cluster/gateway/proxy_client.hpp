#pragma once
// The gateway's and the Lambda's way into the cluster: one multiplexed protocol
// connection to a proxy, opened on the first call and reopened on demand after it drops.
//
// Lifecycle: constructed idle; `call` connects when needed; `close` drops the connection
// and fails its pending calls with `unavailable`. Thread: every member runs on the
// executor given to the constructor (the process's single io_context thread); the
// object must outlive the calls it started (owners keep it in shared state).

#include <string>

#include "cluster/net/connection.hpp"
#include "cluster/process/defaults.hpp"

namespace cluster::gateway {

struct proxy_client_options {
  host_port proxy{std::string(defaults::host), defaults::proxy_port};
  std::string name = "gateway";  ///< sent in hello; shows in the proxy's logs
  connection_limits limits;
  /// Upper bound of one connection attempt (the call's own deadline may be shorter).
  milliseconds connect_timeout{3000};
};

class proxy_client {
 public:
  proxy_client(asio::any_io_executor executor, proxy_client_options options);
  ~proxy_client();
  proxy_client(const proxy_client&) = delete;
  proxy_client& operator=(const proxy_client&) = delete;

  /// Sends `request` through the proxy and waits at most `timeout` for its reply. Never
  /// throws: a failed connection is an `unavailable` reply, a late one `deadline_exceeded`.
  /// Build the awaitable in its own statement (GCC 12 coroutine temporaries, libs/net/README.md).
  awaitable<reply_msg> call(request_msg request, milliseconds timeout);

  /// Whether `request`'s RPC streams (rpc_info::stream), by the proxy's snapshot
  /// (get_status), kept for snapshot_max_age; an entity type it does not list is looked up
  /// again at once (at most once per snapshot_min_age). False when the proxy cannot say.
  awaitable<bool> streams(const request_msg& request, milliseconds timeout);
  /// The open connection to the proxy, connecting if needed (for streaming calls).
  awaitable<result<connection_ptr>> open(milliseconds timeout) { return connection(timeout); }

  /// Drops the connection (pending calls fail with `unavailable`); the next call reconnects.
  void close();
  bool connected() const { return conn_ && conn_->is_open(); }
  const proxy_client_options& options() const { return options_; }

 private:
  // The open connection, connecting first if needed (`unavailable` when that fails).
  awaitable<result<connection_ptr>> connection(milliseconds timeout);

  awaitable<void> refresh_snapshot(milliseconds timeout);

  asio::any_io_executor executor_;
  assignment_snapshot snapshot_;
  steady_clock::time_point snapshot_at_{};  // epoch: never fetched
  bool refreshing_ = false;
  proxy_client_options options_;
  connection_ptr conn_;
  bool connecting_ = false;
  std::string last_connect_error_;
  // Callers that arrive while a connection attempt runs wait on this timer; the attempt
  // cancels it when it ends, so a burst of calls opens one connection, not many.
  asio::steady_timer connect_done_;
};

}  // namespace cluster::gateway
