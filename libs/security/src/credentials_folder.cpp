#include "cluster/security/credentials_folder.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>

#include "cluster/security/keys.hpp"
#include "cluster/security/trust_list.hpp"

namespace cluster {

namespace {

namespace fs = std::filesystem;

// Created with its final mode before anything is written: a key is never readable by others.
result<void> write_private(const std::string& path, const std::string& text, mode_t mode) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) return failure{errc::invalid_request, "cannot create " + path};
  const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  ::close(fd);
  if (!written) return failure{errc::invalid_request, "cannot write " + path};
  return success();
}

}  // namespace

std::string credentials_key_path(const std::string& dir, role r) {
  return (fs::path(dir) / (std::string(to_string(r)) + ".key")).string();
}

std::string credentials_trust_path(const std::string& dir) {
  return (fs::path(dir) / "trust").string();
}

result<void> write_credentials_folder(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return failure{errc::invalid_request, "cannot create " + dir + ": " + ec.message()};
  if (fs::exists(credentials_trust_path(dir), ec))
    return failure{errc::invalid_request,
                   credentials_trust_path(dir) + " exists: remove the folder to make new keys"};
  trust_list trust;
  for (int i = 0; i < role_count; ++i) {
    const auto r = static_cast<role>(i);
    const auto key = signing_key::generate();
    BOOST_OUTCOME_TRYV(trust.add(r, key.public_half()));
    const auto path = credentials_key_path(dir, r);
    fs::remove(path, ec);
    BOOST_OUTCOME_TRYV(write_private(path, key.to_text() + "\n", 0600));
  }
  return write_private(credentials_trust_path(dir), trust.to_text(), 0644);
}

}  // namespace cluster
