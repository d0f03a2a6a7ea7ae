#pragma once
// The PostgreSQL message store.
//
// One worker thread owns the session that holds the shard locks (session-level advisory
// locks: they die with the session, so a crashed runner loses them at once) and runs every
// statement. Messages and replies that arrive while a round runs are taken together next
// time: prepared statements over arrays, pipelined in one round trip, one transaction and
// one commit (group commit). A second thread runs its own small io_context that waits on
// the LISTEN session's socket (an Asio descriptor: no select, no polling) for stored
// replies. Completions are posted to the runner's io_context.
//
// Entity state writes (save_state, complete_with_state) join the same write round: one
// conditional upsert per round whose reply insert and queue delete take only the rows it
// wrote, so a stale write commits nothing of its message and fails nobody else. State loads
// that arrive together are read by one statement.

#include <atomic>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "cluster/storage-pg/postgres.hpp"
#include "cluster/storage/message_store.hpp"
#include "cluster/storage/request_fingerprint.hpp"

namespace cluster {

class pg_message_store final : public message_store {
 public:
  /// Connects and migrates (start-up: throws pg::error when the database is unusable).
  pg_message_store(asio::io_context& io, storage_settings settings);
  ~pg_message_store() override;

  std::string backend_name() const override { return "postgres"; }
  void persist(persisted_message message, persist_done done) override;
  void complete(std::int64_t id, reply_msg reply, bool announce, complete_done done) override;
  void unprocessed(std::string group, std::int32_t shard, std::int64_t after,
                   unprocessed_done done) override;
  void next_attempt(std::int64_t id, std::optional<std::string> failure,
                    attempt_done done) override;
  void acquire(std::string group, std::vector<std::int32_t> shards, acquire_done done) override;
  void release(std::string group, std::vector<std::int32_t> shards) override;
  void replies(std::vector<std::int64_t> ids, replies_done done) override;
  void purge(purge_done done) override;
  void stop() override;
  void load_state(std::string entity_type, std::string entity_id, state_done done) override;
  void save_state(state_write write, write_done done) override;
  void complete_with_state(std::int64_t id, reply_msg reply, bool announce, state_write state,
                           write_done done) override;
  void remember_kept(std::string group, std::int32_t shard, kept_entity entity,
                     write_done done) override;
  void forget_kept(kept_entity entity, write_done done) override;
  void kept_entities(std::string group, std::int32_t shard, kept_done done) override;
  std::int64_t lock_epoch(std::string_view group, std::int32_t shard) const override;
  bool reachable() const override { return reachable_; }
  bool shared() const override { return true; }

 private:
  struct persist_job {
    persisted_message message;
    persist_done done;
    request_fingerprint fingerprint{};  // computed by the worker, once per job
  };
  struct complete_job {
    std::int64_t id;
    reply_msg reply;
    bool announce;
    complete_done done;
  };
  /// A state write; with a message (`id` > 0) also its reply and processed mark.
  struct state_job {
    state_write write;
    std::int64_t id = 0;  // 0: save_state
    reply_msg reply;
    bool announce = false;
    write_done done;
  };
  struct load_job {
    std::string entity_type;
    std::string entity_id;
    state_done done;
  };
  struct other_job {
    std::function<void(pg::connection&)> run;  // posts its own completion
    std::function<void()> fail;                // posts a failure completion
  };

  void enqueue(other_job job);
  void worker_loop();
  /// The listener thread: LISTEN (stored replies, replayed dead letters), wait for
  /// notifications, reconnect with backoff.
  boost::asio::awaitable<void> listen_for_replies();
  bool ensure_connected();
  /// A new session for the worker, set up for its prepared statements.
  std::unique_ptr<pg::connection> worker_session() const;
  /// A round of writes being stored, and what each job will be told.
  struct write_round {
    std::vector<persist_job>& persists;
    std::vector<complete_job>& completes;
    std::vector<state_job>& states;
    std::vector<result<persist_outcome>> outcomes;  // one per persist
    std::vector<result<void>> stored;               // one per complete, then one per state
    std::optional<pg::error> lost;                  // the session failed: the rest fail too
  };
  /// Stores this round's messages and replies in one transaction (one pipelined round trip,
  /// one commit), then answers each job. When the server refuses the transaction (a row it
  /// will not take), the round is stored again in halves so only the offending rows fail;
  /// a lost session fails what is left and throws.
  void run_writes(std::vector<persist_job>& persists, std::vector<complete_job>& completes,
                  std::vector<state_job>& states);
  /// Jobs [first, last) of a round, persists first, then completes, then state writes, in
  /// one transaction; bisects on a refusal.
  void write_part(write_round& round, std::size_t first, std::size_t last);
  /// One transaction for jobs [first, last); the error when it did not commit.
  std::optional<pg::error> write_once(write_round& round, std::size_t first, std::size_t last);
  /// find_existing for persists [first, last), bisecting when the server refuses it.
  void find_existing_part(write_round& round, std::size_t first, std::size_t last);
  /// Ids and stored replies of persists [first, last) that were already stored (outcomes not
  /// `inserted`).
  void find_existing(const std::vector<persist_job>& persists, std::size_t first, std::size_t last,
                     std::vector<result<persist_outcome>>& outcomes);
  /// The state write steps of states [first, last): one statement per occurrence of an
  /// entity in the round (an upsert cannot change a row twice), in arrival order.
  void state_steps(const write_round& round, std::size_t first, std::size_t last,
                   std::vector<pg::pipelined>& steps,
                   std::vector<std::vector<std::size_t>>& members) const;
  /// Reads the states of `loads` (one statement per batch_size) and answers each.
  void run_loads(std::vector<load_job>& loads);
  /// Loads [from, to) in one statement, bisecting when the server refuses it.
  void load_part(std::vector<load_job>& loads, std::size_t from, std::size_t to);
  void connection_failed(const std::string& why);
  std::string table(const char* name) const { return settings_.table_prefix + "_" + name; }
  std::string lock_space(const std::string& group) const {
    return settings_.table_prefix + ":" + group;
  }

  asio::io_context& io_;
  storage_settings settings_;
  // Prepared on the worker's session (see the constructor for their SQL).
  pg::statement insert_messages_, store_replies_, find_existing_, select_unprocessed_,
      select_replies_, purge_processed_, count_attempt_, dead_letter_, write_states_,
      announce_replies_, load_states_, bump_epochs_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<persist_job> persists_;
  std::vector<complete_job> completes_;
  std::vector<state_job> states_;
  std::vector<load_job> loads_;
  std::deque<other_job> others_;
  std::atomic<bool> stopping_{false};
  std::atomic<bool> reachable_{true};
  // Worker-thread state.
  std::unique_ptr<pg::connection> conn_;
  std::chrono::steady_clock::time_point next_connect_{};  // no reconnect before this
  std::chrono::milliseconds connect_backoff_{100};
  std::set<std::pair<std::string, std::int32_t>> held_;
  // io_context-thread state: the epoch of each lock taken, set by acquire's completion.
  std::map<std::pair<std::string, std::int32_t>, std::int64_t> epochs_;
  std::thread worker_;
  asio::io_context listen_io_{1};  // the listener thread's
  std::thread listener_;
};

}  // namespace cluster
