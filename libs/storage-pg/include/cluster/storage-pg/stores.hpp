#pragma once
// Opens the backend a process is configured with: `[cluster] storage = "memory"` or
// `"postgres"`. Only the manager and the runners link this (and with it libpq).

#include <memory>

#include "cluster/storage/dead_letter_store.hpp"
#include "cluster/storage/manager_store.hpp"
#include "cluster/storage/message_store.hpp"

namespace cluster {

/// Throws std::runtime_error for an unknown backend, pg::error when PostgreSQL is unusable.
std::unique_ptr<message_store> make_message_store(asio::io_context& io,
                                                  const storage_settings& settings);
std::unique_ptr<manager_store> make_manager_store(const storage_settings& settings);
/// nullptr for the memory backend: its dead letters live and die in one runner.
std::unique_ptr<dead_letter_store> make_dead_letter_store(asio::io_context& io,
                                                          const storage_settings& settings);

}  // namespace cluster
