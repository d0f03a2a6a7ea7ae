#include "cluster/storage-pg/pg_manager_store.hpp"

#include <spdlog/spdlog.h>

#include "cluster/protocol/codec.hpp"
#include "cluster/storage-pg/postgres.hpp"

namespace cluster {

/// Manager state in PostgreSQL. Writes are rare (joins, leaves, rebalances), so they run
/// synchronously on the manager's thread; a failed write is logged and retried on the
/// next change, and the in-memory state stays authoritative while the manager lives.
namespace {

class pg_manager_store final : public manager_store {
 public:
  explicit pg_manager_store(const storage_settings& settings)
      : settings_(settings), conn_(std::make_unique<pg::connection>(settings.conninfo())) {
    pg::migrate(*conn_, settings_.table_prefix);
  }
  std::string backend_name() const override { return "postgres"; }

  void save_runner(const register_runner_msg& runner) override {
    run([&](pg::connection& conn) {
      conn.exec("INSERT INTO " + table("runners") +
                    " (address, name, registration) VALUES ($1, $2, $3) ON CONFLICT (address) DO "
                    "UPDATE SET name = excluded.name, registration = excluded.registration, "
                    "updated_at = now()",
                {pg::param::text(runner.address), pg::param::text(runner.name),
                 pg::param::bytes(pack_bytes(runner))});
    });
  }
  void remove_runner(const std::string& address) override {
    run([&](pg::connection& conn) {
      conn.exec("DELETE FROM " + table("runners") + " WHERE address = $1",
                {pg::param::text(address)});
    });
  }
  std::vector<register_runner_msg> load_runners() override {
    std::vector<register_runner_msg> out;
    run([&](pg::connection& conn) {
      auto rows = conn.exec("SELECT registration FROM " + table("runners"));
      for (int r = 0; r < rows.rows(); ++r)
        if (auto runner = unpack_bytes<register_runner_msg>(rows.bytea(r, 0)))
          out.push_back(*runner);
    });
    return out;
  }
  void save_assignment(const std::string& group, const std::vector<std::string>& owners) override {
    run([&](pg::connection& conn) {
      std::string shards = "{", names = "{";
      for (std::size_t i = 0; i < owners.size(); ++i) {
        shards += (i ? "," : "") + std::to_string(i + 1);
        names += std::string(i ? "," : "") + "\"" + owners[i] + "\"";
      }
      conn.exec(
          "INSERT INTO " + table("shards") +
              " (shard_group, shard, owner) SELECT $1, s, o FROM unnest($2::int[], "
              "$3::text[]) AS t(s, o) ON CONFLICT (shard_group, shard) DO UPDATE SET owner = "
              "excluded.owner WHERE " +
              table("shards") + ".owner <> excluded.owner",
          {pg::param::text(group), pg::param::text(shards + "}"), pg::param::text(names + "}")});
    });
  }
  std::map<std::string, std::vector<std::string>> load_assignments() override {
    std::map<std::string, std::vector<std::string>> out;
    run([&](pg::connection& conn) {
      auto rows = conn.exec("SELECT shard_group, shard, owner FROM " + table("shards") +
                            " ORDER BY shard_group, shard");
      for (int r = 0; r < rows.rows(); ++r) {
        auto& owners = out[rows.text(r, 0)];
        const auto shard = static_cast<std::size_t>(rows.integer(r, 1));
        if (owners.size() < shard) owners.resize(shard);
        owners[shard - 1] = rows.text(r, 2);
      }
    });
    return out;
  }

 private:
  template <class Work>
  void run(Work&& work) {
    for (int attempt = 0; attempt < 2; ++attempt) {
      try {
        if (!conn_ || !conn_->healthy())
          conn_ = std::make_unique<pg::connection>(settings_.conninfo());
        work(*conn_);
        return;
      } catch (const pg::error& e) {
        spdlog::error("manager storage: {}", e.what());
        if (!e.retriable) return;
        conn_.reset();
      }
    }
  }
  std::string table(const char* name) const { return settings_.table_prefix + "_" + name; }

  storage_settings settings_;
  std::unique_ptr<pg::connection> conn_;
};

}  // namespace

std::unique_ptr<manager_store> make_pg_manager_store(const storage_settings& settings) {
  return std::make_unique<pg_manager_store>(settings);
}

}  // namespace cluster
