#include "cluster/metrics/metrics.hpp"

#include <dirent.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace cluster::metrics {

namespace {

const char* type_name(metric_type type) {
  switch (type) {
    case metric_type::counter:
      return "counter";
    case metric_type::gauge:
      return "gauge";
    case metric_type::histogram:
      return "histogram";
  }
  return "untyped";
}

void append_number(std::string& out, double value) {
  if (std::isnan(value)) {
    out += "NaN";
  } else if (std::isinf(value)) {
    out += value > 0 ? "+Inf" : "-Inf";
  } else if (value == std::floor(value) && std::fabs(value) < 1e15) {
    out += std::to_string(static_cast<long long>(value));
  } else {
    char text[32];
    std::snprintf(text, sizeof text, "%.9g", value);
    out += text;
  }
}

void append_help(std::string& out, const std::string& name, const std::string& help,
                 metric_type type) {
  out += "# HELP " + name + " ";
  for (char c : help) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  out += "\n# TYPE " + name + " " + type_name(type) + "\n";
}

std::string label_text(const std::vector<std::string>& names,
                       const std::vector<std::string>& values) {
  std::string text;
  for (std::size_t i = 0; i < names.size() && i < values.size(); ++i) {
    text += (text.empty() ? "" : ",") + names[i] + "=\"" + escape_label_value(values[i]) + "\"";
  }
  return text;
}

}  // namespace

std::string escape_label_value(std::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

histogram::histogram(std::vector<std::uint64_t> upper_bounds, double scale)
    : bounds_(std::move(upper_bounds)),
      scale_(scale),
      buckets_(new std::atomic<std::uint64_t>[bounds_.size() + 1]) {
  std::sort(bounds_.begin(), bounds_.end());
  for (std::size_t i = 0; i <= bounds_.size(); ++i) buckets_[i].store(0);
}

void histogram::observe(std::uint64_t value) {
  // A scan from the smallest bound: observations gather in the first buckets, where it stops
  // after a few well-predicted compares (a binary search mispredicts about every step).
  std::size_t at = 0;
  while (at < bounds_.size() && value > bounds_[at]) ++at;
  buckets_[at].fetch_add(1, std::memory_order_relaxed);
  sum_.fetch_add(value, std::memory_order_relaxed);
}

std::uint64_t histogram::count() const {
  std::uint64_t total = 0;
  for (std::size_t i = 0; i <= bounds_.size(); ++i)
    total += buckets_[i].load(std::memory_order_relaxed);
  return total;
}

std::vector<std::uint64_t> histogram::bucket_counts() const {
  std::vector<std::uint64_t> counts(bounds_.size() + 1);
  for (std::size_t i = 0; i < counts.size(); ++i)
    counts[i] = buckets_[i].load(std::memory_order_relaxed);
  return counts;
}

const std::vector<std::uint64_t>& latency_buckets_ns() {
  static const std::vector<std::uint64_t> bounds = {
      50'000,      100'000,       250'000,       500'000,       1'000'000,     2'500'000,
      5'000'000,   10'000'000,    25'000'000,    50'000'000,    100'000'000,   250'000'000,
      500'000'000, 1'000'000'000, 2'500'000'000, 5'000'000'000, 10'000'000'000};
  return bounds;
}

const std::vector<std::uint64_t>& size_buckets() {
  static const std::vector<std::uint64_t> bounds = {1,   2,   4,   8,    16,   32,  64,
                                                    128, 256, 512, 1024, 2048, 4096};
  return bounds;
}

family_base::family_base(std::string name, std::string help, metric_type type,
                         std::vector<std::string> label_names, std::size_t max_series)
    : name_(std::move(name)),
      help_(std::move(help)),
      type_(type),
      label_names_(std::move(label_names)),
      max_series_(std::max<std::size_t>(max_series, 1)) {}

std::vector<std::string> family_base::key_of(std::initializer_list<std::string_view> values) const {
  std::vector<std::string> key;
  key.reserve(label_names_.size());
  for (const auto& value : values) key.emplace_back(value);
  key.resize(label_names_.size());
  // The last slot stays for the fold-over series itself.
  if (series_.size() + 1 >= max_series_ && series_.find(key) == series_.end())
    for (auto& value : key) value = "_other";
  return key;
}

void family_base::render(std::string& out) const {
  std::lock_guard lock(mutex_);
  append_help(out, name_, help_, type_);
  for (const auto& [values, series] : series_)
    render_series(out, label_text(label_names_, values), series.get());
}

template <>
void family<counter>::render_series(std::string& out, const std::string& labels,
                                    const void* series) const {
  out += name_;
  if (!labels.empty()) out += "{" + labels + "}";
  out += " ";
  append_number(out, static_cast<double>(static_cast<const counter*>(series)->value()));
  out += "\n";
}

template <>
void family<gauge>::render_series(std::string& out, const std::string& labels,
                                  const void* series) const {
  out += name_;
  if (!labels.empty()) out += "{" + labels + "}";
  out += " ";
  append_number(out, static_cast<const gauge*>(series)->value());
  out += "\n";
}

template <>
void family<histogram>::render_series(std::string& out, const std::string& labels,
                                      const void* series) const {
  const auto& h = *static_cast<const histogram*>(series);
  const auto counts = h.bucket_counts();
  const std::string prefix = labels.empty() ? "" : labels + ",";
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    cumulative += counts[i];
    out += name_ + "_bucket{" + prefix + "le=\"";
    if (i < h.upper_bounds().size()) {
      append_number(out, static_cast<double>(h.upper_bounds()[i]) / h.scale());
    } else {
      out += "+Inf";
    }
    out += "\"} ";
    append_number(out, static_cast<double>(cumulative));
    out += "\n";
  }
  const std::string braces = labels.empty() ? "" : "{" + labels + "}";
  out += name_ + "_sum" + braces + " ";
  append_number(out, static_cast<double>(h.sum()) / h.scale());
  out += "\n" + name_ + "_count" + braces + " ";
  // The count is the +Inf bucket: read apart, the two could differ by a racing observe.
  append_number(out, static_cast<double>(cumulative));
  out += "\n";
}

family_base& registry::find_or_add(const std::string& name,
                                   const std::function<std::unique_ptr<family_base>()>& add) {
  std::lock_guard lock(mutex_);
  auto& slot = families_[name];
  if (!slot) slot = add();
  return *slot;
}

family<counter>& registry::counters(const std::string& name, const std::string& help,
                                    std::vector<std::string> label_names, std::size_t max_series) {
  return static_cast<family<counter>&>(find_or_add(name, [&] {
    return std::make_unique<family<counter>>(name, help, metric_type::counter,
                                             std::move(label_names), max_series,
                                             [] { return std::make_shared<counter>(); });
  }));
}

family<gauge>& registry::gauges(const std::string& name, const std::string& help,
                                std::vector<std::string> label_names, std::size_t max_series) {
  return static_cast<family<gauge>&>(find_or_add(name, [&] {
    return std::make_unique<family<gauge>>(name, help, metric_type::gauge, std::move(label_names),
                                           max_series, [] { return std::make_shared<gauge>(); });
  }));
}

family<histogram>& registry::histograms(const std::string& name, const std::string& help,
                                        std::vector<std::string> label_names,
                                        std::vector<std::uint64_t> upper_bounds, double scale,
                                        std::size_t max_series) {
  return static_cast<family<histogram>&>(find_or_add(name, [&] {
    return std::make_unique<family<histogram>>(
        name, help, metric_type::histogram, std::move(label_names), max_series,
        [upper_bounds, scale] { return std::make_shared<histogram>(upper_bounds, scale); });
  }));
}

std::shared_ptr<void> registry::collect(const std::string& name, const std::string& help,
                                        metric_type type, collector make_samples) {
  auto entry = std::make_shared<collected>(collected{name, help, type, std::move(make_samples)});
  std::lock_guard lock(mutex_);
  collectors_[name].push_back(entry);
  return entry;
}

std::string registry::render() const {
  std::string out;
  std::vector<const family_base*> families;
  std::vector<std::pair<std::string, std::vector<std::shared_ptr<collected>>>> collected_now;
  {
    std::lock_guard lock(mutex_);
    for (const auto& [name, f] : families_) families.push_back(f.get());
    for (const auto& [name, entries] : collectors_) {
      std::vector<std::shared_ptr<collected>> live;
      for (const auto& weak : entries)
        if (auto entry = weak.lock()) live.push_back(std::move(entry));
      if (!live.empty()) collected_now.emplace_back(name, std::move(live));
    }
  }
  out.reserve(16384);
  for (const auto* f : families) f->render(out);
  for (const auto& [name, entries] : collected_now) {
    append_help(out, name, entries.front()->help, entries.front()->type);
    for (const auto& entry : entries) {
      for (const auto& s : entry->make_samples()) {
        out += name;
        if (!s.labels.empty()) {
          out += "{";
          for (std::size_t i = 0; i < s.labels.size(); ++i)
            out += (i ? "," : "") + s.labels[i].first + "=\"" +
                   escape_label_value(s.labels[i].second) + "\"";
          out += "}";
        }
        out += " ";
        append_number(out, s.value);
        out += "\n";
      }
    }
  }
  return out;
}

registry& default_registry() {
  static registry r;
  return r;
}

namespace {

struct proc_stat {
  double cpu_seconds = 0;
  double start_seconds = 0;
  double rss_bytes = 0;
};

double boot_time_seconds() {
  std::ifstream in("/proc/stat");
  std::string key;
  while (in >> key) {
    if (key == "btime") {
      double value = 0;
      in >> value;
      return value;
    }
    in.ignore(1 << 20, '\n');
  }
  return 0;
}

proc_stat read_proc_stat() {
  proc_stat out;
  std::ifstream in("/proc/self/stat");
  std::string line;
  std::getline(in, line);
  // Fields after the command's closing parenthesis (the command may contain spaces).
  const auto close = line.rfind(')');
  if (close == std::string::npos) return out;
  std::istringstream fields(line.substr(close + 2));
  std::vector<std::string> f;
  for (std::string field; fields >> field;) f.push_back(field);
  // f[0] is field 3 (state): utime 14, stime 15, starttime 22, rss 24.
  if (f.size() < 22) return out;
  const double ticks = static_cast<double>(sysconf(_SC_CLK_TCK));
  out.cpu_seconds = (std::stod(f[11]) + std::stod(f[12])) / ticks;
  static const double boot = boot_time_seconds();
  out.start_seconds = boot + std::stod(f[19]) / ticks;
  out.rss_bytes = std::stod(f[21]) * static_cast<double>(sysconf(_SC_PAGESIZE));
  return out;
}

double open_fds() {
  double count = 0;
  if (DIR* dir = opendir("/proc/self/fd")) {
    while (readdir(dir) != nullptr) ++count;
    closedir(dir);
    count -= 3;  // ".", ".." and the directory's own descriptor
  }
  return count;
}

}  // namespace

void collect_process_metrics(registry& r) {
  static std::once_flag once;
  static std::vector<std::shared_ptr<void>> handles;
  std::call_once(once, [&r] {
    handles.push_back(r.collect("process_cpu_seconds_total",
                                "User and system CPU time the process used, in seconds.",
                                metric_type::counter, [] {
                                  return std::vector<sample>{{{}, read_proc_stat().cpu_seconds}};
                                }));
    handles.push_back(r.collect("process_resident_memory_bytes", "Resident memory size in bytes.",
                                metric_type::gauge, [] {
                                  return std::vector<sample>{{{}, read_proc_stat().rss_bytes}};
                                }));
    handles.push_back(r.collect("process_start_time_seconds",
                                "Start time of the process since the Unix epoch, in seconds.",
                                metric_type::gauge, [] {
                                  return std::vector<sample>{{{}, read_proc_stat().start_seconds}};
                                }));
    handles.push_back(
        r.collect("process_open_fds", "Open file descriptors.", metric_type::gauge, [] {
          return std::vector<sample>{{{}, open_fds()}};
        }));
  });
}

std::vector<parsed_sample> parse_text(std::string_view text) {
  std::vector<parsed_sample> samples;
  std::size_t start = 0;
  while (start < text.size()) {
    auto end = text.find('\n', start);
    if (end == std::string_view::npos) end = text.size();
    std::string_view line = text.substr(start, end - start);
    start = end + 1;
    if (line.empty() || line.front() == '#') continue;
    parsed_sample s;
    std::size_t at = 0;
    while (at < line.size() && line[at] != '{' && line[at] != ' ') ++at;
    s.name = std::string(line.substr(0, at));
    bool ok = !s.name.empty();
    if (ok && at < line.size() && line[at] == '{') {
      ++at;
      while (ok && at < line.size() && line[at] != '}') {
        const auto eq = line.find('=', at);
        if (eq == std::string_view::npos || eq + 1 >= line.size() || line[eq + 1] != '"') {
          ok = false;
          break;
        }
        std::string name(line.substr(at, eq - at));
        std::string value;
        at = eq + 2;
        while (at < line.size() && line[at] != '"') {
          if (line[at] == '\\' && at + 1 < line.size()) {
            ++at;
            value += line[at] == 'n' ? '\n' : line[at];
          } else {
            value += line[at];
          }
          ++at;
        }
        if (at >= line.size()) {
          ok = false;
          break;
        }
        ++at;  // closing quote
        if (at < line.size() && line[at] == ',') ++at;
        s.labels.emplace(std::move(name), std::move(value));
      }
      if (at >= line.size()) ok = false;
      ++at;  // '}'
    }
    if (!ok) continue;
    while (at < line.size() && line[at] == ' ') ++at;
    auto value_text = line.substr(at);
    if (const auto space = value_text.find(' '); space != std::string_view::npos)
      value_text = value_text.substr(0, space);  // a timestamp follows
    if (value_text == "+Inf") {
      s.value = INFINITY;
    } else if (value_text == "-Inf") {
      s.value = -INFINITY;
    } else if (value_text == "NaN") {
      s.value = NAN;
    } else {
      const std::string number(value_text);
      char* number_end = nullptr;
      s.value = std::strtod(number.c_str(), &number_end);
      if (number.empty() || number_end != number.c_str() + number.size()) continue;
    }
    samples.push_back(std::move(s));
  }
  return samples;
}

}  // namespace cluster::metrics
