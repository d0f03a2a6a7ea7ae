// The libpq connection string built from the [storage] fields: TLS settings, quoting, and a
// description for logs that never holds the password.
#include "cluster/storage/storage_settings.hpp"

#include <gtest/gtest.h>

namespace cluster {
namespace {

storage_settings rds_like() {
  storage_settings s;
  s.host = "db.abc.us-east-1.rds.amazonaws.com";
  s.user = "postgres";
  s.password = "it's secret";
  s.database = "cluster";
  return s;
}

TEST(storage_settings, leaves_tls_to_libpq_defaults_when_unset) {
  const auto info = rds_like().conninfo();
  EXPECT_EQ(info.find("sslmode"), std::string::npos) << info;
  EXPECT_EQ(info.find("sslrootcert"), std::string::npos) << info;
}

TEST(storage_settings, asks_libpq_to_verify_the_server_name_against_the_given_ca) {
  auto s = rds_like();
  s.sslmode = "verify-full";
  s.sslrootcert = "/app/certs/rds-global-bundle.pem";
  const auto info = s.conninfo();
  EXPECT_NE(info.find(" sslmode='verify-full'"), std::string::npos) << info;
  EXPECT_NE(info.find(" sslrootcert='/app/certs/rds-global-bundle.pem'"), std::string::npos)
      << info;
  EXPECT_NE(info.find(" password='it\\'s secret'"), std::string::npos) << info;
}

TEST(storage_settings, describes_the_connection_without_its_password) {
  auto s = rds_like();
  s.sslmode = "verify-full";
  const auto text = s.describe();
  EXPECT_EQ(text.find("secret"), std::string::npos) << text;
  EXPECT_NE(text.find("verify-full"), std::string::npos) << text;
  s.url = "postgresql://postgres:0123abcd@127.0.0.1:5435/cluster";
  EXPECT_EQ(s.describe().find("0123abcd"), std::string::npos) << s.describe();
}

TEST(storage_settings, a_url_is_used_as_given) {
  auto s = rds_like();
  s.url = "postgresql://postgres:pw@127.0.0.1:5435/cluster?sslmode=disable";
  s.sslmode = "verify-full";
  EXPECT_EQ(s.conninfo(), s.url);
}

}  // namespace
}  // namespace cluster
