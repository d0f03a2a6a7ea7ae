#pragma once
// The Asio subset every process uses, with Boost 1.74's spelling.

#include <boost/asio.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <chrono>
#include <optional>
#include <string>
#include <string_view>

namespace cluster {

namespace asio = boost::asio;
using tcp = asio::ip::tcp;
using error_code = boost::system::error_code;
template <class T = void>
using awaitable = asio::awaitable<T>;
using asio::use_awaitable;
using steady_clock = std::chrono::steady_clock;
using milliseconds = std::chrono::milliseconds;

/// Sleeps on the current executor; returns false when the wait was cancelled.
awaitable<bool> sleep_for(steady_clock::duration duration);

/// Splits "host:port"; nullopt when the port is missing or not a number.
struct host_port {
  std::string host;
  std::uint16_t port = 0;
  std::string to_string() const { return host + ":" + std::to_string(port); }
};
std::optional<host_port> parse_host_port(std::string_view text);

}  // namespace cluster
