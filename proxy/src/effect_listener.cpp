#include "cluster/proxy/effect_listener.hpp"

#include <spdlog/spdlog.h>

#include <boost/algorithm/string/predicate.hpp>
#include <deque>

#include "cluster/process/config.hpp"

namespace cluster::proxy {

using nlohmann::json;

namespace {

// Replies are written in batches up to this size: msgpackr's reader in @effect/rpc parses
// each socket read on its own, so a message should not be split across reads needlessly.
constexpr std::size_t write_batch_bytes = 32 * 1024;

/// The value of header `name` (any case) of a Request's `[[name, value], ...]`.
std::optional<std::string_view> header_of(const json& headers, std::string_view name) {
  if (!headers.is_array()) return std::nullopt;
  for (const auto& pair : headers) {
    if (!pair.is_array() || pair.size() != 2 || !pair[0].is_string() || !pair[1].is_string())
      continue;
    if (boost::algorithm::iequals(pair[0].get_ref<const std::string&>(), name))
      return std::string_view(pair[1].get_ref<const std::string&>());
  }
  return std::nullopt;
}

std::optional<std::string> id_text(const json& id) {
  if (id.is_string()) return id.get<std::string>();
  if (id.is_number_unsigned()) return std::to_string(id.get<std::uint64_t>());
  if (id.is_number_integer()) return std::to_string(id.get<std::int64_t>());
  return std::nullopt;
}

json exit_message(const std::string& request_id, json exit) {
  return json{{"_tag", "Exit"}, {"requestId", request_id}, {"exit", std::move(exit)}};
}

}  // namespace

// One client connection. Lives while its socket is open or a call of it is in flight (the
// calls' callbacks hold it).
class effect_listener::session : public std::enable_shared_from_this<session> {
 public:
  session(effect_listener& owner, tcp::socket socket)
      : owner_(owner),
        socket_(std::move(socket)),
        reader_(owner.options_.framing, owner.options_.max_message_bytes) {}

  void start() { read_next(); }

  /// Closes once everything queued is written.
  void close_after_flush() {
    closing_ = true;
    if (!writing_) close();
  }

 private:
  struct pending_call {
    std::uint64_t local_id = 0;  // the id in routed_: Effect's ids are decimal strings
    bool stream = false;
    std::deque<std::uint32_t> chunk_sizes;  // items of each Chunk not acknowledged yet
  };

  void read_next() {
    auto self = shared_from_this();
    socket_.async_read_some(asio::buffer(read_buffer_),
                            [self](const error_code& ec, std::size_t n) { self->on_read(ec, n); });
  }

  void on_read(const error_code& ec, std::size_t n) {
    if (ec) return close();
    reader_.append(std::string_view(read_buffer_.data(), n));
    for (;;) {
      auto next = reader_.next();
      if (!next) {
        // The stream cannot be resynchronised: say why, then hang up.
        spdlog::warn("effect rpc: closing a connection: {}", next.error().message);
        send(json{{"_tag", "Defect"}, {"defect", next.error().message}});
        return close_after_flush();
      }
      if (!next.value()) break;
      handle(*next.value());
      if (closing_ || !open_) return;
    }
    read_next();
  }

  void handle(const json& message) {
    const auto tag = message.is_object() && message.contains("_tag") && message["_tag"].is_string()
                         ? message["_tag"].get<std::string>()
                         : std::string();
    if (tag == "Request") return request(message);
    if (tag == "Ack") return ack(message);
    if (tag == "Interrupt") return interrupt(message);
    if (tag == "Ping") return send(json{{"_tag", "Pong"}});
    if (tag == "Eof") {
      eof_ = true;
      if (calls_.empty()) close_after_flush();
      return;
    }
    send(json{{"_tag", "Defect"}, {"defect", "Unknown request tag: " + tag}});
  }

  void request(const json& message, steady_clock::time_point arrived = steady_clock::now()) {
    auto id = message.contains("id") ? id_text(message["id"]) : std::nullopt;
    if (!id) {
      send(json{{"_tag", "Defect"}, {"defect", "Invalid request id"}});
      return;
    }
    const auto& options = owner_.options_;
    const json empty;
    const json& headers = message.contains("headers") ? message["headers"] : empty;
    if (options.token) {
      const auto authorization = header_of(headers, "authorization");
      const auto token = authorization ? security::bearer_token_of(*authorization) : std::nullopt;
      if (!token || !security::token_matches(*token, *options.token)) {
        // The token is never logged nor echoed.
        spdlog::warn("effect rpc: refused a request without a valid bearer token");
        send(exit_message(
            *id, effect_die("Unauthorized", authorization
                                                ? "the bearer token is not valid"
                                                : "this listener needs the header 'authorization: "
                                                  "Bearer <token>' on every request")));
        return close_after_flush();
      }
    }
    if (calls_.count(*id)) {
      send(exit_message(*id, effect_die("InvalidRequest", "request id " + *id + " is in flight")));
      return;
    }
    if (owner_.stopping_) {
      send(exit_message(*id, effect_die("ShuttingDown", "proxy is stopping")));
      return;
    }
    if (calls_.size() >= options.max_in_flight) {
      send(exit_message(
          *id, effect_die("TooManyRequests", "too many requests in flight on this connection")));
      return;
    }
    const auto tag = message.contains("tag") && message["tag"].is_string()
                         ? message["tag"].get<std::string>()
                         : std::string();
    auto target = owner_.tags_.resolve(tag, owner_.router_.snapshot());
    if (!target && target.error().code == errc::no_runner && open_ &&
        steady_clock::now() - arrived < owner_.options_.request_timeout) {
      // The proxy has no catalog yet (it just started): wait for it, as routing would.
      auto timer = std::make_shared<asio::steady_timer>(socket_.get_executor(), milliseconds(20));
      timer->async_wait([self = shared_from_this(), timer, message, arrived](const error_code&) {
        if (self->open_) self->request(message, arrived);
      });
      return;
    }
    if (!target) {
      send(exit_message(*id, effect_die(to_string(target.error().code), target.error().message)));
      return;
    }
    const json* payload = message.contains("payload") ? &message["payload"] : nullptr;
    if (payload == nullptr || !payload->is_object() || !payload->contains("entityId") ||
        !(*payload)["entityId"].is_string()) {
      send(exit_message(*id, effect_die("InvalidRequest",
                                        "the payload must be { entityId, payload } (as "
                                        "EntityProxy.toRpcGroup makes it)")));
      return;
    }
    auto& [entity_type, rpc, discard] = target.value();
    if (!options.expose.allows(entity_type, rpc)) {
      send(exit_message(*id, effect_die("Forbidden", entity_type + "/" + rpc +
                                                         " is not exposed to Effect RPC "
                                                         "(proxy.effect_expose)")));
      return;
    }
    request_msg call;
    call.entity_type = entity_type;
    call.rpc = rpc;
    call.entity_id = (*payload)["entityId"].get<std::string>();
    call.discard = discard;
    const auto inner = payload->contains("payload") ? (*payload)["payload"] : json::object();
    const auto packed = json::to_msgpack(inner);
    call.payload.assign(packed.begin(), packed.end());
    if (auto key = header_of(headers, "x-cluster-primary-key"))
      call.primary_key = std::string(*key);
    auto timeout = options.request_timeout;
    if (auto asked = header_of(headers, "x-cluster-timeout-ms")) {
      const auto ms = parse_number<std::uint32_t>(*asked);
      if (!ms || *ms == 0) {
        send(exit_message(
            *id, effect_die("InvalidRequest", "x-cluster-timeout-ms must be a positive integer")));
        return;
      }
      timeout = std::min(milliseconds(*ms), options.request_timeout * 6);
    }
    if (auto valid = validate_request(call, options.limits); !valid) {
      send(exit_message(*id, effect_die(to_string(valid.error().code), valid.error().message)));
      return;
    }
    effect_address address{std::string(), 0, call.entity_type, call.entity_id};
    bool stream = false;
    if (auto located = owner_.router_.locate(call.entity_type, call.entity_id, call.rpc)) {
      address.group = located.value().group;
      address.shard = located.value().shard;
      stream = located.value().stream;
    }
    // A discarded call's success is void, like a stream's: nothing but "accepted".
    route(*id, std::move(call), std::move(address), stream, discard, timeout);
  }

  void route(const std::string& id, request_msg call, effect_address address, bool stream,
             bool discard, milliseconds timeout) {
    auto& entry = calls_[id];
    entry.local_id = ++last_local_id_;
    entry.stream = stream;
    std::function<void(std::vector<bytes> &&)> on_items;
    if (stream) {
      on_items = [self = shared_from_this(), id](std::vector<bytes>&& items) {
        self->chunk(id, std::move(items));
      };
    }
    owner_.router_.route(
        std::move(call), steady_clock::now() + timeout,
        [self = shared_from_this(), id, address = std::move(address),
         void_success = stream || discard,
         hold = owner_.in_flight_.hold()](reply_msg&& reply) mutable {
          self->calls_.erase(id);
          self->send(exit_message(id, effect_exit(reply, address, void_success)));
          hold.release();
          if (self->eof_ && self->calls_.empty()) self->close_after_flush();
        },
        routed_, nullptr, entry.local_id, std::move(on_items));
  }

  void chunk(const std::string& id, std::vector<bytes>&& items) {
    auto it = calls_.find(id);
    if (it == calls_.end()) return;
    json values = json::array();
    for (const auto& item : items) {
      auto value = json::from_msgpack(item, true, false);
      values.push_back(value.is_discarded() ? json() : std::move(value));
    }
    it->second.chunk_sizes.push_back(static_cast<std::uint32_t>(items.size()));
    send(json{{"_tag", "Chunk"}, {"requestId", id}, {"values", std::move(values)}});
  }

  // The client acknowledges each Chunk once it consumed it: that many items more may come.
  void ack(const json& message) {
    auto it = find_call(message);
    if (it == calls_.end() || it->second.chunk_sizes.empty()) return;
    const auto credit = it->second.chunk_sizes.front();
    it->second.chunk_sizes.pop_front();
    if (auto* routed = routed_.find(it->second.local_id)) owner_.router_.ack(*routed, credit);
  }

  void interrupt(const json& message) {
    auto it = find_call(message);
    if (it == calls_.end()) return;
    if (auto* routed = routed_.find(it->second.local_id)) owner_.router_.interrupt(*routed);
  }

  std::map<std::string, pending_call>::iterator find_call(const json& message) {
    const auto id = message.contains("requestId") ? id_text(message["requestId"]) : std::nullopt;
    return id ? calls_.find(*id) : calls_.end();
  }

  void send(const json& message) {
    if (!open_) return;
    const auto framing =
        reader_.framing() == effect_framing::detect ? effect_framing::ndjson : reader_.framing();
    pending_ += encode_effect_message(message, framing);
    if (pending_.size() > owner_.options_.max_queued_bytes) {
      spdlog::warn("effect rpc: closing a connection that does not read its replies");
      return close();
    }
    if (!writing_) write_next();
  }

  void write_next() {
    if (pending_.empty()) {
      if (closing_) close();
      return;
    }
    writing_ = true;
    if (pending_.size() <= write_batch_bytes) {
      out_.swap(pending_);
      pending_.clear();
    } else {
      out_.assign(pending_, 0, write_batch_bytes);
      pending_.erase(0, write_batch_bytes);
    }
    auto self = shared_from_this();
    asio::async_write(socket_, asio::buffer(out_), [self](const error_code& ec, std::size_t) {
      self->writing_ = false;
      if (ec) return self->close();
      self->write_next();
    });
  }

  void close() {
    if (!open_) return;
    open_ = false;
    error_code ignored;
    socket_.shutdown(tcp::socket::shutdown_both, ignored);
    socket_.close(ignored);
    pending_.clear();
    // Nobody waits for their replies: stop what runs for nothing. Persisted requests run
    // on (they are stored, and a retry with their key gets the outcome).
    for (auto* routed : routed_.all())
      if (!owner_.router_.is_persisted(routed->request.entity_type, routed->request.rpc))
        owner_.router_.interrupt(*routed);
    owner_.sessions_.erase(shared_from_this());
  }

  effect_listener& owner_;
  tcp::socket socket_;
  effect_reader reader_;
  std::array<char, 16 * 1024> read_buffer_{};
  std::string pending_;
  std::string out_;
  bool writing_ = false;
  bool closing_ = false;
  bool open_ = true;
  bool eof_ = false;
  std::map<std::string, pending_call> calls_;
  routed_set routed_;
  std::uint64_t last_local_id_ = 0;
};

effect_listener::effect_listener(asio::io_context& io, router& routes, gate& in_flight,
                                 effect_listener_options options, effect_tags tags)
    : io_(io),
      router_(routes),
      in_flight_(in_flight),
      options_(std::move(options)),
      tags_(std::move(tags)),
      acceptor_(io) {}

effect_listener::~effect_listener() {
  error_code ignored;
  acceptor_.close(ignored);
}

void effect_listener::listen() {
  error_code ec;
  const auto address = asio::ip::make_address(options_.host, ec);
  if (ec) throw config_error("proxy.effect_host: '" + options_.host + "' is not an IP address");
  const tcp::endpoint endpoint(address, options_.port);
  acceptor_.open(endpoint.protocol(), ec);
  if (!ec) acceptor_.set_option(tcp::acceptor::reuse_address(true), ec);
  if (!ec) acceptor_.bind(endpoint, ec);
  if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
  if (ec)
    throw config_error("proxy.effect_port: cannot listen on " + options_.host + ":" +
                       std::to_string(options_.port) + ": " + ec.message());
  accept_next();
}

std::uint16_t effect_listener::port() const {
  error_code ec;
  const auto endpoint = acceptor_.local_endpoint(ec);
  return ec ? 0 : endpoint.port();
}

void effect_listener::accept_next() {
  acceptor_.async_accept([this](const error_code& ec, tcp::socket socket) {
    if (ec == asio::error::operation_aborted || !acceptor_.is_open()) return;
    if (!ec) {
      if (stopping_ || sessions_.size() >= options_.max_connections) {
        error_code ignored;
        socket.close(ignored);
      } else {
        error_code ignored;
        socket.set_option(tcp::no_delay(true), ignored);
        auto started = std::make_shared<session>(*this, std::move(socket));
        sessions_.insert(started);
        started->start();
      }
    }
    accept_next();
  });
}

void effect_listener::stop_accepting() {
  stopping_ = true;
  error_code ignored;
  acceptor_.close(ignored);
}

void effect_listener::close_after_flush() {
  // Copied: a session leaves the set as it closes.
  const auto open = std::vector<std::shared_ptr<session>>(sessions_.begin(), sessions_.end());
  for (const auto& s : open) s->close_after_flush();
}

}  // namespace cluster::proxy
