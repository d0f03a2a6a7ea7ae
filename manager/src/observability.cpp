// The manager's admin routes (dashboard, /api/cluster), readiness and metrics.
#include <spdlog/spdlog.h>

#include <algorithm>

#include "cluster/manager/manager.hpp"
#include "dashboard_assets.hpp"

namespace cluster::manager {

result<void> manager::readiness() const {
  if (stopped_) return failure{errc::shutting_down, "stopping"};
  if (!store_->reachable())
    return failure{errc::storage_error, store_->backend_name() + " storage is unreachable"};
  return success();
}

void manager::admin_routes(admin_endpoint& admin) {
  auto& server = admin.server();
  const auto page = [](const dashboard::asset& a) {
    return http::response{
        200, std::string(a.content_type), std::string(a.body), {{"Cache-Control", "no-cache"}}};
  };
  const auto index = dashboard::assets().front();
  for (const auto* path : {"/", "/dashboard"})
    server.route(path, [page, index](const http::request&) -> awaitable<http::response> {
      co_return page(index);
    });
  server.route("/dashboard/", [page, index](const http::request& req) -> awaitable<http::response> {
    const auto path = http::path_of(std::string_view(req.target().data(), req.target().size()));
    const auto file = path.substr(std::string_view("/dashboard").size());
    if (file == "/") co_return page(index);
    for (const auto& a : dashboard::assets())
      if (a.path == file) co_return page(a);
    co_return http::response{404, "text/plain; charset=utf-8", "no such file\n", {}};
  });
  admin.allow_without_token("/");
  admin.allow_without_token("/dashboard");
  server.route("/api/cluster", [this](const http::request&) -> awaitable<http::response> {
    co_return http::response{
        200, "application/json", view_->api_json(), {{"Cache-Control", "no-store"}}};
  });
  if (!admin.token().empty() && view_) view_->set_admin_token(admin.token());
}

void manager::start_observing() {
  view_options options;
  options.manager_address = config_.host + ":" + std::to_string(server_.port());
  options.storage = store_->backend_name();
  options.version = "0.1.0";
  options.admin_token = config_.common.admin.token;
  view_ = std::make_unique<cluster_view>(io_, std::move(options), [this] { return snapshot(); });
  view_->start();
  auto& registry = metrics::default_registry();
  using metrics::metric_type;
  using metrics::sample;
  shard_moves_ = &registry.counter_of("cluster_manager_shard_moves_total",
                                      "Shards given to another runner (moves and orphans).");
  collectors_.push_back(registry.collect(
      "cluster_manager_runners", "Registered runners, by state (live or away).", metric_type::gauge,
      [this] {
        double live = 0, away = 0;
        for (const auto& [address, entry] : runners_) (is_live(entry) ? live : away) += 1;
        return std::vector<sample>{{{{"state", "live"}}, live}, {{{"state", "away"}}, away}};
      }));
  collectors_.push_back(registry.collect(
      "cluster_manager_shards", "Shards per group, by state (assigned or unassigned).",
      metric_type::gauge, [this] {
        std::vector<sample> samples;
        for (const auto& [group, owners] : groups_) {
          const auto unassigned = std::count(owners.begin(), owners.end(), std::string());
          samples.push_back({{{"group", group}, {"state", "assigned"}},
                             static_cast<double>(owners.size()) - static_cast<double>(unassigned)});
          samples.push_back(
              {{{"group", group}, {"state", "unassigned"}}, static_cast<double>(unassigned)});
        }
        return samples;
      }));
  collectors_.push_back(registry.collect(
      "cluster_manager_snapshot_subscribers", "Connections subscribed to assignment snapshots.",
      metric_type::gauge, [this] {
        return std::vector<sample>{{{}, static_cast<double>(subscriber_count())}};
      }));
  if (dead_letters_) asio::co_spawn(io_, backlog_loop(), asio::detached);
}

awaitable<void> manager::backlog_loop() {
  auto& registry = metrics::default_registry();
  auto& dead = registry.gauge_of("cluster_dead_letters", "Dead letters kept in storage.");
  auto& pending =
      registry.gauges("cluster_persisted_pending_messages",
                      "Persisted messages stored and not processed yet, by group.", {"group"}, 500);
  const auto alive = alive_;
  while (*alive && dead_letters_) {
    dead_letters_->count_backlog([this, alive, &dead,
                                  &pending](result<dead_letter_store::backlog> counted) {
      if (!*alive || !counted) return;
      dead.set(static_cast<double>(counted.value().dead_letters));
      for (const auto& [group, count] : counted.value().pending)
        pending.with({group}).set(static_cast<double>(count));
      view_->set_backlog(counted.value().pending);
      const auto total = static_cast<std::size_t>(counted.value().dead_letters);
      if (!dead_letters_) return;
      dead_letters_->list(1000, [this, alive, total](result<std::vector<dead_letter_info>> listed) {
        if (!*alive || !listed) return;
        auto& letters = listed.value();
        // Oldest first: the dashboard wants the newest few.
        std::vector<dead_letter_info> recent(
            letters.rbegin(), letters.rbegin() + static_cast<std::ptrdiff_t>(
                                                     std::min<std::size_t>(letters.size(), 10)));
        view_->set_dead_letters(total, std::move(recent));
      });
    });
    auto pause = sleep_for(milliseconds(5000));
    if (!co_await std::move(pause)) co_return;
  }
}

void manager::record_registration(const register_runner_msg* before,
                                  const register_runner_msg& now) {
  if (before == nullptr) {
    view_->record(
        "runner_joined", "runner " + now.name + " (" + now.address + ") joined, serving [" + [&] {
          std::string groups;
          for (const auto& g : now.groups) groups += (groups.empty() ? "" : ", ") + g;
          return groups;
        }() + "]");
  }
  for (const auto& plugin : now.plugins) {
    const bool known =
        before != nullptr &&
        std::any_of(before->plugins.begin(), before->plugins.end(), [&](const plugin_info& p) {
          return p.name == plugin.name && p.version == plugin.version && p.state == plugin.state &&
                 p.sha256 == plugin.sha256;
        });
    if (known) continue;
    if (plugin.state == "loaded")
      view_->record("plugin_loaded", now.name + " loaded " + plugin.name + " " + plugin.version);
    else if (plugin.state == "failed")
      view_->record("plugin_failed", now.name + " refused " + plugin.file + ": " + plugin.error);
  }
}

}  // namespace cluster::manager
