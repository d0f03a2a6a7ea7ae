#include "cluster/security/digest.hpp"

#include <openssl/evp.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <memory>

namespace cluster::security {

namespace {

struct digest_deleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};
using digest_context = std::unique_ptr<EVP_MD_CTX, digest_deleter>;

std::string to_hex(const unsigned char* digest, unsigned int length) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string hex;
  hex.reserve(length * 2);
  for (unsigned int i = 0; i < length; ++i) {
    hex.push_back(digits[digest[i] >> 4]);
    hex.push_back(digits[digest[i] & 0x0f]);
  }
  return hex;
}

}  // namespace

std::string sha256_hex(std::span<const std::uint8_t> data) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  EVP_Digest(data.data(), data.size(), digest, &length, EVP_sha256(), nullptr);
  return to_hex(digest, length);
}

result<std::string> sha256_file(const std::filesystem::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in)
    return failure{errc::invalid_request,
                   "cannot read " + file.string() + ": " + std::strerror(errno)};
  digest_context ctx(EVP_MD_CTX_new());
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1)
    return failure{errc::unavailable, "SHA-256 is not available"};
  std::array<char, 64 * 1024> block;
  while (in) {
    in.read(block.data(), block.size());
    const auto got = in.gcount();
    if (got > 0 && EVP_DigestUpdate(ctx.get(), block.data(), static_cast<std::size_t>(got)) != 1)
      return failure{errc::unavailable, "SHA-256 failed"};
  }
  if (in.bad()) return failure{errc::invalid_request, "cannot read " + file.string()};
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int length = 0;
  if (EVP_DigestFinal_ex(ctx.get(), digest, &length) != 1)
    return failure{errc::unavailable, "SHA-256 failed"};
  return to_hex(digest, length);
}

}  // namespace cluster::security
