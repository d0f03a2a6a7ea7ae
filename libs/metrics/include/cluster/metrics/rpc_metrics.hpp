#pragma once
// Request counters by entity type, RPC and result code, and a latency histogram by entity
// type and RPC: what the runner (handler side) and the proxy (end to end) count.
//
// Label values are the entity types and RPCs the caller knows are served; anything else is
// counted as "_unknown" (the caller decides), so a client cannot create series. The series
// of a (type, RPC) are looked up once and kept: recording a request is two relaxed atomic
// adds and a bucket search.
//
// Thread: one thread looks series up (the process's io thread); recording is thread-safe.

#include <array>
#include <chrono>
#include <map>
#include <string>
#include <string_view>

#include "cluster/metrics/metrics.hpp"

namespace cluster::metrics {

class rpc_metrics {
 public:
  struct rpc_series {
    std::string type, rpc;
    histogram* seconds = nullptr;
    std::array<counter*, 32> by_code{};  // created at the first reply of each code
  };

  /// `requests_name` counts (labels entity_type, rpc, code); `seconds_name` is the histogram.
  rpc_metrics(registry& r, const std::string& requests_name, const std::string& requests_help,
              const std::string& seconds_name, const std::string& seconds_help);

  /// The series of a served (type, RPC); pass unknown() for what is not served.
  rpc_series& of(std::string_view type, std::string_view rpc);
  rpc_series& unknown() { return of("_unknown", "_unknown"); }
  /// The series of the last of() or unknown() when it was for this (type, RPC), else null:
  /// a caller can skip checking that a repeated pair is served. (A pair that stops being
  /// served, its plugin removed, keeps its series while it repeats: no series is created.)
  rpc_series* repeated(std::string_view type, std::string_view rpc) const {
    return last_ != nullptr && last_->rpc == rpc && last_->type == type ? last_ : nullptr;
  }
  /// `code` is the wire code (its number picks the cached counter), `code_name` its label.
  void record(rpc_series& series, std::uint32_t code, std::string_view code_name,
              std::chrono::nanoseconds took);

 private:
  family<counter>& requests_;
  family<histogram>& seconds_;
  std::map<std::string, std::map<std::string, rpc_series, std::less<>>, std::less<>> series_;
  // Traffic mostly repeats one (type, RPC): the last series found skips both map lookups.
  // Map nodes never move, so the pointer stays valid.
  rpc_series* last_ = nullptr;
};

}  // namespace cluster::metrics
