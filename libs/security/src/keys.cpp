#include "cluster/security/keys.hpp"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>

#include <fstream>
#include <sstream>

#include "cluster/protocol/assert.hpp"

namespace cluster {

namespace {

std::shared_ptr<void> own(EVP_PKEY* key) {
  return std::shared_ptr<void>(key, [](void* p) { EVP_PKEY_free(static_cast<EVP_PKEY*>(p)); });
}

EVP_PKEY* raw(const std::shared_ptr<void>& key) { return static_cast<EVP_PKEY*>(key.get()); }

public_key public_of(EVP_PKEY* key) {
  public_key out{};
  std::size_t length = out.size();
  const int ok = EVP_PKEY_get_raw_public_key(key, out.data(), &length);
  CLUSTER_ASSERT(ok == 1 && length == out.size(), "an Ed25519 key has a 32-byte public half");
  return out;
}

std::string_view trim(std::string_view text) {
  const auto first = text.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(" \t\r\n");
  return text.substr(first, last - first + 1);
}

}  // namespace

signing_key signing_key::generate() {
  EVP_PKEY* key = nullptr;
  EVP_PKEY_CTX* ctx = EVP_PKEY_CTX_new_id(EVP_PKEY_ED25519, nullptr);
  const bool ok = ctx && EVP_PKEY_keygen_init(ctx) == 1 && EVP_PKEY_keygen(ctx, &key) == 1;
  EVP_PKEY_CTX_free(ctx);
  CLUSTER_ASSERT(ok, "OpenSSL generates Ed25519 keys");
  signing_key out;
  out.key_ = own(key);
  out.public_ = public_of(key);
  return out;
}

result<signing_key> signing_key::from_text(std::string_view text) {
  text = trim(text);
  EVP_PKEY* key = nullptr;
  if (text.starts_with("-----BEGIN")) {
    BIO* bio = BIO_new_mem_buf(text.data(), static_cast<int>(text.size()));
    if (bio) key = PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
    if (!key) return failure{errc::invalid_request, "the private key is not a readable PEM key"};
    if (EVP_PKEY_id(key) != EVP_PKEY_ED25519) {
      EVP_PKEY_free(key);
      return failure{errc::invalid_request, "the private key is not an Ed25519 key"};
    }
  } else {
    auto seed = from_base64(text);
    if (!seed || seed.value().size() != 32)
      return failure{errc::invalid_request,
                     "the private key is neither PEM nor a base64 32-byte Ed25519 seed"};
    key = EVP_PKEY_new_raw_private_key(EVP_PKEY_ED25519, nullptr, seed.value().data(), 32);
    OPENSSL_cleanse(seed.value().data(), seed.value().size());
    if (!key) return failure{errc::invalid_request, "the private key is not a valid Ed25519 seed"};
  }
  signing_key out;
  out.key_ = own(key);
  out.public_ = public_of(key);
  return out;
}

result<signing_key> signing_key::load_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return failure{errc::invalid_request, "cannot read the key file " + path};
  std::stringstream text;
  text << in.rdbuf();
  std::string content = text.str();
  auto key = from_text(content);
  OPENSSL_cleanse(content.data(), content.size());
  if (!key) return failure{key.error().code, key.error().message + " (" + path + ")"};
  return key;
}

signature signing_key::sign(std::span<const std::uint8_t> message) const {
  signature out{};
  std::size_t length = out.size();
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  const bool ok = ctx && EVP_DigestSignInit(ctx, nullptr, nullptr, nullptr, raw(key_)) == 1 &&
                  EVP_DigestSign(ctx, out.data(), &length, message.data(), message.size()) == 1;
  EVP_MD_CTX_free(ctx);
  CLUSTER_ASSERT(ok && length == out.size(), "Ed25519 signing succeeds with a loaded key");
  return out;
}

std::string signing_key::to_text() const {
  std::array<std::uint8_t, 32> seed{};
  std::size_t length = seed.size();
  const int ok = EVP_PKEY_get_raw_private_key(raw(key_), seed.data(), &length);
  CLUSTER_ASSERT(ok == 1 && length == seed.size(), "an Ed25519 key has a 32-byte seed");
  std::string text = to_base64(seed);
  OPENSSL_cleanse(seed.data(), seed.size());
  return text;
}

bool verify_signature(const public_key& key, std::span<const std::uint8_t> message,
                      std::span<const std::uint8_t> sig) {
  if (sig.size() != signature{}.size()) return false;
  EVP_PKEY* pkey = EVP_PKEY_new_raw_public_key(EVP_PKEY_ED25519, nullptr, key.data(), key.size());
  if (!pkey) return false;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  const bool ok =
      ctx && EVP_DigestVerifyInit(ctx, nullptr, nullptr, nullptr, pkey) == 1 &&
      EVP_DigestVerify(ctx, sig.data(), sig.size(), message.data(), message.size()) == 1;
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(pkey);
  return ok;
}

std::string to_base64(std::span<const std::uint8_t> data) {
  std::string out(4 * ((data.size() + 2) / 3), '\0');
  const int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()), data.data(),
                                static_cast<int>(data.size()));
  out.resize(static_cast<std::size_t>(n));
  return out;
}

result<std::vector<std::uint8_t>> from_base64(std::string_view text) {
  text = trim(text);
  if (text.empty() || text.size() % 4 != 0)
    return failure{errc::invalid_request, "not base64 (length)"};
  std::vector<std::uint8_t> out(text.size() / 4 * 3);
  const int n = EVP_DecodeBlock(out.data(), reinterpret_cast<const unsigned char*>(text.data()),
                                static_cast<int>(text.size()));
  if (n < 0) return failure{errc::invalid_request, "not base64"};
  // EVP_DecodeBlock counts padding as zero bytes: take them off again.
  std::size_t padding = 0;
  if (text.back() == '=') ++padding;
  if (text.size() >= 2 && text[text.size() - 2] == '=') ++padding;
  out.resize(static_cast<std::size_t>(n) - padding);
  return out;
}

std::vector<std::uint8_t> random_bytes(std::size_t count) {
  std::vector<std::uint8_t> out(count);
  const int ok = RAND_bytes(out.data(), static_cast<int>(count));
  CLUSTER_ASSERT(ok == 1, "the system's random source works");
  return out;
}

bool equal_in_constant_time(std::string_view a, std::string_view b) {
  unsigned char da[EVP_MAX_MD_SIZE], db[EVP_MAX_MD_SIZE];
  unsigned int la = 0, lb = 0;
  EVP_Digest(a.data(), a.size(), da, &la, EVP_sha256(), nullptr);
  EVP_Digest(b.data(), b.size(), db, &lb, EVP_sha256(), nullptr);
  return la == lb && CRYPTO_memcmp(da, db, la) == 0;
}

std::string key_fingerprint(const public_key& key) { return to_base64(key).substr(0, 8); }

}  // namespace cluster
