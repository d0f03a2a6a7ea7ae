#pragma once
// A gate counts work in flight so that a stop can wait for it without polling (Seastar's
// `gate`): enter before the work starts, leave when it is done, and `close(on_drained)`
// when stopping. `on_drained` runs once, posted to the gate's executor, when the count is
// zero after the close (right away if it already is); it never runs inside `close` or
// `leave`.
//
// Closing does not refuse work by itself: `try_enter` does (where new work may still
// arrive), while `enter` always counts, for work the stopping side must wait for even
// though it starts late (a continuation of work admitted earlier, say).
//
// Thread: not thread-safe; the io_context thread of the component that owns the gate.
// Holders may outlive the gate (a callback destroyed with the io_context after its owner):
// the count lives until the last of them leaves, and a drain callback still pending when
// the gate is destroyed is dropped, not run. Entering and leaving allocate nothing.

#include <cstddef>
#include <functional>
#include <memory>
#include <utility>

#include "cluster/net/asio.hpp"

namespace cluster {

class gate {
  struct state;

 public:
  explicit gate(asio::any_io_executor executor);
  ~gate();
  gate(const gate&) = delete;
  gate& operator=(const gate&) = delete;

  /// One unit of work, left when the holder is destroyed or released. Copying a holder
  /// enters again (the copy is one more owner of the work); an empty holder counts nothing.
  class holder {
   public:
    holder() = default;
    holder(const holder& other) : state_(other.state_) {
      if (state_ != nullptr) enter(*state_);
    }
    holder(holder&& other) noexcept : state_(std::exchange(other.state_, nullptr)) {}
    holder& operator=(holder other) noexcept {
      std::swap(state_, other.state_);
      return *this;
    }
    ~holder() { release(); }

    /// Leaves now instead of at destruction.
    void release() {
      if (auto* s = std::exchange(state_, nullptr)) leave(*s);
    }
    explicit operator bool() const { return state_ != nullptr; }

   private:
    friend class gate;
    explicit holder(state* s) : state_(s) {}
    state* state_ = nullptr;
  };

  /// Counts one more unit of work, closed or not.
  void enter() { enter(*state_); }
  /// Counts one more unit unless the gate is closed.
  bool try_enter();
  /// Ends one unit of work; the last one after `close` schedules `on_drained`.
  void leave() { leave(*state_); }

  /// `enter` with a holder that leaves for you.
  holder hold() {
    enter();
    return holder(state_);
  }
  /// `try_enter` with a holder; an empty holder when the gate is closed.
  holder try_hold() { return try_enter() ? holder(state_) : holder(); }

  /// Closes the gate; `on_drained` runs once, posted, when the count is zero. Closing
  /// twice is a bug.
  void close(std::function<void()> on_drained);

  bool is_closed() const;
  std::size_t count() const;

 private:
  static void enter(state& s);
  static void leave(state& s);

  state* state_;  // freed by ~gate, or by the last holder to leave after it
};

}  // namespace cluster
