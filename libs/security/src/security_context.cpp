#include "cluster/security/security_context.hpp"

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "cluster/protocol/assert.hpp"
#include "cluster/security/credentials_folder.hpp"

namespace cluster {

namespace ssl = boost::asio::ssl;

namespace {

// A certificate nobody needs to trust: TLS gives confidentiality, the signed handshake
// (bound to the session) gives authentication. P-256 keeps the TLS handshake cheap.
void use_throwaway_certificate(ssl::context& context) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  CLUSTER_ASSERT(key, "OpenSSL generates P-256 keys");
  X509* cert = X509_new();
  CLUSTER_ASSERT(cert, "OpenSSL allocates a certificate");
  ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert), 10L * 365 * 24 * 3600);
  X509_set_pubkey(cert, key);
  X509_NAME* name = X509_get_subject_name(cert);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("cluster-sst"), -1, -1, 0);
  X509_set_issuer_name(cert, name);
  const bool signed_ok = X509_sign(cert, key, EVP_sha256()) > 0;
  const bool used = signed_ok && SSL_CTX_use_certificate(context.native_handle(), cert) == 1 &&
                    SSL_CTX_use_PrivateKey(context.native_handle(), key) == 1;
  X509_free(cert);
  EVP_PKEY_free(key);
  CLUSTER_ASSERT(used, "a fresh self-signed certificate is accepted by its context");
}

std::shared_ptr<ssl::context> tls_context(bool server) {
  auto context =
      std::make_shared<ssl::context>(server ? ssl::context::tls_server : ssl::context::tls_client);
  SSL_CTX_set_min_proto_version(context->native_handle(), TLS1_3_VERSION);
  context->set_verify_mode(ssl::verify_none);
  if (server) use_throwaway_certificate(*context);
  return context;
}

void add_tls(security_context& context) {
  if (context.tls != tls_mode::off) context.tls_server = tls_context(true);
  if (context.tls == tls_mode::on) context.tls_client = tls_context(false);
}

}  // namespace

result<tls_mode> parse_tls_mode(std::string_view text) {
  if (text == "off") return tls_mode::off;
  if (text == "accept") return tls_mode::accept;
  if (text == "on") return tls_mode::on;
  return failure{
      errc::invalid_request,
      "security.tls must be \"off\", \"accept\" or \"on\", not \"" + std::string(text) + "\""};
}

result<std::shared_ptr<const security_context>> make_security_context(
    const security_settings& configured, role own) {
  security_settings settings = configured;
  if (!settings.credentials_dir.empty()) {
    if (settings.key_file.empty() && settings.key.empty())
      settings.key_file = credentials_key_path(settings.credentials_dir, own);
    if (settings.trust_file.empty() && settings.trust.empty())
      settings.trust_file = credentials_trust_path(settings.credentials_dir);
  }
  BOOST_OUTCOME_TRY(tls, parse_tls_mode(settings.tls));
  auto context = std::make_shared<security_context>();
  context->tls = tls;
  context->own_role = own;
  context->authenticate = settings.auth;
  if (settings.auth) {
    const auto none_of = [](const std::string& file, const std::string& inline_text) {
      return file.empty() && inline_text.empty();
    };
    if (none_of(settings.key_file, settings.key))
      return failure{errc::invalid_request,
                     "security.auth is on but no key is configured: set "
                     "security.credentials_dir to a folder from `clusterctl keys init DIR` (or "
                     "security.key_file / security.key)"};
    if (none_of(settings.trust_file, settings.trust))
      return failure{errc::invalid_request,
                     "security.auth is on but no trust list is configured: set "
                     "security.trust_file (or security.trust)"};
    auto key = settings.key.empty() ? signing_key::load_file(settings.key_file)
                                    : signing_key::from_text(settings.key);
    if (!key) return failure{key.error().code, "security.key: " + key.error().message};
    auto trust = settings.trust.empty() ? trust_list::load_file(settings.trust_file)
                                        : trust_list::parse(settings.trust);
    if (!trust) return failure{trust.error().code, "security.trust: " + trust.error().message};
    const auto listed_as = trust.value().role_of(key.value().public_half());
    if (listed_as != own)
      return failure{errc::invalid_request,
                     "this process runs as " + std::string(to_string(own)) + " but its key " +
                         key_fingerprint(key.value().public_half()) + "… is " +
                         (listed_as ? "listed as " + std::string(to_string(*listed_as))
                                    : std::string("not in the trust list"))};
    context->key = std::move(key).value();
    context->trust = std::move(trust).value();
  }
  add_tls(*context);
  return std::shared_ptr<const security_context>(std::move(context));
}

std::shared_ptr<security_context> make_security_context(signing_key key, trust_list trust, role own,
                                                        tls_mode tls) {
  auto context = std::make_shared<security_context>();
  context->authenticate = true;
  context->tls = tls;
  context->own_role = own;
  context->key = std::move(key);
  context->trust = std::move(trust);
  add_tls(*context);
  return context;
}

}  // namespace cluster
