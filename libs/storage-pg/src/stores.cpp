#include "cluster/storage-pg/stores.hpp"

#include <stdexcept>

#include "cluster/storage-pg/pg_dead_letter_store.hpp"
#include "cluster/storage-pg/pg_manager_store.hpp"
#include "cluster/storage-pg/pg_message_store.hpp"

namespace cluster {

namespace {
[[noreturn]] void unknown_backend(const storage_settings& settings) {
  throw std::runtime_error("unknown storage backend '" + settings.backend +
                           "' (expected memory or postgres)");
}
}  // namespace

std::unique_ptr<message_store> make_message_store(asio::io_context& io,
                                                  const storage_settings& settings) {
  if (settings.max_attempts < 1 || settings.max_attempts > 1000)
    throw std::runtime_error("storage.max_attempts must be between 1 and 1000, not " +
                             std::to_string(settings.max_attempts));
  if (settings.max_state_bytes < 1 || settings.max_state_bytes > max_state_bytes_limit)
    throw std::runtime_error("storage.max_state_bytes must be between 1 and " +
                             std::to_string(max_state_bytes_limit) + ", not " +
                             std::to_string(settings.max_state_bytes));
  if (settings.backend == "memory")
    return make_memory_message_store(io, settings.batch_size,
                                     static_cast<std::int32_t>(settings.max_attempts));
  if (settings.backend == "postgres") return std::make_unique<pg_message_store>(io, settings);
  unknown_backend(settings);
}

std::unique_ptr<manager_store> make_manager_store(const storage_settings& settings) {
  if (settings.backend == "memory") return std::make_unique<memory_manager_store>();
  if (settings.backend == "postgres") return make_pg_manager_store(settings);
  unknown_backend(settings);
}

std::unique_ptr<dead_letter_store> make_dead_letter_store(asio::io_context& io,
                                                          const storage_settings& settings) {
  if (settings.backend == "memory") return nullptr;
  if (settings.backend == "postgres") return make_pg_dead_letter_store(io, settings);
  unknown_backend(settings);
}

}  // namespace cluster
