#pragma once
// A thin RAII layer over libpq: connect, run parameterized statements, read results.
// Blocking: use it on a thread that may block (the message store's worker, start-up,
// the manager's rare writes), never on a hot io_context path.

#include <libpq-fe.h>

#include <memory>
#include <optional>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "cluster/protocol/messages.hpp"

namespace cluster::pg {

/// A failed statement or connection; `retriable` when the server or network is the cause.
struct error : std::runtime_error {
  error(const std::string& what, bool is_retriable)
      : std::runtime_error(what), retriable(is_retriable) {}
  bool retriable;
};

/// A statement parameter: text, binary bytes (bytea) or NULL.
struct param {
  std::optional<std::string> value;
  bool binary = false;
  static param text(std::string v) { return {std::move(v), false}; }
  static param bytes(const cluster::bytes& b) { return {std::string(b.begin(), b.end()), true}; }
  static param null() { return {std::nullopt, false}; }
};

/// A statement prepared on each connection at its first use there: parsed and planned once
/// per session instead of once per call. `name` is unique per statement text.
struct statement {
  std::string name;
  std::string sql;
};

/// One step of connection::pipeline.
struct pipelined {
  const statement* what;
  std::vector<param> params;
};

// A PostgreSQL array literal, one element at a time: `unnest($n::type[])` turns a few such
// parameters back into rows, so one prepared statement stores a batch of any size.
class array_literal {
 public:
  array_literal& text(std::string_view value) {
    separate();
    out_ += '"';
    for (char c : value) {
      if (c == '"' || c == '\\') out_ += '\\';
      out_ += c;
    }
    out_ += '"';
    return *this;
  }
  array_literal& number(std::int64_t value) {
    separate();
    out_ += std::to_string(value);
    return *this;
  }
  array_literal& null() {
    separate();
    out_ += "NULL";
    return *this;
  }
  /// Bytes as hex digits: the statement decodes them with decode(x, 'hex').
  array_literal& hex(std::span<const std::uint8_t> value) {
    static constexpr char digits[] = "0123456789abcdef";
    separate();
    out_ += '"';
    for (auto byte : value) {
      out_ += digits[byte >> 4];
      out_ += digits[byte & 0xf];
    }
    out_ += '"';
    return *this;
  }
  pg::param param() const { return pg::param::text(out_ + '}'); }

 private:
  void separate() {
    if (out_.size() > 1) out_ += ',';
  }
  std::string out_ = "{";
};

template <class Range>
param number_array(const Range& values) {
  array_literal out;
  for (auto value : values) out.number(value);
  return out.param();
}

class result {
 public:
  explicit result(PGresult* raw) : raw_(raw, &PQclear) {}
  int rows() const { return PQntuples(raw_.get()); }
  bool is_null(int row, int column) const { return PQgetisnull(raw_.get(), row, column) != 0; }
  std::string text(int row, int column) const { return PQgetvalue(raw_.get(), row, column); }
  /// An integer column; throws pg::error when it holds something else.
  std::int64_t integer(int row, int column) const;
  bool boolean(int row, int column) const { return text(row, column) == "t"; }
  PGresult* raw() const { return raw_.get(); }
  /// A bytea column in text (hex) format.
  cluster::bytes bytea(int row, int column) const;

 private:
  std::unique_ptr<PGresult, void (*)(PGresult*)> raw_;
};

class connection {
 public:
  /// Connects with a libpq conninfo string or URI; throws pg::error. A non-empty
  /// `application_name` overrides the one `conninfo` names (pg_stat_activity shows it).
  explicit connection(const std::string& conninfo, const std::string& application_name = {});
  /// Runs one statement; throws pg::error on failure.
  result exec(const std::string& sql, const std::vector<param>& params = {});
  result exec(const statement& prepared, const std::vector<param>& params = {});
  /// Sends every step at once and then reads every result: one round trip. Outside BEGIN the
  /// steps form one implicit transaction (one commit): when a step fails, none took effect
  /// and this throws pg::error.
  std::vector<result> pipeline(const std::vector<pipelined>& steps);
  bool healthy() const { return !desynchronized_ && PQstatus(raw_.get()) == CONNECTION_OK; }
  PGconn* raw() { return raw_.get(); }

 private:
  [[noreturn]] void fail(PGresult* raw);

  std::unique_ptr<PGconn, void (*)(PGconn*)> raw_;
  std::unordered_set<std::string> prepared_;
  bool desynchronized_ = false;  // a pipeline ended unexpectedly: the session is unusable
};

/// Runs `work` inside BEGIN/COMMIT, rolling back on exception.
template <class Work>
auto transaction(connection& conn, Work&& work) {
  conn.exec("BEGIN");
  try {
    if constexpr (std::is_void_v<decltype(work())>) {
      work();
      conn.exec("COMMIT");
    } else {
      auto value = work();
      conn.exec("COMMIT");
      return value;
    }
  } catch (...) {
    if (conn.healthy()) {
      try {
        conn.exec("ROLLBACK");
      } catch (...) {
      }
    }
    throw;
  }
}

/// The schema version `migrate` brings a database to.
int latest_schema_version();

/// Creates or upgrades the schema (tables named `<prefix>_...`) to `version_wanted`.
/// Idempotent and safe when several processes start at once (serialized by an advisory lock).
void migrate(connection& conn, const std::string& prefix,
             int version_wanted = latest_schema_version());

/// `sql` with every `{p}` replaced by the table prefix.
std::string with_prefix(std::string sql, const std::string& prefix);

/// Checks that a table prefix is a plain identifier (it is spliced into SQL).
void validate_prefix(const std::string& prefix);

}  // namespace cluster::pg
