#pragma once
// The proxy's @effect/rpc listener (`proxy.effect_port`): Effect programs that call an
// Effect Cluster through `RpcClient.layerProtocolSocket()` and `EntityProxy.toRpcGroup`
// call this cluster's entities unchanged. Each connection speaks the socket protocol with
// NDJSON or MessagePack (detected or configured): Request, Ack, Interrupt, Ping, Eof from
// the client; Chunk, Exit, Defect, Pong to it. Requests go through the proxy's router,
// like those of the native protocol; see docs/effect-rpc.md.
//
// Thread: the proxy's io_context thread owns the listener, its sessions and their calls.

#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>

#include "cluster/client/router.hpp"
#include "cluster/process/gate.hpp"
#include "cluster/protocol/validate.hpp"
#include "cluster/proxy/effect_codec.hpp"
#include "cluster/proxy/effect_mapping.hpp"
#include "cluster/security/access.hpp"

namespace cluster::proxy {

struct effect_listener_options {
  std::string host = "127.0.0.1";
  std::uint16_t port = 0;
  effect_framing framing = effect_framing::detect;
  /// Every request must carry `authorization: Bearer <token>` with this token; nullopt
  /// only where components do not authenticate.
  std::optional<security::token_digest> token;
  security::expose_list expose = security::expose_list::everything();
  std::size_t max_message_bytes = 8 * 1024 * 1024;
  std::uint32_t max_connections = 4096;
  std::uint32_t max_in_flight = 4096;
  std::size_t max_queued_bytes = 64 * 1024 * 1024;
  milliseconds request_timeout{10000};
  request_limits limits;
};

class effect_listener {
 public:
  effect_listener(asio::io_context& io, router& routes, gate& in_flight,
                  effect_listener_options options, effect_tags tags);
  ~effect_listener();
  effect_listener(const effect_listener&) = delete;
  effect_listener& operator=(const effect_listener&) = delete;

  /// Binds and starts accepting; throws config_error when the port cannot be bound.
  void listen();
  std::uint16_t port() const;
  /// New connections are refused and new requests answered as a stopping runner would.
  void stop_accepting();
  /// Closes every connection once what is queued for it is written.
  void close_after_flush();
  std::size_t connection_count() const { return sessions_.size(); }

 private:
  class session;
  void accept_next();

  asio::io_context& io_;
  router& router_;
  gate& in_flight_;
  effect_listener_options options_;
  effect_tags tags_;
  asio::ip::tcp::acceptor acceptor_;
  std::set<std::shared_ptr<session>> sessions_;
  bool stopping_ = false;
};

}  // namespace cluster::proxy
