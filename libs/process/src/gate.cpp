#include "cluster/process/gate.hpp"

#include "cluster/protocol/assert.hpp"

namespace cluster {

struct gate::state {
  explicit state(asio::any_io_executor e) : executor(std::move(e)) {}
  asio::any_io_executor executor;
  std::size_t count = 0;
  bool closed = false;
  bool orphaned = false;  // the gate is gone; the last holder frees this
  // Shared with the posted call, which finds it empty when the gate died first.
  std::shared_ptr<std::function<void()>> on_drained;
};

namespace {

void schedule_drained(const std::shared_ptr<std::function<void()>>& on_drained,
                      const asio::any_io_executor& executor) {
  if (!on_drained || !*on_drained) return;
  asio::post(executor, [weak = std::weak_ptr<std::function<void()>>(on_drained)] {
    auto pending = weak.lock();
    if (!pending || !*pending) return;  // ran already (work came and went twice) or gate gone
    auto callback = std::move(*pending);
    *pending = nullptr;
    callback();
  });
}

}  // namespace

gate::gate(asio::any_io_executor executor) : state_(new state(std::move(executor))) {}

gate::~gate() {
  state_->on_drained.reset();
  if (state_->count == 0) {
    delete state_;
  } else {
    state_->orphaned = true;
  }
}

void gate::enter(state& s) { ++s.count; }

void gate::leave(state& s) {
  CLUSTER_ASSERT(s.count > 0, "gate left more often than entered");
  if (--s.count > 0) return;
  if (s.orphaned) {
    delete &s;
  } else if (s.closed) {
    schedule_drained(s.on_drained, s.executor);
  }
}

bool gate::try_enter() {
  if (state_->closed) return false;
  ++state_->count;
  return true;
}

void gate::close(std::function<void()> on_drained) {
  CLUSTER_ASSERT(!state_->closed, "gate closed twice");
  state_->closed = true;
  state_->on_drained = std::make_shared<std::function<void()>>(std::move(on_drained));
  if (state_->count == 0) schedule_drained(state_->on_drained, state_->executor);
}

bool gate::is_closed() const { return state_->closed; }

std::size_t gate::count() const { return state_->count; }

}  // namespace cluster
