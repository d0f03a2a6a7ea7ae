#include "cluster/host/plugin_channel.hpp"

#include <cstring>

namespace cluster::host {

plugin_channel::plugin_channel(socket_type socket, decode_limits limits)
    : socket_(std::move(socket)), limits_(limits) {}

void plugin_channel::start(frame_handler on_frame,
                           std::function<void(const std::string&)> on_close) {
  on_frame_ = std::move(on_frame);
  on_close_ = std::move(on_close);
  asio::co_spawn(socket_.get_executor(), read_loop(shared_from_this()), asio::detached);
}

void plugin_channel::send_encoded(const msgpack::sbuffer& frames) {
  if (!open_ || frames.size() == 0) return;
  note_queued();
  queued_.write(frames.data(), frames.size());
  schedule_write();
}

void plugin_channel::close() {
  if (!open_) return;
  open_ = false;
  error_code ignored;
  socket_.shutdown(socket_type::shutdown_both, ignored);
  socket_.close(ignored);
}

void plugin_channel::close_after_flush() {
  closing_ = true;
  if (!writing_ && queued_.size() == 0) close();
}

void plugin_channel::closed(const std::string& why) {
  const bool was_open = open_;
  close();
  if (was_open && on_close_) {
    auto callback = std::move(on_close_);
    callback(why);
  }
}

void plugin_channel::schedule_write() {
  if (writing_) return;
  writing_ = true;
  asio::post(socket_.get_executor(), [self = shared_from_this()] { self->write_queued(); });
}

void plugin_channel::write_queued() {
  if (!open_ || queued_.size() == 0) {
    writing_ = false;
    if (closing_) close();
    return;
  }
  if (stale_after_.count() > 0) {
    const auto waited =
        std::chrono::duration_cast<milliseconds>(steady_clock::now() - queued_since_);
    if (waited > stale_after_) {
      writing_ = false;
      went_stale_ = true;
      closed("frames waited " + std::to_string(waited.count()) +
             " ms to be written (the event loop stalled); not running them late");
      return;
    }
  }
  std::swap(queued_, in_write_);
  queued_.clear();
  ++batches_written_;
  asio::async_write(socket_, asio::buffer(in_write_.data(), in_write_.size()),
                    [self = shared_from_this()](const error_code& ec, std::size_t) {
                      if (ec) {
                        self->writing_ = false;
                        self->closed("write failed: " + ec.message());
                        return;
                      }
                      self->write_queued();
                    });
}

awaitable<void> plugin_channel::read_loop(std::shared_ptr<plugin_channel> keep_alive) {
  // Reads whatever arrived and handles every whole frame in it: a burst of replies costs
  // one read, not two per frame. `keep_alive` holds the channel while the loop runs.
  (void)keep_alive;
  std::vector<char> buffer(64 * 1024);
  std::size_t filled = 0;
  while (open_) {
    if (filled == buffer.size()) buffer.resize(buffer.size() * 2);
    error_code ec;
    const std::size_t got = co_await socket_.async_read_some(
        asio::buffer(buffer.data() + filled, buffer.size() - filled),
        asio::redirect_error(use_awaitable, ec));
    if (ec) {
      closed(ec == asio::error::eof ? "the peer closed the channel" : ec.message());
      co_return;
    }
    filled += got;
    std::size_t at = 0;
    while (filled - at >= frame_header_size) {
      unsigned char header[frame_header_size];
      std::memcpy(header, buffer.data() + at, frame_header_size);
      const std::uint32_t size = decode_frame_header(header);
      if (size > limits_.max_frame_bytes) {
        closed("frame of " + std::to_string(size) + " bytes exceeds the limit");
        co_return;
      }
      if (filled - at - frame_header_size < size) {
        if (buffer.size() < frame_header_size + size) buffer.resize(frame_header_size + size);
        break;
      }
      auto env = decode_envelope(buffer.data() + at + frame_header_size, size, limits_);
      at += frame_header_size + size;
      if (!env) {
        closed("malformed frame: " + env.error().message);
        co_return;
      }
      on_frame_(std::move(env).value());
      if (!open_) co_return;
    }
    std::memmove(buffer.data(), buffer.data() + at, filled - at);
    filled -= at;
  }
}

}  // namespace cluster::host
