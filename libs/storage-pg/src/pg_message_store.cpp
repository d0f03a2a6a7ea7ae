#include "cluster/storage-pg/pg_message_store.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/detached.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <charconv>
#include <optional>
#include <tuple>
#include <utility>

#include "cluster/metrics/metrics.hpp"
#include "cluster/protocol/assert.hpp"
#include "cluster/protocol/validate.hpp"
#include "cluster/storage/request_fingerprint.hpp"

namespace cluster {

namespace {

constexpr std::chrono::milliseconds reconnect_first{100};
constexpr std::chrono::milliseconds reconnect_last{2000};
constexpr std::chrono::milliseconds listen_first_retry{100};
constexpr std::chrono::milliseconds listen_last_retry{5000};

// The payload of a reply notification: message ids as a PostgreSQL array, "{1,2,3}".
std::vector<std::int64_t> parse_id_array(std::string_view text) {
  std::vector<std::int64_t> ids;
  if (text.size() < 2 || text.front() != '{' || text.back() != '}') return ids;
  const char* at = text.data() + 1;
  const char* end = text.data() + text.size() - 1;
  while (at < end) {
    std::int64_t id = 0;
    const auto [next, ec] = std::from_chars(at, end, id);
    if (ec != std::errc()) break;
    ids.push_back(id);
    at = next + 1;  // past the comma
  }
  return ids;
}

// The payload of a requeued notification (see pg_dead_letter_store): "shard:id:group".
struct requeued_message {
  std::int32_t shard = 0;
  std::int64_t id = 0;
  std::string group;
};

std::optional<requeued_message> parse_requeued(std::string_view text) {
  requeued_message out;
  const char* at = text.data();
  const char* end = text.data() + text.size();
  auto [after_shard, ec1] = std::from_chars(at, end, out.shard);
  if (ec1 != std::errc() || after_shard == end || *after_shard != ':') return std::nullopt;
  auto [after_id, ec2] = std::from_chars(after_shard + 1, end, out.id);
  if (ec2 != std::errc() || after_id == end || *after_id != ':') return std::nullopt;
  out.group.assign(after_id + 1, end);
  return out;
}

// What deduplicates a message: (entity type, entity id, primary key).
using message_key = std::tuple<std::string, std::string, std::string>;

message_key key_of(const request_msg& request) {
  return {request.entity_type, request.entity_id, *request.primary_key};
}

// The key in columns 1-3 of a row (after the id in column 0).
message_key key_in_row(const pg::result& rows, int row) {
  return {rows.text(row, 1), rows.text(row, 2), rows.text(row, 3)};
}

failure unavailable() { return failure{errc::storage_error, "storage unavailable"}; }

// Does a stored fingerprint column hold this one? NULL (a row stored before fingerprints
// existed) matches any request: such rows keep answering as they always did.
bool same_request(const pg::result& rows, int row, int column,
                  const request_fingerprint& fingerprint) {
  if (rows.is_null(row, column)) return true;
  const auto stored = rows.bytea(row, column);
  return std::equal(stored.begin(), stored.end(), fingerprint.begin(), fingerprint.end());
}

reply_msg reply_from_row(const pg::result& rows, int row, int first_column) {
  reply_msg reply;
  reply.code = static_cast<errc>(rows.integer(row, first_column));
  reply.error = rows.text(row, first_column + 1);
  reply.message = rows.text(row, first_column + 2);
  reply.payload = rows.bytea(row, first_column + 3);
  return reply;
}

}  // namespace

pg_message_store::pg_message_store(asio::io_context& io, storage_settings settings)
    : io_(io), settings_(std::move(settings)) {
  pg::validate_prefix(settings_.table_prefix);
  const auto prepared = [this](const char* name, const char* sql) {
    return pg::statement{name, pg::with_prefix(sql, settings_.table_prefix)};
  };
  // Batches travel as one array per column: the statement text never changes, so each is
  // parsed and planned once per session.
  insert_messages_ = prepared("insert_messages", R"(
      WITH inserted AS (
        INSERT INTO {p}_messages
          (shard_group, shard, entity_type, entity_id, rpc, primary_key, payload, deliver_at,
           fingerprint)
        SELECT g, s, t, e, r, k, decode(p, 'hex'), to_timestamp(d::double precision / 1000),
               decode(f, 'hex')
        FROM unnest($1::text[], $2::int[], $3::text[], $4::text[], $5::text[], $6::text[],
                    $7::text[], $8::bigint[], $10::text[]) AS u(g, s, t, e, r, k, p, d, f)
        ON CONFLICT (entity_type, entity_id, primary_key) DO NOTHING
        RETURNING id, shard_group, shard, entity_type, entity_id, primary_key, fingerprint),
      queued AS (
        INSERT INTO {p}_pending (id, shard_group, shard, attempts)
        SELECT id, shard_group, shard, $9::int FROM inserted)
      SELECT id, entity_type, entity_id, primary_key, fingerprint FROM inserted)");
  // Stores the replies, takes their messages off the queue and, at commit, tells every
  // runner that LISTENs about those in $6: callers waiting there wake up.
  store_replies_ = prepared("store_replies", R"(
      WITH stored AS (
        INSERT INTO {p}_replies (message_id, code, error, message, payload)
        SELECT i, c, e, m, decode(p, 'hex')
        FROM unnest($1::bigint[], $2::int[], $3::text[], $4::text[], $5::text[])
          AS u(i, c, e, m, p)
        ON CONFLICT (message_id) DO NOTHING),
      dequeued AS (DELETE FROM {p}_pending WHERE id = ANY($1::bigint[]))
      SELECT pg_notify('{p}_replies', $6::bigint[]::text)
      WHERE cardinality($6::bigint[]) > 0)");
  find_existing_ = prepared("find_existing", R"(
      SELECT m.id, m.entity_type, m.entity_id, m.primary_key, r.code, r.error, r.message,
             r.payload, m.fingerprint
      FROM {p}_messages m LEFT JOIN {p}_replies r ON r.message_id = m.id
      WHERE (m.entity_type, m.entity_id, m.primary_key) IN
            (SELECT * FROM unnest($1::text[], $2::text[], $3::text[])))");
  // Counts the attempt of each due message it returns in the same statement, so that a
  // crash while it runs is counted; suspects ($5: see counted_by_replay) are left to
  // next_attempt. The outer SELECT sees the rows as they were before the UPDATE.
  select_unprocessed_ = prepared("select_unprocessed", R"(
      WITH batch AS (
        SELECT q.id, q.attempts, (m.deliver_at IS NULL OR m.deliver_at <= now()) AS due
        FROM {p}_pending q JOIN {p}_messages m ON m.id = q.id
        WHERE q.shard_group = $1 AND q.shard = $2 AND q.id > $3
        ORDER BY q.id LIMIT $4),
      counted AS (
        UPDATE {p}_pending q SET attempts = q.attempts + 1 FROM batch b
        WHERE q.id = b.id AND b.due AND b.attempts < $5)
      SELECT m.id, m.entity_type, m.entity_id, m.rpc, m.primary_key, m.payload,
             (extract(epoch FROM m.deliver_at) * 1000)::bigint,
             b.attempts + (b.due AND b.attempts < $5)::int, b.due AND b.attempts >= $5
      FROM batch b JOIN {p}_messages m ON m.id = b.id
      ORDER BY b.id)");
  // One more attempt of a pending message that has not had them all ($3 = max_attempts).
  count_attempt_ = prepared("count_attempt", R"(
      WITH counted AS (
        UPDATE {p}_pending SET attempts = attempts + 1, last_failure = coalesce($2, last_failure)
        WHERE id = $1 AND attempts < $3
        RETURNING id, attempts)
      SELECT m.id, m.shard_group, m.shard, m.entity_type, m.entity_id, m.rpc, m.primary_key,
             m.payload, (extract(epoch FROM m.deliver_at) * 1000)::bigint, c.attempts
      FROM counted c JOIN {p}_messages m ON m.id = c.id)");
  // Dead-letters a pending message in one statement (one transaction): its error reply
  // ($4, $5: the Defect's code and tag), the dead letter, off the queue, and the same
  // notification as a stored reply, so that waiting callers on every runner hear of it.
  dead_letter_ = prepared("dead_letter", R"(
      WITH gone AS (
        DELETE FROM {p}_pending WHERE id = $1
        RETURNING id, attempts, coalesce($2, last_failure, $3) AS why),
      told AS (
        SELECT id, attempts, why, 'dead-lettered after ' || attempts ||
               CASE WHEN attempts = 1 THEN ' attempt: ' ELSE ' attempts: ' END || why AS told_text
        FROM gone),
      noted AS (
        INSERT INTO {p}_dead_letters (message_id, attempts, last_failure)
        SELECT id, attempts, why FROM told ON CONFLICT (message_id) DO NOTHING),
      stored AS (
        INSERT INTO {p}_replies (message_id, code, error, message, payload)
        SELECT id, $4, $5, told_text, ''::bytea FROM told ON CONFLICT (message_id) DO NOTHING)
      SELECT id, told_text, pg_notify('{p}_replies', '{' || id || '}') FROM told)");
  purge_processed_ = prepared("purge_processed", R"(
      WITH old AS (
        SELECT message_id FROM {p}_replies
        WHERE created_at < now() - make_interval(secs => $1::double precision / 1000)
        ORDER BY created_at LIMIT $2),
      replies AS (DELETE FROM {p}_replies WHERE message_id IN (SELECT message_id FROM old)),
      dead AS (DELETE FROM {p}_dead_letters WHERE message_id IN (SELECT message_id FROM old))
      DELETE FROM {p}_messages WHERE id IN (SELECT message_id FROM old) RETURNING id)");
  select_replies_ = prepared("select_replies", R"(
      SELECT message_id, code, error, message, payload FROM {p}_replies
      WHERE message_id = ANY($1::bigint[]))");
  // Entity state writes of a round (see state_steps: an entity once per statement). A row is
  // written only while its stored version is the expected one ($3; 0: no row yet) and, for a
  // message ($5 > 0), only while the message is pending; the reply and the queue delete take
  // only the rows written, so a stale write commits nothing of its message. Returns the
  // ordinals of the writes made. $4: the state as hex, NULL to clear it.
  write_states_ = prepared("write_states", R"(
      WITH u AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::bigint[],
                             $6::int[], $7::text[], $8::text[], $9::text[])
          WITH ORDINALITY AS u(t, e, v, d, m, c, er, ms, p, n)),
      written AS (
        INSERT INTO {p}_entity_state AS s (entity_type, entity_id, version, state, updated_at)
        SELECT u.t, u.e, u.v + 1, decode(u.d, 'hex'), now() FROM u
        -- LATERAL ... LIMIT 1: one index lookup per row (an EXISTS under OR is planned as a
        -- hash of the whole table).
        LEFT JOIN LATERAL (SELECT q.id FROM {p}_pending q WHERE q.id = u.m LIMIT 1) q ON true
        LEFT JOIN LATERAL (SELECT x.version FROM {p}_entity_state x
                           WHERE x.entity_type = u.t AND x.entity_id = u.e LIMIT 1) x ON true
        WHERE (u.m = 0 OR q.id IS NOT NULL) AND (u.v = 0 OR x.version IS NOT NULL)
        ON CONFLICT (entity_type, entity_id) DO UPDATE
          SET version = EXCLUDED.version, state = EXCLUDED.state, updated_at = EXCLUDED.updated_at
          WHERE s.version = EXCLUDED.version - 1
        RETURNING entity_type, entity_id),
      done AS (SELECT u.* FROM u JOIN written w ON w.entity_type = u.t AND w.entity_id = u.e),
      stored AS (
        INSERT INTO {p}_replies (message_id, code, error, message, payload)
        SELECT m, c, er, ms, decode(p, 'hex') FROM done WHERE m <> 0
        ON CONFLICT (message_id) DO NOTHING),
      dequeued AS (DELETE FROM {p}_pending WHERE id IN (SELECT m FROM done WHERE m <> 0))
      SELECT n FROM done)");
  // After write_states in the same transaction: tells the runners of those replies that
  // were stored (by it, or before: a stored reply is worth hearing of either way).
  announce_replies_ = prepared("announce_replies", R"(
      SELECT pg_notify('{p}_replies', array_agg(message_id)::text) FROM {p}_replies
      WHERE message_id = ANY($1::bigint[]) HAVING count(*) > 0)");
  load_states_ = prepared("load_states", R"(
      SELECT u.n, s.version, s.state
      FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS u(t, e, n)
      JOIN {p}_entity_state s ON s.entity_type = u.t AND s.entity_id = u.e)");
  // Takes the locks nobody holds and starts a new epoch for each, in one statement (one
  // transaction): an epoch read from here belongs to this lock holder.
  bump_epochs_ = prepared("bump_epochs", R"(
      WITH taken AS MATERIALIZED (
        SELECT s FROM unnest($2::int[]) AS s WHERE pg_try_advisory_lock(hashtext($1), s))
      INSERT INTO {p}_shard_epochs AS x (shard_group, shard, epoch)
      SELECT $3, s, 1 FROM taken
      ON CONFLICT (shard_group, shard) DO UPDATE SET epoch = x.epoch + 1
      RETURNING shard, epoch)");
  conn_ = worker_session();
  pg::migrate(*conn_, settings_.table_prefix);
  worker_ = std::thread([this] { worker_loop(); });
  asio::co_spawn(listen_io_, listen_for_replies(), asio::detached);
  listener_ = std::thread([this] { listen_io_.run(); });
}

pg_message_store::~pg_message_store() { stop(); }

std::unique_ptr<pg::connection> pg_message_store::worker_session() const {
  auto session = std::make_unique<pg::connection>(settings_.conninfo(), settings_.application_name);
  // The batch statements take arrays whose length PostgreSQL cannot guess: left alone it
  // keeps planning them per call. Their plans do not depend on the values.
  session->exec("SET plan_cache_mode = force_generic_plan");
  // _pending churns: between autovacuum runs its statistics say "a few rows" while dead
  // ones pile up by the hundred thousand, and a generic plan that scans it whole gets
  // slower with every round. Every statement here has an index to go by.
  session->exec("SET enable_seqscan = off");
  return session;
}

void pg_message_store::stop() {
  if (stopping_.exchange(true)) return;
  wake_.notify_all();
  listen_io_.stop();
  if (worker_.joinable()) worker_.join();
  if (listener_.joinable()) listener_.join();
}

void pg_message_store::persist(persisted_message message, persist_done done) {
  {
    std::lock_guard lock(mutex_);
    persists_.push_back(persist_job{std::move(message), std::move(done)});
  }
  wake_.notify_one();
}

void pg_message_store::complete(std::int64_t id, reply_msg reply, bool announce,
                                complete_done done) {
  {
    std::lock_guard lock(mutex_);
    completes_.push_back(complete_job{id, std::move(reply), announce, std::move(done)});
  }
  wake_.notify_one();
}

void pg_message_store::load_state(std::string entity_type, std::string entity_id, state_done done) {
  {
    std::lock_guard lock(mutex_);
    loads_.push_back(load_job{std::move(entity_type), std::move(entity_id), std::move(done)});
  }
  wake_.notify_one();
}

void pg_message_store::save_state(state_write write, write_done done) {
  {
    std::lock_guard lock(mutex_);
    states_.push_back(state_job{std::move(write), 0, reply_msg{}, false, std::move(done)});
  }
  wake_.notify_one();
}

void pg_message_store::complete_with_state(std::int64_t id, reply_msg reply, bool announce,
                                           state_write state, write_done done) {
  CLUSTER_ASSERT(id > 0, "a persisted message has a stored id");
  {
    std::lock_guard lock(mutex_);
    states_.push_back(state_job{std::move(state), id, std::move(reply), announce, std::move(done)});
  }
  wake_.notify_one();
}

void pg_message_store::remember_kept(std::string group, std::int32_t shard, kept_entity entity,
                                     write_done done) {
  auto shared_done = std::make_shared<decltype(done)>(std::move(done));
  enqueue(other_job{
      [this, group, shard, entity, shared_done](pg::connection& conn) {
        conn.exec("INSERT INTO " + table("kept_entities") +
                      " (entity_type, entity_id, shard_group, shard) VALUES ($1, $2, $3, $4)"
                      " ON CONFLICT (entity_type, entity_id) DO UPDATE"
                      " SET shard_group = EXCLUDED.shard_group, shard = EXCLUDED.shard",
                  {pg::param::text(entity.entity_type), pg::param::text(entity.entity_id),
                   pg::param::text(group), pg::param::text(std::to_string(shard))});
        asio::post(io_, [shared_done] { (*shared_done)(success()); });
      },
      [this, shared_done] { asio::post(io_, [shared_done] { (*shared_done)(unavailable()); }); }});
}

void pg_message_store::forget_kept(kept_entity entity, write_done done) {
  auto shared_done = std::make_shared<decltype(done)>(std::move(done));
  enqueue(other_job{
      [this, entity, shared_done](pg::connection& conn) {
        conn.exec(
            "DELETE FROM " + table("kept_entities") + " WHERE entity_type = $1 AND entity_id = $2",
            {pg::param::text(entity.entity_type), pg::param::text(entity.entity_id)});
        asio::post(io_, [shared_done] { (*shared_done)(success()); });
      },
      [this, shared_done] { asio::post(io_, [shared_done] { (*shared_done)(unavailable()); }); }});
}

void pg_message_store::kept_entities(std::string group, std::int32_t shard, kept_done done) {
  auto shared_done = std::make_shared<decltype(done)>(std::move(done));
  enqueue(other_job{
      [this, group, shard, shared_done](pg::connection& conn) {
        auto rows = conn.exec("SELECT entity_type, entity_id FROM " + table("kept_entities") +
                                  " WHERE shard_group = $1 AND shard = $2"
                                  " ORDER BY entity_type, entity_id",
                              {pg::param::text(group), pg::param::text(std::to_string(shard))});
        std::vector<kept_entity> out;
        for (int r = 0; r < rows.rows(); ++r)
          out.push_back(kept_entity{rows.text(r, 0), rows.text(r, 1)});
        asio::post(
            io_, [shared_done, out = std::move(out)]() mutable { (*shared_done)(std::move(out)); });
      },
      [this, shared_done] { asio::post(io_, [shared_done] { (*shared_done)(unavailable()); }); }});
}

std::int64_t pg_message_store::lock_epoch(std::string_view group, std::int32_t shard) const {
  const auto it = epochs_.find({std::string(group), shard});
  return it == epochs_.end() ? 0 : it->second;
}

void pg_message_store::enqueue(other_job job) {
  {
    std::lock_guard lock(mutex_);
    others_.push_back(std::move(job));
  }
  wake_.notify_one();
}

void pg_message_store::unprocessed(std::string group, std::int32_t shard, std::int64_t after,
                                   unprocessed_done done) {
  auto shared_done = std::make_shared<decltype(done)>(std::move(done));
  enqueue(other_job{
      [this, group, shard, after, shared_done](pg::connection& conn) {
        const auto counted_below =
            std::min<std::uint32_t>(settings_.max_attempts, 2);  // see counted_by_replay
        auto rows = conn.exec(select_unprocessed_,
                              {pg::param::text(group), pg::param::text(std::to_string(shard)),
                               pg::param::text(std::to_string(after)),
                               pg::param::text(std::to_string(settings_.batch_size)),
                               pg::param::text(std::to_string(counted_below))});
        std::vector<persisted_message> out;
        for (int r = 0; r < rows.rows(); ++r) {
          persisted_message m;
          m.id = rows.integer(r, 0);
          m.group = group;
          m.shard = shard;
          m.request.entity_type = rows.text(r, 1);
          m.request.entity_id = rows.text(r, 2);
          m.request.rpc = rows.text(r, 3);
          m.request.primary_key = rows.text(r, 4);
          m.request.payload = rows.bytea(r, 5);
          m.request.persisted = true;
          if (!rows.is_null(r, 6)) m.request.deliver_at_ms = rows.integer(r, 6);
          m.attempts = static_cast<std::int32_t>(rows.integer(r, 7));
          m.suspect = rows.boolean(r, 8);
          out.push_back(std::move(m));
        }
        asio::post(
            io_, [shared_done, out = std::move(out)]() mutable { (*shared_done)(std::move(out)); });
      },
      [this, shared_done] { asio::post(io_, [shared_done] { (*shared_done)(unavailable()); }); }});
}

void pg_message_store::next_attempt(std::int64_t id, std::optional<std::string> failure,
                                    attempt_done done) {
  auto shared_done = std::make_shared<decltype(done)>(std::move(done));
  enqueue(other_job{
      [this, id, failure = std::move(failure), shared_done](pg::connection& conn) {
        // A crash report may quote any bytes; PostgreSQL text takes clean UTF-8 only.
        const auto why = !failure                  ? pg::param::null()
                         : is_clean_text(*failure) ? pg::param::text(*failure)
                                                   : pg::param::text(to_clean_text(*failure));
        attempt_outcome outcome;
        auto counted =
            conn.exec(count_attempt_, {pg::param::text(std::to_string(id)), why,
                                       pg::param::text(std::to_string(settings_.max_attempts))});
        if (counted.rows() > 0) {
          persisted_message m;
          m.id = counted.integer(0, 0);
          m.group = counted.text(0, 1);
          m.shard = static_cast<std::int32_t>(counted.integer(0, 2));
          m.request.entity_type = counted.text(0, 3);
          m.request.entity_id = counted.text(0, 4);
          m.request.rpc = counted.text(0, 5);
          m.request.primary_key = counted.text(0, 6);
          m.request.payload = counted.bytea(0, 7);
          m.request.persisted = true;
          if (!counted.is_null(0, 8)) m.request.deliver_at_ms = counted.integer(0, 8);
          m.attempts = static_cast<std::int32_t>(counted.integer(0, 9));
          outcome.rerun = std::move(m);
        } else {
          // Not below max_attempts, or not pending at all (then this finds nothing).
          auto dead = conn.exec(dead_letter_,
                                {pg::param::text(std::to_string(id)), why,
                                 pg::param::text(std::string(runner_stopped_failure)),
                                 pg::param::text(std::to_string(static_cast<int>(errc::defect))),
                                 pg::param::text(std::string(to_string(errc::defect)))});
          if (dead.rows() > 0)
            outcome.dead_lettered = reply_msg::failure(errc::defect, dead.text(0, 1));
        }
        asio::post(io_, [shared_done, outcome = std::move(outcome)]() mutable {
          (*shared_done)(std::move(outcome));
        });
      },
      [this, shared_done] { asio::post(io_, [shared_done] { (*shared_done)(unavailable()); }); }});
}

void pg_message_store::acquire(std::string group, std::vector<std::int32_t> shards,
                               acquire_done done) {
  auto shared_done = std::make_shared<decltype(done)>(std::move(done));
  enqueue(other_job{
      [this, group, shards, shared_done](pg::connection& conn) {
        std::vector<std::int32_t> held, wanted;
        std::vector<std::pair<std::int32_t, std::int64_t>> epochs;  // of the locks taken now
        for (auto shard : shards) {
          if (held_.count({group, shard})) {
            held.push_back(shard);
          } else {
            wanted.push_back(shard);
          }
        }
        if (!wanted.empty()) {
          std::optional<pg::result> rows;
          try {
            rows = conn.exec(bump_epochs_, {pg::param::text(lock_space(group)),
                                            pg::number_array(wanted), pg::param::text(group)});
          } catch (const pg::error&) {
            // Session locks outlive a failed statement: give back those it may have taken
            // (unlocking one held by another session does nothing).
            if (conn.healthy()) {
              try {
                conn.exec("SELECT pg_advisory_unlock(hashtext($1), s) FROM unnest($2::int[]) AS s",
                          {pg::param::text(lock_space(group)), pg::number_array(wanted)});
              } catch (const pg::error&) {
              }
            }
            throw;
          }
          for (int r = 0; r < rows->rows(); ++r) {
            const auto shard = static_cast<std::int32_t>(rows->integer(r, 0));
            held_.insert({group, shard});
            held.push_back(shard);
            epochs.emplace_back(shard, rows->integer(r, 1));
          }
        }
        asio::post(io_, [this, group, shared_done, held = std::move(held),
                         epochs = std::move(epochs)]() mutable {
          for (const auto& [shard, epoch] : epochs) epochs_[{group, shard}] = epoch;
          (*shared_done)(std::move(held));
        });
      },
      [this, shared_done] { asio::post(io_, [shared_done] { (*shared_done)(unavailable()); }); }});
}

void pg_message_store::release(std::string group, std::vector<std::int32_t> shards) {
  enqueue(other_job{[this, group, shards](pg::connection& conn) {
                      std::vector<std::int32_t> mine;
                      for (auto shard : shards)
                        if (held_.erase({group, shard}) > 0) mine.push_back(shard);
                      if (mine.empty()) return;
                      conn.exec(
                          "SELECT pg_advisory_unlock(hashtext($1), s) FROM unnest($2::int[]) AS s",
                          {pg::param::text(lock_space(group)), pg::number_array(mine)});
                    },
                    [] {}});
}

void pg_message_store::replies(std::vector<std::int64_t> ids, replies_done done) {
  auto shared_done = std::make_shared<decltype(done)>(std::move(done));
  enqueue(other_job{
      [this, ids, shared_done](pg::connection& conn) {
        auto rows = conn.exec(select_replies_, {pg::number_array(ids)});
        std::map<std::int64_t, reply_msg> out;
        for (int r = 0; r < rows.rows(); ++r)
          out.emplace(rows.integer(r, 0), reply_from_row(rows, r, 1));
        asio::post(
            io_, [shared_done, out = std::move(out)]() mutable { (*shared_done)(std::move(out)); });
      },
      [this, shared_done] { asio::post(io_, [shared_done] { (*shared_done)(unavailable()); }); }});
}

void pg_message_store::purge(purge_done done) {
  auto shared_done = std::make_shared<decltype(done)>(std::move(done));
  enqueue(other_job{
      [this, shared_done](pg::connection& conn) {
        auto rows = conn.exec(purge_processed_,
                              {pg::param::text(std::to_string(settings_.retention.count())),
                               pg::param::text(std::to_string(settings_.batch_size))});
        const auto purged = static_cast<std::size_t>(rows.rows());
        asio::post(io_, [shared_done, purged] { (*shared_done)(purged); });
      },
      [this, shared_done] { asio::post(io_, [shared_done] { (*shared_done)(unavailable()); }); }});
}

bool pg_message_store::ensure_connected() {
  if (conn_ && conn_->healthy()) return true;
  conn_.reset();
  // While the database is away, jobs fail at once and reconnects are spaced out (100 ms
  // doubling to 2 s): a black-holed server costs one connect_timeout per attempt.
  const auto now = std::chrono::steady_clock::now();
  if (now < next_connect_) return false;
  try {
    conn_ = worker_session();
    spdlog::info("reconnected to PostgreSQL at {}", settings_.describe());
    reachable_ = true;
    connect_backoff_ = reconnect_first;
    return true;
  } catch (const pg::error& e) {
    if (reachable_.exchange(false)) spdlog::warn("PostgreSQL unreachable: {}", e.what());
    next_connect_ = std::chrono::steady_clock::now() + connect_backoff_;
    connect_backoff_ = std::min(connect_backoff_ * 2, reconnect_last);
    return false;
  }
}

void pg_message_store::connection_failed(const std::string& why) {
  spdlog::error("PostgreSQL session lost: {}", why);
  conn_.reset();
  reachable_ = false;
  if (!held_.empty()) {
    held_.clear();
    asio::post(io_, [this] {
      if (on_locks_lost) on_locks_lost();
    });
  }
}

void pg_message_store::worker_loop() {
  while (true) {
    std::vector<persist_job> persists;
    std::vector<complete_job> completes;
    std::vector<state_job> states;
    std::vector<load_job> loads;
    std::deque<other_job> others;
    {
      std::unique_lock lock(mutex_);
      const auto nothing = [this] {
        return persists_.empty() && completes_.empty() && states_.empty() && loads_.empty() &&
               others_.empty();
      };
      wake_.wait_for(lock, std::chrono::seconds(1), [&] { return stopping_ || !nothing(); });
      if (stopping_ && nothing()) break;
      persists.swap(persists_);
      completes.swap(completes_);
      states.swap(states_);
      loads.swap(loads_);
      others.swap(others_);
    }
    const bool idle =
        persists.empty() && completes.empty() && states.empty() && loads.empty() && others.empty();
    const auto fail_loads = [&] {
      for (auto& job : loads)
        if (job.done)
          asio::post(io_, [done = std::exchange(job.done, nullptr)] { done(unavailable()); });
    };
    // Here rather than in persist(): the runner's thread does not pay for the hashing.
    for (auto& job : persists) job.fingerprint = fingerprint_of(job.message.request);
    if (!ensure_connected()) {
      if (!held_.empty()) connection_failed("cannot reconnect");
      for (auto& job : persists)
        asio::post(io_, [done = std::move(job.done)] { done(unavailable()); });
      for (auto& job : completes)
        asio::post(io_, [done = std::move(job.done)] { done(unavailable()); });
      for (auto& job : states)
        asio::post(io_, [done = std::move(job.done)] { done(unavailable()); });
      fail_loads();
      for (auto& job : others) job.fail();
      continue;
    }
    try {
      // Lost locks must be noticed even when nothing else happens.
      if (idle && !held_.empty()) conn_->exec("SELECT 1");
      run_writes(persists, completes, states);
      run_loads(loads);
      while (!others.empty()) {
        auto job = std::move(others.front());
        others.pop_front();
        try {
          job.run(*conn_);
        } catch (const pg::error& e) {
          job.fail();
          if (e.retriable || !conn_->healthy()) throw;
          spdlog::error("storage statement failed: {}", e.what());
        }
      }
    } catch (const pg::error& e) {
      fail_loads();
      for (auto& job : others) job.fail();
      connection_failed(e.what());
    }
  }
  if (conn_ && !held_.empty()) {
    try {
      conn_->exec("SELECT pg_advisory_unlock_all()");
    } catch (const pg::error&) {
    }
  }
}

void pg_message_store::run_writes(std::vector<persist_job>& persists,
                                  std::vector<complete_job>& completes,
                                  std::vector<state_job>& states) {
  if (persists.empty() && completes.empty() && states.empty()) return;
  // The worker's thread: series are atomics, looked up once.
  static auto& round_size =
      metrics::default_registry()
          .histograms("cluster_storage_write_round_size",
                      "Messages, replies and states stored together in one write round.", {},
                      metrics::size_buckets(), 1)
          .with({});
  static auto& round_seconds =
      metrics::default_registry()
          .histograms("cluster_storage_write_round_duration_seconds",
                      "Time one write round (one transaction) took, in seconds.", {},
                      metrics::latency_buckets_ns(), 1e9)
          .with({});
  const auto round_started = std::chrono::steady_clock::now();
  round_size.observe(persists.size() + completes.size() + states.size());
  write_round round{persists,
                    completes,
                    states,
                    std::vector<result<persist_outcome>>(persists.size(), persist_outcome{}),
                    std::vector<result<void>>(completes.size() + states.size(), success()),
                    std::nullopt};
  write_part(round, 0, persists.size() + completes.size() + states.size());
  round_seconds.observe(std::chrono::steady_clock::now() - round_started);
  for (std::size_t i = 0; i < persists.size(); ++i)
    asio::post(io_,
               [done = std::move(persists[i].done),
                outcome = std::move(round.outcomes[i])]() mutable { done(std::move(outcome)); });
  for (std::size_t i = 0; i < completes.size(); ++i)
    asio::post(io_, [done = std::move(completes[i].done),
                     stored = std::move(round.stored[i])]() mutable { done(std::move(stored)); });
  for (std::size_t i = 0; i < states.size(); ++i)
    asio::post(io_, [done = std::move(states[i].done),
                     stored = std::move(round.stored[completes.size() + i])]() mutable {
      done(std::move(stored));
    });
  // The session is gone: the worker reconnects, and callers retry.
  if (round.lost) throw *round.lost;
}

void pg_message_store::write_part(write_round& round, std::size_t first, std::size_t last) {
  const std::size_t persist_count = round.persists.size();
  // Callers hear plain words; the database's own text goes to the log only.
  const auto fail_part = [&](const failure& why) {
    for (std::size_t i = first; i < last; ++i) {
      if (i < persist_count) {
        round.outcomes[i] = why;
      } else {
        round.stored[i - persist_count] = why;
      }
    }
  };
  if (round.lost) {
    fail_part(unavailable());
    return;
  }
  auto failed = write_once(round, first, last);
  if (!failed) return;
  if (failed->retriable || !conn_->healthy()) {
    round.lost = std::move(failed);
    fail_part(unavailable());
    return;
  }
  if (last - first == 1) {
    if (first < persist_count) {
      const auto& request = round.persists[first].message.request;
      spdlog::error("storage refused a message for {} (primary key {}): {}", request.entity_type,
                    *request.primary_key, failed->what());
      round.outcomes[first] = failure{errc::storage_error, "message could not be stored"};
    } else if (first - persist_count < round.completes.size()) {
      spdlog::error("storage refused the reply of message {}: {}",
                    round.completes[first - persist_count].id, failed->what());
      round.stored[first - persist_count] =
          failure{errc::storage_error, "reply could not be stored"};
    } else {
      const auto& job = round.states[first - persist_count - round.completes.size()];
      spdlog::error("storage refused the state of {}/{} (message {}): {}", job.write.entity_type,
                    job.write.entity_id, job.id, failed->what());
      round.stored[first - persist_count] =
          failure{errc::storage_error, "state could not be stored"};
    }
    return;
  }
  // One row the server refuses aborts the whole transaction: store the round again in halves
  // (each its own transaction), down to the offending rows, so only they fail.
  if (first == 0 && last == persist_count + round.stored.size())
    spdlog::warn(
        "a store round of {} messages, {} replies and {} states failed ({}); storing it in parts",
        persist_count, round.completes.size(), round.states.size(), failed->what());
  const std::size_t middle = first + (last - first) / 2;
  write_part(round, first, middle);
  write_part(round, middle, last);
}

std::optional<pg::error> pg_message_store::write_once(write_round& round, std::size_t first,
                                                      std::size_t last) {
  const auto& persists = round.persists;
  const auto& completes = round.completes;
  const std::size_t persist_first = std::min(first, persists.size());
  const std::size_t persist_last = std::min(last, persists.size());
  // [first, last) over persists, then completes, then state writes.
  const auto part_of = [&](std::size_t from, std::size_t count, std::size_t at) {
    return std::clamp(at, from, from + count) - from;
  };
  const std::size_t complete_first = part_of(persists.size(), completes.size(), first);
  const std::size_t complete_last = part_of(persists.size(), completes.size(), last);
  const std::size_t states_at = persists.size() + completes.size();
  const std::size_t state_first = part_of(states_at, round.states.size(), first);
  const std::size_t state_last = part_of(states_at, round.states.size(), last);
  const std::size_t chunk = settings_.batch_size;
  std::vector<pg::pipelined> steps;
  // A message that runs right after this commit counts that attempt here (no statement of
  // its own); one a replay will read counts none yet. One step per starting count: the
  // second is nearly always empty.
  std::vector<std::size_t> order;
  order.reserve(persist_last - persist_first);
  for (std::size_t i = persist_first; i < persist_last; ++i) order.push_back(i);
  std::stable_partition(order.begin(), order.end(),
                        [&](std::size_t i) { return persists[i].message.attempts > 0; });
  for (std::size_t from = 0; from < order.size();) {
    const bool counted = persists[order[from]].message.attempts > 0;
    std::size_t to = from;
    while (to < order.size() && to - from < chunk &&
           (persists[order[to]].message.attempts > 0) == counted)
      ++to;
    pg::array_literal groups, shards, types, ids, rpcs, keys, payloads, deliver_at, fingerprints;
    for (std::size_t at = from; at < to; ++at) {
      const auto& m = persists[order[at]].message;
      fingerprints.hex(persists[order[at]].fingerprint);
      groups.text(m.group);
      shards.number(m.shard);
      types.text(m.request.entity_type);
      ids.text(m.request.entity_id);
      rpcs.text(m.request.rpc);
      keys.text(*m.request.primary_key);
      payloads.hex(m.request.payload);
      if (m.request.deliver_at_ms) {
        deliver_at.number(*m.request.deliver_at_ms);
      } else {
        deliver_at.null();
      }
    }
    steps.push_back({&insert_messages_,
                     {groups.param(), shards.param(), types.param(), ids.param(), rpcs.param(),
                      keys.param(), payloads.param(), deliver_at.param(),
                      pg::param::text(counted ? "1" : "0"), fingerprints.param()}});
    from = to;
  }
  const std::size_t persist_steps = steps.size();
  for (std::size_t from = complete_first; from < complete_last; from += chunk) {
    pg::array_literal ids, codes, errors, messages, payloads, announced;
    for (std::size_t i = from; i < std::min(complete_last, from + chunk); ++i) {
      const auto& reply = completes[i].reply;
      ids.number(completes[i].id);
      codes.number(static_cast<std::int64_t>(reply.code));
      // A handler's error text may hold any bytes; PostgreSQL text takes clean UTF-8 only.
      if (is_clean_text(reply.error) && is_clean_text(reply.message)) {
        errors.text(reply.error);
        messages.text(reply.message);
      } else {
        errors.text(to_clean_text(reply.error));
        messages.text(to_clean_text(reply.message));
      }
      payloads.hex(reply.payload);
      if (completes[i].announce) announced.number(completes[i].id);
    }
    steps.push_back({&store_replies_,
                     {ids.param(), codes.param(), errors.param(), messages.param(),
                      payloads.param(), announced.param()}});
  }

  const std::size_t state_steps_at = steps.size();
  std::vector<std::vector<std::size_t>> state_members;  // the state jobs of each state step
  state_steps(round, state_first, state_last, steps, state_members);

  // One implicit transaction, so one commit (one fsync) for every message, every reply and
  // every state of this part: callers hear back only after it committed.
  std::vector<pg::result> results;
  try {
    results = conn_->pipeline(steps);
  } catch (const pg::error& e) {
    return e;  // nothing of this part took effect
  }
  try {
    // RETURNING lists the rows inserted; the others were stored before (or twice in this
    // batch: the first is new, the next ones are duplicates of it). With one key twice in a
    // round, the row inserted is the one whose request it holds (the steps do not keep
    // arrival order): any other request under that key is found as a reuse below.
    struct inserted_row {
      const pg::result* rows;
      int row;
    };
    std::map<message_key, inserted_row> new_rows;
    for (std::size_t step = 0; step < persist_steps; ++step) {
      const auto& inserted = results[step];
      for (int r = 0; r < inserted.rows(); ++r)
        new_rows[key_in_row(inserted, r)] = inserted_row{&inserted, r};
    }
    for (std::size_t i = persist_first; i < persist_last; ++i) {
      auto it = new_rows.find(key_of(persists[i].message.request));
      if (it == new_rows.end()) continue;
      const auto [rows, row] = it->second;
      if (!same_request(*rows, row, 4, persists[i].fingerprint)) continue;
      round.outcomes[i].value().id = rows->integer(row, 0);
      round.outcomes[i].value().inserted = true;
      new_rows.erase(it);
    }
  } catch (const pg::error& e) {
    // Committed all the same: the lookup below finds what could not be read here.
    spdlog::error("unexpected answer to storing messages: {}", e.what());
  }
  // A state write that returned no row was not made: the version moved on (another
  // activation wrote first) or its message was processed already. Nothing of it committed.
  for (std::size_t i = state_first; i < state_last; ++i)
    round.stored[completes.size() + i] =
        failure{errc::state_conflict, "the entity's state changed since it was read"};
  for (std::size_t step = 0; step < state_members.size(); ++step) {
    try {
      const auto& written = results[state_steps_at + step];
      for (int r = 0; r < written.rows(); ++r) {
        const auto ordinal = static_cast<std::size_t>(written.integer(r, 0));
        CLUSTER_ASSERT(ordinal >= 1 && ordinal <= state_members[step].size(),
                       "a state write's ordinal is one of its statement's");
        round.stored[completes.size() + state_members[step][ordinal - 1]] = success();
      }
    } catch (const pg::error& e) {
      // Committed, but which rows were written is unknown: those callers drop what they
      // hold and read the state again.
      spdlog::error("unexpected answer to writing entity states: {}", e.what());
      for (auto i : state_members[step])
        round.stored[completes.size() + i] =
            failure{errc::storage_error, "state write outcome unknown"};
    }
  }
  // Committed: what follows only reads, and only for the messages stored before.
  find_existing_part(round, persist_first, persist_last);
  return std::nullopt;
}

void pg_message_store::state_steps(const write_round& round, std::size_t first, std::size_t last,
                                   std::vector<pg::pipelined>& steps,
                                   std::vector<std::vector<std::size_t>>& members) const {
  if (first == last) return;
  // Layer k holds the k-th write of each entity in the round: an entity written twice in one
  // round (a stale write and a current one) has its writes in successive statements, which
  // see each other's effect.
  std::vector<std::vector<std::size_t>> layers;
  std::map<std::pair<std::string_view, std::string_view>, std::size_t> seen;
  for (std::size_t i = first; i < last; ++i) {
    const auto& write = round.states[i].write;
    const auto layer = seen[{write.entity_type, write.entity_id}]++;
    if (layer == layers.size()) layers.emplace_back();
    layers[layer].push_back(i);
  }
  pg::array_literal announced;
  bool announcing = false;
  for (const auto& layer : layers) {
    for (std::size_t from = 0; from < layer.size(); from += settings_.batch_size) {
      const auto to = std::min(layer.size(), from + settings_.batch_size);
      pg::array_literal types, ids, versions, states, messages, codes, errors, texts, payloads;
      for (std::size_t at = from; at < to; ++at) {
        const auto& job = round.states[layer[at]];
        types.text(job.write.entity_type);
        ids.text(job.write.entity_id);
        versions.number(job.write.expected_version);
        if (job.write.data) {
          states.hex(*job.write.data);
        } else {
          states.null();
        }
        messages.number(job.id);
        codes.number(static_cast<std::int64_t>(job.reply.code));
        // A handler's error text may hold any bytes; PostgreSQL text takes clean UTF-8 only.
        errors.text(is_clean_text(job.reply.error) ? job.reply.error
                                                   : to_clean_text(job.reply.error));
        texts.text(is_clean_text(job.reply.message) ? job.reply.message
                                                    : to_clean_text(job.reply.message));
        payloads.hex(job.reply.payload);
        if (job.id > 0 && job.announce) {
          announced.number(job.id);
          announcing = true;
        }
      }
      steps.push_back(
          {&write_states_,
           {types.param(), ids.param(), versions.param(), states.param(), messages.param(),
            codes.param(), errors.param(), texts.param(), payloads.param()}});
      members.emplace_back(layer.begin() + static_cast<std::ptrdiff_t>(from),
                           layer.begin() + static_cast<std::ptrdiff_t>(to));
    }
  }
  if (announcing) steps.push_back({&announce_replies_, {announced.param()}});
}

void pg_message_store::run_loads(std::vector<load_job>& loads) {
  for (std::size_t from = 0; from < loads.size(); from += settings_.batch_size)
    load_part(loads, from, std::min(loads.size(), from + settings_.batch_size));
}

void pg_message_store::load_part(std::vector<load_job>& loads, std::size_t from, std::size_t to) {
  pg::array_literal types, ids;
  for (std::size_t i = from; i < to; ++i) {
    types.text(loads[i].entity_type);
    ids.text(loads[i].entity_id);
  }
  std::vector<stored_state> found(to - from);  // version 0, no data: never written
  try {
    auto rows = conn_->exec(load_states_, {types.param(), ids.param()});
    for (int r = 0; r < rows.rows(); ++r) {
      const auto ordinal = static_cast<std::size_t>(rows.integer(r, 0));
      CLUSTER_ASSERT(ordinal >= 1 && ordinal <= found.size(), "a load's ordinal is its own");
      auto& state = found[ordinal - 1];
      state.version = rows.integer(r, 1);
      if (!rows.is_null(r, 2)) state.data = rows.bytea(r, 2);
    }
  } catch (const pg::error& e) {
    if (e.retriable || !conn_->healthy()) throw;  // the worker fails the rest
    // An address the server refuses (text that is not UTF-8) fails only itself: the others
    // are read again in halves.
    if (to - from > 1) {
      const auto middle = from + (to - from) / 2;
      load_part(loads, from, middle);
      load_part(loads, middle, to);
      return;
    }
    spdlog::error("storage could not read the state of {}/{}: {}", loads[from].entity_type,
                  loads[from].entity_id, e.what());
    asio::post(io_, [done = std::exchange(loads[from].done, nullptr)] {
      done(failure{errc::storage_error, "state could not be read"});
    });
    return;
  }
  for (std::size_t i = from; i < to; ++i)
    asio::post(io_, [done = std::exchange(loads[i].done, nullptr),
                     state = std::move(found[i - from])]() mutable { done(std::move(state)); });
}

void pg_message_store::find_existing_part(write_round& round, std::size_t first, std::size_t last) {
  const auto not_inserted = [&](std::size_t i) {
    return round.outcomes[i].has_value() && !round.outcomes[i].value().inserted;
  };
  const auto fail_part = [&](const failure& why) {
    for (std::size_t i = first; i < last; ++i)
      if (not_inserted(i)) round.outcomes[i] = why;
  };
  if (round.lost) {
    fail_part(unavailable());
    return;
  }
  std::optional<pg::error> failed;
  try {
    find_existing(round.persists, first, last, round.outcomes);
    return;
  } catch (const pg::error& e) {
    failed = e;
  }
  if (failed->retriable || !conn_->healthy()) {
    round.lost = std::move(failed);
    fail_part(unavailable());
    return;
  }
  if (last - first == 1) {
    spdlog::error("storage could not look up a stored message: {}", failed->what());
    fail_part(failure{errc::storage_error, "message could not be looked up"});
    return;
  }
  const std::size_t middle = first + (last - first) / 2;
  find_existing_part(round, first, middle);
  find_existing_part(round, middle, last);
}

void pg_message_store::find_existing(const std::vector<persist_job>& persists, std::size_t first,
                                     std::size_t last,
                                     std::vector<result<persist_outcome>>& outcomes) {
  const auto wanted = [&](std::size_t i) {
    return outcomes[i].has_value() && !outcomes[i].value().inserted;
  };
  pg::array_literal types, ids, keys;
  bool any = false;
  for (std::size_t i = first; i < last; ++i) {
    if (!wanted(i)) continue;
    const auto& request = persists[i].message.request;
    types.text(request.entity_type);
    ids.text(request.entity_id);
    keys.text(*request.primary_key);
    any = true;
  }
  if (!any) return;
  auto existing = conn_->exec(find_existing_, {types.param(), ids.param(), keys.param()});
  std::map<message_key, int> rows;
  for (int r = 0; r < existing.rows(); ++r) rows[key_in_row(existing, r)] = r;
  for (std::size_t i = first; i < last; ++i) {
    if (!wanted(i)) continue;
    const auto& request = persists[i].message.request;
    auto it = rows.find(key_of(request));
    if (it == rows.end()) {
      outcomes[i] = failure{errc::storage_error, "message vanished during deduplication"};
      continue;
    }
    if (!same_request(existing, it->second, 8, persists[i].fingerprint)) {
      outcomes[i] = primary_key_reused();
      continue;
    }
    auto& outcome = outcomes[i].value();
    outcome.id = existing.integer(it->second, 0);
    if (!existing.is_null(it->second, 4)) outcome.reply = reply_from_row(existing, it->second, 4);
  }
}

boost::asio::awaitable<void> pg_message_store::listen_for_replies() {
  auto retry = listen_first_retry;
  asio::steady_timer pause(listen_io_);
  while (!stopping_) {
    std::unique_ptr<pg::connection> session;
    try {
      // Blocks only this thread (connect_timeout bounds it); the runner's loop never waits.
      session = std::make_unique<pg::connection>(settings_.conninfo(), settings_.application_name);
      session->exec("LISTEN \"" + table("replies") + "\"");
      session->exec("LISTEN \"" + table("requeued") + "\"");
      retry = listen_first_retry;
    } catch (const pg::error& e) {
      spdlog::debug("reply listener: {}; retrying in {} ms", e.what(), retry.count());
      session.reset();
    }
    if (!session) {  // co_await is not allowed inside a catch block
      pause.expires_after(retry);
      boost::system::error_code ec;
      co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
      retry = std::min(retry * 2, listen_last_retry);
      continue;
    }
    // Its own descriptor for the session's socket: closing it leaves libpq's open.
    asio::posix::stream_descriptor socket(listen_io_, ::dup(PQsocket(session->raw())));
    while (!stopping_) {
      boost::system::error_code ec;
      co_await socket.async_wait(asio::posix::stream_descriptor::wait_read,
                                 asio::redirect_error(asio::use_awaitable, ec));
      if (ec || PQconsumeInput(session->raw()) == 0) break;  // stopped, or the session died
      while (PGnotify* note = PQnotifies(session->raw())) {
        if (table("requeued") == note->relname) {
          auto requeued = parse_requeued(note->extra);
          PQfreemem(note);
          if (!requeued) continue;
          asio::post(io_, [this, requeued = std::move(*requeued)] {
            if (on_requeued) on_requeued(requeued.group, requeued.shard, requeued.id);
          });
          continue;
        }
        auto ids = parse_id_array(note->extra);
        PQfreemem(note);
        asio::post(io_, [this, ids = std::move(ids)] {
          if (on_reply)
            for (auto id : ids) on_reply(id);
        });
      }
    }
  }
}

}  // namespace cluster
