#include "cluster/trace/trace.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <random>

#include "cluster/http/http.hpp"

namespace cluster::trace {

namespace {

std::uint64_t next_random() {
  // splitmix64 seeded once per thread: ids need to be unique, not secret.
  thread_local std::uint64_t state = [] {
    std::random_device device;
    return (std::uint64_t{device()} << 32) ^ device() ^
           static_cast<std::uint64_t>(steady_clock::now().time_since_epoch().count());
  }();
  std::uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

template <std::size_t N>
void fill_random(std::array<std::uint8_t, N>& bytes) {
  do {
    for (std::size_t i = 0; i < N; i += 8) {
      const auto r = next_random();
      for (std::size_t j = 0; j < 8 && i + j < N; ++j)
        bytes[i + j] = static_cast<std::uint8_t>(r >> (8 * j));
    }
  } while (std::all_of(bytes.begin(), bytes.end(), [](std::uint8_t b) { return b == 0; }));
}

template <std::size_t N>
std::string hex(const std::array<std::uint8_t, N>& bytes) {
  static constexpr char digits[] = "0123456789abcdef";
  std::string out(2 * N, '0');
  for (std::size_t i = 0; i < N; ++i) {
    out[2 * i] = digits[bytes[i] >> 4];
    out[2 * i + 1] = digits[bytes[i] & 15];
  }
  return out;
}

int lower_hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

template <std::size_t N>
bool read_hex(std::string_view text, std::array<std::uint8_t, N>& bytes) {
  if (text.size() != 2 * N) return false;
  bool any = false;
  for (std::size_t i = 0; i < N; ++i) {
    const int high = lower_hex(text[2 * i]);
    const int low = lower_hex(text[2 * i + 1]);
    if (high < 0 || low < 0) return false;
    bytes[i] = static_cast<std::uint8_t>(high * 16 + low);
    any = any || bytes[i] != 0;
  }
  return any;
}

}  // namespace

bool context::valid() const {
  return std::any_of(trace_id.begin(), trace_id.end(), [](std::uint8_t b) { return b != 0; });
}

std::string context::traceparent() const {
  static constexpr char digits[] = "0123456789abcdef";
  std::string text(55, '-');  // one allocation: every request of a trace carries one
  text[0] = text[1] = '0';
  for (std::size_t i = 0; i < trace_id.size(); ++i) {
    text[3 + 2 * i] = digits[trace_id[i] >> 4];
    text[4 + 2 * i] = digits[trace_id[i] & 15];
  }
  for (std::size_t i = 0; i < span_id.size(); ++i) {
    text[36 + 2 * i] = digits[span_id[i] >> 4];
    text[37 + 2 * i] = digits[span_id[i] & 15];
  }
  text[53] = '0';
  text[54] = sampled ? '1' : '0';
  return text;
}
std::string context::trace_id_hex() const { return hex(trace_id); }
std::string context::span_id_hex() const { return hex(span_id); }

std::optional<context> parse(std::string_view text) {
  // version "-" trace-id "-" parent-id "-" flags; a later version may append "-..." fields.
  if (text.size() < 55 || text[2] != '-' || text[35] != '-' || text[52] != '-') return std::nullopt;
  const int v1 = lower_hex(text[0]);
  const int v2 = lower_hex(text[1]);
  if (v1 < 0 || v2 < 0 || (v1 == 15 && v2 == 15)) return std::nullopt;
  if (v1 == 0 && v2 == 0 && text.size() != 55) return std::nullopt;
  if (text.size() > 55 && text[55] != '-') return std::nullopt;
  context c;
  if (!read_hex(text.substr(3, 32), c.trace_id) || !read_hex(text.substr(36, 16), c.span_id))
    return std::nullopt;
  const int f1 = lower_hex(text[53]);
  const int f2 = lower_hex(text[54]);
  if (f1 < 0 || f2 < 0) return std::nullopt;
  c.sampled = (f2 & 1) != 0;
  return c;
}

std::array<std::uint8_t, 8> new_span_id() {
  std::array<std::uint8_t, 8> id{};
  fill_random(id);
  return id;
}

context start_trace(double sample_ratio) {
  context c;
  fill_random(c.trace_id);
  fill_random(c.span_id);
  if (sample_ratio >= 1.0) {
    c.sampled = true;
  } else if (sample_ratio > 0.0) {
    c.sampled = static_cast<double>(next_random() >> 11) * 0x1.0p-53 < sample_ratio;
  }
  return c;
}

context continue_or_start(std::string_view traceparent, double sample_ratio) {
  if (!traceparent.empty())
    if (auto c = parse(traceparent)) return *c;
  return start_trace(sample_ratio);
}

std::string span::child_traceparent() const {
  context c = parent;
  c.span_id = id;
  return c.traceparent();
}

std::uint64_t unix_now_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::system_clock::now().time_since_epoch())
                                        .count());
}

void tracer::start(asio::io_context& io, tracer_settings settings) {
  io_ = &io;
  settings_ = std::move(settings);
  if (settings_.otlp_endpoint.empty()) return;
  alive_ = std::make_shared<bool>(true);
  asio::co_spawn(io, export_loop(), asio::detached);
}

void tracer::stop() {
  if (alive_) *alive_ = false;
  alive_.reset();
  settings_.otlp_endpoint.clear();
  queued_.clear();
}

std::optional<span> tracer::start_span(const context& parent, std::string name, span_kind kind) {
  if (!parent.sampled || !recording()) return std::nullopt;
  span s;
  s.parent = parent;
  s.id = new_span_id();
  s.name = std::move(name);
  s.kind = kind;
  s.start_unix_ns = unix_now_ns();
  return s;
}

void tracer::finish(span&& s) {
  if (!recording()) return;
  if (s.end_unix_ns == 0) s.end_unix_ns = unix_now_ns();
  if (queued_.size() >= settings_.max_queued_spans) {
    ++dropped_;
    return;
  }
  queued_.push_back(std::move(s));
}

std::string tracer::otlp_json(const std::vector<span>& spans) const {
  using nlohmann::json;
  json out_spans = json::array();
  for (const auto& s : spans) {
    json attributes = json::array();
    for (const auto& [key, value] : s.attributes)
      attributes.push_back({{"key", key}, {"value", {{"stringValue", value}}}});
    json one = {
        {"traceId", s.parent.trace_id_hex()},
        {"spanId", hex(s.id)},
        {"name", s.name},
        {"kind", static_cast<int>(s.kind)},
        {"startTimeUnixNano", std::to_string(s.start_unix_ns)},
        {"endTimeUnixNano", std::to_string(s.end_unix_ns)},
        {"attributes", std::move(attributes)},
        {"status", s.error ? json{{"code", 2}, {"message", s.status_message}} : json{{"code", 1}}}};
    if (std::any_of(s.parent.span_id.begin(), s.parent.span_id.end(),
                    [](std::uint8_t b) { return b != 0; }))
      one["parentSpanId"] = s.parent.span_id_hex();
    out_spans.push_back(std::move(one));
  }
  json body = {
      {"resourceSpans",
       json::array({{{"resource",
                      {{"attributes",
                        json::array({{{"key", "service.name"},
                                      {"value", {{"stringValue", settings_.service_name}}}}})}}},
                     {"scopeSpans", json::array({{{"scope", {{"name", "cluster-sst"}}},
                                                  {"spans", std::move(out_spans)}}})}}})}};
  return body.dump();
}

awaitable<void> tracer::export_loop() {
  const auto alive = alive_;
  bool warned = false;
  while (*alive) {
    co_await sleep_for(settings_.flush_interval);
    if (!*alive) break;
    if (queued_.empty()) continue;
    std::vector<span> batch;
    batch.swap(queued_);
    http::fetch_options options;
    options.method = "POST";
    options.content_type = "application/json";
    options.body = otlp_json(batch);
    options.timeout = milliseconds(5000);
    auto call = http::fetch(settings_.otlp_endpoint, std::move(options));
    auto posted = co_await std::move(call);
    if (!*alive) break;
    if (posted && posted.value().status / 100 == 2) {
      exported_ += batch.size();
      warned = false;
    } else {
      dropped_ += batch.size();
      if (!warned)
        spdlog::warn(
            "trace export to {} failed: {}", settings_.otlp_endpoint,
            posted ? "HTTP " + std::to_string(posted.value().status) : posted.error().message);
      warned = true;
    }
  }
}

tracer& default_tracer() {
  static tracer t;
  return t;
}

std::shared_ptr<span> start_server_span(std::string_view incoming, std::string_view hop,
                                        std::string_view entity_type, std::string_view rpc) {
  auto& t = default_tracer();
  if (!t.recording() || incoming.empty()) return nullptr;
  const auto parent = parse(incoming);
  if (!parent || !parent->sampled) return nullptr;
  std::string name;
  name.append(hop).append(" ").append(entity_type).append(".").append(rpc);
  auto started = t.start_span(*parent, std::move(name), span_kind::server);
  return started ? std::make_shared<span>(std::move(*started)) : nullptr;
}

void finish_server_span(const std::shared_ptr<span>& s, std::string_view error_status) {
  if (!s) return;
  s->error = !error_status.empty();
  s->status_message = std::string(error_status);
  default_tracer().finish(std::move(*s));
}

namespace {
// A fixed buffer: setting the id of each request allocates nothing.
thread_local std::array<char, 32> current{};
thread_local std::size_t current_size = 0;
}  // namespace

std::string_view current_trace_id() { return {current.data(), current_size}; }

scoped_trace_id::scoped_trace_id(std::string_view trace_id)
    : previous_(current), previous_size_(current_size) {
  current_size = std::min(trace_id.size(), current.size());
  std::copy_n(trace_id.data(), current_size, current.data());
}

scoped_trace_id::scoped_trace_id(const context& c) {
  previous_ = current;
  previous_size_ = current_size;
  static constexpr char digits[] = "0123456789abcdef";
  for (std::size_t i = 0; i < c.trace_id.size(); ++i) {
    current[2 * i] = digits[c.trace_id[i] >> 4];
    current[2 * i + 1] = digits[c.trace_id[i] & 15];
  }
  current_size = 32;
}

scoped_trace_id::~scoped_trace_id() {
  current = previous_;
  current_size = previous_size_;
}

}  // namespace cluster::trace
