#include "cluster/common/postgres.hpp"

#include <algorithm>
#include <cctype>

namespace cluster::pg {

namespace {

bool connection_lost(PGconn* conn) { return PQstatus(conn) != CONNECTION_OK; }

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
  };
  return steps;
}

std::string with_prefix(std::string sql, const std::string& prefix) {
  for (auto at = sql.find("{p}"); at != std::string::npos; at = sql.find("{p}", at))
    sql.replace(at, 3, prefix);
  return sql;
}

}  // namespace

cluster::bytes result::bytea(int row, int column) const {
  std::size_t length = 0;
  unsigned char* raw = PQunescapeBytea(
      reinterpret_cast<const unsigned char*>(PQgetvalue(raw_.get(), row, column)), &length);
  if (raw == nullptr) throw error("cannot decode a bytea column", false);
  cluster::bytes out(raw, raw + length);
  PQfreemem(raw);
  return out;
}

connection::connection(const std::string& conninfo)
    : raw_(PQconnectdb(conninfo.c_str()), &PQfinish) {
  if (raw_ == nullptr || PQstatus(raw_.get()) != CONNECTION_OK) {
    std::string message = raw_ ? PQerrorMessage(raw_.get()) : "out of memory";
    while (!message.empty() && (message.back() == '\n' || message.back() == ' '))
      message.pop_back();
    throw error("cannot connect to PostgreSQL: " + message, true);
  }
  PQsetNoticeProcessor(
      raw_.get(), [](void*, const char*) {}, nullptr);
}

result connection::exec(const std::string& sql, const std::vector<param>& params) {
  std::vector<const char*> values;
  std::vector<int> lengths;
  std::vector<int> formats;
  for (const auto& p : params) {
    values.push_back(p.value ? p.value->data() : nullptr);
    lengths.push_back(p.value ? static_cast<int>(p.value->size()) : 0);
    formats.push_back(p.binary ? 1 : 0);
  }
  PGresult* raw = params.empty()
                      ? PQexec(raw_.get(), sql.c_str())
                      : PQexecParams(raw_.get(), sql.c_str(), static_cast<int>(params.size()),
                                     nullptr, values.data(), lengths.data(), formats.data(), 0);
  result out(raw);
  const auto status = raw ? PQresultStatus(raw) : PGRES_FATAL_ERROR;
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    std::string message = raw ? PQresultErrorMessage(raw) : PQerrorMessage(raw_.get());
    while (!message.empty() && (message.back() == '\n' || message.back() == ' '))
      message.pop_back();
    throw error(message, connection_lost(raw_.get()));
  }
  return out;
}

void validate_prefix(const std::string& prefix) {
  const bool valid = !prefix.empty() && prefix.size() <= 40 &&
                     std::isalpha(static_cast<unsigned char>(prefix[0])) &&
                     std::all_of(prefix.begin(), prefix.end(), [](char c) {
                       return std::islower(static_cast<unsigned char>(c)) ||
                              std::isdigit(static_cast<unsigned char>(c)) || c == '_';
                     });
  if (!valid)
    throw error("table prefix '" + prefix + "' must be lower-case letters, digits and _", false);
}

int latest_schema_version() { return static_cast<int>(migrations().size()); }

void migrate(connection& conn, const std::string& prefix) {
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
    for (int version = applied + 1; version <= latest_schema_version(); ++version) {
      conn.exec(with_prefix(migrations()[static_cast<std::size_t>(version - 1)], prefix));
      conn.exec(with_prefix("INSERT INTO {p}_migrations (version) VALUES ($1)", prefix),
                {param::text(std::to_string(version))});
    }
  });
}

}  // namespace cluster::pg
