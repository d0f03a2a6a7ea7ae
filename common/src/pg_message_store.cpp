#include "cluster/common/pg_message_store.hpp"

#include <spdlog/spdlog.h>
#include <sys/select.h>

#include <span>
#include <tuple>

namespace cluster {

namespace {

// A PostgreSQL array literal of text values.
std::string text_array(const std::vector<std::string>& values) {
  std::string out = "{";
  for (std::size_t i = 0; i < values.size(); ++i) {
    if (i > 0) out += ',';
    out += '"';
    for (char c : values[i]) {
      if (c == '"' || c == '\\') out += '\\';
      out += c;
    }
    out += '"';
  }
  return out + "}";
}

template <class Number>
std::string number_array(const std::vector<Number>& values) {
  std::string out = "{";
  for (std::size_t i = 0; i < values.size(); ++i) out += (i ? "," : "") + std::to_string(values[i]);
  return out + "}";
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
  conn_ = std::make_unique<pg::connection>(settings_.conninfo());
  pg::migrate(*conn_, settings_.table_prefix);
  worker_ = std::thread([this] { worker_loop(); });
  listener_ = std::thread([this] { listener_loop(); });
}

pg_message_store::~pg_message_store() { stop(); }

void pg_message_store::stop() {
  if (stopping_.exchange(true)) return;
  wake_.notify_all();
  if (worker_.joinable()) worker_.join();
  if (listener_.joinable()) listener_.join();
}

void pg_message_store::persist(persisted_message message,
                               std::function<void(persist_outcome)> done) {
  {
    std::lock_guard lock(mutex_);
    persists_.push_back(persist_job{std::move(message), std::move(done)});
  }
  wake_.notify_one();
}

void pg_message_store::complete(std::int64_t id, reply_msg reply, std::function<void(bool)> done) {
  {
    std::lock_guard lock(mutex_);
    completes_.push_back(complete_job{id, std::move(reply), std::move(done)});
  }
  wake_.notify_one();
}

void pg_message_store::enqueue(other_job job) {
  {
    std::lock_guard lock(mutex_);
    others_.push_back(std::move(job));
  }
  wake_.notify_one();
}

void pg_message_store::unprocessed(std::string group, std::int32_t shard, std::int64_t after,
                                   std::function<void(std::vector<persisted_message>, bool)> done) {
  auto shared_done = std::make_shared<decltype(done)>(std::move(done));
  enqueue(other_job{
      [this, group, shard, after, shared_done](pg::connection& conn) {
        auto rows = conn.exec(
            "SELECT id, entity_type, entity_id, rpc, primary_key, payload, "
            "(extract(epoch FROM deliver_at) * 1000)::bigint FROM " +
                table("messages") +
                " WHERE shard_group = $1 AND shard = $2 AND NOT processed AND id > $3 "
                "ORDER BY id LIMIT $4",
            {pg::param::text(group), pg::param::text(std::to_string(shard)),
             pg::param::text(std::to_string(after)),
             pg::param::text(std::to_string(settings_.batch_size))});
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
          out.push_back(std::move(m));
        }
        asio::post(io_, [shared_done, out = std::move(out)] { (*shared_done)(out, true); });
      },
      [this, shared_done] { asio::post(io_, [shared_done] { (*shared_done)({}, false); }); }});
}

void pg_message_store::acquire(std::string group, std::vector<std::int32_t> shards,
                               std::function<void(std::vector<std::int32_t>)> done) {
  auto shared_done = std::make_shared<decltype(done)>(std::move(done));
  enqueue(other_job{
      [this, group, shards, shared_done](pg::connection& conn) {
        std::vector<std::int32_t> held, wanted;
        for (auto shard : shards) {
          if (held_.count({group, shard})) {
            held.push_back(shard);
          } else {
            wanted.push_back(shard);
          }
        }
        if (!wanted.empty()) {
          auto rows = conn.exec(
              "SELECT s, pg_try_advisory_lock(hashtext($1), s) FROM unnest($2::int[]) AS s",
              {pg::param::text(lock_space(group)), pg::param::text(number_array(wanted))});
          for (int r = 0; r < rows.rows(); ++r) {
            if (!rows.boolean(r, 1)) continue;
            const auto shard = static_cast<std::int32_t>(rows.integer(r, 0));
            held_.insert({group, shard});
            held.push_back(shard);
          }
        }
        asio::post(io_, [shared_done, held = std::move(held)] { (*shared_done)(held); });
      },
      [this, shared_done] { asio::post(io_, [shared_done] { (*shared_done)({}); }); }});
}

void pg_message_store::release(std::string group, std::vector<std::int32_t> shards) {
  enqueue(other_job{
      [this, group, shards](pg::connection& conn) {
        std::vector<std::int32_t> mine;
        for (auto shard : shards)
          if (held_.erase({group, shard}) > 0) mine.push_back(shard);
        if (mine.empty()) return;
        conn.exec("SELECT pg_advisory_unlock(hashtext($1), s) FROM unnest($2::int[]) AS s",
                  {pg::param::text(lock_space(group)), pg::param::text(number_array(mine))});
      },
      [] {}});
}

void pg_message_store::replies(std::vector<std::int64_t> ids,
                               std::function<void(std::map<std::int64_t, reply_msg>)> done) {
  auto shared_done = std::make_shared<decltype(done)>(std::move(done));
  enqueue(other_job{
      [this, ids, shared_done](pg::connection& conn) {
        auto rows = conn.exec("SELECT message_id, code, error, message, payload FROM " +
                                  table("replies") + " WHERE message_id = ANY($1::bigint[])",
                              {pg::param::text(number_array(ids))});
        std::map<std::int64_t, reply_msg> out;
        for (int r = 0; r < rows.rows(); ++r)
          out.emplace(rows.integer(r, 0), reply_from_row(rows, r, 1));
        asio::post(io_, [shared_done, out = std::move(out)] { (*shared_done)(out); });
      },
      [this, shared_done] { asio::post(io_, [shared_done] { (*shared_done)({}); }); }});
}

void pg_message_store::purge(std::function<void(std::size_t)> done) {
  auto shared_done = std::make_shared<decltype(done)>(std::move(done));
  enqueue(other_job{
      [this, shared_done](pg::connection& conn) {
        auto rows =
            conn.exec("WITH old AS (SELECT id FROM " + table("messages") +
                          " WHERE processed AND processed_at < now() - make_interval(secs => "
                          "$1::double precision / 1000)"
                          " LIMIT $2) DELETE FROM " +
                          table("messages") + " WHERE id IN (SELECT id FROM old) RETURNING id",
                      {pg::param::text(std::to_string(settings_.retention.count())),
                       pg::param::text(std::to_string(settings_.batch_size))});
        const auto purged = static_cast<std::size_t>(rows.rows());
        asio::post(io_, [shared_done, purged] { (*shared_done)(purged); });
      },
      [this, shared_done] { asio::post(io_, [shared_done] { (*shared_done)(0); }); }});
}

bool pg_message_store::ensure_connected() {
  if (conn_ && conn_->healthy()) return true;
  conn_.reset();
  try {
    conn_ = std::make_unique<pg::connection>(settings_.conninfo());
    spdlog::info("reconnected to PostgreSQL at {}", settings_.describe());
    reachable_ = true;
    return true;
  } catch (const pg::error& e) {
    reachable_ = false;
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
    std::deque<other_job> others;
    {
      std::unique_lock lock(mutex_);
      wake_.wait_for(lock, std::chrono::seconds(1), [this] {
        return stopping_ || !persists_.empty() || !completes_.empty() || !others_.empty();
      });
      if (stopping_ && persists_.empty() && completes_.empty() && others_.empty()) break;
      persists.swap(persists_);
      completes.swap(completes_);
      others.swap(others_);
    }
    const bool idle = persists.empty() && completes.empty() && others.empty();
    if (!ensure_connected()) {
      if (!held_.empty()) connection_failed("cannot reconnect");
      for (auto& job : persists) {
        persist_outcome failed;
        failed.error = "storage unavailable";
        asio::post(io_, [done = std::move(job.done), failed] { done(failed); });
      }
      for (auto& job : completes) asio::post(io_, [done = std::move(job.done)] { done(false); });
      for (auto& job : others) job.fail();
      if (idle || !stopping_) std::this_thread::sleep_for(std::chrono::milliseconds(200));
      continue;
    }
    try {
      // Lost locks must be noticed even when nothing else happens.
      if (idle && !held_.empty()) conn_->exec("SELECT 1");
      run_writes(persists, completes);
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

std::vector<persist_outcome> pg_message_store::run_persists(std::span<const persist_job> batch) {
  std::vector<pg::param> params;
  std::string sql = "INSERT INTO " + table("messages") +
                    " (shard_group, shard, entity_type, entity_id, rpc, primary_key, payload, "
                    "deliver_at) VALUES ";
  for (std::size_t i = 0; i < batch.size(); ++i) {
    const auto& m = batch[i].message;
    const auto base = params.size();
    sql += (i ? "," : "") + std::string("(");
    for (int c = 1; c <= 7; ++c) sql += "$" + std::to_string(base + c) + ",";
    sql += "to_timestamp($" + std::to_string(base + 8) + "::double precision / 1000))";
    params.push_back(pg::param::text(m.group));
    params.push_back(pg::param::text(std::to_string(m.shard)));
    params.push_back(pg::param::text(m.request.entity_type));
    params.push_back(pg::param::text(m.request.entity_id));
    params.push_back(pg::param::text(m.request.rpc));
    params.push_back(pg::param::text(*m.request.primary_key));
    params.push_back(pg::param::bytes(m.request.payload));
    params.push_back(m.request.deliver_at_ms
                         ? pg::param::text(std::to_string(*m.request.deliver_at_ms))
                         : pg::param::null());
  }
  sql +=
      " ON CONFLICT (entity_type, entity_id, primary_key) DO NOTHING "
      "RETURNING id, entity_type, entity_id, primary_key";
  std::vector<persist_outcome> outcomes(batch.size());
  {
    auto inserted = conn_->exec(sql, params);
    std::map<std::tuple<std::string, std::string, std::string>, std::int64_t> new_ids;
    for (int r = 0; r < inserted.rows(); ++r)
      new_ids[{inserted.text(r, 1), inserted.text(r, 2), inserted.text(r, 3)}] =
          inserted.integer(r, 0);
    std::vector<std::string> types, ids, keys;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const auto& request = batch[i].message.request;
      auto it = new_ids.find({request.entity_type, request.entity_id, *request.primary_key});
      if (it != new_ids.end()) {
        outcomes[i].id = it->second;
        outcomes[i].inserted = true;
        new_ids.erase(it);  // a duplicate later in the batch is not new
      } else {
        types.push_back(request.entity_type);
        ids.push_back(request.entity_id);
        keys.push_back(*request.primary_key);
      }
    }
    if (!types.empty()) {
      auto existing = conn_->exec(
          "SELECT m.id, m.entity_type, m.entity_id, m.primary_key, r.code, r.error, r.message, "
          "r.payload FROM " +
              table("messages") + " m LEFT JOIN " + table("replies") +
              " r ON r.message_id = m.id WHERE (m.entity_type, m.entity_id, m.primary_key) IN "
              "(SELECT * FROM unnest($1::text[], $2::text[], $3::text[]))",
          {pg::param::text(text_array(types)), pg::param::text(text_array(ids)),
           pg::param::text(text_array(keys))});
      std::map<std::tuple<std::string, std::string, std::string>, int> rows;
      for (int r = 0; r < existing.rows(); ++r)
        rows[{existing.text(r, 1), existing.text(r, 2), existing.text(r, 3)}] = r;
      for (std::size_t i = 0; i < batch.size(); ++i) {
        if (outcomes[i].inserted) continue;
        const auto& request = batch[i].message.request;
        auto it = rows.find({request.entity_type, request.entity_id, *request.primary_key});
        if (it == rows.end()) {
          outcomes[i].error = "message vanished during deduplication";
          continue;
        }
        outcomes[i].id = existing.integer(it->second, 0);
        if (!existing.is_null(it->second, 4))
          outcomes[i].reply = reply_from_row(existing, it->second, 4);
      }
    }
  }
  return outcomes;
}

void pg_message_store::run_completes(std::span<const complete_job> batch) {
  if (batch.empty()) return;
  std::vector<pg::param> params;
  std::vector<std::int64_t> ids;
  std::string values;
  for (std::size_t i = 0; i < batch.size(); ++i) {
    const auto base = params.size();
    values += (i ? "," : "") + std::string("(");
    for (int c = 1; c <= 5; ++c) values += "$" + std::to_string(base + c) + (c < 5 ? "," : ")");
    params.push_back(pg::param::text(std::to_string(batch[i].id)));
    params.push_back(
        pg::param::text(std::to_string(static_cast<std::uint32_t>(batch[i].reply.code))));
    params.push_back(pg::param::text(batch[i].reply.error));
    params.push_back(pg::param::text(batch[i].reply.message));
    params.push_back(pg::param::bytes(batch[i].reply.payload));
    ids.push_back(batch[i].id);
  }
  {
    {
      conn_->exec("INSERT INTO " + table("replies") +
                      " (message_id, code, error, message, payload) VALUES " + values +
                      " ON CONFLICT (message_id) DO NOTHING",
                  params);
      conn_->exec("UPDATE " + table("messages") +
                      " SET processed = true, processed_at = now() WHERE id = ANY($1::bigint[])",
                  {pg::param::text(number_array(ids))});
      // Delivered at commit to every runner that LISTENs: callers waiting elsewhere wake up.
      conn_->exec("SELECT pg_notify($1, $2)",
                  {pg::param::text(table("replies")), pg::param::text(number_array(ids))});
    }
  }
}

void pg_message_store::run_writes(std::vector<persist_job>& persists,
                                  std::vector<complete_job>& completes) {
  if (persists.empty() && completes.empty()) return;
  // One transaction, so one commit (one fsync) for every message stored and every reply
  // stored this round: callers hear back only after it committed.
  std::vector<persist_outcome> outcomes;
  try {
    pg::transaction(*conn_, [&] {
      const std::span<const persist_job> all_persists(persists);
      for (std::size_t i = 0; i < persists.size(); i += settings_.batch_size) {
        auto chunk = run_persists(all_persists.subspan(
            i, std::min<std::size_t>(settings_.batch_size, persists.size() - i)));
        outcomes.insert(outcomes.end(), std::make_move_iterator(chunk.begin()),
                        std::make_move_iterator(chunk.end()));
      }
      const std::span<const complete_job> all_completes(completes);
      for (std::size_t i = 0; i < completes.size(); i += settings_.batch_size)
        run_completes(all_completes.subspan(
            i, std::min<std::size_t>(settings_.batch_size, completes.size() - i)));
    });
  } catch (const pg::error& e) {
    persist_outcome failed;
    failed.error = std::string("storage error: ") + e.what();
    for (auto& job : persists)
      asio::post(io_, [done = std::move(job.done), failed] { done(failed); });
    for (auto& job : completes) asio::post(io_, [done = std::move(job.done)] { done(false); });
    if (e.retriable || !conn_->healthy()) throw;
    spdlog::error("storing messages failed: {}", e.what());
    return;
  }
  for (std::size_t i = 0; i < persists.size(); ++i)
    asio::post(io_, [done = std::move(persists[i].done), outcome = std::move(outcomes[i])] {
      done(outcome);
    });
  for (auto& job : completes) asio::post(io_, [done = std::move(job.done)] { done(true); });
}

void pg_message_store::listener_loop() {
  std::unique_ptr<pg::connection> listen;
  while (!stopping_) {
    if (!listen || !listen->healthy()) {
      try {
        listen = std::make_unique<pg::connection>(settings_.conninfo());
        listen->exec("LISTEN \"" + table("replies") + "\"");
      } catch (const pg::error& e) {
        listen.reset();
        std::this_thread::sleep_for(std::chrono::milliseconds(500));
        continue;
      }
    }
    const int socket = PQsocket(listen->raw());
    fd_set readable;
    FD_ZERO(&readable);
    FD_SET(socket, &readable);
    timeval timeout{0, 200 * 1000};  // wake up to notice stop()
    if (select(socket + 1, &readable, nullptr, nullptr, &timeout) <= 0) continue;
    if (PQconsumeInput(listen->raw()) == 0) {
      listen.reset();
      continue;
    }
    while (PGnotify* note = PQnotifies(listen->raw())) {
      std::string list = note->extra;
      PQfreemem(note);
      std::vector<std::int64_t> ids;
      std::size_t start = list.empty() ? 0 : 1;  // "{1,2,3}"
      while (start < list.size()) {
        const auto end = list.find_first_of(",}", start);
        if (end == std::string::npos || end == start) break;
        ids.push_back(std::stoll(list.substr(start, end - start)));
        start = end + 1;
      }
      asio::post(io_, [this, ids = std::move(ids)] {
        if (on_reply)
          for (auto id : ids) on_reply(id);
      });
    }
  }
}

}  // namespace cluster
