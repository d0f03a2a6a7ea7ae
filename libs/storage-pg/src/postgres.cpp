#include "cluster/storage-pg/postgres.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cstring>

namespace cluster::pg {

namespace {

// The migrations, in order; `{p}` stands for the table prefix. Never edit a shipped step:
// add a new one.
const std::vector<std::string>& migrations() {
  static const std::vector<std::string> steps = {
      // 1: cluster state and durable messages
      R"(
      CREATE TABLE {p}_runners (
        address text PRIMARY KEY,
        name text NOT NULL,
        registration bytea NOT NULL,
        updated_at timestamptz NOT NULL DEFAULT now());
      CREATE TABLE {p}_shards (
        shard_group text NOT NULL,
        shard integer NOT NULL,
        owner text NOT NULL DEFAULT '',
        PRIMARY KEY (shard_group, shard));
      CREATE TABLE {p}_messages (
        id bigserial PRIMARY KEY,
        shard_group text NOT NULL,
        shard integer NOT NULL,
        entity_type text NOT NULL,
        entity_id text NOT NULL,
        rpc text NOT NULL,
        primary_key text NOT NULL,
        payload bytea NOT NULL,
        deliver_at timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        processed boolean NOT NULL DEFAULT false,
        processed_at timestamptz,
        UNIQUE (entity_type, entity_id, primary_key));
      CREATE INDEX {p}_messages_unprocessed ON {p}_messages (shard_group, shard, id)
        WHERE NOT processed;
      CREATE INDEX {p}_messages_processed_at ON {p}_messages (processed_at) WHERE processed;
      CREATE TABLE {p}_replies (
        message_id bigint PRIMARY KEY REFERENCES {p}_messages (id) ON DELETE CASCADE,
        code integer NOT NULL,
        error text NOT NULL,
        message text NOT NULL,
        payload bytea NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now());
      )",
      // 2: unprocessed messages get a narrow queue table, so storing a reply is two inserts
      // and a delete: no update of the wide, thrice-indexed message row and no foreign-key
      // check per reply (purge deletes replies itself). `processed` is no longer written.
      R"(
      CREATE TABLE {p}_pending (
        id bigint PRIMARY KEY,
        shard_group text NOT NULL,
        shard integer NOT NULL);
      CREATE INDEX {p}_pending_shard ON {p}_pending (shard_group, shard, id);
      INSERT INTO {p}_pending (id, shard_group, shard)
        SELECT id, shard_group, shard FROM {p}_messages WHERE NOT processed;
      DROP INDEX {p}_messages_unprocessed;
      DROP INDEX {p}_messages_processed_at;
      ALTER TABLE {p}_replies DROP CONSTRAINT {p}_replies_message_id_fkey;
      CREATE INDEX {p}_replies_created_at ON {p}_replies (created_at);
      )",
      // 3: attempt counts that survive crashes, and the dead letters: messages not run again
      // after storage.max_attempts (their error reply is in _replies; purge deletes both).
      R"(
      ALTER TABLE {p}_pending ADD COLUMN IF NOT EXISTS attempts integer NOT NULL DEFAULT 0;
      ALTER TABLE {p}_pending ADD COLUMN IF NOT EXISTS last_failure text;
      CREATE TABLE IF NOT EXISTS {p}_dead_letters (
        message_id bigint PRIMARY KEY,
        attempts integer NOT NULL,
        last_failure text NOT NULL,
        dead_at timestamptz NOT NULL DEFAULT now());
      )",
      // 4: each message keeps the SHA-256 of its request (request_fingerprint), so a primary
      // key sent again with another request is refused. Rows stored before have none (NULL)
      // and match any request, as they did.
      R"(
      ALTER TABLE {p}_messages ADD COLUMN IF NOT EXISTS fingerprint bytea;
      )",
      // 5: plugins pushed to the cluster (clusterctl plugin push), with their bytes, so that
      // runners started later fetch them through the manager without a shared disk.
      R"(
      CREATE TABLE {p}_plugins (
        name text PRIMARY KEY,
        version text NOT NULL,
        sha256 text NOT NULL,
        abi_major integer NOT NULL,
        abi_minor integer NOT NULL,
        entity_types text[] NOT NULL,
        size bigint NOT NULL,
        bytes bytea NOT NULL,
        pushed_at timestamptz NOT NULL);
      )",
      // 6: the state of stateful entities (a clear keeps the row with a NULL state and the
      // next version, so versions never go back), the epoch of each shard lock (the fencing
      // token: one more every time a runner takes the lock) and the kept-alive entities that
      // a shard's next owner activates again.
      R"(
      CREATE TABLE {p}_entity_state (
        entity_type text NOT NULL,
        entity_id text NOT NULL,
        version bigint NOT NULL,
        state bytea,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (entity_type, entity_id));
      CREATE TABLE {p}_shard_epochs (
        shard_group text NOT NULL,
        shard integer NOT NULL,
        epoch bigint NOT NULL,
        PRIMARY KEY (shard_group, shard));
      CREATE TABLE {p}_kept_entities (
        entity_type text NOT NULL,
        entity_id text NOT NULL,
        shard_group text NOT NULL,
        shard integer NOT NULL,
        PRIMARY KEY (entity_type, entity_id));
      CREATE INDEX {p}_kept_entities_shard ON {p}_kept_entities (shard_group, shard);
      )",
  };
  return steps;
}

}  // namespace

std::string with_prefix(std::string sql, const std::string& prefix) {
  for (auto at = sql.find("{p}"); at != std::string::npos; at = sql.find("{p}", at))
    sql.replace(at, 3, prefix);
  return sql;
}

std::int64_t result::integer(int row, int column) const {
  const char* value = PQgetvalue(raw_.get(), row, column);
  const char* end = value + std::strlen(value);
  std::int64_t out = 0;
  const auto [stop, ec] = std::from_chars(value, end, out);
  if (ec != std::errc() || stop != end)
    throw error("column " + std::to_string(column) + " is not an integer: '" + value + "'", false);
  return out;
}

cluster::bytes result::bytea(int row, int column) const {
  std::size_t length = 0;
  unsigned char* raw = PQunescapeBytea(
      reinterpret_cast<const unsigned char*>(PQgetvalue(raw_.get(), row, column)), &length);
  if (raw == nullptr) throw error("cannot decode a bytea column", false);
  cluster::bytes out(raw, raw + length);
  PQfreemem(raw);
  return out;
}

namespace {
PGconn* open_session(const std::string& conninfo, const std::string& application_name) {
  if (application_name.empty()) return PQconnectdb(conninfo.c_str());
  // expand_dbname: the first value is the whole conninfo or URI; later keywords override it.
  const char* keywords[] = {"dbname", "application_name", nullptr};
  const char* values[] = {conninfo.c_str(), application_name.c_str(), nullptr};
  return PQconnectdbParams(keywords, values, 1);
}
}  // namespace

connection::connection(const std::string& conninfo, const std::string& application_name)
    : raw_(open_session(conninfo, application_name), &PQfinish) {
  if (raw_ == nullptr || PQstatus(raw_.get()) != CONNECTION_OK) {
    std::string message = raw_ ? PQerrorMessage(raw_.get()) : "out of memory";
    while (!message.empty() && (message.back() == '\n' || message.back() == ' '))
      message.pop_back();
    throw error("cannot connect to PostgreSQL: " + message, true);
  }
  PQsetNoticeProcessor(
      raw_.get(), [](void*, const char*) {}, nullptr);
}

namespace {

// libpq's parallel arrays for a statement's parameters (they point into `params`).
struct param_arrays {
  explicit param_arrays(const std::vector<param>& params) {
    for (const auto& p : params) {
      values.push_back(p.value ? p.value->data() : nullptr);
      lengths.push_back(p.value ? static_cast<int>(p.value->size()) : 0);
      formats.push_back(p.binary ? 1 : 0);
    }
  }
  int count() const { return static_cast<int>(values.size()); }
  std::vector<const char*> values;
  std::vector<int> lengths;
  std::vector<int> formats;
};

bool succeeded(PGresult* raw) {
  const auto status = raw ? PQresultStatus(raw) : PGRES_FATAL_ERROR;
  return status == PGRES_COMMAND_OK || status == PGRES_TUPLES_OK;
}

std::string trimmed(std::string message) {
  while (!message.empty() && (message.back() == '\n' || message.back() == ' ')) message.pop_back();
  return message;
}

}  // namespace

void connection::fail(PGresult* raw) {
  const std::string message = raw ? PQresultErrorMessage(raw) : PQerrorMessage(raw_.get());
  throw error(trimmed(message), !healthy());
}

result connection::exec(const std::string& sql, const std::vector<param>& params) {
  const param_arrays arrays(params);
  PGresult* raw = params.empty() ? PQexec(raw_.get(), sql.c_str())
                                 : PQexecParams(raw_.get(), sql.c_str(), arrays.count(), nullptr,
                                                arrays.values.data(), arrays.lengths.data(),
                                                arrays.formats.data(), 0);
  result out(raw);
  if (!succeeded(raw)) fail(raw);
  return out;
}

result connection::exec(const statement& prepared, const std::vector<param>& params) {
  // Through the pipeline: a first use prepares and runs in one round trip.
  return std::move(pipeline({{&prepared, params}}).front());
}

std::vector<result> connection::pipeline(const std::vector<pipelined>& steps) {
  PGconn* conn = raw_.get();
  if (PQenterPipelineMode(conn) == 0) fail(nullptr);
  // Queued commands, in order: a statement to prepare, or (nullptr) a step to run.
  std::vector<const statement*> sent;
  std::unordered_set<std::string> preparing;
  bool queued_all = true;
  for (std::size_t i = 0; i < steps.size() && queued_all; ++i) {
    const statement& what = *steps[i].what;
    if (!prepared_.count(what.name) && preparing.insert(what.name).second) {
      queued_all = PQsendPrepare(conn, what.name.c_str(), what.sql.c_str(), 0, nullptr) == 1;
      sent.push_back(&what);
    }
    const param_arrays arrays(steps[i].params);
    queued_all = queued_all &&
                 PQsendQueryPrepared(conn, what.name.c_str(), arrays.count(), arrays.values.data(),
                                     arrays.lengths.data(), arrays.formats.data(), 0) == 1;
    sent.push_back(nullptr);
  }
  // The output is small (a few rows per step) next to the socket buffers, so a blocking
  // connection cannot deadlock writing the whole pipeline before reading.
  if (!queued_all || PQpipelineSync(conn) == 0) {
    desynchronized_ = true;
    fail(nullptr);
  }
  std::vector<result> out;
  out.reserve(steps.size());
  std::optional<std::string> failure;
  for (const statement* preparing_one : sent) {
    result got(PQgetResult(conn));
    if (got.raw() == nullptr) {  // the connection broke
      desynchronized_ = true;
      fail(nullptr);
    }
    if (succeeded(got.raw())) {
      if (preparing_one) prepared_.insert(preparing_one->name);
    } else if (PQresultStatus(got.raw()) != PGRES_PIPELINE_ABORTED && !failure) {
      failure = trimmed(PQresultErrorMessage(got.raw()));
    }
    if (!preparing_one) out.push_back(std::move(got));
    if (PQgetResult(conn) != nullptr) desynchronized_ = true;  // one result per command
  }
  result sync(PQgetResult(conn));
  if (sync.raw() == nullptr || PQresultStatus(sync.raw()) != PGRES_PIPELINE_SYNC ||
      PQexitPipelineMode(conn) == 0)
    desynchronized_ = true;
  if (desynchronized_) throw error("PostgreSQL pipeline out of step; reconnecting", true);
  if (failure) throw error(*failure, !healthy());
  return out;
}

void validate_prefix(const std::string& prefix) {
  // PostgreSQL cuts identifiers at 63 bytes: the longest derived name,
  // `<prefix>_replies_message_id_fkey`, must still be whole.
  const bool valid = !prefix.empty() && prefix.size() <= 32 &&
                     std::isalpha(static_cast<unsigned char>(prefix[0])) &&
                     std::all_of(prefix.begin(), prefix.end(), [](char c) {
                       return std::islower(static_cast<unsigned char>(c)) ||
                              std::isdigit(static_cast<unsigned char>(c)) || c == '_';
                     });
  if (!valid)
    throw error("table prefix '" + prefix +
                    "' must be at most 32 lower-case letters, digits and _, starting with a letter",
                false);
}

int latest_schema_version() { return static_cast<int>(migrations().size()); }

void migrate(connection& conn, const std::string& prefix, int version_wanted) {
  validate_prefix(prefix);
  transaction(conn, [&] {
    // Serializes concurrent start-ups: the lock is released at COMMIT.
    conn.exec("SELECT pg_advisory_xact_lock(hashtext($1))", {param::text(prefix + "_migrations")});
    conn.exec(
        with_prefix("CREATE TABLE IF NOT EXISTS {p}_migrations (version integer PRIMARY KEY, "
                    "applied_at timestamptz NOT NULL DEFAULT now())",
                    prefix));
    auto current =
        conn.exec(with_prefix("SELECT coalesce(max(version), 0) FROM {p}_migrations", prefix));
    const int applied = static_cast<int>(current.integer(0, 0));
    for (int version = applied + 1; version <= version_wanted; ++version) {
      conn.exec(with_prefix(migrations()[static_cast<std::size_t>(version - 1)], prefix));
      conn.exec(with_prefix("INSERT INTO {p}_migrations (version) VALUES ($1)", prefix),
                {param::text(std::to_string(version))});
    }
  });
}

}  // namespace cluster::pg
