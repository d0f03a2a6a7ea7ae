#pragma once
// Counters, gauges and histograms, and their Prometheus text exposition.
//
// A process keeps one registry (default_registry()). Code that counts looks its series up
// once (`family.with({"Greeter", "Greet"})`) and keeps the reference: the series live as
// long as the registry, and updating one is a relaxed atomic add, so the request path pays
// no lookup. Label values come from bounded sets (entity types, RPC names, result codes);
// a family refuses to grow past `max_series` and folds the rest into one "_other" series,
// so a bug cannot turn an entity id into a label.
//
// Threads: series may be updated from any thread. Collectors (values computed when the
// registry renders, such as mailbox depth) run on the thread that renders, which is the
// process's io thread: they may read state that thread owns.

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <vector>

namespace cluster::metrics {

class counter {
 public:
  void inc(std::uint64_t n = 1) { value_.fetch_add(n, std::memory_order_relaxed); }
  std::uint64_t value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<std::uint64_t> value_{0};
};

class gauge {
 public:
  void set(double v) { value_.store(v, std::memory_order_relaxed); }
  void add(double v) {
    double old = value_.load(std::memory_order_relaxed);
    while (!value_.compare_exchange_weak(old, old + v, std::memory_order_relaxed)) {
    }
  }
  double value() const { return value_.load(std::memory_order_relaxed); }

 private:
  std::atomic<double> value_{0};
};

/// Cumulative buckets over integer observations (nanoseconds for durations, counts for
/// sizes); rendered divided by `scale` (1e9 turns nanoseconds into the seconds Prometheus
/// names its durations in).
class histogram {
 public:
  histogram(std::vector<std::uint64_t> upper_bounds, double scale);
  void observe(std::uint64_t value);
  void observe(std::chrono::nanoseconds d) {
    observe(static_cast<std::uint64_t>(d.count() < 0 ? 0 : d.count()));
  }
  const std::vector<std::uint64_t>& upper_bounds() const { return bounds_; }
  double scale() const { return scale_; }
  /// Per-bucket (not cumulative) counts; the last is the +Inf bucket.
  std::vector<std::uint64_t> bucket_counts() const;
  std::uint64_t sum() const { return sum_.load(std::memory_order_relaxed); }
  /// The sum of the bucket counts (kept per bucket only: one atomic add less per observation).
  std::uint64_t count() const;

 private:
  std::vector<std::uint64_t> bounds_;
  double scale_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> buckets_;
  std::atomic<std::uint64_t> sum_{0};
};

/// Latency buckets in nanoseconds: 50 µs … 10 s.
const std::vector<std::uint64_t>& latency_buckets_ns();
/// Size buckets: 1 … 4096 (doubling).
const std::vector<std::uint64_t>& size_buckets();

enum class metric_type { counter, gauge, histogram };

/// The series of one metric name, one per combination of label values.
class family_base {
 public:
  family_base(std::string name, std::string help, metric_type type,
              std::vector<std::string> label_names, std::size_t max_series);
  virtual ~family_base() = default;
  const std::string& name() const { return name_; }
  metric_type type() const { return type_; }
  void render(std::string& out) const;

 protected:
  // The series key of `values`, "_other" for each once the family is full.
  std::vector<std::string> key_of(std::initializer_list<std::string_view> values) const;
  virtual void render_series(std::string& out, const std::string& labels,
                             const void* series) const = 0;
  std::string name_;
  std::string help_;
  metric_type type_;
  std::vector<std::string> label_names_;
  std::size_t max_series_;
  mutable std::mutex mutex_;  // creation and rendering; updates never take it
  std::map<std::vector<std::string>, std::shared_ptr<void>> series_;
};

template <class Metric>
class family : public family_base {
 public:
  using maker = std::function<std::shared_ptr<Metric>()>;
  family(std::string name, std::string help, metric_type type, std::vector<std::string> label_names,
         std::size_t max_series, maker make)
      : family_base(std::move(name), std::move(help), type, std::move(label_names), max_series),
        make_(std::move(make)) {}

  /// The series of these label values (in label_names order), created on first use.
  Metric& with(std::initializer_list<std::string_view> values) {
    std::lock_guard lock(mutex_);
    auto key = key_of(values);
    auto& slot = series_[std::move(key)];
    if (!slot) slot = make_();
    return *static_cast<Metric*>(slot.get());
  }

 private:
  void render_series(std::string& out, const std::string& labels,
                     const void* series) const override;
  maker make_;
};

/// One value a collector reports.
struct sample {
  std::vector<std::pair<std::string, std::string>> labels;
  double value = 0;
};

class registry {
 public:
  family<counter>& counters(const std::string& name, const std::string& help,
                            std::vector<std::string> label_names = {},
                            std::size_t max_series = 2000);
  family<gauge>& gauges(const std::string& name, const std::string& help,
                        std::vector<std::string> label_names = {}, std::size_t max_series = 2000);
  family<histogram>& histograms(const std::string& name, const std::string& help,
                                std::vector<std::string> label_names,
                                std::vector<std::uint64_t> upper_bounds, double scale,
                                std::size_t max_series = 500);
  counter& counter_of(const std::string& name, const std::string& help) {
    return counters(name, help).with({});
  }
  gauge& gauge_of(const std::string& name, const std::string& help) {
    return gauges(name, help).with({});
  }

  /// A metric whose samples are computed at each render. The collector stays until the
  /// returned handle is destroyed (an object registers collectors over its own state and
  /// keeps the handles as members).
  using collector = std::function<std::vector<sample>()>;
  [[nodiscard]] std::shared_ptr<void> collect(const std::string& name, const std::string& help,
                                              metric_type type, collector make_samples);

  /// The Prometheus text exposition (format 0.0.4) of every family and collector.
  std::string render() const;

 private:
  family_base& find_or_add(const std::string& name,
                           const std::function<std::unique_ptr<family_base>()>& add);
  struct collected {
    std::string name, help;
    metric_type type;
    collector make_samples;
  };
  mutable std::mutex mutex_;
  std::map<std::string, std::unique_ptr<family_base>> families_;
  std::map<std::string, std::vector<std::weak_ptr<collected>>> collectors_;
};

/// The process's registry.
registry& default_registry();

/// Adds process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
/// process_start_time_seconds (read from /proc/self) to `r`, once.
void collect_process_metrics(registry& r);

/// One line of a Prometheus text exposition.
struct parsed_sample {
  std::string name;
  std::map<std::string, std::string> labels;
  double value = 0;
};
/// Reads the samples of a text exposition (comments skipped; a line that does not parse is
/// skipped too). What the manager reads off its runners' /metrics.
std::vector<parsed_sample> parse_text(std::string_view text);

/// Escapes a label value for the text format.
std::string escape_label_value(std::string_view value);

}  // namespace cluster::metrics
