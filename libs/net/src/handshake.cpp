// The connection's handshake: TLS when offered or required, hello, and with authentication
// the signed hello_ack and the client's auth (docs/security.md "Handshake").

#include "cluster/security/handshake.hpp"

#include <openssl/ssl.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "cluster/net/connection.hpp"

namespace cluster {

namespace {

constexpr unsigned char tls_handshake_record = 0x16;
constexpr unsigned max_denials_logged = 20;

std::optional<public_key> as_public_key(const bytes& raw) {
  if (raw.size() != public_key{}.size()) return std::nullopt;
  public_key key{};
  std::copy(raw.begin(), raw.end(), key.begin());
  return key;
}

// The handshake message expected next, decoded; or the refusal for what came instead.
template <class Fields>
result<Fields> handshake_step(const envelope& env, message_kind kind, std::string_view name,
                              std::string_view out_of_order) {
  if (env.kind != static_cast<std::uint32_t>(kind))
    return failure{errc::handshake_required, std::string(out_of_order)};
  auto decoded = env.as<Fields>();
  if (!decoded)
    return failure{errc::malformed_frame,
                   std::string(name) + " has the wrong shape: " + decoded.error().message};
  return decoded;
}

bytes to_bytes(std::span<const std::uint8_t> data) { return bytes(data.begin(), data.end()); }

std::string describe_roles(role_mask roles) {
  std::string out;
  for (int i = 0; i < role_count; ++i) {
    if (!(roles & mask_of(static_cast<role>(i)))) continue;
    if (!out.empty()) out += " or ";
    out += to_string(static_cast<role>(i));
  }
  return out;
}

}  // namespace

std::vector<std::uint8_t> connection::channel_binding() const {
  if (!tls_) return {};
  std::vector<std::uint8_t> out(32);
  static constexpr char label[] = "EXPORTER-cluster-sst-handshake";
  const int ok = SSL_export_keying_material(tls_->native_handle(), out.data(), out.size(), label,
                                            sizeof label - 1, nullptr, 0, 0);
  if (ok != 1) return {};
  return out;
}

awaitable<bool> connection::accept_tls_if_offered() {
  unsigned char first = 0;
  error_code ec;
  co_await socket_.async_receive(asio::buffer(&first, 1), tcp::socket::message_peek,
                                 asio::redirect_error(use_awaitable, ec));
  if (ec || !open_) co_return false;
  if (first == tls_handshake_record) {
    tls_ =
        std::make_unique<asio::ssl::stream<tcp::socket&>>(socket_, *limits_.security->tls_server);
    co_await tls_->async_handshake(asio::ssl::stream_base::server,
                                   asio::redirect_error(use_awaitable, ec));
    if (ec) {
      spdlog::warn("closing {}: TLS handshake failed: {}", peer_, ec.message());
      co_return false;
    }
    co_return open_;
  }
  if (limits_.security->tls == tls_mode::on) {
    protocol_error(0, errc::unauthorized, "this port requires TLS (security.tls = \"on\")");
    co_return false;
  }
  co_return true;
}

bool connection::handle_handshake(const envelope& env) {
  if (handshake_) return handle_auth(env);
  return handle_hello(env);
}

bool connection::handle_hello(const envelope& env) {
  auto decoded = handshake_step<hello_msg>(env, message_kind::hello, "hello",
                                           "the first message must be hello");
  if (!decoded) {
    protocol_error(env.id, decoded.error().code, decoded.error().message);
    return false;
  }
  hello_msg& hello = decoded.value();
  if (hello.protocol_version != protocol_version) {
    protocol_error(env.id, errc::unsupported_version,
                   "protocol version " + std::to_string(hello.protocol_version) +
                       " is not supported; this peer speaks " + std::to_string(protocol_version));
    return false;
  }
  const auto claimed = parse_role(hello.role);
  if (!claimed) {
    protocol_error(env.id, errc::unauthorized, "unknown role '" + hello.role.substr(0, 32) + "'");
    return false;
  }
  const security_context* security = limits_.security.get();
  const bool authenticate = security && security->authenticate;
  std::optional<public_key> key;
  if (authenticate) {
    key = as_public_key(hello.key);
    if (!key || hello.nonce.size() != handshake_nonce_bytes) {
      protocol_error(env.id, errc::unauthorized,
                     "this cluster requires authentication: hello carries no key (configure "
                     "security.credentials_dir or security.key_file; docs/security.md)");
      return false;
    }
    const auto listed = security->trust.role_of(*key);
    if (!listed) {
      protocol_error(env.id, errc::unauthorized,
                     "key " + key_fingerprint(*key) + "… is not in this cluster's trust list");
      return false;
    }
    if (*listed != *claimed) {
      protocol_error(env.id, errc::unauthorized,
                     "key " + key_fingerprint(*key) + "… belongs to role " +
                         std::string(to_string(*listed)) + ", not " + hello.role);
      return false;
    }
  }
  if (allowed && !allowed->admits(*claimed)) {
    protocol_error(env.id, errc::forbidden, "role " + hello.role + " may not connect to this port");
    return false;
  }
  if (admit && !admit(hello.role)) {
    protocol_error(env.id, errc::too_many_requests,
                   "too many connections from clients; the rest are kept for the cluster's "
                   "own processes");
    return false;
  }
  if (!authenticate) {
    finish_handshake(hello.name, *claimed);
    hello_ack_msg ack;
    if (security) ack.role = std::string(to_string(security->own_role));
    send(message_kind::hello_ack, env.id, ack);
    return true;
  }
  hello_ack_msg ack;
  ack.role = std::string(to_string(security->own_role));
  const auto& own_key = security->key.public_half();
  ack.key = to_bytes(own_key);
  ack.nonce = random_bytes(handshake_nonce_bytes);
  const auto binding = channel_binding();
  const auto signed_part = handshake_transcript(handshake_side::server, hello, ack, binding);
  ack.signature = to_bytes(security->key.sign(signed_part));
  send(message_kind::hello_ack, env.id, ack);
  handshake_ = std::make_unique<handshake_in_progress>(
      handshake_in_progress{std::move(hello), std::move(ack), *claimed, *key});
  return true;
}

bool connection::handle_auth(const envelope& env) {
  auto decoded = handshake_step<auth_msg>(env, message_kind::auth, "auth",
                                          "after hello_ack the next message must be auth");
  if (!decoded) {
    protocol_error(env.id, decoded.error().code, decoded.error().message);
    return false;
  }
  const auto expected = handshake_transcript(handshake_side::client, handshake_->hello,
                                             handshake_->ack, channel_binding());
  if (!verify_signature(handshake_->key, expected, decoded.value().signature)) {
    protocol_error(env.id, errc::unauthorized,
                   "the handshake signature does not verify with key " +
                       key_fingerprint(handshake_->key) + "…");
    return false;
  }
  auto done = std::move(handshake_);
  finish_handshake(done->hello.name, done->claimed);
  send_reply(env.id, reply_msg{});
  return true;
}

void connection::finish_handshake(const std::string& name, role proven) {
  handshaken_ = true;
  handshake_timer_.cancel();
  peer_name = name;
  peer_role = std::string(to_string(proven));
  proven_role_ = proven;
  watch_idle();
}

bool connection::permitted(const envelope& env) {
  if (proven_role_ && allowed->allows(env.kind, *proven_role_)) return true;
  if (denials_logged_ < max_denials_logged) {
    ++denials_logged_;
    spdlog::warn(
        "denied message kind {} from {} ({} '{}'){}", env.kind, peer_, peer_role,
        peer_name.substr(0, 64),
        denials_logged_ == max_denials_logged ? "; further denials on it are not logged" : "");
  }
  if (env.id != 0)
    send_reply(env.id, reply_msg::failure(errc::forbidden, "role " + peer_role +
                                                               " may not send message kind " +
                                                               std::to_string(env.kind) + " here"));
  return false;
}

awaitable<result<void>> connection::client_handshake(hello_msg hello, role_mask accepted_servers) {
  const security_context* security = limits_.security.get();
  error_code ec;
  if (security && security->tls_client) {
    tls_ = std::make_unique<asio::ssl::stream<tcp::socket&>>(socket_, *security->tls_client);
    co_await tls_->async_handshake(asio::ssl::stream_base::client,
                                   asio::redirect_error(use_awaitable, ec));
    if (ec) co_return failure{errc::unavailable, "TLS handshake failed: " + ec.message()};
  }
  const bool authenticate = security && security->authenticate;
  if (authenticate) {
    hello.role = std::string(to_string(security->own_role));
    hello.key = to_bytes(security->key.public_half());
    hello.nonce = random_bytes(handshake_nonce_bytes);
  }
  {
    // Named: the coroutine keeps a reference to the frame until it is written.
    const auto hello_frame = encode_frame(message_kind::hello, 0, hello);
    auto write = write_frame_now(hello_frame);
    ec = co_await std::move(write);
  }
  if (ec) co_return failure{errc::unavailable, ec.message()};
  auto read = read_handshake_frame();
  auto answer = co_await std::move(read);
  if (!answer) {
    const auto& why = answer.error();
    co_return failure{why.code, why.code == errc::unavailable
                                    ? "connection closed during the handshake"
                                    : why.message};
  }
  const auto refused = [](const envelope& env) -> std::optional<failure> {
    if (env.kind != static_cast<std::uint32_t>(message_kind::reply)) return std::nullopt;
    auto refusal = env.as<reply_msg>();
    if (!refusal || refusal.value().ok())
      return failure{errc::malformed_frame, "handshake refused"};
    return failure{refusal.value().code, refusal.value().error + ": " + refusal.value().message};
  };
  if (auto why = refused(answer.value())) co_return *why;
  if (answer.value().kind != static_cast<std::uint32_t>(message_kind::hello_ack))
    co_return failure{errc::malformed_frame,
                      "expected hello_ack, got kind " + std::to_string(answer.value().kind)};
  auto ack = answer.value().as<hello_ack_msg>();
  if (!ack) co_return failure{errc::malformed_frame, "hello_ack has the wrong shape"};
  peer_name = ack.value().name;
  peer_role = ack.value().role;
  if (!authenticate) co_return success();

  const auto server_key = as_public_key(ack.value().key);
  if (!server_key)
    co_return failure{errc::unauthorized,
                      "the server did not prove who it is (is security.auth off there?)"};
  const auto listed = security->trust.role_of(*server_key);
  if (!listed || !(accepted_servers & mask_of(*listed)) || to_string(*listed) != ack.value().role)
    co_return failure{errc::unauthorized, "the server's key " + key_fingerprint(*server_key) +
                                              "… is not trusted as " +
                                              describe_roles(accepted_servers)};
  const auto binding = channel_binding();
  const auto server_part =
      handshake_transcript(handshake_side::server, hello, ack.value(), binding);
  if (!verify_signature(*server_key, server_part, ack.value().signature))
    co_return failure{errc::unauthorized, "the server's handshake signature does not verify"};
  const auto client_part =
      handshake_transcript(handshake_side::client, hello, ack.value(), binding);
  {
    auth_msg proof{to_bytes(security->key.sign(client_part))};
    const auto auth_frame = encode_frame(message_kind::auth, 1, proof);
    auto write = write_frame_now(auth_frame);
    ec = co_await std::move(write);
  }
  if (ec) co_return failure{errc::unavailable, ec.message()};
  auto read_verdict = read_handshake_frame();
  auto verdict = co_await std::move(read_verdict);
  if (!verdict)
    co_return failure{verdict.error().code, verdict.error().code == errc::unavailable
                                                ? "connection closed during the handshake"
                                                : verdict.error().message};
  if (verdict.value().kind == static_cast<std::uint32_t>(message_kind::reply)) {
    auto reply = verdict.value().as<reply_msg>();
    if (reply && reply.value().ok()) co_return success();
    if (reply)
      co_return failure{reply.value().code, reply.value().error + ": " + reply.value().message};
  }
  co_return failure{errc::malformed_frame, "expected the answer to auth"};
}

}  // namespace cluster
