#pragma once
// Routes entity requests to the runner that owns their shard, from the latest assignment
// snapshot, over one pooled multiplexed connection per runner. Retries requests that
// never ran (not owner, no runner, unreachable, shutting down) until their deadline, and
// requests for a type their shard's owner does not have (its plugins say so, or it answers
// UnknownEntityType) while another runner has it: during a rollout the manager moves such
// shards to runners that have the type.
//
// Used by the proxy and by runners (entity-to-entity calls). Single-threaded.

#include <map>
#include <optional>
#include <set>

#include "cluster/net/connection.hpp"

namespace cluster {

struct router_options {
  std::string name = "router";  ///< sent in hello
  std::string role = "proxy";
  connection_limits limits;
  milliseconds connect_timeout{1000};
  milliseconds retry_min{5};
  milliseconds retry_max{200};
};

/// Where an entity lives according to the current snapshot.
struct entity_location {
  std::string group;
  std::int32_t shard = 0;
  std::string owner;    ///< runner address, empty when unassigned
  bool stream = false;  ///< the RPC asked for streams (rpc_info::stream)
};

/// A unique primary key for a persisted request that came without one.
std::string generated_request_key();

class routed_set;

/// A request a router is routing for a caller that may interrupt it or stream its reply
/// (the proxy). Shared by the router's tries; the caller finds it in its routed_set.
struct routed_request {
  request_msg request;
  steady_clock::time_point deadline;
  /// Streaming replies go to `caller` as stream_chunk frames with `caller_id`, or to
  /// `on_items` when it is set (a caller that speaks another protocol).
  connection_ptr caller;
  std::uint64_t caller_id = 0;
  std::function<void(std::vector<bytes>&&)> on_items;
  /// The try in progress: the runner connection and the id of the request on it.
  connection_ptr conn;
  std::uint64_t call_id = 0;
  bool stream = false;       // the RPC streams (by the snapshot)
  bool streamed = false;     // an item reached the caller: no more retries
  bool interrupted = false;  // no more tries: the caller stopped it
 private:
  friend class router;
  friend class routed_set;
  routed_set* set_ = nullptr;
  routed_request* prev_ = nullptr;
  routed_request* next_ = nullptr;
};

/// The requests in flight for one caller, by the caller's id: an intrusive list, so routing
/// a request costs no allocation or map insert here; a lookup (an interrupt or a stream ack,
/// both rare next to requests) walks it.
class routed_set {
 public:
  routed_set() = default;
  routed_set(const routed_set&) = delete;
  routed_set& operator=(const routed_set&) = delete;
  ~routed_set();
  routed_request* find(std::uint64_t caller_id) const;
  /// Every request in the set, for a caller that went away.
  std::vector<routed_request*> all() const;

 private:
  friend class router;
  void link(routed_request& request);
  static void unlink(routed_request& request);
  routed_request* head_ = nullptr;
};

class router {
 public:
  router(asio::io_context& io, router_options options);
  router(const router&) = delete;
  router& operator=(const router&) = delete;

  void update(assignment_snapshot snapshot);
  const assignment_snapshot& snapshot() const { return snapshot_; }

  /// Locates an entity: `unknown_entity_type`, `unknown_rpc` (empty rpc: not checked) or
  /// `no_runner` (no snapshot yet, or the group has no shards). An unassigned shard is a
  /// location with an empty owner.
  result<entity_location> locate(const std::string& entity_type, const std::string& entity_id,
                                 const std::string& rpc) const;

  /// Sends `request` to its owner and returns the reply; retries retriable failures
  /// with backoff until `deadline`, then answers deadline_exceeded with the last cause.
  awaitable<reply_msg> route(request_msg request, steady_clock::time_point deadline);

  /// Callback form of `route`: `done(reply_msg&&)` runs exactly once. The common case (the
  /// owner's pooled connection is open) sends at once, without a coroutine; everything
  /// else, retries included, goes through the coroutine form.
  template <class Done>
  void route(request_msg request, steady_clock::time_point deadline, Done done);

  /// Routes a request for `caller` (request `caller_id` of its connection) and keeps it in
  /// `set` while in flight, so `interrupt` and `ack` can reach it: a streaming RPC's items
  /// are sent to `caller` as they come, and a retriable failure is retried only while none
  /// has been sent. `done` gets the final reply, after the request left `set`. With
  /// `on_items`, items go there instead of to `caller` (which may then be null).
  template <class Done>
  void route(request_msg request, steady_clock::time_point deadline, Done done, routed_set& set,
             connection_ptr caller, std::uint64_t caller_id,
             std::function<void(std::vector<bytes>&&)> on_items = {});
  /// Stops a routed request: the runner running it is told (its reply ends the request,
  /// `Cancelled` from a runner that stopped it), and no further try is made.
  void interrupt(routed_request& request);
  /// Passes a stream ack of the caller on to the runner of the try in progress.
  void ack(routed_request& request, std::uint32_t credit);
  /// Whether the snapshot declares `entity_type`'s `rpc` persisted.
  bool is_persisted(const std::string& entity_type, const std::string& rpc) const;

  /// Runners serve their own shards without a network hop.
  std::function<bool(const std::string& owner)> is_local;
  std::function<awaitable<reply_msg>(request_msg, steady_clock::time_point)> deliver_locally;

  /// Closes pooled connections.
  void stop();

  /// Does the runner at `address` lack `entity_type` by the plugins it listed in the
  /// snapshot? A runner that lists no plugins is taken to have every type of its groups.
  bool lacks_type(const std::string& address, const std::string& entity_type) const;

 private:
  /// Should a reply from `owner` for `request` be tried again? The routing-retriable codes,
  /// and UnknownEntityType for a type some other runner has.
  bool is_retriable(const reply_msg& reply, const request_msg& request,
                    const std::string& owner) const;
  /// Computes lacking_ and servers_ from snapshot_.
  void index_plugins();
  /// The pooled connection to `address`, connecting (once for all waiting callers) if needed.
  awaitable<result<connection_ptr>> connection_to(const std::string& address,
                                                  steady_clock::time_point deadline);
  /// Gives a persisted request without a key its generated one (kept across retries).
  void ensure_primary_key(request_msg& request) const;
  /// The open pooled connection to the remote owner of `request`'s entity, if there is one;
  /// `stream` tells whether the RPC streams.
  connection_ptr ready_connection(const request_msg& request, bool* stream = nullptr) const;
  /// Sends one try of `track`'s request on `conn`, recording where it went.
  void send_try(const connection_ptr& conn, const std::shared_ptr<routed_request>& track,
                milliseconds timeout, connection::reply_callback done);
  awaitable<reply_msg> send_try(connection_ptr conn, std::shared_ptr<routed_request> track,
                                milliseconds timeout);
  /// The coroutine form with a routed request (`route` with the caller's set).
  /// After a failed try (`last`), it waits the first backoff before the next.
  awaitable<reply_msg> route_tracked(std::shared_ptr<routed_request> track,
                                     std::optional<reply_msg> last = std::nullopt);
  /// Why a request for `entity_type` cannot be sent now (nullopt: `located` names an owner
  /// to try); `final` when waiting for another snapshot cannot help.
  std::optional<reply_msg> unsendable(result<entity_location>& located,
                                      const std::string& entity_type, bool& final) const;
  /// Whether a failed try of a tracked request is tried again.
  bool retry_tracked(const routed_request& track, const reply_msg& reply,
                     const std::string& owner) const;
  /// What a request gets when its deadline leaves no time for another try after `last`.
  static reply_msg expired(const reply_msg& last);
  /// Waits the first backoff after a failed try, then routes again.
  awaitable<reply_msg> retry(request_msg request, steady_clock::time_point deadline,
                             reply_msg last);
  template <class Done>
  void route_in_coroutine(awaitable<reply_msg> routing, Done done);

  asio::io_context& io_;
  router_options options_;
  assignment_snapshot snapshot_;
  std::map<std::string, connection_ptr> pool_;
  // Per snapshot: runner address → entity types it lacks (empty in the common case, so the
  // hot path pays one branch), and entity type → runners that have it (for the error path).
  std::map<std::string, std::set<std::string>> lacking_;
  std::map<std::string, std::vector<std::string>> servers_;
  // One connect at a time per runner; others wait on its timer.
  std::map<std::string, std::shared_ptr<asio::steady_timer>> connecting_;
};

template <class Done>
void router::route_in_coroutine(awaitable<reply_msg> routing, Done done) {
  asio::co_spawn(
      io_,
      [routing = std::move(routing), done = std::move(done)]() mutable -> awaitable<void> {
        auto reply = co_await std::move(routing);
        done(std::move(reply));
      },
      asio::detached);
}

template <class Done>
void router::route(request_msg request, steady_clock::time_point deadline, Done done,
                   routed_set& set, connection_ptr caller, std::uint64_t caller_id,
                   std::function<void(std::vector<bytes>&&)> on_items) {
  ensure_primary_key(request);
  struct in_flight : routed_request {
    explicit in_flight(Done&& callback) : done(std::move(callback)) {}
    Done done;
  };
  auto call = std::make_shared<in_flight>(std::move(done));
  call->request = std::move(request);
  call->deadline = deadline;
  call->caller = std::move(caller);
  call->caller_id = caller_id;
  call->on_items = std::move(on_items);
  set.link(*call);
  // Leaves the set before `done` runs: the caller may look for another request meanwhile.
  auto finish = [call](reply_msg&& reply) {
    routed_set::unlink(*call);
    call->conn = nullptr;
    call->done(std::move(reply));
  };
  auto conn = ready_connection(call->request, &call->stream);
  if (!conn) {
    route_in_coroutine(route_tracked(call), std::move(finish));
    return;
  }
  const auto left = std::chrono::duration_cast<milliseconds>(deadline - steady_clock::now());
  send_try(conn, call, std::max(left, milliseconds(1)),
           [this, call, finish = std::move(finish)](reply_msg&& reply) mutable {
             if (!retry_tracked(*call, reply, std::string())) {
               finish(std::move(reply));
               return;
             }
             call->conn = nullptr;
             route_in_coroutine(route_tracked(call, std::move(reply)), std::move(finish));
           });
}

template <class Done>
void router::route(request_msg request, steady_clock::time_point deadline, Done done) {
  ensure_primary_key(request);
  auto conn = ready_connection(request);
  if (!conn) {
    route_in_coroutine(route(std::move(request), deadline), std::move(done));
    return;
  }
  // The request stays with the call: a retriable failure sends it again.
  struct in_flight {
    request_msg request;
    steady_clock::time_point deadline;
    Done done;
  };
  auto call = std::make_shared<in_flight>(in_flight{std::move(request), deadline, std::move(done)});
  const auto left = std::chrono::duration_cast<milliseconds>(deadline - steady_clock::now());
  call->request.timeout_ms = static_cast<std::uint32_t>(std::max<std::int64_t>(1, left.count()));
  conn->call(message_kind::request, call->request, std::max(left, milliseconds(1)),
             [this, call](reply_msg&& reply) {
               if (!is_routing_retriable(reply.code) &&
                   (reply.code != errc::unknown_entity_type ||
                    !is_retriable(reply, call->request, std::string()))) {
                 call->done(std::move(reply));
                 return;
               }
               route_in_coroutine(retry(std::move(call->request), call->deadline, std::move(reply)),
                                  std::move(call->done));
             });
}

}  // namespace cluster
