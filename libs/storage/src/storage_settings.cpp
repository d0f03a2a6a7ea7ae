#include "cluster/storage/storage_settings.hpp"

namespace cluster {

std::string storage_settings::conninfo() const {
  if (!url.empty()) return url;
  auto quote = [](const std::string& value) {
    std::string out = "'";
    for (char c : value) {
      if (c == '\'' || c == '\\') out += '\\';
      out += c;
    }
    return out + "'";
  };
  std::string info = "host=" + quote(host) + " port=" + std::to_string(port) +
                     " user=" + quote(user) + " dbname=" + quote(database) +
                     " connect_timeout=5 application_name=" + quote(application_name);
  if (!sslmode.empty()) info += " sslmode=" + quote(sslmode);
  if (!sslrootcert.empty()) info += " sslrootcert=" + quote(sslrootcert);
  if (!password.empty()) info += " password=" + quote(password);
  return info;
}

std::string storage_settings::describe() const {
  if (!url.empty()) {
    // Mask a password in a URI (scheme://user:password@host).
    const auto at = url.find('@');
    const auto scheme = url.find("://");
    if (at != std::string::npos && scheme != std::string::npos) {
      const auto colon = url.find(':', scheme + 3);
      if (colon != std::string::npos && colon < at)
        return url.substr(0, colon + 1) + "***" + url.substr(at);
    }
    return url.find("password") == std::string::npos ? url : "(connection string with password)";
  }
  return user + "@" + host + ":" + std::to_string(port) + "/" + database +
         (sslmode.empty() ? "" : " (sslmode " + sslmode + ")");
}

}  // namespace cluster
