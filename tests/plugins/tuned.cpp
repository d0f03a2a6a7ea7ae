// Tuned: entity types whose per-type options the tests check (keep-alive, idle time, mailbox
// size, concurrency of read-only calls, the fencing token).
#include "tuned.hpp"

#include <unistd.h>

#include <cluster/sdk.hpp>
#include <cstdio>
#include <cstdlib>
#include <string>

namespace {
std::int64_t activations = 0;

// Multi-process tests see which runner activated a kept-alive entity, and when, here.
void record_activation(cluster::context& ctx, std::int64_t activation) {
  const char* path = std::getenv("CLUSTER_TUNED_ACTIVATION_LOG");
  if (path == nullptr) return;
  if (FILE* file = std::fopen(path, "a")) {
    std::fprintf(file, "%s %s %d %lld %lld\n", std::string(ctx.entity_type()).c_str(),
                 std::string(ctx.entity_id()).c_str(), static_cast<int>(getpid()),
                 static_cast<long long>(activation), static_cast<long long>(ctx.now_ms()));
    std::fclose(file);
  }
}
}  // namespace

class Tuned {
 public:
  explicit Tuned(cluster::context& ctx) : activation_(++activations) {
    record_activation(ctx, activation_);
  }

  cluster::task<TunedWork::Reply> read(const TunedWork::Request& request, cluster::context& ctx) {
    ++reads_;
    if (writes_ > 0) ++write_overlaps_;
    peak_reads_ = std::max(peak_reads_, reads_);
    TunedWork::Reply reply{activation_, ctx.now_ms(), 0};
    co_await ctx.sleep_ms(request.ms);
    --reads_;
    reply.ended_ms = ctx.now_ms();
    co_return reply;
  }
  cluster::task<TunedWork::Reply> write(const TunedWork::Request& request, cluster::context& ctx) {
    ++writes_;
    if (reads_ > 0 || writes_ > 1) ++write_overlaps_;
    TunedWork::Reply reply{activation_, ctx.now_ms(), 0};
    co_await ctx.sleep_ms(request.ms);
    --writes_;
    reply.ended_ms = ctx.now_ms();
    co_return reply;
  }
  TunedStats::Reply stats(const TunedStats::Request&, cluster::context& ctx) {
    return {activation_, peak_reads_, write_overlaps_, ctx.fencing_token()};
  }

 private:
  std::int64_t activation_;
  std::int64_t reads_ = 0;
  std::int64_t writes_ = 0;
  std::int64_t peak_reads_ = 0;
  std::int64_t write_overlaps_ = 0;
};

CLUSTER_PLUGIN(cluster::plugin("tuned").version("1.0.0"),
               cluster::entity<Tuned>("Tuned")
                   .keep_alive()
                   .max_idle_ms(250)
                   .mailbox_capacity(3)
                   .concurrency(4)
                   .rpc<TunedWork>("Read", &Tuned::read, cluster::read_only)
                   .rpc<TunedWork>("Write", &Tuned::write)
                   .rpc<TunedStats>("Stats", &Tuned::stats, cluster::read_only)
                   .rpc<TunedWork>("Note", &Tuned::read, cluster::persisted | cluster::read_only),
               // The same class with every option at the runner's defaults.
               cluster::entity<Tuned>("Plain")
                   .rpc<TunedWork>("Read", &Tuned::read, cluster::read_only)
                   .rpc<TunedWork>("Write", &Tuned::write)
                   .rpc<TunedStats>("Stats", &Tuned::stats, cluster::read_only));
