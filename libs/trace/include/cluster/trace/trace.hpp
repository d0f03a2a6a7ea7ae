#pragma once
// W3C trace context and spans exported as OTLP/HTTP JSON.
//
// Every request carries a `traceparent` (request_msg::traceparent). The first process that
// sees a request without one starts a trace, sampled with `trace.sample_ratio`; every later
// hop keeps the trace id and the sampled flag. Only sampled requests record spans, so the
// cost of an unsampled request is parsing and formatting 55 characters.
//
// Threads: a tracer is used from the process's io thread; its exporter posts on that
// io_context. current_trace_id() is per thread.

#include <array>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cluster/net/asio.hpp"

namespace cluster::trace {

struct context {
  std::array<std::uint8_t, 16> trace_id{};
  std::array<std::uint8_t, 8> span_id{};  ///< the caller's span: the parent of ours
  bool sampled = false;

  bool valid() const;
  /// `00-<32 hex>-<16 hex>-<01|00>`.
  std::string traceparent() const;
  std::string trace_id_hex() const;
  std::string span_id_hex() const;
};

/// A traceparent header's context; nullopt when it is not version 00 or is malformed (the
/// W3C rules: all-zero ids are invalid, unknown versions with the same layout are read).
std::optional<context> parse(std::string_view traceparent);

/// A fresh trace, sampled with probability `sample_ratio`.
context start_trace(double sample_ratio);
/// A new random span id (never all zero).
std::array<std::uint8_t, 8> new_span_id();

/// The context of an incoming request's traceparent, or a new trace when it has none (or
/// a malformed one).
context continue_or_start(std::string_view traceparent, double sample_ratio);

enum class span_kind { internal = 1, server = 2, client = 3 };

/// A span being recorded; finished by tracer::finish. Only built for sampled contexts.
struct span {
  context parent;  ///< trace id and the caller's span id
  std::array<std::uint8_t, 8> id{};
  std::string name;
  span_kind kind = span_kind::server;
  std::uint64_t start_unix_ns = 0;
  std::uint64_t end_unix_ns = 0;
  std::vector<std::pair<std::string, std::string>> attributes;
  bool error = false;
  std::string status_message;

  /// The traceparent to send on: same trace, this span as the parent.
  std::string child_traceparent() const;
};

std::uint64_t unix_now_ns();

struct tracer_settings {
  std::string service_name;
  std::string otlp_endpoint;  ///< empty: spans are dropped
  double sample_ratio = 0.01;
  std::size_t max_queued_spans = 4096;
  milliseconds flush_interval{1000};
};

/// Queues finished spans and posts them in batches to the OTLP endpoint.
class tracer {
 public:
  /// Configures the process's tracer; exporting starts when `io` runs.
  void start(asio::io_context& io, tracer_settings settings);
  void stop();
  double sample_ratio() const { return settings_.sample_ratio; }
  /// Whether a sampled request should build a span at all.
  bool recording() const { return !settings_.otlp_endpoint.empty(); }
  /// A span for `parent` (its trace and the caller's span), started now, or nullopt when the
  /// request is not sampled or nothing exports.
  std::optional<span> start_span(const context& parent, std::string name, span_kind kind);
  void finish(span&& s);
  std::uint64_t exported() const { return exported_; }
  std::uint64_t dropped() const { return dropped_; }

 private:
  awaitable<void> export_loop();
  std::string otlp_json(const std::vector<span>& spans) const;
  asio::io_context* io_ = nullptr;
  tracer_settings settings_;
  std::vector<span> queued_;
  std::shared_ptr<bool> alive_;
  std::uint64_t exported_ = 0;
  std::uint64_t dropped_ = 0;
};

/// The process's tracer.
tracer& default_tracer();

/// A server span `<hop> <entity_type>.<rpc>` of the default tracer for a request whose
/// `traceparent` is `incoming`, started now; null (and nothing allocated) when the request
/// has no trace, is not sampled or nothing exports. Shared so that a request's (copyable)
/// reply callback carries 16 bytes, not a span.
std::shared_ptr<span> start_server_span(std::string_view incoming, std::string_view hop,
                                        std::string_view entity_type, std::string_view rpc);
/// Finishes a span of start_server_span (null: nothing), an error when `error_status` is
/// not empty.
void finish_server_span(const std::shared_ptr<span>& s, std::string_view error_status);

/// The trace id log lines of the current request carry ("" outside a request).
std::string_view current_trace_id();
/// The trace id of a traceparent header (its 32 hex digits), or "" when it has none.
inline std::string_view trace_id_of(std::string_view traceparent) {
  return traceparent.size() >= 35 && traceparent[2] == '-' ? traceparent.substr(3, 32)
                                                           : std::string_view();
}
/// Sets current_trace_id() for as long as it lives (restoring the previous one).
class scoped_trace_id {
 public:
  explicit scoped_trace_id(std::string_view trace_id);
  explicit scoped_trace_id(const context& c);
  ~scoped_trace_id();
  scoped_trace_id(const scoped_trace_id&) = delete;
  scoped_trace_id& operator=(const scoped_trace_id&) = delete;

 private:
  std::array<char, 32> previous_{};
  std::size_t previous_size_ = 0;
};

}  // namespace cluster::trace
