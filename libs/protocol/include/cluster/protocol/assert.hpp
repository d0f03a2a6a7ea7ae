#pragma once
// CLUSTER_ASSERT(condition, message): a broken invariant is a bug, not an expected failure.
// It prints file, line, the condition and the message to stderr and aborts, in every build
// mode (a process that keeps running on corrupt state does more harm than one that stops).

namespace cluster::detail {
[[noreturn]] void assertion_failed(const char* file, int line, const char* condition,
                                   const char* message) noexcept;
}  // namespace cluster::detail

#define CLUSTER_ASSERT(condition, message)                                            \
  do {                                                                                \
    if (!(condition)) [[unlikely]]                                                    \
      ::cluster::detail::assertion_failed(__FILE__, __LINE__, #condition, (message)); \
  } while (false)
