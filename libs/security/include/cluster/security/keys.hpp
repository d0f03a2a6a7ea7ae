#pragma once
// Ed25519 keys (OpenSSL): a process's private key, public keys, signatures, and the
// small primitives around them (random bytes, base64, constant-time comparison).
//
// Thread model: a signing_key is immutable after loading; sign/verify may run on any thread.

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "cluster/protocol/result.hpp"

namespace cluster {

using public_key = std::array<std::uint8_t, 32>;
using signature = std::array<std::uint8_t, 64>;

class signing_key {
 public:
  /// A fresh random key.
  static signing_key generate();
  /// PEM (PKCS#8 "PRIVATE KEY", as `openssl genpkey -algorithm ed25519` writes) or the raw
  /// 32-byte seed in base64. The failure never quotes the text.
  static result<signing_key> from_text(std::string_view text);
  static result<signing_key> load_file(const std::string& path);

  const public_key& public_half() const { return public_; }
  signature sign(std::span<const std::uint8_t> message) const;
  /// The raw 32-byte seed in base64: what `from_text` reads back.
  std::string to_text() const;

 private:
  std::shared_ptr<void> key_;  // EVP_PKEY, freed by its deleter
  public_key public_{};
};

bool verify_signature(const public_key& key, std::span<const std::uint8_t> message,
                      std::span<const std::uint8_t> sig);

std::string to_base64(std::span<const std::uint8_t> data);
/// Standard base64 (padding required); surrounding whitespace is ignored.
result<std::vector<std::uint8_t>> from_base64(std::string_view text);
/// `count` bytes from the operating system's CSPRNG (through OpenSSL).
std::vector<std::uint8_t> random_bytes(std::size_t count);
/// Whether `a` and `b` are equal, in time that depends on neither their content nor where
/// they differ (both are hashed first, so not on their lengths either).
bool equal_in_constant_time(std::string_view a, std::string_view b);
/// A short, public name of a key for logs: its first 8 base64 characters.
std::string key_fingerprint(const public_key& key);

}  // namespace cluster
