#pragma once
// What the dashboard and `clusterctl top` show: the manager's own state (shard map, runners,
// plugins) joined with numbers read off each runner's /metrics once a second (call and error
// rates, latency percentiles, entities, mailboxes, CPU, memory), and the recent events.
//
// Rates and percentiles are over the last scrape interval: the difference of two scrapes of
// a runner's counters and histogram buckets, summed over runners.
//
// Thread: the manager's io thread (the scrape loop runs there too).

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "cluster/metrics/metrics.hpp"
#include "cluster/net/asio.hpp"
#include "cluster/protocol/messages.hpp"

namespace cluster::manager {

struct view_options {
  std::string manager_address;
  std::string storage;
  std::string version;
  /// Sent as a bearer token to the runners' admin endpoints (the cluster's admin_token).
  std::string admin_token;
  milliseconds scrape_interval{1000};
  std::size_t max_events = 200;
};

/// One runner's numbers, from its last two scrapes.
struct runner_numbers {
  bool ok = false;
  std::string error = "not scraped yet";
  double cpu_cores = 0;
  double rss_bytes = 0;
  double active_entities = 0;
  double mailbox_depth = 0;
  double calls_per_s = 0;
  double errors_per_s = 0;
  double connections = 0;
  double plugin_restarts = 0;
};

/// Calls, errors and latency of one entity type or RPC over the last interval.
struct call_numbers {
  double calls_per_s = 0;
  double errors_per_s = 0;
  std::optional<double> p50_ms, p99_ms;
  double active_entities = 0;
  double mailbox_depth = 0;
};

class cluster_view {
 public:
  cluster_view(asio::io_context& io, view_options options,
               std::function<assignment_snapshot()> snapshot);
  ~cluster_view();
  cluster_view(const cluster_view&) = delete;
  cluster_view& operator=(const cluster_view&) = delete;

  void start();
  void stop();
  /// Adds an event (newest first): runner_joined, runner_left, runner_unhealthy,
  /// shards_moved, plugin_loaded, plugin_failed, plugin_pushed, plugin_removed.
  void record(std::string kind, std::string message);
  /// Dead letters as last read from the store.
  void set_dead_letters(std::size_t count, std::vector<dead_letter_info> recent);
  /// Persisted messages waiting, per shard group, as last read from the store.
  void set_backlog(std::map<std::string, std::int64_t> pending) { backlog_ = std::move(pending); }
  void set_admin_token(std::string token) { options_.admin_token = std::move(token); }
  /// The `/api/cluster` document.
  std::string api_json() const;

  const runner_numbers* numbers_of(const std::string& address) const;

 private:
  using rpc_key = std::pair<std::string, std::string>;  // (entity type, RPC)
  struct request_totals {
    double calls = 0;
    double errors = 0;  // replies whose code is not Ok
  };
  using buckets = std::map<double, double>;  // cumulative count by upper bound (seconds)
  /// One read of a runner's /metrics, summarised once as it arrives.
  struct scrape {
    steady_clock::time_point at;
    std::vector<metrics::parsed_sample> samples;
    std::map<rpc_key, request_totals> requests;
    std::map<rpc_key, buckets> latency;
  };
  static scrape summarise(std::vector<metrics::parsed_sample> samples);
  struct runner_scrapes {
    std::optional<scrape> previous, latest;
    runner_numbers numbers;
  };
  awaitable<void> scrape_loop();
  void update(runner_scrapes& r);
  void update_calls();

  asio::io_context& io_;
  view_options options_;
  std::function<assignment_snapshot()> snapshot_;
  std::map<std::string, runner_scrapes> runners_;                     // by runner address
  std::map<std::string, call_numbers> types_;                         // entity type
  std::map<std::pair<std::string, std::string>, call_numbers> rpcs_;  // (type, rpc)
  struct event {
    std::int64_t time_ms;
    std::string kind, message;
  };
  std::deque<event> events_;
  std::size_t dead_letter_count_ = 0;
  std::vector<dead_letter_info> dead_letters_;
  std::map<std::string, std::int64_t> backlog_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace cluster::manager
