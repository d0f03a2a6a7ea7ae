// W3C trace context: what a traceparent header holds and what each hop sends on.
#include "cluster/trace/trace.hpp"

#include <gtest/gtest.h>

namespace cluster::trace {
namespace {

constexpr const char* sample = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

TEST(trace, parses_a_traceparent_and_writes_it_back) {
  const auto c = parse(sample);
  ASSERT_TRUE(c);
  EXPECT_TRUE(c->sampled);
  EXPECT_EQ(c->trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_EQ(c->span_id_hex(), "00f067aa0ba902b7");
  EXPECT_EQ(c->traceparent(), sample);
  EXPECT_EQ(trace_id_of(sample), "4bf92f3577b34da6a3ce929d0e0e4736");
}

TEST(trace, refuses_malformed_and_all_zero_ids) {
  EXPECT_FALSE(parse(""));
  EXPECT_FALSE(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"));
  EXPECT_FALSE(parse("00-00000000000000000000000000000000-00f067aa0ba902b7-01"));
  EXPECT_FALSE(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01"));
  EXPECT_FALSE(parse("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"));
  EXPECT_FALSE(parse("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"));
  EXPECT_FALSE(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"));
  // A later version may append fields.
  EXPECT_TRUE(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra"));
}

TEST(trace, a_new_trace_is_sampled_by_its_ratio) {
  EXPECT_TRUE(start_trace(1.0).sampled);
  EXPECT_FALSE(start_trace(0.0).sampled);
  int sampled = 0;
  for (int i = 0; i < 2000; ++i) sampled += start_trace(0.5).sampled ? 1 : 0;
  EXPECT_GT(sampled, 800);
  EXPECT_LT(sampled, 1200);
  const auto a = start_trace(1.0), b = start_trace(1.0);
  EXPECT_NE(a.trace_id_hex(), b.trace_id_hex());
  EXPECT_TRUE(parse(a.traceparent()));
}

TEST(trace, continue_or_start_keeps_the_callers_trace) {
  EXPECT_EQ(continue_or_start(sample, 0.0).trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_NE(continue_or_start("garbage", 1.0).trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
}

TEST(trace, a_span_is_recorded_only_for_sampled_requests_when_something_exports) {
  asio::io_context io;
  tracer t;
  t.start(io, {"test", "", 1.0});
  EXPECT_FALSE(t.start_span(*parse(sample), "x", span_kind::server));  // nothing exports
  t.start(io, {"test", "http://127.0.0.1:9/v1/traces", 1.0});
  auto unsampled = *parse(sample);
  unsampled.sampled = false;
  EXPECT_FALSE(t.start_span(unsampled, "x", span_kind::server));
  const auto s = t.start_span(*parse(sample), "x", span_kind::server);
  ASSERT_TRUE(s);
  const auto child = parse(s->child_traceparent());
  ASSERT_TRUE(child);
  EXPECT_EQ(child->trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
  EXPECT_NE(child->span_id_hex(), "00f067aa0ba902b7");
  t.stop();
}

TEST(trace, the_logged_trace_id_is_scoped) {
  EXPECT_EQ(current_trace_id(), "");
  {
    const scoped_trace_id outer(trace_id_of(sample));
    EXPECT_EQ(current_trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
    {
      const scoped_trace_id inner(
          *parse("00-11111111111111111111111111111111-00f067aa0ba902b7-00"));
      EXPECT_EQ(current_trace_id(), "11111111111111111111111111111111");
    }
    EXPECT_EQ(current_trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
  }
  EXPECT_EQ(current_trace_id(), "");
}

}  // namespace
}  // namespace cluster::trace
