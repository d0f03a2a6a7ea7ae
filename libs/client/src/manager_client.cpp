#include "cluster/client/manager_client.hpp"

#include <spdlog/spdlog.h>

namespace cluster {

namespace {
// Backoff sleep on the timer that `stop` cancels, so stopping never waits it out.
awaitable<void> pause(asio::steady_timer& wake, milliseconds duration) {
  wake.expires_after(duration);
  error_code ignored;
  co_await wake.async_wait(asio::redirect_error(use_awaitable, ignored));
}
}  // namespace

manager_client::manager_client(asio::io_context& io, manager_client_options options,
                               snapshot_handler on_snapshot)
    : io_(io), options_(std::move(options)), on_snapshot_(std::move(on_snapshot)) {}

void manager_client::start() { asio::co_spawn(io_, run(), asio::detached); }

void manager_client::reconnect() {
  registered_ = false;
  // The loop wakes (the connection's on_close) and starts over without a backoff.
  if (conn_) conn_->close();
}

void manager_client::stop() {
  stopped_ = true;
  if (wake_) wake_->cancel();
  if (conn_) conn_->close();
}

awaitable<void> manager_client::run() {
  milliseconds backoff = options_.backoff_min;
  bool warned = false;
  while (!stopped_) {
    auto wake = std::make_shared<asio::steady_timer>(io_, steady_clock::time_point::max());
    wake_ = wake;
    // Named, not temporaries: GCC 12 mishandles non-trivial temporaries in co_await calls.
    connection::message_handler on_message = [this](const connection_ptr&, envelope&& env) {
      if (env.kind != static_cast<std::uint32_t>(message_kind::assignments)) return;
      if (auto snapshot = env.as<assignment_snapshot>()) {
        on_snapshot_(snapshot.value());
      } else {
        spdlog::error("manager sent a malformed assignment snapshot: {}", snapshot.error().message);
      }
    };
    std::function<void()> on_close = [wake] { wake->cancel(); };
    auto connect =
        connect_to(options_.manager, options_.hello, options_.limits, options_.connect_timeout,
                   on_message, on_close, mask_of(role::manager));
    auto connected = co_await std::move(connect);
    if (!connected) {
      if (!warned) spdlog::warn("manager unreachable, retrying: {}", connected.error().message);
      warned = true;
      co_await pause(*wake, backoff);
      backoff = std::min(backoff * 2, options_.backoff_max);
      continue;
    }
    conn_ = connected.value();
    bool ready = true;
    if (options_.registration) {
      const auto sent_at = steady_clock::now();
      const auto version = registration_version_;
      auto call = conn_->async_call(message_kind::register_runner, *options_.registration,
                                    options_.connect_timeout);
      auto reply = co_await std::move(call);
      if (!reply.ok()) {
        spdlog::error("manager refused registration: {} {}", reply.error, reply.message);
        ready = false;
      } else if (conn_->is_open()) {
        registered_ = true;
        registered_at_ = sent_at;
        sent_version_ = version;
        // Changed while that was in flight: the manager gets the latest now.
        if (registration_version_ != sent_version_ && !updating_)
          asio::co_spawn(io_, send_updates(), asio::detached);
      }
    }
    if (ready) {
      const empty_msg subscribe;
      auto call = conn_->async_call(message_kind::subscribe_assignments, subscribe,
                                    options_.connect_timeout);
      auto reply = co_await std::move(call);
      ready = reply.ok();
      if (!ready) spdlog::warn("subscription refused: {} {}", reply.error, reply.message);
    }
    if (ready) {
      spdlog::info("connected to the manager at {}", options_.manager.to_string());
      warned = false;
      backoff = options_.backoff_min;
      error_code ec;
      if (conn_->is_open()) co_await wake->async_wait(asio::redirect_error(use_awaitable, ec));
      if (!stopped_) spdlog::warn("lost the manager connection; keeping the last assignments");
    } else {
      conn_->close();
      co_await pause(*wake, backoff);
      backoff = std::min(backoff * 2, options_.backoff_max);
    }
    registered_ = false;
  }
}

void manager_client::update_registration(register_runner_msg registration) {
  options_.registration = std::move(registration);
  ++registration_version_;
  // Not registered yet: the loop sends the latest when it (re)connects.
  if (registered_ && connected() && !updating_) asio::co_spawn(io_, send_updates(), asio::detached);
}

awaitable<void> manager_client::send_updates() {
  updating_ = true;
  while (!stopped_ && registered_ && connected() && sent_version_ != registration_version_) {
    const auto version = registration_version_;
    auto conn = conn_;
    auto call = conn->async_call(message_kind::register_runner, *options_.registration,
                                 options_.connect_timeout);
    auto reply = co_await std::move(call);
    if (!conn->is_open()) break;  // the next connection registers the latest
    sent_version_ = version;
    if (!reply.ok())
      spdlog::error("manager refused the updated registration: {} {}", reply.error, reply.message);
  }
  updating_ = false;
}

awaitable<reply_msg> manager_client::unregister(milliseconds timeout) {
  if (!connected() || !options_.registration)
    co_return reply_msg::failure(errc::unavailable, "not connected to the manager");
  auto conn = conn_;
  unregister_runner_msg leaving{options_.registration->address};
  auto call = conn->async_call(message_kind::unregister_runner, leaving, timeout);
  co_return co_await std::move(call);
}

}  // namespace cluster
