#pragma once
// The PostgreSQL dead-letter store (the manager's). One worker thread owns its session
// (opened at the first operation and again after a failure) and runs the statements; the
// completions are posted to the manager's io_context, which never waits on the database.

#include <boost/asio/io_context.hpp>
#include <memory>

#include "cluster/storage/dead_letter_store.hpp"
#include "cluster/storage/storage_settings.hpp"

namespace cluster {

std::unique_ptr<dead_letter_store> make_pg_dead_letter_store(boost::asio::io_context& io,
                                                             const storage_settings& settings);

}  // namespace cluster
