#include "cluster/storage-pg/pg_dead_letter_store.hpp"

#include <spdlog/spdlog.h>

#include <boost/asio/post.hpp>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "cluster/storage-pg/postgres.hpp"

namespace cluster {

namespace {

namespace asio = boost::asio;

class pg_dead_letter_store final : public dead_letter_store {
 public:
  pg_dead_letter_store(asio::io_context& io, const storage_settings& settings)
      : io_(io), settings_(settings) {
    pg::validate_prefix(settings_.table_prefix);
    const auto prepared = [this](const char* name, const char* sql) {
      return pg::statement{name, pg::with_prefix(sql, settings_.table_prefix)};
    };
    list_ = prepared("list_dead_letters", R"(
        SELECT d.message_id, m.shard_group, m.shard, m.entity_type, m.entity_id, m.rpc,
               m.primary_key, d.attempts, d.last_failure,
               (extract(epoch FROM d.dead_at) * 1000)::bigint
        FROM {p}_dead_letters d JOIN {p}_messages m ON m.id = d.message_id
        ORDER BY d.dead_at, d.message_id LIMIT $1)");
    // One transaction: the dead letter and its reply go, the message is queued with no
    // attempts, and at commit the runners hear "shard:id:group" on {p}_requeued.
    replay_ = prepared("replay_dead_letter", R"(
        WITH dead AS (DELETE FROM {p}_dead_letters WHERE message_id = $1 RETURNING message_id),
        reply AS (DELETE FROM {p}_replies WHERE message_id IN (SELECT message_id FROM dead)),
        queued AS (
          INSERT INTO {p}_pending (id, shard_group, shard, attempts)
          SELECT m.id, m.shard_group, m.shard, 0
          FROM {p}_messages m JOIN dead ON m.id = dead.message_id
          ON CONFLICT (id) DO NOTHING
          RETURNING id, shard_group, shard)
        SELECT dead.message_id,
               (SELECT pg_notify('{p}_requeued', shard || ':' || id || ':' || shard_group)
                FROM queued)
        FROM dead)");
    drop_ = prepared("drop_dead_letter", R"(
        DELETE FROM {p}_dead_letters WHERE message_id = $1 RETURNING message_id)");
    // Dead letters keep no row in {p}_pending, so pending counts only messages yet to run.
    backlog_ = prepared("count_backlog", R"(
        SELECT NULL, count(*) FROM {p}_dead_letters
        UNION ALL
        SELECT shard_group, count(*) FROM {p}_pending GROUP BY shard_group)");
    worker_ = std::thread([this] { work(); });
  }

  ~pg_dead_letter_store() override {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
    }
    wake_.notify_all();
    worker_.join();
  }

  void list(std::uint32_t limit, list_done done) override {
    run(
        "list",
        [this, limit](pg::connection& conn) -> result<std::vector<dead_letter_info>> {
          auto rows = conn.exec(list_, {pg::param::text(std::to_string(limit))});
          std::vector<dead_letter_info> out;
          for (int r = 0; r < rows.rows(); ++r) {
            dead_letter_info d;
            d.id = rows.integer(r, 0);
            d.shard_group = rows.text(r, 1);
            d.shard = static_cast<std::int32_t>(rows.integer(r, 2));
            d.entity_type = rows.text(r, 3);
            d.entity_id = rows.text(r, 4);
            d.rpc = rows.text(r, 5);
            d.primary_key = rows.text(r, 6);
            d.attempts = static_cast<std::int32_t>(rows.integer(r, 7));
            d.last_failure = rows.text(r, 8);
            d.dead_at_ms = rows.integer(r, 9);
            out.push_back(std::move(d));
          }
          return out;
        },
        std::move(done));
  }

  void replay(std::int64_t id, change_done done) override {
    run(
        "replay",
        [this, id](pg::connection& conn) -> result<bool> {
          return conn.exec(replay_, {pg::param::text(std::to_string(id))}).rows() > 0;
        },
        std::move(done));
  }

  void count_backlog(backlog_done done) override {
    run(
        "count",
        [this](pg::connection& conn) -> result<backlog> {
          auto rows = conn.exec(backlog_, {});
          backlog out;
          for (int r = 0; r < rows.rows(); ++r) {
            if (rows.is_null(r, 0)) {
              out.dead_letters = rows.integer(r, 1);
            } else {
              out.pending[rows.text(r, 0)] = rows.integer(r, 1);
            }
          }
          return out;
        },
        std::move(done));
  }

  void drop(std::int64_t id, change_done done) override {
    run(
        "drop",
        [this, id](pg::connection& conn) -> result<bool> {
          return conn.exec(drop_, {pg::param::text(std::to_string(id))}).rows() > 0;
        },
        std::move(done));
  }

 private:
  /// Queues `work` for the worker; `done` gets its result on the io_context. A database error
  /// is logged here and answered as a plain StorageError (no database internals to callers).
  template <class T, class Work>
  void run(const char* what, Work work, std::function<void(result<T>)> done) {
    auto job = [this, what, work = std::move(work), done = std::move(done)]() mutable {
      result<T> out = failure{errc::storage_error, "storage unavailable"};
      try {
        if (!conn_ || !conn_->healthy())
          conn_ = std::make_unique<pg::connection>(settings_.conninfo());
        out = work(*conn_);
      } catch (const pg::error& e) {
        spdlog::error("dead letters: {} failed: {}", what, e.what());
        out = failure{errc::storage_error,
                      std::string("dead letters could not be ") +
                          (std::string_view(what) == "list" || std::string_view(what) == "count"
                               ? "read"
                               : "changed")};
        if (conn_ && !conn_->healthy()) conn_.reset();
      }
      asio::post(
          io_, [done = std::move(done), out = std::move(out)]() mutable { done(std::move(out)); });
    };
    {
      std::lock_guard lock(mutex_);
      jobs_.push_back(std::move(job));
    }
    wake_.notify_one();
  }

  void work() {
    std::unique_lock lock(mutex_);
    while (true) {
      wake_.wait(lock, [this] { return stopping_ || !jobs_.empty(); });
      if (stopping_) return;  // queued operations are dropped with the manager
      auto job = std::move(jobs_.front());
      jobs_.pop_front();
      lock.unlock();
      job();
      lock.lock();
    }
  }

  asio::io_context& io_;
  const storage_settings settings_;
  pg::statement list_, replay_, drop_, backlog_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<std::function<void()>> jobs_;
  bool stopping_ = false;
  std::unique_ptr<pg::connection> conn_;  // the worker's
  std::thread worker_;
};

}  // namespace

std::unique_ptr<dead_letter_store> make_pg_dead_letter_store(asio::io_context& io,
                                                             const storage_settings& settings) {
  return std::make_unique<pg_dead_letter_store>(io, settings);
}

}  // namespace cluster
