#pragma once
// How one process authenticates its connections: its key and role, whom it trusts, and
// whether its connections use TLS. Built once at start-up (make_security_context), then
// shared read-only by every connection of the process (connection_limits::security).

#include <boost/asio/ssl/context.hpp>
#include <memory>
#include <string>

#include "cluster/protocol/result.hpp"
#include "cluster/security/keys.hpp"
#include "cluster/security/roles.hpp"
#include "cluster/security/trust_list.hpp"

namespace cluster {

/// "on": servers require TLS and clients use it; "accept": servers take TLS and plain
/// (a rolling change), clients connect plain; "off": plain only.
enum class tls_mode { off, accept, on };

/// The `[security]` section.
struct security_settings {
  bool auth = true;
  /// A folder from `clusterctl keys init`: <role>.key and trust, used for what is not set below.
  std::string credentials_dir;
  std::string key_file;  ///< this process's private key (or `key`, the text inline)
  std::string key;
  std::string trust_file;  ///< the trust list (or `trust`, the text inline)
  std::string trust;
  std::string tls = "off";
};

struct security_context {
  /// false: hello claims a role and nothing is verified (security.auth = false).
  bool authenticate = true;
  tls_mode tls = tls_mode::off;
  role own_role = role::client;
  signing_key key;
  trust_list trust;
  /// Servers: a throwaway self-signed certificate (peers are authenticated by the signed
  /// handshake, bound to the TLS session, not by certificates). Set unless tls is off.
  std::shared_ptr<boost::asio::ssl::context> tls_server;
  /// Clients: TLS 1.3, any certificate (see tls_server). Set when tls is on.
  std::shared_ptr<boost::asio::ssl::context> tls_client;
};

/// Loads the key and the trust list and checks that the key is trusted as `own`. Failures
/// (errc::invalid_request) say which setting is wrong and never quote a key.
result<std::shared_ptr<const security_context>> make_security_context(
    const security_settings& settings, role own);

/// A context for tests and tools that already hold their key and trust list.
std::shared_ptr<security_context> make_security_context(signing_key key, trust_list trust, role own,
                                                        tls_mode tls = tls_mode::off);

result<tls_mode> parse_tls_mode(std::string_view text);

}  // namespace cluster
