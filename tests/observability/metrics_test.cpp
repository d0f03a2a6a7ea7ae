// The metrics registry: series, the Prometheus text it renders, and the reader of that text.
#include "cluster/metrics/metrics.hpp"

#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "cluster/metrics/rpc_metrics.hpp"

namespace cluster::metrics {
namespace {

double value_of(const std::vector<parsed_sample>& samples, const std::string& name,
                const std::map<std::string, std::string>& labels = {}) {
  for (const auto& s : samples)
    if (s.name == name && s.labels == labels) return s.value;
  return -1;
}

TEST(metrics, counters_gauges_and_histograms_render_as_prometheus_text) {
  registry r;
  r.counters("demo_requests_total", "Requests.", {"code"}).with({"Ok"}).inc(3);
  r.gauge_of("demo_depth", "Depth.").set(2.5);
  auto& h = r.histograms("demo_seconds", "Latency.", {}, {1000, 1000000}, 1e9).with({});
  h.observe(std::chrono::nanoseconds(500));
  h.observe(std::chrono::nanoseconds(5000));
  h.observe(std::chrono::nanoseconds(5000000));
  const auto text = r.render();
  EXPECT_NE(text.find("# HELP demo_requests_total Requests.\n# TYPE demo_requests_total counter\n"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("demo_requests_total{code=\"Ok\"} 3\n"), std::string::npos) << text;
  EXPECT_NE(text.find("# TYPE demo_seconds histogram"), std::string::npos) << text;
  const auto samples = parse_text(text);
  EXPECT_EQ(value_of(samples, "demo_depth"), 2.5);
  EXPECT_EQ(value_of(samples, "demo_seconds_bucket", {{"le", "1e-06"}}), 1);
  EXPECT_EQ(value_of(samples, "demo_seconds_bucket", {{"le", "0.001"}}), 2);
  EXPECT_EQ(value_of(samples, "demo_seconds_bucket", {{"le", "+Inf"}}), 3);
  EXPECT_EQ(value_of(samples, "demo_seconds_count"), 3);
  EXPECT_NEAR(value_of(samples, "demo_seconds_sum"), 0.0050055, 1e-9);
}

TEST(metrics, a_histogram_counts_a_value_equal_to_a_bound_in_that_bucket) {
  registry r;
  auto& h = r.histograms("edge_seconds", "Edges.", {}, {10, 20, 30}, 1e9).with({});
  for (std::uint64_t v : {0, 10, 11, 20, 30, 31, 1000}) h.observe(v);
  EXPECT_EQ(h.bucket_counts(), (std::vector<std::uint64_t>{2, 2, 1, 2}));
  EXPECT_EQ(h.count(), 7u);
  EXPECT_EQ(h.sum(), 1102u);
}

TEST(metrics, a_family_folds_series_past_its_bound_into_other) {
  registry r;
  // At most 3 series in all, the fold-over one included.
  auto& f = r.counters("demo_total", "Demo.", {"entity_type"}, 3);
  f.with({"a"}).inc();
  f.with({"b"}).inc();
  f.with({"c"}).inc();
  f.with({"d"}).inc();
  f.with({"a"}).inc();
  const auto samples = parse_text(r.render());
  EXPECT_EQ(value_of(samples, "demo_total", {{"entity_type", "a"}}), 2);
  EXPECT_EQ(value_of(samples, "demo_total", {{"entity_type", "b"}}), 1);
  EXPECT_EQ(value_of(samples, "demo_total", {{"entity_type", "_other"}}), 2);
  EXPECT_EQ(value_of(samples, "demo_total", {{"entity_type", "c"}}), -1);
}

TEST(metrics, label_values_are_escaped_and_read_back) {
  registry r;
  r.counters("demo_total", "Demo.", {"v"}).with({"a\"b\\c\nd"}).inc();
  const auto text = r.render();
  EXPECT_NE(text.find(R"(demo_total{v="a\"b\\c\nd"} 1)"), std::string::npos) << text;
  EXPECT_EQ(value_of(parse_text(text), "demo_total", {{"v", "a\"b\\c\nd"}}), 1);
}

TEST(metrics, collectors_report_at_render_and_go_with_their_handle) {
  registry r;
  double depth = 4;
  auto handle = r.collect("demo_queue", "Queue.", metric_type::gauge, [&] {
    return std::vector<sample>{{{{"group", "g"}}, depth}};
  });
  EXPECT_EQ(value_of(parse_text(r.render()), "demo_queue", {{"group", "g"}}), 4);
  depth = 7;
  EXPECT_EQ(value_of(parse_text(r.render()), "demo_queue", {{"group", "g"}}), 7);
  handle.reset();
  EXPECT_EQ(r.render().find("demo_queue"), std::string::npos);
}

TEST(metrics, parse_text_skips_comments_and_lines_it_cannot_read) {
  const auto samples = parse_text("# HELP x y\nx 1\nnot a sample\ny{a=\"1\"} 2 1700000000\n\n");
  ASSERT_EQ(samples.size(), 2u);
  EXPECT_EQ(value_of(samples, "x"), 1);
  EXPECT_EQ(value_of(samples, "y", {{"a", "1"}}), 2);
}

TEST(rpc_metrics, counts_by_type_rpc_and_code_and_times_by_type_and_rpc) {
  registry r;
  rpc_metrics m(r, "demo_requests_total", "Requests.", "demo_request_seconds", "Latency.");
  auto& greet = m.of("Greeter", "Greet");
  EXPECT_EQ(&greet, &m.of("Greeter", "Greet"));
  EXPECT_EQ(m.repeated("Greeter", "Greet"), &greet);
  EXPECT_EQ(m.repeated("Greeter", "Other"), nullptr);
  EXPECT_EQ(m.repeated("Other", "Greet"), nullptr);
  auto& other = m.of("Greeter", "Other");
  EXPECT_NE(&other, &greet);
  EXPECT_EQ(m.repeated("Greeter", "Greet"), nullptr);  // only the last pair is remembered
  EXPECT_EQ(&m.of("Greeter", "Greet"), &greet);
  m.record(greet, 0, "Ok", std::chrono::microseconds(100));
  m.record(greet, 0, "Ok", std::chrono::microseconds(100));
  m.record(greet, 9, "NotOwner", std::chrono::microseconds(100));
  m.record(m.unknown(), 4, "UnknownEntityType", std::chrono::microseconds(1));
  const auto samples = parse_text(r.render());
  EXPECT_EQ(value_of(samples, "demo_requests_total",
                     {{"entity_type", "Greeter"}, {"rpc", "Greet"}, {"code", "Ok"}}),
            2);
  EXPECT_EQ(value_of(samples, "demo_requests_total",
                     {{"entity_type", "Greeter"}, {"rpc", "Greet"}, {"code", "NotOwner"}}),
            1);
  EXPECT_EQ(
      value_of(samples, "demo_requests_total",
               {{"entity_type", "_unknown"}, {"rpc", "_unknown"}, {"code", "UnknownEntityType"}}),
      1);
  EXPECT_EQ(value_of(samples, "demo_request_seconds_count",
                     {{"entity_type", "Greeter"}, {"rpc", "Greet"}}),
            3);
}

}  // namespace
}  // namespace cluster::metrics
