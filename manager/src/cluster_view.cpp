#include "cluster/manager/cluster_view.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <nlohmann/json.hpp>

#include "cluster/http/http.hpp"

namespace cluster::manager {
namespace {

using nlohmann::json;
using samples = std::vector<metrics::parsed_sample>;

std::int64_t unix_ms() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

double sum_of(const samples& all, std::string_view name) {
  double total = 0;
  for (const auto& s : all)
    if (s.name == name) total += s.value;
  return total;
}

std::string label(const metrics::parsed_sample& s, const std::string& name) {
  const auto it = s.labels.find(name);
  return it == s.labels.end() ? std::string() : it->second;
}

// The q-quantile (ms) of cumulative buckets, interpolated inside its bucket as Prometheus'
// histogram_quantile does; nullopt without observations.
std::optional<double> quantile_ms(const std::map<double, double>& cumulative, double q) {
  if (cumulative.empty()) return std::nullopt;
  const double total = cumulative.rbegin()->second;
  if (total <= 0) return std::nullopt;
  const double rank = q * total;
  double lower_bound = 0, lower_count = 0;
  for (const auto& [bound, count] : cumulative) {
    if (count >= rank) {
      if (std::isinf(bound)) return lower_bound * 1000;
      const double in_bucket = count - lower_count;
      const double share = in_bucket > 0 ? (rank - lower_count) / in_bucket : 1;
      return (lower_bound + (bound - lower_bound) * share) * 1000;
    }
    lower_bound = bound;
    lower_count = count;
  }
  return lower_bound * 1000;
}

json optional_number(const std::optional<double>& v) { return v ? json(*v) : json(nullptr); }

}  // namespace

cluster_view::cluster_view(asio::io_context& io, view_options options,
                           std::function<assignment_snapshot()> snapshot)
    : io_(io), options_(std::move(options)), snapshot_(std::move(snapshot)) {}

cluster_view::~cluster_view() { *alive_ = false; }

cluster_view::scrape cluster_view::summarise(std::vector<metrics::parsed_sample> samples) {
  scrape out{steady_clock::now(), std::move(samples), {}, {}};
  for (const auto& s : out.samples) {
    if (s.name == "cluster_runner_requests_total") {
      auto& t = out.requests[{label(s, "entity_type"), label(s, "rpc")}];
      t.calls += s.value;
      if (label(s, "code") != "Ok") t.errors += s.value;
    } else if (s.name == "cluster_runner_request_duration_seconds_bucket") {
      // Whatever answers at a runner's admin address: a bound that is not a number is skipped.
      const auto le = label(s, "le");
      char* end = nullptr;
      const double bound =
          le == "+Inf" ? std::numeric_limits<double>::infinity() : std::strtod(le.c_str(), &end);
      if (le != "+Inf" && (le.empty() || end == nullptr || *end != '\0')) continue;
      out.latency[{label(s, "entity_type"), label(s, "rpc")}][bound] += s.value;
    }
  }
  return out;
}

void cluster_view::start() { asio::co_spawn(io_, scrape_loop(), asio::detached); }
void cluster_view::stop() { *alive_ = false; }

void cluster_view::record(std::string kind, std::string message) {
  events_.push_front(event{unix_ms(), std::move(kind), std::move(message)});
  while (events_.size() > options_.max_events) events_.pop_back();
}

void cluster_view::set_dead_letters(std::size_t count, std::vector<dead_letter_info> recent) {
  dead_letter_count_ = count;
  dead_letters_ = std::move(recent);
}

const runner_numbers* cluster_view::numbers_of(const std::string& address) const {
  const auto it = runners_.find(address);
  return it == runners_.end() ? nullptr : &it->second.numbers;
}

awaitable<void> cluster_view::scrape_loop() {
  const auto alive = alive_;
  while (*alive) {
    const auto snap = snapshot_();
    // Forget runners that left; scrape the others one after the other (a dead one costs
    // its timeout, which stays below the interval).
    std::erase_if(runners_, [&](const auto& entry) {
      return std::none_of(snap.runners.begin(), snap.runners.end(),
                          [&](const runner_info& r) { return r.address == entry.first; });
    });
    for (const auto& runner : snap.runners) {
      auto& scrapes = runners_[runner.address];
      if (runner.admin_address.empty()) {
        scrapes.numbers = {};
        scrapes.numbers.error = "no admin endpoint (runner.admin_port is 0)";
        continue;
      }
      http::fetch_options fetch_options;
      fetch_options.timeout = options_.scrape_interval / 2;
      if (!options_.admin_token.empty())
        fetch_options.headers.emplace_back("Authorization", "Bearer " + options_.admin_token);
      auto fetching = http::fetch("http://" + runner.admin_address + "/metrics", fetch_options);
      auto got = co_await std::move(fetching);
      if (!*alive) co_return;
      auto found = runners_.find(runner.address);  // may have changed while waiting
      if (found == runners_.end()) continue;
      auto& r = found->second;
      if (!got || got.value().status != 200) {
        r.numbers.ok = false;
        r.numbers.error = !got ? got.error().message
                               : "its /metrics answered HTTP " + std::to_string(got.value().status);
        r.previous.reset();
        r.latest.reset();
        continue;
      }
      r.previous = std::move(r.latest);
      r.latest = summarise(metrics::parse_text(got.value().body));
      update(r);
    }
    update_calls();
    auto pause = sleep_for(options_.scrape_interval);
    if (!co_await std::move(pause)) co_return;
  }
}

void cluster_view::update(runner_scrapes& r) {
  const auto& now = r.latest->samples;
  auto& n = r.numbers;
  n.ok = true;
  n.error.clear();
  n.rss_bytes = sum_of(now, "process_resident_memory_bytes");
  n.active_entities = sum_of(now, "cluster_runner_active_entities");
  n.mailbox_depth = sum_of(now, "cluster_runner_mailbox_depth");
  n.connections = sum_of(now, "cluster_net_connections");
  n.plugin_restarts = sum_of(now, "cluster_plugin_restarts_total");
  if (!r.previous) return;
  const double seconds = std::chrono::duration<double>(r.latest->at - r.previous->at).count();
  if (seconds <= 0) return;
  const auto& before = r.previous->samples;
  n.cpu_cores = std::max(0.0, (sum_of(now, "process_cpu_seconds_total") -
                               sum_of(before, "process_cpu_seconds_total")) /
                                  seconds);
  double calls = 0, errors = 0;
  const auto& old_totals = r.previous->requests;
  for (const auto& [key, t] : r.latest->requests) {
    const auto old = old_totals.find(key);
    calls += std::max(0.0, t.calls - (old == old_totals.end() ? 0 : old->second.calls));
    errors += std::max(0.0, t.errors - (old == old_totals.end() ? 0 : old->second.errors));
  }
  n.calls_per_s = calls / seconds;
  n.errors_per_s = errors / seconds;
}

void cluster_view::update_calls() {
  // Sums over the runners of what changed between their last two scrapes.
  std::map<std::pair<std::string, std::string>, request_totals> calls;
  std::map<std::pair<std::string, std::string>, buckets> latency;
  std::map<std::string, double> active, queued;
  for (const auto& [address, r] : runners_) {
    if (!r.numbers.ok || !r.latest) continue;
    for (const auto& s : r.latest->samples) {
      if (s.name == "cluster_runner_active_entities") active[label(s, "entity_type")] += s.value;
      if (s.name == "cluster_runner_mailbox_depth") queued[label(s, "entity_type")] += s.value;
    }
    if (!r.previous) continue;
    const double seconds = std::chrono::duration<double>(r.latest->at - r.previous->at).count();
    if (seconds <= 0) continue;
    const auto& old_totals = r.previous->requests;
    for (const auto& [key, t] : r.latest->requests) {
      const auto old = old_totals.find(key);
      auto& sum = calls[key];
      sum.calls +=
          std::max(0.0, t.calls - (old == old_totals.end() ? 0 : old->second.calls)) / seconds;
      sum.errors +=
          std::max(0.0, t.errors - (old == old_totals.end() ? 0 : old->second.errors)) / seconds;
    }
    const auto& old_latency = r.previous->latency;
    for (const auto& [key, cumulative] : r.latest->latency) {
      const auto old = old_latency.find(key);
      for (const auto& [bound, count] : cumulative) {
        double before = 0;
        if (old != old_latency.end())
          if (auto b = old->second.find(bound); b != old->second.end()) before = b->second;
        latency[key][bound] += std::max(0.0, count - before);
      }
    }
  }
  rpcs_.clear();
  types_.clear();
  std::map<std::string, buckets> type_latency;
  for (const auto& [key, t] : calls) {
    auto& rpc = rpcs_[key];
    rpc.calls_per_s = t.calls;
    rpc.errors_per_s = t.errors;
    auto& type = types_[key.first];
    type.calls_per_s += t.calls;
    type.errors_per_s += t.errors;
  }
  for (const auto& [key, cumulative] : latency) {
    auto& rpc = rpcs_[key];
    rpc.p50_ms = quantile_ms(cumulative, 0.5);
    rpc.p99_ms = quantile_ms(cumulative, 0.99);
    for (const auto& [bound, count] : cumulative) type_latency[key.first][bound] += count;
  }
  for (const auto& [name, cumulative] : type_latency) {
    types_[name].p50_ms = quantile_ms(cumulative, 0.5);
    types_[name].p99_ms = quantile_ms(cumulative, 0.99);
  }
  for (const auto& [name, value] : active) types_[name].active_entities = value;
  for (const auto& [name, value] : queued) types_[name].mailbox_depth = value;
}

std::string cluster_view::api_json() const {
  const auto snap = snapshot_();
  json doc{{"time_ms", unix_ms()},
           {"version", options_.version},
           {"storage", snap.storage.empty() ? options_.storage : snap.storage},
           {"manager", options_.manager_address}};
  std::map<std::string, int> index_of;  // runner address → its index in "runners"
  auto runners = json::array();
  for (const auto& r : snap.runners) {
    index_of[r.address] = static_cast<int>(runners.size());
    auto plugins = json::array();
    for (const auto& p : r.plugins)
      plugins.push_back({{"name", p.name},
                         {"version", p.version},
                         {"state", p.state},
                         {"error", p.error},
                         {"entity_types", p.entity_types}});
    const auto* n = numbers_of(r.address);
    const runner_numbers none;
    const auto& numbers = n != nullptr ? *n : none;
    runners.push_back({{"name", r.name},
                       {"address", r.address},
                       {"admin_address", r.admin_address},
                       {"healthy", r.healthy},
                       {"shards", r.shards},
                       {"version", r.version},
                       {"groups", r.groups},
                       {"plugins", std::move(plugins)},
                       {"metrics",
                        {{"ok", numbers.ok},
                         {"error", numbers.error},
                         {"cpu_cores", numbers.cpu_cores},
                         {"rss_bytes", numbers.rss_bytes},
                         {"active_entities", numbers.active_entities},
                         {"mailbox_depth", numbers.mailbox_depth},
                         {"calls_per_s", numbers.calls_per_s},
                         {"errors_per_s", numbers.errors_per_s},
                         {"connections", numbers.connections},
                         {"plugin_restarts", numbers.plugin_restarts}}}});
  }
  auto groups = json::array();
  for (const auto& g : snap.groups) {
    auto owners = json::array();
    for (const auto& owner : g.owners) {
      const auto it = index_of.find(owner);
      owners.push_back(it == index_of.end() ? -1 : it->second);
    }
    groups.push_back({{"name", g.group}, {"shards", g.shards}, {"owners", std::move(owners)}});
  }
  auto types = json::array();
  for (const auto& t : snap.entity_types) {
    const auto found = types_.find(t.name);
    const call_numbers none;
    const auto& numbers = found != types_.end() ? found->second : none;
    auto rpcs = json::array();
    for (const auto& rpc : t.rpcs) {
      const auto r = rpcs_.find({t.name, rpc.name});
      const auto& rn = r != rpcs_.end() ? r->second : none;
      rpcs.push_back({{"name", rpc.name},
                      {"calls_per_s", rn.calls_per_s},
                      {"errors_per_s", rn.errors_per_s},
                      {"p50_ms", optional_number(rn.p50_ms)},
                      {"p99_ms", optional_number(rn.p99_ms)}});
    }
    types.push_back({{"name", t.name},
                     {"group", t.group},
                     {"active_entities", numbers.active_entities},
                     {"mailbox_depth", numbers.mailbox_depth},
                     {"calls_per_s", numbers.calls_per_s},
                     {"errors_per_s", numbers.errors_per_s},
                     {"p50_ms", optional_number(numbers.p50_ms)},
                     {"p99_ms", optional_number(numbers.p99_ms)},
                     {"rpcs", std::move(rpcs)}});
  }
  auto backlog = json::array();
  for (const auto& [group, pending] : backlog_)
    backlog.push_back({{"group", group}, {"pending", pending}});
  auto recent = json::array();
  for (const auto& d : dead_letters_)
    recent.push_back({{"time_ms", d.dead_at_ms},
                      {"entity_type", d.entity_type},
                      {"entity_id", d.entity_id},
                      {"rpc", d.rpc},
                      {"reason", d.last_failure}});
  auto events = json::array();
  for (const auto& e : events_)
    events.push_back({{"time_ms", e.time_ms}, {"kind", e.kind}, {"message", e.message}});
  doc["runners"] = std::move(runners);
  doc["groups"] = std::move(groups);
  doc["entity_types"] = std::move(types);
  doc["persisted_backlog"] = std::move(backlog);
  doc["dead_letters"] = {{"count", dead_letter_count_}, {"recent", std::move(recent)}};
  doc["events"] = std::move(events);
  return doc.dump(-1, ' ', false, json::error_handler_t::replace);
}

}  // namespace cluster::manager
