#include "cluster/storage/request_fingerprint.hpp"

#include <openssl/evp.h>

#include <memory>

#include "cluster/protocol/assert.hpp"

namespace cluster {

namespace {

// Bumped only with a new scheme; the stored fingerprints of the old one would stop matching.
constexpr std::string_view scheme_tag = "cluster-request-fingerprint-v1";

struct digest_deleter {
  void operator()(EVP_MD_CTX* ctx) const { EVP_MD_CTX_free(ctx); }
};

// Fetched once: an implicit fetch per call (EVP_sha256()) costs a lookup each time.
const EVP_MD* sha256() {
  static EVP_MD* const md = EVP_MD_fetch(nullptr, "SHA256", nullptr);
  CLUSTER_ASSERT(md != nullptr, "OpenSSL provides SHA-256");
  return md;
}

// One context per thread (the runner's loop and the PostgreSQL worker), reused per call.
EVP_MD_CTX* thread_context() {
  thread_local const std::unique_ptr<EVP_MD_CTX, digest_deleter> ctx(EVP_MD_CTX_new());
  CLUSTER_ASSERT(ctx != nullptr, "OpenSSL allocates a digest context");
  return ctx.get();
}

void add_field(EVP_MD_CTX* ctx, const void* data, std::size_t size) {
  std::uint8_t length[8];
  for (int i = 0; i < 8; ++i) length[i] = static_cast<std::uint8_t>(size >> (8 * i));
  const bool added =
      EVP_DigestUpdate(ctx, length, sizeof length) == 1 && EVP_DigestUpdate(ctx, data, size) == 1;
  CLUSTER_ASSERT(added, "SHA-256 takes any input");
}

}  // namespace

request_fingerprint fingerprint_of(const request_msg& request) {
  EVP_MD_CTX* ctx = thread_context();
  const bool started = EVP_DigestInit_ex2(ctx, sha256(), nullptr) == 1;
  CLUSTER_ASSERT(started, "SHA-256 initialises");
  add_field(ctx, scheme_tag.data(), scheme_tag.size());
  add_field(ctx, request.entity_type.data(), request.entity_type.size());
  add_field(ctx, request.entity_id.data(), request.entity_id.size());
  add_field(ctx, request.rpc.data(), request.rpc.size());
  add_field(ctx, request.payload.data(), request.payload.size());
  request_fingerprint out{};
  unsigned int length = 0;
  const bool finished = EVP_DigestFinal_ex(ctx, out.data(), &length) == 1;
  CLUSTER_ASSERT(finished && length == out.size(), "SHA-256 yields 32 bytes");
  return out;
}

}  // namespace cluster
