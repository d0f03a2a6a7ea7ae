#include "cluster/http/http.hpp"

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/version.hpp>
#include <optional>

namespace cluster::http {

namespace beast = boost::beast;

std::string_view path_of(std::string_view target) {
  const auto query = target.find('?');
  return query == std::string_view::npos ? target : target.substr(0, query);
}

namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string percent_decoded(std::string_view text) {
  std::string out;
  for (std::size_t i = 0; i < text.size(); ++i) {
    if (text[i] == '+') {
      out += ' ';
    } else if (text[i] == '%' && i + 2 < text.size() && hex_value(text[i + 1]) >= 0 &&
               hex_value(text[i + 2]) >= 0) {
      out += static_cast<char>(hex_value(text[i + 1]) * 16 + hex_value(text[i + 2]));
      i += 2;
    } else {
      out += text[i];
    }
  }
  return out;
}

}  // namespace

std::string query_value(std::string_view target, std::string_view name) {
  const auto query = target.find('?');
  if (query == std::string_view::npos) return {};
  std::string_view rest = target.substr(query + 1);
  while (!rest.empty()) {
    const auto amp = rest.find('&');
    const auto pair = rest.substr(0, amp);
    const auto eq = pair.find('=');
    if (pair.substr(0, eq) == name)
      return eq == std::string_view::npos ? std::string() : percent_decoded(pair.substr(eq + 1));
    if (amp == std::string_view::npos) break;
    rest = rest.substr(amp + 1);
  }
  return {};
}

struct server::state : std::enable_shared_from_this<server::state> {
  state(asio::io_context& io_in, server_limits limits_in)
      : io(io_in), acceptor(io_in), limits(limits_in) {}
  asio::io_context& io;
  tcp::acceptor acceptor;
  server_limits limits;
  std::map<std::string, handler, std::less<>> routes;
  std::function<std::optional<response>(const request&)> check;
  std::size_t open = 0;
  bool closed = false;

  const handler* find(std::string_view path) const {
    if (auto it = routes.find(path); it != routes.end()) return &it->second;
    const handler* best = nullptr;
    std::size_t best_length = 0;
    for (const auto& [route, h] : routes)
      if (route.size() > best_length && route.back() == '/' &&
          path.substr(0, route.size()) == route) {
        best = &h;
        best_length = route.size();
      }
    return best;
  }

  awaitable<void> accept_loop() {
    auto self = shared_from_this();
    while (!closed) {
      error_code ec;
      auto socket = co_await acceptor.async_accept(asio::redirect_error(use_awaitable, ec));
      if (ec) {
        if (closed || ec == asio::error::operation_aborted) co_return;
        continue;  // a failed accept (EMFILE, a reset) ends only that connection
      }
      if (open >= limits.max_connections) continue;  // closes the socket
      ++open;
      asio::co_spawn(io, serve(std::move(socket)), asio::detached);
    }
  }

  awaitable<void> serve(tcp::socket socket) {
    auto self = shared_from_this();
    beast::tcp_stream stream(std::move(socket));
    beast::flat_buffer buffer;
    for (;;) {
      beast_http::request_parser<beast_http::string_body> parser;
      parser.body_limit(limits.max_body_bytes);
      parser.header_limit(16 * 1024);
      stream.expires_after(limits.read_timeout);
      error_code ec;
      co_await beast_http::async_read(stream, buffer, parser,
                                      asio::redirect_error(use_awaitable, ec));
      if (ec) {
        if (ec != beast_http::error::end_of_stream && ec != beast::error::timeout &&
            ec != asio::error::eof && ec != asio::error::connection_reset) {
          const bool too_large = ec == beast_http::error::body_limit;
          beast_http::response<beast_http::string_body> bad{
              too_large ? beast_http::status::payload_too_large : beast_http::status::bad_request,
              11};
          bad.set(beast_http::field::content_type, "text/plain; charset=utf-8");
          bad.body() = too_large ? "the body is larger than " +
                                       std::to_string(limits.max_body_bytes) + " bytes\n"
                                 : "bad request: " + ec.message() + "\n";
          bad.prepare_payload();
          bad.keep_alive(false);
          stream.expires_after(std::chrono::seconds(2));
          co_await beast_http::async_write(stream, bad, asio::redirect_error(use_awaitable, ec));
        }
        break;
      }
      const request& req = parser.get();
      response answer;
      if (auto refused = check ? check(req) : std::nullopt) {
        answer = std::move(*refused);
      } else if (const handler* h =
                     find(path_of(std::string_view(req.target().data(), req.target().size())))) {
        if (req.method() != beast_http::verb::get && req.method() != beast_http::verb::head &&
            req.method() != beast_http::verb::post) {
          answer = {405, "text/plain; charset=utf-8", "method not allowed\n", {}};
        } else {
          try {
            auto handled = (*h)(req);
            answer = co_await std::move(handled);
          } catch (const std::exception& e) {
            answer = {
                500, "text/plain; charset=utf-8", std::string("error: ") + e.what() + "\n", {}};
          }
        }
      } else {
        answer = {404, "text/plain; charset=utf-8", "not found\n", {}};
      }
      beast_http::response<beast_http::string_body> out{
          static_cast<beast_http::status>(answer.status), req.version()};
      out.set(beast_http::field::server, "cluster-sst");
      out.set(beast_http::field::content_type, answer.content_type);
      out.set(beast_http::field::cache_control, "no-store");
      for (const auto& [name, value] : answer.headers) out.set(name, value);
      if (req.method() != beast_http::verb::head) out.body() = std::move(answer.body);
      out.keep_alive(req.keep_alive());
      out.prepare_payload();
      stream.expires_after(limits.read_timeout);
      co_await beast_http::async_write(stream, out, asio::redirect_error(use_awaitable, ec));
      if (ec || !out.keep_alive() || closed) break;
    }
    error_code ignored;
    stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
    --open;
  }
};

server::server(asio::io_context& io, server_limits limits)
    : state_(std::make_shared<state>(io, limits)) {}

server::~server() { close(); }

void server::route(std::string path, handler h) { state_->routes[std::move(path)] = std::move(h); }

void server::guard(std::function<std::optional<response>(const request&)> check) {
  state_->check = std::move(check);
}

void server::listen(const std::string& host, std::uint16_t port) {
  const tcp::endpoint endpoint(asio::ip::make_address(host), port);
  state_->acceptor.open(endpoint.protocol());
  state_->acceptor.set_option(tcp::acceptor::reuse_address(true));
  state_->acceptor.bind(endpoint);
  state_->acceptor.listen();
  asio::co_spawn(state_->io, state_->accept_loop(), asio::detached);
}

tcp::endpoint server::local_endpoint() const { return state_->acceptor.local_endpoint(); }

void server::close() {
  if (!state_ || state_->closed) return;
  state_->closed = true;
  error_code ignored;
  state_->acceptor.close(ignored);
}

std::optional<url_parts> parse_url(std::string_view url) {
  constexpr std::string_view scheme = "http://";
  if (url.substr(0, scheme.size()) != scheme) return std::nullopt;
  url.remove_prefix(scheme.size());
  const auto slash = url.find('/');
  const auto authority = url.substr(0, slash);
  url_parts parts;
  parts.target = slash == std::string_view::npos ? "/" : std::string(url.substr(slash));
  if (auto parsed = parse_host_port(authority)) {
    parts.address = *parsed;
  } else if (!authority.empty() && authority.find(':') == std::string_view::npos) {
    parts.address = {std::string(authority), 80};
  } else {
    return std::nullopt;
  }
  return parts;
}

awaitable<result<fetched>> fetch(std::string url, fetch_options options) {
  const auto parts = parse_url(url);
  if (!parts) co_return failure{errc::invalid_request, "not an http:// URL: " + url};
  auto executor = co_await asio::this_coro::executor;
  tcp::resolver resolver(executor);
  beast::tcp_stream stream(executor);
  error_code ec;
  stream.expires_after(options.timeout);
  const std::string service = std::to_string(parts->address.port);
  auto resolving =
      resolver.async_resolve(parts->address.host, service, asio::redirect_error(use_awaitable, ec));
  auto endpoints = co_await std::move(resolving);
  if (ec) co_return failure{errc::unavailable, url + ": " + ec.message()};
  co_await stream.async_connect(endpoints, asio::redirect_error(use_awaitable, ec));
  if (ec) co_return failure{errc::unavailable, url + ": " + ec.message()};
  const auto verb = beast_http::string_to_verb(options.method);
  beast_http::request<beast_http::string_body> req{verb, parts->target, 11};
  req.set(beast_http::field::host, parts->address.to_string());
  req.set(beast_http::field::user_agent, "cluster-sst");
  for (const auto& [name, value] : options.headers) req.set(name, value);
  if (!options.content_type.empty()) req.set(beast_http::field::content_type, options.content_type);
  req.body() = std::move(options.body);
  req.keep_alive(false);
  req.prepare_payload();
  co_await beast_http::async_write(stream, req, asio::redirect_error(use_awaitable, ec));
  if (ec) co_return failure{errc::unavailable, url + ": " + ec.message()};
  beast::flat_buffer buffer;
  beast_http::response_parser<beast_http::string_body> parser;
  parser.body_limit(options.max_body_bytes);
  co_await beast_http::async_read(stream, buffer, parser, asio::redirect_error(use_awaitable, ec));
  if (ec) co_return failure{errc::unavailable, url + ": " + ec.message()};
  error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);
  auto& res = parser.get();
  fetched out;
  out.status = res.result_int();
  if (auto it = res.find(beast_http::field::content_type); it != res.end())
    out.content_type = std::string(it->value());
  out.body = std::move(res.body());
  co_return out;
}

result<fetched> fetch_blocking(const std::string& url, fetch_options options) {
  asio::io_context io(1);
  std::optional<result<fetched>> outcome;
  asio::co_spawn(
      io,
      [&]() -> awaitable<void> {
        auto call = fetch(url, std::move(options));
        outcome = co_await std::move(call);
      },
      asio::detached);
  io.run();
  if (!outcome) return failure{errc::unavailable, url + ": no answer"};
  return std::move(*outcome);
}

}  // namespace cluster::http
