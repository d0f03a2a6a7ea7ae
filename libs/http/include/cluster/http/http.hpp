#pragma once
// A small HTTP/1.1 server (Beast) for the processes' admin endpoints, and a client for what
// they call over HTTP (an OTLP collector, a runner's /metrics).
//
// Threads: the server and every fetch run on the io_context they are given; handlers run
// there too, so they may read what that thread owns.

#include <boost/beast/http.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "cluster/net/asio.hpp"
#include "cluster/protocol/result.hpp"

namespace cluster::http {

namespace beast_http = boost::beast::http;
using request = beast_http::request<beast_http::string_body>;

struct response {
  unsigned status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;
};

/// The path of a request target without its query ("/metrics?x=1" → "/metrics").
std::string_view path_of(std::string_view target);
/// The value of `name` in the target's query string ("" when absent), %-decoded.
std::string query_value(std::string_view target, std::string_view name);

using handler = std::function<awaitable<response>(const request&)>;

struct server_limits {
  std::size_t max_connections = 64;
  std::size_t max_body_bytes = 64 * 1024;
  milliseconds read_timeout{10000};
};

class server {
 public:
  server(asio::io_context& io, server_limits limits = {});
  server(const server&) = delete;
  server& operator=(const server&) = delete;
  ~server();

  /// `path` answers requests for exactly that path; a path ending in '/' also answers every
  /// path below it (unless a longer route matches).
  void route(std::string path, handler h);
  /// Runs `check` before each handler; a response it returns is sent instead.
  void guard(std::function<std::optional<response>(const request&)> check);
  /// Binds and starts accepting (throws when the address cannot be bound).
  void listen(const std::string& host, std::uint16_t port);
  tcp::endpoint local_endpoint() const;
  void close();

 private:
  struct state;
  std::shared_ptr<state> state_;
};

struct fetched {
  unsigned status = 0;
  std::string content_type;
  std::string body;
};

struct fetch_options {
  std::string method = "GET";
  std::string body;
  std::string content_type;
  std::vector<std::pair<std::string, std::string>> headers;
  milliseconds timeout{2000};
  std::size_t max_body_bytes = 16 * 1024 * 1024;
};

/// `http://host:port/path` → {host_port, path}; nullopt for anything else (no TLS here).
struct url_parts {
  host_port address;
  std::string target;
};
std::optional<url_parts> parse_url(std::string_view url);

/// One request on a new connection. Fails Unavailable (with the reason) when the peer cannot
/// be reached or answers nothing within the timeout, InvalidRequest for a bad URL.
awaitable<result<fetched>> fetch(std::string url, fetch_options options = {});

/// The same on a private io_context, for tools that have no loop (clusterctl).
result<fetched> fetch_blocking(const std::string& url, fetch_options options = {});

}  // namespace cluster::http
