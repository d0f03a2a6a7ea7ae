// Probe: a test entity that exposes ordering, failures, sleeps and entity calls.
#include "probe.hpp"

#include <unistd.h>

#include <cluster/sdk.hpp>
#include <cstdio>
#include <cstdlib>
#include <ctime>

namespace {
std::int64_t instances_created = 0;

// Multi-process tests count handler runs across runner crashes through this file.
void record_run(const std::string& line) {
  if (const char* path = std::getenv("CLUSTER_PROBE_RUN_LOG")) {
    if (FILE* file = std::fopen(path, "a")) {
      std::fputs((line + "\n").c_str(), file);
      std::fclose(file);
    }
  }
}

std::int64_t monotonic_ns() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<std::int64_t>(now.tv_sec) * 1000000000LL + now.tv_nsec;
}

// Single-owner checks: which process and which activation ran an entity's message when
// (CLOCK_MONOTONIC is shared by every process of the machine). `entered_ns` is taken first
// thing in the handler: a runner frozen later in the handler writes this line after it
// wakes, but the message was started (and fenced) before.
void record_owner(cluster::context& ctx, std::int64_t activation, std::int64_t entered_ns) {
  const char* path = std::getenv("CLUSTER_PROBE_OWNER_LOG");
  if (path == nullptr) return;
  if (FILE* file = std::fopen(path, "a")) {
    std::fprintf(file, "%s %d %lld %lld\n", std::string(ctx.entity_id()).c_str(),
                 static_cast<int>(getpid()), static_cast<long long>(activation),
                 static_cast<long long>(entered_ns));
    std::fclose(file);
  }
}
}  // namespace

class Probe {
 public:
  Probe() : activation_(++instances_created) {}

  Append::Reply append(const Append::Request& request, cluster::context& ctx) {
    const std::int64_t entered_ns = monotonic_ns();
    log_.push_back(request.sender + ":" + std::to_string(request.value));
    record_run(request.sender + ":" + std::to_string(request.value));
    record_owner(ctx, activation_, entered_ns);
    return {log_};
  }
  Echo::Reply echo(const Echo::Request& request, cluster::context& ctx) {
    return {request.text, std::string(ctx.entity_id()), ctx.shard(), activation_};
  }
  cluster::task<Sleep::Reply> sleep(const Sleep::Request& request, cluster::context& ctx) {
    const auto start = ctx.now_ms();
    co_await ctx.sleep_ms(request.ms);
    co_return Sleep::Reply{ctx.now_ms() - start};
  }
  Stamp::Reply stamp(const Stamp::Request&, cluster::context& ctx) { return {ctx.now_ms()}; }
  Nothing::Reply fail(const Nothing::Request&, cluster::context&) {
    throw std::runtime_error("probe failed on purpose");
  }
  Nothing::Reply reject(const Nothing::Request&, cluster::context&) {
    throw cluster::app_error("Rejected", "probe rejected the request");
  }
  cluster::task<Relay::Reply> relay(const Relay::Request& request, cluster::context& ctx) {
    const Echo::Request echo{request.text};
    co_return co_await ctx.call<Echo::Reply>("Probe", request.target, "Echo", echo);
  }
  cluster::task<Tell::Reply> tell(const Tell::Request& request, cluster::context& ctx) {
    const Append::Request append{request.sender, request.value};
    co_await ctx.send("Probe", request.target, "Append", append);
    co_return Tell::Reply{};
  }

 private:
  std::int64_t activation_;
  std::vector<std::string> log_;
};

CLUSTER_PLUGIN(cluster::entity<Probe>("Probe")
                   .rpc<Append>("Append", &Probe::append, cluster::persisted)
                   .rpc<Echo>("Echo", &Probe::echo)
                   .rpc<Sleep>("Sleep", &Probe::sleep)
                   .rpc<Nothing>("Fail", &Probe::fail)
                   .rpc<Nothing>("Reject", &Probe::reject)
                   .rpc<Relay>("Relay", &Probe::relay)
                   .rpc<Stamp>("Stamp", &Probe::stamp, cluster::persisted)
                   .rpc<Tell>("Tell", &Probe::tell))
