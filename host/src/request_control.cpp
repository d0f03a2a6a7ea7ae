#include "cluster/host/request_control.hpp"

#include <algorithm>

namespace cluster::host {

namespace {
// Items of one chunk at most: the consumer acks as it reads, so a chunk holding its whole
// window would stall it until the chunk is full.
constexpr std::size_t max_batch_items = 256;
}  // namespace

request_control::request_control(asio::io_context& io, std::uint32_t credit, bool discard,
                                 std::size_t frame_bytes)
    : io_(io),
      credit_(credit == 0 ? default_stream_credit : credit),
      discard_(discard),
      frame_bytes_(std::max<std::size_t>(frame_bytes, 1024)) {}

bool request_control::grant(std::uint32_t credit) {
  if (finished_ || cancelled_) return true;
  if (credit_ + credit > max_stream_credit) {
    cancel(errc::invalid_request,
           "stream credit held out passed " + std::to_string(max_stream_credit) + " items");
    return false;
  }
  credit_ += credit;
  last_progress_ = steady_clock::now();
  std::size_t released = 0;
  while (released < waiting_.size() && credit_ > 0) {
    --credit_;
    send_now(std::move(waiting_[released].item));
    asio::post(io_, std::move(waiting_[released].ready));
    ++released;
  }
  waiting_.erase(waiting_.begin(), waiting_.begin() + static_cast<std::ptrdiff_t>(released));
  return true;
}

void request_control::cancel(errc code, std::string why) {
  if (cancelled_ || finished_) return;
  cancelled_ = true;
  cancel_code_ = code;
  cancel_reason_ = std::move(why);
  // Held items never go; their writers resume and see the cancellation.
  for (auto& held : waiting_) asio::post(io_, std::move(held.ready));
  waiting_.clear();
  if (auto hook = std::move(on_cancel)) {
    on_cancel = nullptr;
    hook();
  }
}

void request_control::write(bytes item, std::function<void()> ready) {
  if (cancelled_ || finished_ || discard_ || !send_items) {
    asio::post(io_, std::move(ready));  // dropped (discard) or never sent (cancelled)
    return;
  }
  if (credit_ == 0) {
    waiting_.push_back(waiting_item{std::move(item), std::move(ready)});
    return;
  }
  --credit_;
  send_now(std::move(item));
  asio::post(io_, std::move(ready));
}

void request_control::send_now(bytes item) {
  last_progress_ = steady_clock::now();
  batch_bytes_ += item.size() + 8;
  batch_.push_back(std::move(item));
  ++batch_generation_;
  if (batch_bytes_ >= frame_bytes_ || batch_.size() >= max_batch_items) {
    flush();
    return;
  }
  schedule_flush();
}

void request_control::schedule_flush() {
  if (flush_posted_) return;
  flush_posted_ = true;
  // Sent once a turn of the loop added nothing more: a producer that yields item after
  // item fills one chunk, a slow one sends each item at once.
  asio::post(io_, [self = shared_from_this(), generation = batch_generation_] {
    self->flush_posted_ = false;
    if (self->batch_.empty()) return;
    if (self->batch_generation_ != generation) {
      self->schedule_flush();
      return;
    }
    self->flush();
  });
}

void request_control::flush() {
  if (batch_.empty()) return;
  auto items = std::move(batch_);
  batch_.clear();
  batch_bytes_ = 0;
  if (send_items && !finished_) send_items(std::move(items));
}

void request_control::finish() {
  finished_ = true;
  on_cancel = nullptr;
  waiting_.clear();
  batch_.clear();
  send_items = nullptr;
}

bool request_control::overdue(steady_clock::time_point now) const {
  if (!has_deadline || cancelled_ || finished_) return false;
  if (!stream) return now >= deadline;
  return !starved() && now - last_progress_ >= timeout;
}

}  // namespace cluster::host
