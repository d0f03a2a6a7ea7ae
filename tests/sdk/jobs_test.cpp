// Singletons and cron jobs in the SDK: the descriptors they declare (flags, RPC 0, the
// schedule), a singleton's run until it is asked to stop, a cron job's tick, plain or
// coroutine, and a schedule that does not parse refusing the plugin.
#include <gtest/gtest.h>

#include <cluster/sdk.hpp>
#include <map>
#include <string>
#include <vector>

namespace {

// A runner stand-in: timers the test fires, and a stop switch.
struct stop_host {
  std::vector<std::pair<void (*)(void*), void*>> timers;
  std::vector<std::string> logs;
  bool stop = false;

  static stop_host& of(void* host_ctx) { return *static_cast<stop_host*>(host_ctx); }
  static void log(void* host_ctx, std::int32_t, const char* message) {
    of(host_ctx).logs.emplace_back(message);
  }
  static void call(void*, const char*, const char*, const char*, const std::uint8_t*, std::size_t,
                   const char*, cluster_call_done_fn done, void* user) {
    done(user, CLUSTER_STATUS_CALL_FAILED, "Unavailable", "no calls here", nullptr, 0);
  }
  static std::int64_t now_ms(void*) { return 5000; }
  static void sleep(void* host_ctx, std::int64_t, void (*fire)(void*), void* user) {
    of(host_ctx).timers.emplace_back(fire, user);
  }
  static void set_state(void*, const std::uint8_t*, std::size_t, std::uint32_t) {}
  static std::int32_t stop_requested(void* host_ctx) { return of(host_ctx).stop ? 1 : 0; }
  static constexpr cluster_host_api api = {
      sizeof(cluster_host_api), 0, &log, &call, &now_ms, &sleep, &set_state, &stop_requested};

  void fire_timers() {
    auto due = std::move(timers);
    timers.clear();
    for (auto [fire, user] : due) fire(user);
  }
};

struct reply_seen {
  int count = 0;
  std::int32_t status = -1;
  std::string message;
  static void on_reply(void* self, std::int32_t status, const char*, const char* message,
                       const std::uint8_t*, std::size_t) {
    auto& r = *static_cast<reply_seen*>(self);
    ++r.count;
    r.status = status;
    r.message = message ? message : "";
  }
};

template <class T>
std::vector<std::uint8_t> pack(const T& value) {
  msgpack::sbuffer buffer;
  msgpack::pack(buffer, value);
  return {buffer.data(), buffer.data() + buffer.size()};
}

struct Leader {
  cluster::task<void> run(cluster::context& ctx) {
    while (!ctx.stop_requested()) {
      ++beats;
      co_await ctx.sleep_ms(1000);
    }
    ctx.log_info("stopped after " + std::to_string(beats));
  }
  int beats = 0;
};

struct Report {
  void run(const cluster::cron_tick& tick, cluster::context&) { ticks.push_back(tick); }
  std::vector<cluster::cron_tick> ticks;
};

struct SlowReport {
  cluster::task<void> run(const cluster::cron_tick& tick, cluster::context& ctx) {
    co_await ctx.sleep_ms(10);
    if (tick.scheduled_ms == 0) throw cluster::app_error("Bad", "no schedule");
    last = tick.scheduled_ms;
  }
  std::int64_t last = 0;
};

/// Runs RPC `index` of `d` on `instance` with `payload`.
struct driver {
  const cluster_entity_descriptor* d;
  stop_host& host;
  cluster_call_context ctx{};
  void* create() {
    bind("");
    return d->create(d->type_data, &ctx);
  }
  void handle(void* instance, std::uint32_t index, const std::vector<std::uint8_t>& payload,
              reply_seen& reply) {
    bind(d->rpcs[index]->name);
    d->handle(d->type_data, instance, index, payload.data(), payload.size(), &ctx,
              &reply_seen::on_reply, &reply);
  }
  void bind(const char* rpc) {
    ctx = cluster_call_context{};
    ctx.struct_size = sizeof ctx;
    ctx.shard = 1;
    ctx.entity_type = d->name;
    ctx.entity_id = "x";
    ctx.shard_group = d->shard_group;
    ctx.rpc = rpc;
    ctx.api = &stop_host::api;
    ctx.host_ctx = &host;
  }
};

TEST(sdk_singleton, declares_a_kept_alive_singleton_whose_rpc_0_is_its_run) {
  const cluster::detail::plugin_record plugin(
      cluster::singleton<Leader>("leader-election").group("jobs"));
  const auto* d = plugin.descriptor()->entities[0];
  EXPECT_STREQ(d->name, "leader-election");
  EXPECT_STREQ(d->shard_group, "jobs");
  EXPECT_EQ(d->flags, CLUSTER_ENTITY_SINGLETON | CLUSTER_ENTITY_KEEP_ALIVE);
  ASSERT_EQ(d->rpc_count, 1u);
  EXPECT_STREQ(d->rpcs[0]->name, "run");
  EXPECT_EQ(d->rpcs[0]->flags, 0u);
  EXPECT_EQ(d->cron_schedule, nullptr);
}

TEST(sdk_singleton, runs_until_asked_to_stop_and_then_replies_once) {
  const cluster::detail::plugin_record plugin(cluster::singleton<Leader>("leader-election"));
  stop_host host;
  driver type{plugin.descriptor()->entities[0], host};
  void* instance = type.create();
  ASSERT_NE(instance, nullptr);
  reply_seen reply;
  type.handle(instance, 0, pack(std::map<std::string, int>{}), reply);
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(host.timers.size(), 1u);
    host.fire_timers();
  }
  EXPECT_EQ(reply.count, 0) << "the run is still going";
  host.stop = true;
  host.fire_timers();
  ASSERT_EQ(reply.count, 1);
  EXPECT_EQ(reply.status, CLUSTER_STATUS_OK) << reply.message;
  EXPECT_EQ(static_cast<Leader*>(instance)->beats, 4);
  ASSERT_FALSE(host.logs.empty());
  EXPECT_EQ(host.logs.back(), "stopped after 4");
  type.d->destroy(type.d->type_data, instance);
}

TEST(sdk_cron, declares_a_cron_job_with_its_schedule_policy_and_persisted_tick) {
  const cluster::detail::plugin_record plugin(
      cluster::cron<Report>("report", "*/5 * * * * *"),
      cluster::cron<Report>("nightly", "0 3 * * *").missed(cluster::run_missed_once).group("g"));
  const auto* every_5s = plugin.descriptor()->entities[0];
  EXPECT_STREQ(every_5s->name, "report");
  EXPECT_EQ(every_5s->flags, CLUSTER_ENTITY_CRON);
  EXPECT_STREQ(every_5s->cron_schedule, "*/5 * * * * *");
  EXPECT_EQ(every_5s->cron_missed, CLUSTER_CRON_SKIP_MISSED);
  ASSERT_EQ(every_5s->rpc_count, 1u);
  EXPECT_STREQ(every_5s->rpcs[0]->name, "tick");
  EXPECT_EQ(every_5s->rpcs[0]->flags, CLUSTER_RPC_PERSISTED);
  const auto* nightly = plugin.descriptor()->entities[1];
  EXPECT_EQ(nightly->cron_missed, CLUSTER_CRON_RUN_MISSED_ONCE);
  EXPECT_STREQ(nightly->shard_group, "g");
}

TEST(sdk_cron, hands_a_plain_job_its_tick) {
  const cluster::detail::plugin_record plugin(cluster::cron<Report>("report", "* * * * * *"));
  stop_host host;
  driver type{plugin.descriptor()->entities[0], host};
  void* instance = type.create();
  reply_seen reply;
  type.handle(instance, 0,
              pack(std::map<std::string, std::int64_t>{{"scheduled_ms", 7000}, {"fired_ms", 7003}}),
              reply);
  ASSERT_EQ(reply.count, 1);
  EXPECT_EQ(reply.status, CLUSTER_STATUS_OK) << reply.message;
  const auto& ticks = static_cast<Report*>(instance)->ticks;
  ASSERT_EQ(ticks.size(), 1u);
  EXPECT_EQ(ticks[0].scheduled_ms, 7000);
  EXPECT_EQ(ticks[0].fired_ms, 7003);
  // A tick stored before it was due says 0: the time it started fills in.
  reply_seen stored;
  type.handle(instance, 0,
              pack(std::map<std::string, std::int64_t>{{"scheduled_ms", 8000}, {"fired_ms", 0}}),
              stored);
  ASSERT_EQ(stored.count, 1);
  ASSERT_EQ(ticks.size(), 2u);
  EXPECT_EQ(ticks[1].fired_ms, 5000);
  type.d->destroy(type.d->type_data, instance);
}

TEST(sdk_cron, replies_to_a_coroutine_job_when_it_finishes_or_fails) {
  const cluster::detail::plugin_record plugin(cluster::cron<SlowReport>("slow", "* * * * * *"));
  stop_host host;
  driver type{plugin.descriptor()->entities[0], host};
  void* instance = type.create();
  reply_seen done;
  type.handle(instance, 0,
              pack(std::map<std::string, std::int64_t>{{"scheduled_ms", 9000}, {"fired_ms", 9000}}),
              done);
  EXPECT_EQ(done.count, 0);
  host.fire_timers();
  ASSERT_EQ(done.count, 1);
  EXPECT_EQ(done.status, CLUSTER_STATUS_OK) << done.message;
  EXPECT_EQ(static_cast<SlowReport*>(instance)->last, 9000);
  reply_seen failed;
  type.handle(instance, 0,
              pack(std::map<std::string, std::int64_t>{{"scheduled_ms", 0}, {"fired_ms", 1}}),
              failed);
  host.fire_timers();
  ASSERT_EQ(failed.count, 1);
  EXPECT_EQ(failed.status, CLUSTER_STATUS_APPLICATION_ERROR);
  type.d->destroy(type.d->type_data, instance);
}

TEST(sdk_cron, refuses_a_schedule_that_does_not_parse_naming_the_job) {
  try {
    const cluster::detail::plugin_record plugin(cluster::cron<Report>("report", "61 * * * * *"));
    FAIL() << "a bad schedule was accepted";
  } catch (const std::invalid_argument& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("cron job 'report'"), std::string::npos) << what;
    EXPECT_NE(what.find("seconds field '61'"), std::string::npos) << what;
  }
}

}  // namespace
