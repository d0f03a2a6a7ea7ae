#include "cluster/host/plugin_fetcher.hpp"

#include <spdlog/spdlog.h>

#include <fstream>
#include <map>

#include "cluster/protocol/codec.hpp"
#include "cluster/protocol/validate.hpp"
#include "cluster/security/digest.hpp"

namespace cluster::host {

struct plugin_fetcher::state {
  state(asio::io_context& io, plugin_fetcher_options opts)
      : options(std::move(opts)), wake(io, steady_clock::time_point::max()) {}

  plugin_fetcher_options options;
  asio::steady_timer wake;  // cancelled by update and stop
  std::map<std::string, stored_plugin> wanted;
  bool have_snapshot = false;
  bool dirty = false;  // an update came while the worker was busy
  bool stopped = false;
  // name → sha256 of pushed/<name>.so as this fetcher wrote (or found) it.
  std::map<std::string, std::string> held;
  connection_ptr conn;
  std::size_t fetched = 0;
  std::string last_error;

  std::filesystem::path pushed_dir() const { return options.cache_dir / "pushed"; }
  std::filesystem::path incoming_dir() const { return options.cache_dir / "incoming"; }

  /// What pushed/ holds from a previous life of this runner, by its bytes.
  void scan_pushed() {
    std::error_code ec;
    for (const auto& entry : std::filesystem::directory_iterator(pushed_dir(), ec)) {
      if (!entry.is_regular_file() || entry.path().extension() != ".so") continue;
      if (auto digest = security::sha256_file(entry.path()))
        held[entry.path().stem().string()] = digest.value();
    }
  }

  /// Deletes pushed/<name>.so of every plugin the cluster no longer stores.
  void remove_unwanted() {
    for (auto it = held.begin(); it != held.end();) {
      if (wanted.count(it->first)) {
        ++it;
        continue;
      }
      std::error_code ec;
      std::filesystem::remove(pushed_dir() / (it->first + ".so"), ec);
      if (ec) {
        spdlog::warn("pushed plugin '{}': cannot delete it: {}", it->first, ec.message());
      } else {
        spdlog::info("pushed plugin '{}' was removed from the cluster: deleted", it->first);
      }
      it = held.erase(it);
    }
  }

  /// The next plugin to fetch, if any.
  const stored_plugin* next_missing() const {
    for (const auto& [name, plugin] : wanted) {
      auto it = held.find(name);
      if (it == held.end() || it->second != plugin.sha256) return &plugin;
    }
    return nullptr;
  }

  awaitable<result<connection_ptr>> manager_connection() {
    if (conn && conn->is_open()) co_return conn;
    conn.reset();
    connection::message_handler ignore = [](const connection_ptr& c, envelope&& env) {
      c->send_reply(env.id, reply_msg::failure(errc::unknown_kind, "plugin fetch connection"));
    };
    std::function<void()> on_close;
    auto connect = connect_to(options.manager, options.hello, options.limits, options.call_timeout,
                              ignore, on_close, mask_of(role::manager));
    auto connected = co_await std::move(connect);
    if (!connected) co_return std::move(connected).error();
    conn = connected.value();
    co_return conn;
  }

  /// Fetches one plugin into pushed/. Success also when a newer snapshot superseded it.
  awaitable<result<void>> fetch(stored_plugin plugin) {
    // The name becomes a file name: the manager checked it, and so does the runner.
    if (auto valid = validate_stored_plugin(plugin, registration_limits{}); !valid)
      co_return std::move(valid).error();
    bytes data;
    while (data.size() < plugin.size_bytes) {
      auto superseded = wanted.find(plugin.name);
      if (stopped || superseded == wanted.end() || superseded->second.sha256 != plugin.sha256)
        co_return success();
      auto connected = co_await manager_connection();
      if (!connected) co_return std::move(connected).error();
      fetch_plugin_msg ask{plugin.sha256, data.size(),
                           static_cast<std::uint32_t>(push_plugin_chunk_bytes)};
      auto call =
          connected.value()->async_call(message_kind::fetch_plugin, ask, options.call_timeout);
      auto reply = co_await std::move(call);
      if (!reply.ok())
        co_return failure{reply.code, "fetch_plugin: " + reply.error + ": " + reply.message};
      auto chunk = unpack_bytes<plugin_chunk_msg>(reply.payload);
      if (!chunk) co_return failure{errc::bad_payload, "fetch_plugin's reply does not decode"};
      if (chunk.value().size_bytes != plugin.size_bytes)
        co_return failure{errc::invalid_request,
                          "the manager holds " + std::to_string(chunk.value().size_bytes) +
                              " bytes, not the " + std::to_string(plugin.size_bytes) +
                              " the snapshot says"};
      if (chunk.value().chunk.empty() ||
          data.size() + chunk.value().chunk.size() > plugin.size_bytes)
        co_return failure{errc::invalid_request, "fetch_plugin answered a chunk out of bounds"};
      data.insert(data.end(), chunk.value().chunk.begin(), chunk.value().chunk.end());
    }
    const std::string digest = security::sha256_hex(data);
    if (digest != plugin.sha256)
      co_return failure{errc::invalid_request,
                        "the fetched bytes have sha256 " + digest + ", not " + plugin.sha256};
    std::error_code ec;
    std::filesystem::create_directories(incoming_dir(), ec);
    std::filesystem::create_directories(pushed_dir(), ec);
    const auto temporary = incoming_dir() / (plugin.name + ".tmp");
    {
      std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
      out.write(reinterpret_cast<const char*>(data.data()),
                static_cast<std::streamsize>(data.size()));
      out.close();
      if (!out) co_return failure{errc::storage_error, "cannot write " + temporary.string()};
    }
    // One rename: the watcher of pushed/ sees a complete file, never a partial one.
    std::filesystem::rename(temporary, pushed_dir() / (plugin.name + ".so"), ec);
    if (ec)
      co_return failure{errc::storage_error, "cannot move " + temporary.string() + " into " +
                                                 pushed_dir().string() + ": " + ec.message()};
    held[plugin.name] = plugin.sha256;
    ++fetched;
    spdlog::info("pushed plugin '{}' {} fetched ({} bytes, sha256 {}) into {}", plugin.name,
                 plugin.version, plugin.size_bytes, plugin.sha256.substr(0, 12),
                 pushed_dir().string());
    co_return success();
  }
};

namespace {

awaitable<void> run(std::shared_ptr<plugin_fetcher::state> self) {
  milliseconds backoff = self->options.retry_min;
  while (!self->stopped) {
    self->dirty = false;
    bool failed = false;
    if (self->have_snapshot) {
      self->remove_unwanted();
      while (const stored_plugin* missing = self->next_missing()) {
        auto fetching = self->fetch(*missing);
        auto fetched = co_await std::move(fetching);
        if (self->stopped) co_return;
        if (!fetched) {
          self->last_error = fetched.error().message;
          spdlog::warn("pushed plugin fetch failed (retrying in {} ms): {}", backoff.count(),
                       self->last_error);
          failed = true;
          break;
        }
        self->last_error.clear();
        backoff = self->options.retry_min;
        self->remove_unwanted();  // a snapshot may have come meanwhile
      }
    }
    if (self->dirty && !failed) continue;
    self->wake.expires_at(failed ? steady_clock::now() + backoff : steady_clock::time_point::max());
    if (failed) backoff = std::min(backoff * 2, self->options.retry_max);
    error_code ec;
    co_await self->wake.async_wait(asio::redirect_error(use_awaitable, ec));
  }
}

}  // namespace

plugin_fetcher::plugin_fetcher(asio::io_context& io, plugin_fetcher_options options)
    : state_(std::make_shared<state>(io, std::move(options))) {
  state_->scan_pushed();
  asio::co_spawn(io, run(state_), asio::detached);
}

plugin_fetcher::~plugin_fetcher() { stop(); }

void plugin_fetcher::update(const std::vector<stored_plugin>& pushed) {
  std::map<std::string, stored_plugin> wanted;
  for (const auto& plugin : pushed) wanted.emplace(plugin.name, plugin);
  if (state_->have_snapshot && wanted.size() == state_->wanted.size() &&
      std::equal(wanted.begin(), wanted.end(), state_->wanted.begin(),
                 [](const auto& a, const auto& b) {
                   return a.first == b.first && a.second.sha256 == b.second.sha256;
                 }))
    return;  // most snapshots change only the assignment
  state_->wanted = std::move(wanted);
  state_->have_snapshot = true;
  state_->dirty = true;
  state_->wake.cancel();
}

void plugin_fetcher::stop() {
  if (state_->stopped) return;
  state_->stopped = true;
  state_->wake.cancel();
  if (state_->conn) state_->conn->close();
}

std::size_t plugin_fetcher::fetched() const { return state_->fetched; }
std::string plugin_fetcher::last_error() const { return state_->last_error; }

}  // namespace cluster::host
