#include "cluster/gateway/lambda_runtime.hpp"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <iostream>

#include "cluster/gateway/handler.hpp"
#include "cluster/gateway/lambda_event.hpp"
#include "cluster/gateway/proxy_client.hpp"
#include "cluster/process/config.hpp"
#include "cluster/protocol/assert.hpp"

namespace cluster::gateway {

namespace {

namespace beast = boost::beast;
namespace http = beast::http;
using response_type = http::response<http::string_body>;

const std::string api_prefix = "/2018-06-01/runtime";
constexpr milliseconds api_connect_timeout{5000};
constexpr milliseconds api_post_timeout{10000};
constexpr std::size_t max_event_bytes = 16 * 1024 * 1024;  // Lambda's own limit is 6 MB
constexpr int max_next_failures = 5;

std::int64_t unix_now_ms() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// One keep-alive HTTP/1.1 connection to the Runtime API, reopened when it drops.
class runtime_api {
 public:
  runtime_api(asio::any_io_executor executor, host_port address)
      : executor_(executor), address_(std::move(address)), stream_(executor) {}

  // One exchange; nullopt (with `error`) when the API could not be reached. A zero
  // `timeout` waits forever: /next blocks until Lambda has an invocation.
  awaitable<std::optional<response_type>> exchange(http::verb verb, std::string target,
                                                   std::string body, milliseconds timeout,
                                                   std::string& error) {
    http::request<http::string_body> request{verb, target, 11};
    request.set(http::field::host, address_.to_string());
    request.set(http::field::user_agent, "cluster-lambda");
    if (verb == http::verb::post) {
      request.set(http::field::content_type, "application/json");
      request.body() = std::move(body);
    }
    request.keep_alive(true);
    request.prepare_payload();
    for (int attempt = 0; attempt < 2; ++attempt) {
      const bool reused = open_;
      if (!open_) {
        auto connect = open(error);
        if (!co_await std::move(connect)) co_return std::nullopt;
      }
      error_code ec;
      auto once = send(request, timeout, ec);
      auto response = co_await std::move(once);
      if (response) {
        if (!response->keep_alive()) close();
        co_return response;
      }
      close();
      error = ec.message();
      // A fresh connection that fails is an answer; a reused one may just have been idle-closed.
      if (!reused) break;
    }
    co_return std::nullopt;
  }

 private:
  awaitable<bool> open(std::string& error) {
    error_code ec;
    tcp::resolver resolver(executor_);
    const std::string port = std::to_string(address_.port);
    auto endpoints = co_await resolver.async_resolve(address_.host, port,
                                                     asio::redirect_error(use_awaitable, ec));
    if (!ec) {
      stream_.expires_after(api_connect_timeout);
      co_await stream_.async_connect(endpoints, asio::redirect_error(use_awaitable, ec));
      stream_.expires_never();
    }
    if (ec) {
      error = "cannot connect to the Runtime API at " + address_.to_string() + ": " + ec.message();
      co_return false;
    }
    open_ = true;
    buffer_.clear();
    co_return true;
  }

  awaitable<std::optional<response_type>> send(http::request<http::string_body>& request,
                                               milliseconds timeout, error_code& ec) {
    if (timeout > milliseconds(0)) {
      stream_.expires_after(timeout);
    } else {
      stream_.expires_never();
    }
    co_await http::async_write(stream_, request, asio::redirect_error(use_awaitable, ec));
    if (ec) co_return std::nullopt;
    http::response_parser<http::string_body> parser;
    parser.body_limit(max_event_bytes);
    co_await http::async_read(stream_, buffer_, parser, asio::redirect_error(use_awaitable, ec));
    stream_.expires_never();
    if (ec) co_return std::nullopt;
    co_return parser.release();
  }

  void close() {
    error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
    stream_.socket().close(ignored);
    open_ = false;
  }

  asio::any_io_executor executor_;
  host_port address_;
  beast::tcp_stream stream_;
  beast::flat_buffer buffer_;
  bool open_ = false;
};

// Posts `body` to `target`; false (logged) when the Runtime API did not accept it.
awaitable<bool> post(runtime_api& api, std::string target, std::string body) {
  std::string error;
  auto exchange = api.exchange(http::verb::post, target, std::move(body), api_post_timeout, error);
  auto response = co_await std::move(exchange);
  if (!response) {
    spdlog::error("POST {} failed: {}", target, error);
    co_return false;
  }
  if (response->result_int() / 100 != 2) {
    spdlog::error("POST {} answered {}: {}", target, response->result_int(), response->body());
    co_return false;
  }
  co_return true;
}

// Handles one invocation and posts its outcome.
awaitable<void> invoke(runtime_api& api, handler& request_handler, milliseconds request_timeout,
                       std::string id, std::int64_t deadline_ms, std::string event) {
  const std::string invocation = api_prefix + "/invocation/" + id;
  std::string error;
  auto request = parse_function_url_event(event, error);
  if (!request) {
    spdlog::error("invocation {}: {}", id, error);
    const std::string target = invocation + "/error";
    const std::string body = lambda_error_body(error, "InvalidEvent");
    auto failed = post(api, target, body);
    co_await std::move(failed);
    co_return;
  }
  const std::string method = request->method;
  const std::string path = request->target;
  const auto timeout = invocation_timeout(deadline_ms, unix_now_ms(), request_timeout);
  auto handling = request_handler.handle(std::move(*request), timeout);
  const auto response = co_await std::move(handling);
  spdlog::info("invocation {}: {} {} -> {}", id, method, path, response.status);
  const std::string target = invocation + "/response";
  const std::string body = function_url_response(response);
  auto answer = post(api, target, body);
  if (co_await std::move(answer)) co_return;
  // The Runtime API refused the response (too large, say): report the invocation failed.
  const std::string error_target = invocation + "/error";
  const std::string error_body =
      lambda_error_body("the Runtime API did not accept the response", "Runtime.ResponseRejected");
  auto fallback = post(api, error_target, error_body);
  co_await std::move(fallback);
}

awaitable<int> serve_invocations(runtime_api& api, handler& request_handler,
                                 milliseconds request_timeout) {
  const std::string next = api_prefix + "/invocation/next";
  int failures = 0;
  for (;;) {
    std::string error;
    const std::string no_body;
    auto wait = api.exchange(http::verb::get, next, no_body, milliseconds(0), error);
    auto response = co_await std::move(wait);
    if (!response || response->result() != http::status::ok) {
      const std::string why =
          response ? "status " + std::to_string(response->result_int()) + ": " + response->body()
                   : error;
      spdlog::error("GET {} failed: {}", next, why);
      if (++failures >= max_next_failures) co_return 1;
      auto pause = sleep_for(milliseconds(100 * failures));
      co_await std::move(pause);
      continue;
    }
    failures = 0;
    std::string id((*response)["Lambda-Runtime-Aws-Request-Id"]);
    if (id.empty()) {
      spdlog::error("invocation without Lambda-Runtime-Aws-Request-Id; skipped");
      continue;
    }
    const auto deadline_header = (*response)["Lambda-Runtime-Deadline-Ms"];
    const auto deadline =
        parse_number<std::int64_t>(std::string_view(deadline_header.data(), deadline_header.size()))
            .value_or(0);
    std::string event = std::move(response->body());
    auto handled = invoke(api, request_handler, request_timeout, id, deadline, event);
    co_await std::move(handled);
  }
}

void setup_lambda_logging(const std::string& level) {
  // Lambda forwards stderr to CloudWatch and stamps each line itself.
  auto logger = spdlog::stderr_logger_st("lambda");
  logger->set_pattern("%l [lambda] %v");
  const auto parsed = spdlog::level::from_str(level);
  logger->set_level(parsed == spdlog::level::off && level != "off" ? spdlog::level::info : parsed);
  spdlog::set_default_logger(logger);
}

}  // namespace

lambda_runtime::lambda_runtime(lambda_settings settings) : settings_(std::move(settings)) {}

int lambda_runtime::run() {
  setup_lambda_logging(settings_.gateway.common.log_level);
  if (settings_.runtime_api.empty()) {
    // Nowhere to report to: this is not running inside Lambda (or an emulator).
    std::cerr << "cluster-lambda: AWS_LAMBDA_RUNTIME_API is not set; run inside AWS Lambda or "
                 "a Runtime API emulator\n";
    return 1;
  }
  const auto api_address = parse_host_port(settings_.runtime_api);
  if (!api_address) {
    std::cerr << "cluster-lambda: AWS_LAMBDA_RUNTIME_API must be host:port, got '"
              << settings_.runtime_api << "'\n";
    return 1;
  }

  asio::io_context io(1);
  runtime_api api(io.get_executor(), *api_address);

  const std::string& init_error = settings_.init_error;
  if (!init_error.empty()) {
    spdlog::critical("start-up failed: {}", init_error);
    asio::co_spawn(
        io,
        [api_ptr = &api,
         body = lambda_error_body(init_error, "Runtime.ConfigurationError")]() -> awaitable<void> {
          const std::string target = api_prefix + "/init/error";
          auto report = post(*api_ptr, target, body);
          co_await std::move(report);
        },
        asio::detached);
    io.run();
    return 1;
  }

  proxy_client_options options;
  options.proxy = *parse_host_port(settings_.gateway.proxy);  // checked by from_environment
  options.name = "lambda";
  options.limits = settings_.gateway.common.limits();
  proxy_client proxy(io.get_executor(), options);
  auto handling = settings_.gateway.handler_settings();
  CLUSTER_ASSERT(handling.has_value(), "from_environment checked the handler's settings");
  handler request_handler(proxy, std::move(handling.value()));
  const milliseconds request_timeout = settings_.gateway.request_timeout;
  spdlog::info("serving invocations from {} through proxy {}", settings_.runtime_api,
               options.proxy.to_string());

  int exit_code = 1;
  asio::signal_set signals(io, SIGINT, SIGTERM);
  signals.async_wait([&io, &exit_code](const error_code& ec, int) {
    if (ec) return;
    exit_code = 0;
    io.stop();
  });
  asio::co_spawn(io, serve_invocations(api, request_handler, request_timeout),
                 [&io, &exit_code](std::exception_ptr failure, int code) {
                   if (failure) {
                     try {
                       std::rethrow_exception(failure);
                     } catch (const std::exception& e) {
                       spdlog::critical("runtime loop failed: {}", e.what());
                     } catch (...) {
                       spdlog::critical("runtime loop failed");
                     }
                     code = 1;
                   }
                   exit_code = code;
                   io.stop();
                 });
  io.run();
  return exit_code;
}

}  // namespace cluster::gateway
