#pragma once
// The manager's state in PostgreSQL (tables `<prefix>_runners` and `<prefix>_shards`).

#include <memory>

#include "cluster/storage/manager_store.hpp"
#include "cluster/storage/storage_settings.hpp"

namespace cluster {

/// Connects and migrates (start-up: throws pg::error when the database is unusable).
std::unique_ptr<manager_store> make_pg_manager_store(const storage_settings& settings);

}  // namespace cluster
