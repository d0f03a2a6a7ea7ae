#include "cluster/host/jobs.hpp"

#include <spdlog/spdlog.h>

#include <algorithm>

#include "cluster/cron.hpp"
#include "cluster/host/host_services.hpp"
#include "cluster/protocol/codec.hpp"
#include "cluster/protocol/shard.hpp"

namespace cluster::host {
namespace {

constexpr const char* singleton_id = "singleton";
constexpr const char* cron_id = "cron";
constexpr milliseconds max_restart_backoff{30000};
// A run that lasted this long was not failing in a loop: the next restart waits the first
// backoff again.
constexpr milliseconds healthy_run{60000};
// A stored tick's caller waits for its reply this long past its time (the store answers it
// from the stored reply if the tick ran elsewhere meanwhile).
constexpr milliseconds tick_wait_margin{60000};

struct tick_request {
  std::int64_t scheduled_ms = 0;
  std::int64_t fired_ms = 0;  // 0 in the stored request: the SDK fills in when it started
  CLUSTER_WIRE_FIELDS(tick_request, scheduled_ms, fired_ms);
};

bool has_flag(const entity_type& type, std::uint32_t flag) {
  return (type.info.options.flags & flag) != 0;
}

}  // namespace

std::int64_t next_cron_tick(const cron_schedule& schedule, std::uint32_t missed,
                            std::int64_t last_scheduled_ms, std::int64_t now_ms) {
  if (last_scheduled_ms == 0) return schedule.next_after(now_ms);
  const std::int64_t next = schedule.next_after(last_scheduled_ms);
  if (next > now_ms) return next;
  return missed == CLUSTER_CRON_RUN_MISSED_ONCE ? next : schedule.next_after(now_ms);
}

jobs::jobs(asio::io_context& io, entity_host& entities, persisted_messages& persisted,
           message_store& store, const entity_registry& registry,
           std::function<std::int32_t(const std::string&)> shards_of)
    : io_(io),
      entities_(entities),
      persisted_(persisted),
      store_(store),
      registry_(registry),
      shards_of_(std::move(shards_of)) {}

jobs::~jobs() { *alive_ = false; }

bool jobs::serving(const std::string& group, std::int32_t shard) const {
  return !stopped_ && persisted_.state(group, shard) == shard_state::serving;
}

void jobs::shard_serving(const std::string& group, std::int32_t shard) {
  if (stopped_) return;
  const std::int32_t shards = shards_of_ ? shards_of_(group) : 0;
  if (shards <= 0) return;
  for (const auto& info : registry_.catalog()) {
    if (info.group != group) continue;
    const auto* type = registry_.find(info.name);
    if (type == nullptr) continue;
    if (has_flag(*type, CLUSTER_ENTITY_SINGLETON) && shard_for(singleton_id, shards) == shard) {
      auto& run = singletons_[info.name];
      run.shard = shard;
      if (!run.running && !run.again) run_singleton(info.name);
    }
    if (has_flag(*type, CLUSTER_ENTITY_CRON) && shard_for(cron_id, shards) == shard)
      start_cron(*type, shard);
  }
}

void jobs::stop() {
  stopped_ = true;
  for (auto& [name, run] : singletons_) {
    if (run.again) run.again->cancel();
    if (run.running) entities_.request_stop(name, singleton_id);
  }
}

std::size_t jobs::running_singletons() const {
  return static_cast<std::size_t>(std::count_if(singletons_.begin(), singletons_.end(),
                                                [](const auto& s) { return s.second.running; }));
}

// --- singletons --------------------------------------------------------------------------

void jobs::run_singleton(const std::string& name) {
  auto it = singletons_.find(name);
  if (it == singletons_.end()) return;
  auto& run = it->second;
  run.again.reset();
  const auto* type = registry_.find(name);
  if (type == nullptr || !has_flag(*type, CLUSTER_ENTITY_SINGLETON) || type->info.rpcs.empty()) {
    singletons_.erase(it);
    return;
  }
  if (!serving(type->info.group, run.shard)) return;  // it runs where the shard went
  const entity_address address{type, singleton_id, run.shard};
  if (auto activated = entities_.activate_now(address); !activated) {
    spdlog::warn("singleton {}: activation failed ({}); trying again in {} ms", name,
                 activated.error().message, std::max(run.backoff, restart_backoff).count());
    singleton_done(name, reply_msg::failure(activated.error().code, activated.error().message),
                   steady_clock::now());
    return;
  }
  request_msg request;
  request.entity_type = name;
  request.entity_id = singleton_id;
  request.rpc = type->info.rpcs[0].name;
  request.payload = {0x80};  // {}
  run.running = true;
  run.started_ms = unix_now_ms();
  ++run.starts;
  spdlog::info("singleton {} starts on shard {}/{}", name, type->info.group, run.shard);
  auto hold = std::make_shared<gate::holder>(in_flight ? in_flight->hold() : gate::holder());
  const auto started = steady_clock::now();
  entities_.deliver(
      address, 0, std::move(request), steady_clock::time_point::max(),
      [this, alive = alive_, name, hold, started](reply_msg&& reply) {
        if (!*alive) return;
        singleton_done(name, std::move(reply), started);
      },
      false);
}

void jobs::singleton_done(const std::string& name, reply_msg&& reply,
                          steady_clock::time_point started) {
  auto it = singletons_.find(name);
  if (it == singletons_.end()) return;
  auto& run = it->second;
  run.running = false;
  run.last_outcome = reply.ok() ? "ok" : reply.error + ": " + reply.message;
  const auto* type = registry_.find(name);
  if (type == nullptr || !serving(type->info.group, run.shard)) {
    spdlog::info("singleton {} stopped{}", name,
                 reply.ok() ? "" : " (" + reply.error + ": " + reply.message + ")");
    return;
  }
  // Still served here: it ended on its own (or failed) and runs again after a backoff.
  if (steady_clock::now() - started >= healthy_run) run.backoff = milliseconds(0);
  run.backoff =
      run.backoff.count() == 0 ? restart_backoff : std::min(run.backoff * 2, max_restart_backoff);
  if (reply.ok()) {
    spdlog::warn(
        "singleton {}: run returned while its shard is still served here; running it "
        "again in {} ms",
        name, run.backoff.count());
  } else {
    spdlog::warn("singleton {}: run failed ({}: {}); running it again in {} ms", name, reply.error,
                 reply.message, run.backoff.count());
  }
  run.again = std::make_unique<asio::steady_timer>(io_, run.backoff);
  run.again->async_wait([this, alive = alive_, name](const error_code& ec) {
    if (ec || !*alive) return;
    run_singleton(name);
  });
}

// --- cron jobs ---------------------------------------------------------------------------

void jobs::start_cron(const entity_type& type, std::int32_t shard) {
  const std::string name = type.info.name;
  auto& entry = crons_[name];
  entry.shard = shard;
  entry.group = type.info.group;
  entry.schedule = type.info.options.cron_schedule;
  entry.loaded = false;
  const std::uint64_t generation = entry.generation = ++generation_;
  store_.load_state(
      name, cron_id, [this, alive = alive_, name, generation](result<stored_state> loaded) {
        if (!*alive) return;
        auto it = crons_.find(name);
        if (it == crons_.end() || it->second.generation != generation) return;
        auto& job = it->second;
        if (!serving(job.group, job.shard)) return;
        if (loaded) {
          job.version = loaded.value().version;
          if (loaded.value().data) {
            auto decoded = unpack_bytes<cron_bookkeeping>(*loaded.value().data);
            if (decoded) job.bookkeeping = std::move(decoded).value();
          }
        } else {
          // Without its bookkeeping the job still runs, from now on (as if it never ran).
          spdlog::warn("cron {}: its last run could not be read ({}); scheduling from now", name,
                       loaded.error().message);
        }
        job.loaded = true;
        const auto* current = registry_.find(name);
        if (current == nullptr) return;
        std::int64_t next = 0;
        try {
          const auto schedule = cron_schedule::parse(job.schedule);
          next = next_cron_tick(schedule, current->info.options.cron_missed,
                                job.bookkeeping.last_scheduled_ms, unix_now_ms());
        } catch (const std::invalid_argument& e) {
          spdlog::error("cron {}: {}", name, e.what());  // the registry refuses such a type
          return;
        }
        store_tick(name, next);
      });
}

void jobs::store_tick(const std::string& name, std::int64_t scheduled_ms) {
  auto it = crons_.find(name);
  if (it == crons_.end()) return;
  auto& job = it->second;
  const auto* type = registry_.find(name);
  if (type == nullptr || type->info.rpcs.empty() || !serving(job.group, job.shard)) return;
  job.bookkeeping.next_ms = scheduled_ms;
  request_msg request;
  request.entity_type = name;
  request.entity_id = cron_id;
  request.rpc = type->info.rpcs[0].name;
  request.payload = pack_bytes(tick_request{scheduled_ms, 0});
  request.persisted = true;
  request.primary_key = "cron:" + std::to_string(scheduled_ms);
  request.deliver_at_ms = scheduled_ms;
  const auto wait = milliseconds(std::max<std::int64_t>(0, scheduled_ms - unix_now_ms()));
  const entity_address address{type, cron_id, job.shard};
  persisted_.submit(
      address, 0, std::move(request), steady_clock::now() + wait + tick_wait_margin,
      [this, alive = alive_, name, generation = job.generation, scheduled_ms](reply_msg&& reply) {
        if (!*alive) return;
        tick_done(name, generation, scheduled_ms, std::move(reply));
      });
}

void jobs::tick_done(const std::string& name, std::uint64_t generation, std::int64_t scheduled_ms,
                     reply_msg&& reply) {
  auto it = crons_.find(name);
  if (it == crons_.end() || it->second.generation != generation) return;
  auto& job = it->second;
  if (!serving(job.group, job.shard)) return;  // its next owner goes on
  if (reply.code == errc::deadline_exceeded || reply.code == errc::not_owner ||
      reply.code == errc::shutting_down || reply.code == errc::storage_error) {
    // Not an outcome of the tick: it is stored and runs (or ran) anyway. Wait for it again.
    if (reply.code == errc::storage_error) {
      auto again = std::make_shared<asio::steady_timer>(io_, milliseconds(1000));
      again->async_wait([this, alive = alive_, again, name, scheduled_ms](const error_code&) {
        if (*alive) store_tick(name, scheduled_ms);
      });
      return;
    }
    return store_tick(name, scheduled_ms);
  }
  job.bookkeeping.last_scheduled_ms = scheduled_ms;
  job.bookkeeping.last_fired_ms = unix_now_ms();
  job.bookkeeping.last_outcome = reply.ok() ? "ok" : reply.error + ": " + reply.message;
  const auto* type = registry_.find(name);
  if (type == nullptr) return;
  std::int64_t next = 0;
  try {
    // On time from here: a tick that overran (or ran late, once for all the missed ones)
    // skips the ticks that fell due meanwhile.
    const auto schedule = cron_schedule::parse(job.schedule);
    next = std::max(schedule.next_after(scheduled_ms), schedule.next_after(unix_now_ms()));
  } catch (const std::invalid_argument&) {
    return;
  }
  job.bookkeeping.next_ms = next;
  save_bookkeeping(name);
  store_tick(name, next);
}

void jobs::save_bookkeeping(const std::string& name) {
  auto it = crons_.find(name);
  if (it == crons_.end()) return;
  auto& job = it->second;
  state_write write;
  write.entity_type = name;
  write.entity_id = cron_id;
  write.expected_version = job.version;
  write.data = pack_bytes(job.bookkeeping);
  const std::uint64_t generation = job.generation;
  store_.save_state(std::move(write), [this, alive = alive_, name, generation](result<void> saved) {
    if (!*alive) return;
    auto found = crons_.find(name);
    if (found == crons_.end() || found->second.generation != generation) return;
    if (saved) {
      ++found->second.version;
      return;
    }
    // The ticks stay deduplicated by their key; only what `cron list` shows lags behind, and
    // a new owner schedules from its time instead of the last tick.
    if (!bookkeeping_warned_ || saved.error().code == errc::state_conflict)
      spdlog::warn("cron {}: its last run could not be stored ({})", name, saved.error().message);
    bookkeeping_warned_ = true;
    if (saved.error().code == errc::state_conflict) found->second.loaded = false;
  });
}

std::vector<jobs::cron_status> jobs::crons() const {
  std::vector<cron_status> out;
  for (const auto& [name, job] : crons_) {
    if (!serving(job.group, job.shard)) continue;
    out.push_back(cron_status{name, job.group, job.schedule, job.bookkeeping});
  }
  return out;
}

cron_status_msg jobs::cron_status_of(const std::string& name, const std::string& runner) const {
  cron_status_msg out;
  out.name = name;
  out.runner = runner;
  if (const auto* type = registry_.find(name)) {
    out.group = type->info.group;
    out.schedule = type->info.options.cron_schedule;
  }
  const auto it = crons_.find(name);
  if (it == crons_.end()) return out;
  const auto& job = it->second;
  out.loaded = job.loaded;
  out.last_scheduled_ms = job.bookkeeping.last_scheduled_ms;
  out.last_fired_ms = job.bookkeeping.last_fired_ms;
  out.last_outcome = job.bookkeeping.last_outcome;
  out.next_ms = job.bookkeeping.next_ms;
  return out;
}

cron_status_msg jobs::singleton_status_of(const std::string& name,
                                          const std::string& runner) const {
  cron_status_msg out;
  out.name = name;
  out.runner = runner;
  if (const auto* type = registry_.find(name)) out.group = type->info.group;
  const auto it = singletons_.find(name);
  if (it == singletons_.end()) return out;
  const auto& run = it->second;
  out.loaded = true;
  out.running = run.running;
  out.started_ms = run.started_ms;
  out.starts = run.starts;
  out.last_outcome = run.last_outcome;
  return out;
}

}  // namespace cluster::host
