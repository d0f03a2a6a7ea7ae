#pragma once
// A process's admin HTTP endpoint (`<section>.admin_port`): /metrics, /healthz, /readyz,
// and whatever routes the application adds (the manager's dashboard).
//
// /healthz answers from the io thread, so an answer proves the event loop turns; a frozen
// loop accepts the TCP connection but never answers, and the health check times out.
// /readyz asks the application whether it serves. With admin_token set, every route but
// those two needs the token.
//
// Thread: the process's io thread.

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "cluster/http/http.hpp"
#include "cluster/net/asio.hpp"
#include "cluster/process/settings.hpp"
#include "cluster/protocol/result.hpp"

namespace cluster {

class admin_endpoint {
 public:
  /// `readiness` says why the process does not serve yet (a failure) or that it does.
  admin_endpoint(asio::io_context& io, admin_settings settings, std::string process,
                 std::function<result<void>()> readiness);
  ~admin_endpoint();
  admin_endpoint(const admin_endpoint&) = delete;
  admin_endpoint& operator=(const admin_endpoint&) = delete;

  http::server& server() { return server_; }
  /// Paths under `prefix` need no token (the dashboard's page and files: they hold no data;
  /// what they fetch does).
  void allow_without_token(std::string prefix) { open_prefixes_->push_back(std::move(prefix)); }
  /// The admin token ("" when there is none), for scraping peers that share it.
  const std::string& token() const { return settings_.token; }
  /// Binds (throws when it cannot) and starts the event-loop lag probe.
  void start();
  /// From now on /readyz answers 503 "stopping".
  void stopping() { stopping_ = true; }
  /// host:port it listens on.
  std::string address() const;

 private:
  awaitable<void> probe_loop();
  asio::io_context& io_;
  admin_settings settings_;
  std::string process_;
  std::function<result<void>()> readiness_;
  http::server server_;
  bool stopping_ = false;
  std::shared_ptr<std::vector<std::string>> open_prefixes_ =
      std::make_shared<std::vector<std::string>>();
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace cluster
