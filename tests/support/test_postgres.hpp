#pragma once
// The test database: scripts/dev test starts a private PostgreSQL and names it in
// CLUSTER_TEST_PG_URL; tests that need it skip without it.

#include <gtest/gtest.h>

#include <string>

namespace cluster::testing {

/// CLUSTER_TEST_PG_URL (empty when unset).
std::string test_pg_url();

}  // namespace cluster::testing

/// Skips the current test when no test database is configured.
#define REQUIRE_POSTGRES()                       \
  if (::cluster::testing::test_pg_url().empty()) \
  GTEST_SKIP() << "CLUSTER_TEST_PG_URL is not set (run through scripts/dev test)"
