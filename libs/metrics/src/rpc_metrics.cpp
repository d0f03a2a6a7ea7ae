#include "cluster/metrics/rpc_metrics.hpp"

#include <algorithm>

namespace cluster::metrics {

rpc_metrics::rpc_metrics(registry& r, const std::string& requests_name,
                         const std::string& requests_help, const std::string& seconds_name,
                         const std::string& seconds_help)
    : requests_(r.counters(requests_name, requests_help, {"entity_type", "rpc", "code"})),
      seconds_(r.histograms(seconds_name, seconds_help, {"entity_type", "rpc"},
                            latency_buckets_ns(), 1e9)) {}

rpc_metrics::rpc_series& rpc_metrics::of(std::string_view type, std::string_view rpc) {
  if (auto* same = repeated(type, rpc)) return *same;
  auto by_type = series_.find(type);
  if (by_type == series_.end())
    by_type =
        series_.emplace(std::string(type), std::map<std::string, rpc_series, std::less<>>{}).first;
  auto& rpcs = by_type->second;
  auto it = rpcs.find(rpc);
  if (it == rpcs.end()) {
    rpc_series fresh;
    fresh.type = std::string(type);
    fresh.rpc = std::string(rpc);
    fresh.seconds = &seconds_.with({type, rpc});
    it = rpcs.emplace(std::string(rpc), std::move(fresh)).first;
  }
  last_ = &it->second;
  return it->second;
}

void rpc_metrics::record(rpc_series& series, std::uint32_t code, std::string_view code_name,
                         std::chrono::nanoseconds took) {
  auto*& slot = series.by_code[std::min<std::size_t>(code, series.by_code.size() - 1)];
  if (slot == nullptr) slot = &requests_.with({series.type, series.rpc, code_name});
  slot->inc();
  series.seconds->observe(took);
}

}  // namespace cluster::metrics
