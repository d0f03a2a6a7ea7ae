// Example jobs: a singleton that logs a heartbeat every second with the runner it runs on,
// and a cron job that logs each tick of a per-second schedule. Each runs once in the
// cluster: stop the runner that has it and watch another one take over.
//
// With SCHEDULER_ACTIVITY_FILE set, both also append one line per event to that file
// ("<pid> <unix ms> <what>"): the cluster tests read it to check that no two runners ran
// the singleton at once and that no tick ran twice.
#include <unistd.h>

#include <cluster/sdk.hpp>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {

void record(const cluster::context& ctx, const std::string& what) {
  const char* file = std::getenv("SCHEDULER_ACTIVITY_FILE");
  if (file == nullptr || *file == '\0') return;
  // One write per line in append mode: lines of several processes do not interleave.
  const std::string line =
      std::to_string(getpid()) + " " + std::to_string(ctx.now_ms()) + " " + what + "\n";
  if (std::FILE* out = std::fopen(file, "a")) {
    std::fwrite(line.data(), 1, line.size(), out);
    std::fclose(out);
  }
}

class Heartbeat {
 public:
  cluster::task<void> run(cluster::context& ctx) {
    record(ctx, "start");
    ctx.log_info("heartbeat singleton started in pid " + std::to_string(getpid()));
    while (!ctx.stop_requested()) {
      ++beats_;
      record(ctx, "beat " + std::to_string(beats_));
      ctx.log_info("heartbeat " + std::to_string(beats_) + " from pid " + std::to_string(getpid()));
      co_await ctx.sleep_ms(1000);
    }
    record(ctx, "stop");
    ctx.log_info("heartbeat singleton stopping after " + std::to_string(beats_) + " beats");
  }

 private:
  std::int64_t beats_ = 0;
};

class EverySecond {
 public:
  void run(const cluster::cron_tick& tick, cluster::context& ctx) {
    record(ctx, "tick " + std::to_string(tick.scheduled_ms));
    ctx.log_info("tick scheduled at " + std::to_string(tick.scheduled_ms) + " ran " +
                 std::to_string(tick.fired_ms - tick.scheduled_ms) + " ms late in pid " +
                 std::to_string(getpid()));
  }
};

}  // namespace

CLUSTER_PLUGIN(
    cluster::plugin("scheduler").version("1.0.0"), cluster::singleton<Heartbeat>("Heartbeat"),
    cluster::cron<EverySecond>("EverySecond", "* * * * * *").missed(cluster::run_missed_once));
