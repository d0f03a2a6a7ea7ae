// Persisted messages on one runner and between two: stored before they run, answered with
// the stored reply, deduplicated by primary key, replayed in id order by a shard's next
// lock holder, delivered at their time, and what happens to a shard whose storage session
// ends. The storage is the memory backend shared by the runners of a test behind a lock
// table and an on/off switch: a stand-in for PostgreSQL's session locks and outages.
#include "cluster/host/persisted_messages.hpp"

#include <gtest/gtest.h>

#include <boost/asio/post.hpp>

#include "cluster/protocol/shard.hpp"
#include "cluster_fixture.hpp"

namespace cluster::host {

void PrintTo(shard_state state, std::ostream* out) { *out << to_string(state); }

namespace {

using cluster::testing::make_request;
using cluster::testing::reply_json;
using cluster::testing::test_plugin;
using namespace std::chrono_literals;

constexpr std::int32_t shards_per_group = 300;

/// Runs `io` one handler at a time until `done()` holds (checked after each) or `timeout`.
bool step_until(asio::io_context& io, const std::function<bool()>& done,
                milliseconds timeout = milliseconds(10000)) {
  const auto deadline = steady_clock::now() + timeout;
  while (!done()) {
    if (steady_clock::now() >= deadline) return false;
    io.run_one_for(milliseconds(5));
    if (io.stopped()) io.restart();
  }
  return true;
}

std::int64_t unix_ms() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

class session_store;
using lock_key = std::pair<std::string, std::int32_t>;

/// What every runner of a test shares: the messages, the shard locks and whether the
/// storage can be reached at all.
struct shared_storage {
  shared_storage(asio::io_context& context, std::uint32_t batch_size)
      : io(context), backend(make_memory_message_store(context, batch_size)) {}
  asio::io_context& io;
  std::unique_ptr<message_store> backend;
  std::map<lock_key, int> locks;  // shard → the session holding its lock
  bool reachable = true;
  std::vector<session_store*> sessions;
};

/// One runner's session on the shared storage. Completions of a destroyed session (a
/// runner that died) are dropped.
class session_store final : public message_store {
 public:
  session_store(shared_storage& storage, int session, bool shared)
      : storage_(storage), session_(session), shared_(shared) {
    storage_.sessions.push_back(this);
  }
  ~session_store() override {
    stop();
    *alive_ = false;
    std::erase(storage_.sessions, this);
  }

  std::string backend_name() const override { return "test"; }
  bool shared() const override { return shared_; }
  bool reachable() const override { return storage_.reachable; }

  void persist(persisted_message message, persist_done done) override {
    if (!storage_.reachable) return fail(std::move(done));
    storage_.backend->persist(std::move(message), guard(std::move(done)));
  }
  void complete(std::int64_t id, reply_msg reply, bool announce, complete_done done) override {
    completed.emplace_back(id, announce);
    if (!storage_.reachable) return fail(std::move(done));
    storage_.backend->complete(
        id, std::move(reply), announce,
        guard(complete_done([this, id, announce, done = std::move(done)](result<void> stored) {
          done(std::move(stored));
          // PostgreSQL: NOTIFY at commit, heard by every session that LISTENs.
          if (announce)
            for (auto* session : storage_.sessions)
              if (session->on_reply) session->on_reply(id);
        })));
  }
  void unprocessed(std::string group, std::int32_t shard, std::int64_t after,
                   unprocessed_done done) override {
    ++reads;
    if (!storage_.reachable) return fail(std::move(done));
    storage_.backend->unprocessed(std::move(group), shard, after, guard(std::move(done)));
  }
  void next_attempt(std::int64_t id, std::optional<std::string> failure,
                    attempt_done done) override {
    ++attempts_counted;
    if (!storage_.reachable) return fail(std::move(done));
    storage_.backend->next_attempt(
        id, std::move(failure),
        guard(attempt_done([this, id, done = std::move(done)](result<attempt_outcome> next) {
          const bool dead = next.has_value() && next.value().dead_lettered.has_value();
          done(std::move(next));
          // A dead letter's reply is announced like a stored one.
          if (dead)
            for (auto* session : storage_.sessions)
              if (session->on_reply) session->on_reply(id);
        })));
  }
  void acquire(std::string group, std::vector<std::int32_t> shards, acquire_done done) override {
    ++acquires;
    if (!storage_.reachable) return fail(std::move(done));
    std::vector<std::int32_t> held;
    for (auto shard : shards)
      if (storage_.locks.try_emplace({group, shard}, session_).first->second == session_)
        held.push_back(shard);
    later([done = std::move(done), held = std::move(held)]() mutable { done(std::move(held)); });
  }
  void release(std::string group, std::vector<std::int32_t> shards) override {
    for (auto shard : shards) {
      auto it = storage_.locks.find({group, shard});
      if (it != storage_.locks.end() && it->second == session_) storage_.locks.erase(it);
    }
  }
  void replies(std::vector<std::int64_t> ids, replies_done done) override {
    ++reply_reads;
    if (!storage_.reachable) return fail(std::move(done));
    storage_.backend->replies(std::move(ids), guard(std::move(done)));
  }
  void purge(purge_done done) override { storage_.backend->purge(guard(std::move(done))); }
  void stop() override { drop_locks(); }

  /// The session ends (a database restart, a network cut): its locks go at once.
  void end_session() {
    drop_locks();
    later([this] {
      if (on_locks_lost) on_locks_lost();
    });
  }
  bool holds_lock(const std::string& group, std::int32_t shard) const {
    auto it = storage_.locks.find({group, shard});
    return it != storage_.locks.end() && it->second == session_;
  }

  std::vector<std::pair<std::int64_t, bool>> completed;  // (id, announce) asked to store
  int acquires = 0;
  int reads = 0;
  int reply_reads = 0;
  int attempts_counted = 0;

 private:
  void drop_locks() {
    std::erase_if(storage_.locks, [this](const auto& lock) { return lock.second == session_; });
  }
  template <class F>
  void later(F f) {
    asio::post(storage_.io, [alive = alive_, f = std::move(f)]() mutable {
      if (*alive) f();
    });
  }
  template <class Done>
  void fail(Done done) {
    later([done = std::move(done)]() mutable {
      done(failure{errc::storage_error, "storage is unreachable"});
    });
  }
  template <class Done>
  Done guard(Done done) {
    return [alive = alive_, done = std::move(done)](auto value) mutable {
      if (*alive) done(std::move(value));
    };
  }

  shared_storage& storage_;
  int session_;
  bool shared_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

/// A runner's persisted-message side: its entity host and persisted_messages on its own
/// session. Calls its handlers make to other entities wait in `outbound` for the test.
struct runner_node {
  runner_node(asio::io_context& io, const entity_registry& registry, shared_storage& storage,
              int session, const storage_settings& settings, bool shared)
      : entities(io, entity_host_options{64, milliseconds(60000)},
                 [this](request_msg request, entity_host::reply_callback done) {
                   outbound.emplace_back(std::move(request), std::move(done));
                 }) {
    auto owned = std::make_unique<session_store>(storage, session, shared);
    store = owned.get();
    persisted =
        std::make_unique<persisted_messages>(io, std::move(owned), entities, registry, settings);
    persisted->start();
  }
  ~runner_node() {
    persisted->stop();
    entities.stop();
  }

  /// Answers the oldest call a handler is waiting for (Probe.Relay waits for an Echo).
  void answer_outbound(const std::string& text) {
    ASSERT_FALSE(outbound.empty());
    auto [request, done] = std::move(outbound.front());
    outbound.erase(outbound.begin());
    const auto packed = nlohmann::json::to_msgpack(
        {{"text", text}, {"entity_id", request.entity_id}, {"shard", 1}, {"activation", 1}});
    done(reply_msg::success(bytes(packed.begin(), packed.end())));
  }

  entity_host entities;
  std::vector<std::pair<request_msg, entity_host::reply_callback>> outbound;
  session_store* store = nullptr;
  std::unique_ptr<persisted_messages> persisted;
};

using reply_slot = std::shared_ptr<std::optional<reply_msg>>;

class persisted_messages_test : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(registry.load({test_plugin("probe_plugin")}).empty());
    probe = registry.find("Probe");
    ASSERT_NE(probe, nullptr);
    settings.poll_interval = milliseconds(100);
  }

  shared_storage& storage() {
    if (!storage_) storage_ = std::make_unique<shared_storage>(io, settings.batch_size);
    return *storage_;
  }
  runner_node& add_runner(bool shared = true) {
    nodes.push_back(std::make_unique<runner_node>(
        io, registry, storage(), static_cast<int>(nodes.size()) + 1, settings, shared));
    return *nodes.back();
  }
  static std::int32_t shard_of(const std::string& entity_id) {
    return shard_for(entity_id, shards_per_group);
  }
  static std::map<std::string, std::set<std::int32_t>> only(std::int32_t shard) {
    return {{"default", {shard}}};
  }
  bool wait_for_state(runner_node& node, std::int32_t shard, std::optional<shard_state> state,
                      milliseconds timeout = milliseconds(10000)) {
    return step_until(
        io, [&] { return node.persisted->state("default", shard) == state; }, timeout);
  }
  /// A runner serving the shard of `entity_id`.
  runner_node& serving_runner(const std::string& entity_id, bool shared = true) {
    auto& node = add_runner(shared);
    node.persisted->set_wanted(only(shard_of(entity_id)));
    EXPECT_TRUE(wait_for_state(node, shard_of(entity_id), shard_state::serving));
    return node;
  }

  request_msg request(const std::string& entity_id, const std::string& rpc,
                      const nlohmann::json& payload, const std::string& key) {
    auto out = make_request("Probe", entity_id, rpc, payload);
    out.primary_key = key;
    return out;
  }
  reply_slot submit(runner_node& node, request_msg call, milliseconds timeout = milliseconds(10000),
                    std::shared_ptr<request_control> control = {}) {
    auto slot = std::make_shared<std::optional<reply_msg>>();
    const entity_address address{probe, call.entity_id, shard_of(call.entity_id)};
    const auto rpc = *probe->rpc_index(call.rpc);
    // The first answer, as the runner sends it: a discarded call's later outcome goes nowhere.
    node.persisted->submit(
        address, rpc, std::move(call), steady_clock::now() + timeout,
        [slot](reply_msg&& reply) {
          if (!slot->has_value()) *slot = std::move(reply);
        },
        std::move(control));
    return slot;
  }
  /// A caller's side channel, as the runner makes one per request.
  std::shared_ptr<request_control> control_for(bool discard = false) {
    auto control = std::make_shared<request_control>(io, 0, discard, 65536);
    control->persisted = true;
    control->has_deadline = false;
    return control;
  }
  reply_slot append(runner_node& node, const std::string& entity_id, const std::string& sender,
                    int value, const std::string& key) {
    return submit(node, request(entity_id, "Append", {{"sender", sender}, {"value", value}}, key));
  }
  /// Stores a message the way a previous lock holder did before it died.
  std::int64_t store_directly(const std::string& entity_id, const std::string& sender, int value,
                              const std::string& key) {
    persisted_message message;
    message.group = "default";
    message.shard = shard_of(entity_id);
    message.request = request(entity_id, "Append", {{"sender", sender}, {"value", value}}, key);
    message.request.persisted = true;
    std::optional<std::int64_t> id;
    storage().backend->persist(std::move(message), [&](result<persist_outcome> stored) {
      ASSERT_TRUE(stored.has_value());
      id = stored.value().id;
    });
    EXPECT_TRUE(step_until(io, [&] { return id.has_value(); }));
    return id.value_or(0);
  }
  reply_msg wait_reply(const reply_slot& slot, milliseconds timeout = milliseconds(10000)) {
    EXPECT_TRUE(step_until(
        io, [&] { return slot->has_value(); }, timeout));
    return slot->value_or(reply_msg::failure(errc::deadline_exceeded, "no reply in the test"));
  }
  static std::vector<std::string> log_of(const reply_msg& reply) {
    return reply_json(reply).value("log", std::vector<std::string>{});
  }

  entity_registry registry;  // outlives the io_context: handlers may hold plugin code
  asio::io_context io;
  const entity_type* probe = nullptr;
  storage_settings settings;
  std::unique_ptr<shared_storage> storage_;
  std::vector<std::unique_ptr<runner_node>> nodes;  // after io and storage: destroyed first
};

TEST_F(persisted_messages_test, stores_a_message_runs_it_and_answers_with_its_stored_reply) {
  auto& node = serving_runner("alice");
  const auto reply = wait_reply(append(node, "alice", "s", 1, "k1"));
  ASSERT_TRUE(reply.ok()) << reply.message;
  EXPECT_EQ(log_of(reply), (std::vector<std::string>{"s:1"}));
  EXPECT_EQ(node.persisted->waiting_callers(), 0u);
  EXPECT_TRUE(step_until(io, [&] { return node.persisted->storing() == 0; }));
  ASSERT_EQ(node.store->completed.size(), 1u);
  EXPECT_FALSE(node.store->completed[0].second) << "the shard did not move: nothing to announce";

  // The store has the reply: storing the same key again finds it instead of a new message.
  persisted_message again;
  again.group = "default";
  again.shard = shard_of("alice");
  again.request = request("alice", "Append", {{"sender", "s"}, {"value", 1}}, "k1");
  std::optional<persist_outcome> found;
  storage().backend->persist(again, [&](result<persist_outcome> r) { found = r.value(); });
  ASSERT_TRUE(step_until(io, [&] { return found.has_value(); }));
  EXPECT_FALSE(found->inserted);
  ASSERT_TRUE(found->reply.has_value());
  EXPECT_EQ(found->reply->payload, reply.payload);
}

TEST_F(persisted_messages_test, tells_when_a_shard_serves_here_after_its_replay) {
  const std::string id = "frank";
  const auto shard = shard_of(id);
  store_directly(id, "old", 1, "k1");
  auto& node = add_runner();
  std::vector<std::pair<std::string, std::int32_t>> served;
  std::optional<shard_state> state_then;
  reply_slot from_hook;
  node.persisted->on_shard_serving = [&](const std::string& group, std::int32_t number) {
    served.emplace_back(group, number);
    state_then = node.persisted->state(group, number);
    // Work the hook starts runs after the replayed messages.
    if (!from_hook) from_hook = append(node, id, "hook", 2, "k2");
  };
  node.persisted->set_wanted(only(shard));
  ASSERT_TRUE(step_until(io, [&] { return !served.empty(); }));
  EXPECT_EQ(served, (std::vector<std::pair<std::string, std::int32_t>>{{"default", shard}}));
  EXPECT_EQ(state_then, shard_state::serving);
  const auto reply = wait_reply(from_hook);
  ASSERT_TRUE(reply.ok()) << reply.message;
  EXPECT_EQ(log_of(reply), (std::vector<std::string>{"old:1", "hook:2"}));

  // Released and taken again: it serves here again, and says so again.
  node.persisted->set_wanted({});
  ASSERT_TRUE(wait_for_state(node, shard, std::nullopt));
  node.persisted->set_wanted(only(shard));
  ASSERT_TRUE(step_until(io, [&] { return served.size() == 2; }));
  EXPECT_EQ(served.back(), (std::pair<std::string, std::int32_t>{"default", shard}));
}

TEST_F(persisted_messages_test, runs_a_repeated_primary_key_once_and_answers_every_caller) {
  auto& node = serving_runner("bob");
  // Two callers at once with one key, then a third after the first reply.
  auto first = append(node, "bob", "s", 1, "same");
  auto second = append(node, "bob", "s", 1, "same");
  const auto one = wait_reply(first);
  const auto two = wait_reply(second);
  const auto three = wait_reply(append(node, "bob", "s", 1, "same"));
  ASSERT_TRUE(one.ok()) << one.message;
  EXPECT_EQ(log_of(one), (std::vector<std::string>{"s:1"}));
  EXPECT_EQ(two.payload, one.payload);
  EXPECT_EQ(three.payload, one.payload);
  // Another key runs again, on the same entity.
  const auto other = wait_reply(append(node, "bob", "s", 2, "other"));
  EXPECT_EQ(log_of(other), (std::vector<std::string>{"s:1", "s:2"}));
}

TEST_F(persisted_messages_test, replays_stored_messages_in_id_order_before_new_ones) {
  settings.batch_size = 2;  // three stored messages take two reads
  store_directly("carol", "old", 1, "k1");
  store_directly("carol", "old", 2, "k2");
  store_directly("carol", "old", 3, "k3");
  auto& node = add_runner();
  node.persisted->set_wanted(only(shard_of("carol")));
  ASSERT_TRUE(step_until(io, [&] { return node.persisted->holds("default", shard_of("carol")); }));
  EXPECT_EQ(node.persisted->state("default", shard_of("carol")), shard_state::replaying);
  // Arrives while the replay still reads: it runs after every older message.
  const auto reply = wait_reply(append(node, "carol", "new", 4, "k4"));
  ASSERT_TRUE(reply.ok()) << reply.message;
  EXPECT_EQ(log_of(reply), (std::vector<std::string>{"old:1", "old:2", "old:3", "new:4"}));
  EXPECT_TRUE(wait_for_state(node, shard_of("carol"), shard_state::serving));
  EXPECT_EQ(node.store->reads, 3);  // 2 + 2 + none left
}

TEST_F(persisted_messages_test, dead_letters_a_message_cut_short_max_attempts_times) {
  // Three runners died while running it: two replays counted, the third attempt was counted
  // by next_attempt before it ran alone (what a crashing message goes through).
  const auto shard = shard_of("erin");
  std::string frank = "frank";  // another entity of the same shard
  for (int n = 0; shard_of(frank) != shard; ++n) frank = "frank-" + std::to_string(n);
  const auto poison = store_directly("erin", "poison", 1, "k1");
  store_directly(frank, "innocent", 2, "k2");
  for (int replay = 0; replay < 2; ++replay) {
    std::optional<bool> read;
    storage().backend->unprocessed(
        "default", shard, 0,
        [&](result<std::vector<persisted_message>> r) { read = r.has_value(); });
    ASSERT_TRUE(step_until(io, [&] { return read.has_value(); }));
  }
  std::optional<bool> counted;
  storage().backend->next_attempt(poison, std::nullopt,
                                  [&](result<attempt_outcome> r) { counted = r.has_value(); });
  ASSERT_TRUE(step_until(io, [&] { return counted.has_value(); }));

  auto& node = add_runner();
  const auto waiting = append(node, "erin", "poison", 1, "k1");  // a retry of its caller
  node.persisted->set_wanted(only(shard));
  const auto reply = wait_reply(waiting);
  EXPECT_EQ(reply.code, errc::defect);
  EXPECT_EQ(reply.message, "dead-lettered after 3 attempts: the runner running it stopped");
  // The shard goes on: the innocent message, a suspect too, runs alone and is answered.
  const auto innocent = wait_reply(append(node, frank, "innocent", 2, "k2"));
  ASSERT_TRUE(innocent.ok()) << innocent.message;
  EXPECT_EQ(log_of(innocent), (std::vector<std::string>{"innocent:2"}));
  EXPECT_TRUE(wait_for_state(node, shard, shard_state::serving));
  const auto later = wait_reply(append(node, "erin", "after", 3, "k3"));
  ASSERT_TRUE(later.ok()) << later.message;
  EXPECT_EQ(log_of(later), (std::vector<std::string>{"after:3"})) << "the poison never ran";
  // Every later caller with its key gets the dead letter's reply.
  EXPECT_EQ(wait_reply(append(node, "erin", "poison", 1, "k1")).message, reply.message);
}

TEST_F(persisted_messages_test,
       runs_suspects_alone_in_id_order_with_their_entity_s_later_messages) {
  // Two messages cut short twice each (suspects) and a fresh message of the first's entity.
  settings.batch_size = 10;
  store_directly("gina", "s", 1, "k1");
  store_directly("gina", "s", 2, "k2");
  const auto shard = shard_of("gina");
  for (int replay = 0; replay < 2; ++replay) {
    std::optional<bool> read;
    storage().backend->unprocessed(
        "default", shard, 0,
        [&](result<std::vector<persisted_message>> r) { read = r.has_value(); });
    ASSERT_TRUE(step_until(io, [&] { return read.has_value(); }));
  }
  store_directly("gina", "s", 3, "k3");
  auto& node = add_runner();
  node.persisted->set_wanted(only(shard));
  ASSERT_TRUE(wait_for_state(node, shard, shard_state::serving));
  EXPECT_EQ(node.store->attempts_counted, 2) << "each suspect is counted before it runs";
  const auto reply = wait_reply(append(node, "gina", "new", 4, "k4"));
  ASSERT_TRUE(reply.ok()) << reply.message;
  EXPECT_EQ(log_of(reply), (std::vector<std::string>{"s:1", "s:2", "s:3", "new:4"}));
}

TEST_F(persisted_messages_test, hands_a_moved_shard_over_once_its_entities_are_passivated) {
  const std::string id = "dave";
  const auto shard = shard_of(id);
  auto& old_owner = serving_runner(id);
  // A message runs at the old owner (its handler waits for another entity) and a scheduled
  // one waits there for its time.
  auto running = submit(old_owner, request(id, "Relay", {{"target", "x"}, {"text", "hi"}}, "r"));
  ASSERT_TRUE(step_until(io, [&] { return !old_owner.outbound.empty(); }));
  auto scheduled = submit(old_owner, [&] {
    auto call = request(id, "Stamp", nlohmann::json::object(), "later");
    call.deliver_at_ms = unix_ms() + 1500;  // well after the hand-over
    return call;
  }());
  ASSERT_TRUE(step_until(io, [&] { return old_owner.persisted->waiting_callers() == 2; }));

  // The manager moves the shard: the new owner cannot lock it while the old one runs it.
  auto& new_owner = add_runner();
  old_owner.persisted->set_wanted({});
  new_owner.persisted->set_wanted(only(shard));
  EXPECT_EQ(old_owner.persisted->state("default", shard), shard_state::releasing);
  ASSERT_TRUE(step_until(io, [&] { return new_owner.store->acquires >= 3; }));
  EXPECT_FALSE(new_owner.persisted->holds("default", shard));
  EXPECT_TRUE(old_owner.store->holds_lock("default", shard));

  // The running message finishes: its reply is stored and announced (its shard moved), the
  // entity is passivated, the lock goes and the new owner takes it and replays.
  old_owner.answer_outbound("hi back");
  const auto relayed = wait_reply(running);
  ASSERT_TRUE(relayed.ok()) << relayed.message;
  EXPECT_EQ(reply_json(relayed)["text"], "hi back");
  ASSERT_EQ(old_owner.store->completed.size(), 1u);
  EXPECT_TRUE(old_owner.store->completed[0].second);
  ASSERT_TRUE(wait_for_state(new_owner, shard, shard_state::serving));
  EXPECT_EQ(old_owner.persisted->state("default", shard), std::nullopt);
  EXPECT_EQ(old_owner.entities.active_entities(), 0u);

  // The scheduled message runs at the new owner, at its time; its caller, still waiting at
  // the old owner, hears of the reply by polling (nobody announced it).
  const auto stamped = wait_reply(scheduled);
  ASSERT_TRUE(stamped.ok()) << stamped.message;
  ASSERT_EQ(new_owner.store->completed.size(), 1u);
  EXPECT_FALSE(new_owner.store->completed[0].second);
  EXPECT_GT(old_owner.store->reply_reads, 0);
  EXPECT_EQ(new_owner.entities.activations(), 1u);
}

TEST_F(persisted_messages_test, delivers_a_scheduled_message_at_its_time) {
  auto& node = serving_runner("erin");
  const auto deliver_at = unix_ms() + 300;
  auto call = request("erin", "Stamp", nlohmann::json::object(), "at");
  call.deliver_at_ms = deliver_at;
  auto slot = submit(node, std::move(call));
  ASSERT_TRUE(step_until(io, [&] { return node.persisted->waiting_callers() == 1; }));
  EXPECT_EQ(node.entities.activations(), 0u) << "activated before its time";
  const auto reply = wait_reply(slot);
  ASSERT_TRUE(reply.ok()) << reply.message;
  EXPECT_GE(reply_json(reply)["at_ms"].get<std::int64_t>(), deliver_at);
}

TEST_F(persisted_messages_test, answers_a_caller_whose_deadline_passes_before_the_message_runs) {
  auto& node = serving_runner("frank");
  auto call = request("frank", "Stamp", nlohmann::json::object(), "far");
  call.deliver_at_ms = unix_ms() + 60000;
  auto patient = submit(node, call, milliseconds(120000));
  auto hasty = submit(node, call, milliseconds(200));  // the same message, a short deadline
  const auto reply = wait_reply(hasty);
  EXPECT_EQ(reply.code, errc::deadline_exceeded) << reply.message;
  EXPECT_FALSE(patient->has_value());
  EXPECT_EQ(node.persisted->waiting_callers(), 1u);
}

TEST_F(persisted_messages_test,
       a_scheduled_message_whose_shard_moves_from_a_private_store_is_sent_on) {
  // A store no other runner sees (memory storage): the new owner cannot replay the message,
  // so its caller hears NotOwner when it is due and its router retries at the new owner.
  const std::string id = "olga";
  const auto shard = shard_of(id);
  auto& node = serving_runner(id, /*shared=*/false);
  auto call = request(id, "Stamp", nlohmann::json::object(), "moving");
  call.deliver_at_ms = unix_ms() + 400;
  auto slot = submit(node, call, milliseconds(10000));
  ASSERT_TRUE(step_until(io, [&] { return node.persisted->waiting_callers() == 1; }));

  node.persisted->set_wanted({});
  ASSERT_TRUE(wait_for_state(node, shard, std::nullopt));
  const auto reply = wait_reply(slot, milliseconds(3000));
  EXPECT_EQ(reply.code, errc::not_owner) << reply.message;
  EXPECT_GE(unix_ms(), *call.deliver_at_ms) << "answered before it was due";
  EXPECT_EQ(node.persisted->waiting_callers(), 0u);
  EXPECT_EQ(node.entities.activations(), 0u) << "it ran where its shard no longer is";
}

TEST_F(persisted_messages_test, a_shard_whose_session_ends_while_a_message_runs_comes_back) {
  const std::string id = "grace";
  const auto shard = shard_of(id);
  auto& node = serving_runner(id);
  auto running = submit(node, request(id, "Relay", {{"target", "x"}, {"text", "hi"}}, "r"));
  ASSERT_TRUE(step_until(io, [&] { return !node.outbound.empty(); }));

  // The session ends (the storage itself stays up): the shard is suspended, not dropped,
  // and its lock comes back by itself (a retry timer: the assignment did not change).
  node.store->end_session();
  ASSERT_TRUE(step_until(io, [&] { return node.persisted->suspended("default", shard); }));
  EXPECT_EQ(node.entities.active_entities(), 1u);
  ASSERT_TRUE(wait_for_state(node, shard, shard_state::serving)) << "the lock did not come back";
  EXPECT_EQ(node.store->acquires, 2);
  // The message still runs, once: the replay after the lock came back saw it running.
  node.answer_outbound("hi back");
  const auto reply = wait_reply(running);
  ASSERT_TRUE(reply.ok()) << reply.message;
  EXPECT_TRUE(step_until(io, [&] { return node.persisted->storing() == 0; }));
  ASSERT_EQ(node.store->completed.size(), 1u);
  EXPECT_FALSE(node.store->completed[0].second) << "served here again: nobody waits elsewhere";
  EXPECT_TRUE(node.outbound.empty()) << "the running message ran a second time";
}

TEST_F(persisted_messages_test,
       a_storage_outage_suspends_shards_refuses_persisted_calls_and_recovers) {
  const std::string id = "heidi";
  const auto shard = shard_of(id);
  auto& node = serving_runner(id);
  auto running = submit(node, request(id, "Relay", {{"target", "x"}, {"text", "hi"}}, "r"));
  ASSERT_TRUE(step_until(io, [&] { return !node.outbound.empty(); }));

  storage().reachable = false;
  node.store->end_session();
  ASSERT_TRUE(step_until(io, [&] { return node.persisted->suspended("default", shard); }));
  EXPECT_FALSE(node.persisted->holds("default", shard));
  const auto refused = wait_reply(append(node, id, "s", 1, "during"));
  EXPECT_EQ(refused.code, errc::storage_error) << refused.message;

  // The running message finishes while the storage is away: its caller gets the reply, the
  // message stays unprocessed and runs again once the lock is back (at least once).
  node.answer_outbound("first run");
  const auto reply = wait_reply(running);
  ASSERT_TRUE(reply.ok()) << reply.message;
  ASSERT_EQ(node.store->completed.size(), 1u);
  EXPECT_TRUE(node.store->completed[0].second) << "finished while suspended: announced";

  // Retries back off while the storage is away (100, 200, 400 ms...), not one per tick.
  const int before = node.store->acquires;
  const auto since = steady_clock::now();
  ASSERT_TRUE(step_until(io, [&] { return node.store->acquires >= before + 3; }));
  EXPECT_GE(steady_clock::now() - since, milliseconds(500));

  storage().reachable = true;
  ASSERT_TRUE(step_until(
      io, [&] { return !node.outbound.empty(); }, milliseconds(5000)))
      << "the unstored message was not replayed";
  node.answer_outbound("second run");
  ASSERT_TRUE(wait_for_state(node, shard, shard_state::serving));
  EXPECT_TRUE(step_until(io, [&] { return node.store->completed.size() == 2; }));
  const auto after = wait_reply(append(node, id, "s", 2, "after"));
  EXPECT_TRUE(after.ok()) << after.message;
}

TEST_F(persisted_messages_test, passivates_a_suspended_shard_that_another_runner_locked_meanwhile) {
  const std::string id = "ivan";
  const auto shard = shard_of(id);
  auto& node = serving_runner(id);
  ASSERT_TRUE(wait_reply(append(node, id, "s", 1, "k")).ok());
  EXPECT_EQ(node.entities.active_entities(), 1u);

  storage().reachable = false;
  node.store->end_session();
  ASSERT_TRUE(step_until(io, [&] { return node.persisted->suspended("default", shard); }));
  EXPECT_EQ(node.entities.active_entities(), 1u) << "entities stay while the storage is away";
  storage().locks[{"default", shard}] = 99;  // another runner's session, once it is back
  storage().reachable = true;

  ASSERT_TRUE(step_until(io, [&] { return node.entities.active_entities() == 0; }));
  EXPECT_FALSE(node.persisted->suspended("default", shard));
  EXPECT_FALSE(node.persisted->holds("default", shard));
  // It keeps asking (the assignment still says the shard is ours) and gets it once free.
  storage().locks.erase({"default", shard});
  EXPECT_TRUE(wait_for_state(node, shard, shard_state::serving));
}

TEST_F(persisted_messages_test, keeps_a_moved_shard_locked_until_its_busy_entity_is_passivated) {
  const std::string id = "judy";
  const auto shard = shard_of(id);
  auto& node = serving_runner(id);
  auto running = submit(node, request(id, "Relay", {{"target", "x"}, {"text", "hi"}}, "r"));
  ASSERT_TRUE(step_until(io, [&] { return !node.outbound.empty(); }));
  node.persisted->set_wanted({});
  EXPECT_EQ(node.persisted->state("default", shard), shard_state::releasing);
  EXPECT_TRUE(node.persisted->holds("default", shard));
  EXPECT_TRUE(node.store->holds_lock("default", shard));
  node.answer_outbound("done");
  ASSERT_TRUE(wait_reply(running).ok());
  EXPECT_TRUE(step_until(io, [&] { return !node.store->holds_lock("default", shard); }));
  EXPECT_EQ(node.persisted->state("default", shard), std::nullopt);
  EXPECT_EQ(node.persisted->held_shards(), 0u);
}

TEST_F(persisted_messages_test, answers_not_owner_when_an_unshared_store_s_shard_moves_meanwhile) {
  const std::string id = "kim";
  auto& node = serving_runner(id, /*shared=*/false);
  auto slot = append(node, id, "s", 1, "k");  // stored while the shard moves away
  node.persisted->set_wanted({});
  const auto reply = wait_reply(slot);
  EXPECT_EQ(reply.code, errc::not_owner) << reply.message;
  EXPECT_EQ(node.entities.activations(), 0u);
}

TEST_F(persisted_messages_test,
       a_message_refused_by_a_fenced_runner_stays_stored_for_the_next_holder) {
  const std::string id = "lena";
  const auto shard = shard_of(id);
  auto& fenced = serving_runner(id);
  // What a runner that was frozen answers from its entity host: nothing reaches the plugin.
  fenced.entities.may_run = [](const std::string&, std::int32_t) { return false; };
  const auto refused = wait_reply(append(fenced, id, "s", 1, "k1"));
  EXPECT_EQ(refused.code, errc::not_owner) << refused.message;
  EXPECT_TRUE(fenced.store->completed.empty()) << "a message that never ran was stored as done";
  EXPECT_EQ(fenced.persisted->waiting_callers(), 0u);

  // The fenced runner gives the shard up; its next holder replays the message, once, and
  // the caller's retry with the same key gets that run's reply.
  fenced.persisted->set_wanted({});
  ASSERT_TRUE(wait_for_state(fenced, shard, std::nullopt));
  auto& next = serving_runner(id);
  const auto retried = wait_reply(append(next, id, "s", 1, "k1"));
  ASSERT_TRUE(retried.ok()) << retried.message;
  EXPECT_EQ(log_of(retried), (std::vector<std::string>{"s:1"}));
  ASSERT_TRUE(step_until(io, [&] { return next.persisted->storing() == 0; }));
  EXPECT_EQ(next.store->completed.size(), 1u);
}

TEST_F(persisted_messages_test,
       an_interrupted_scheduled_message_is_stored_cancelled_and_never_runs) {
  const std::string id = "mona";
  const auto shard = shard_of(id);
  auto& node = serving_runner(id);
  auto call = request(id, "Append", {{"sender", "late"}, {"value", 1}}, "k1");
  call.deliver_at_ms = unix_ms() + 2000;
  const auto control = control_for();
  auto slot = submit(node, call, milliseconds(10000), control);
  ASSERT_TRUE(step_until(io, [&] { return node.persisted->waiting_callers() == 1; }));

  const auto asked = steady_clock::now();
  control->cancel(errc::cancelled, "interrupted by the caller");
  const auto reply = wait_reply(slot, milliseconds(1000));
  EXPECT_EQ(reply.code, errc::cancelled) << reply.message;
  EXPECT_LT(steady_clock::now() - asked, milliseconds(500)) << "not answered at once";
  EXPECT_EQ(node.persisted->waiting_callers(), 0u);
  ASSERT_TRUE(step_until(io, [&] { return node.persisted->storing() == 0; }));
  ASSERT_EQ(node.store->completed.size(), 1u) << "stored as processed";
  // A retry with its primary key gets the stored Cancelled, and nothing runs.
  const auto retried = wait_reply(submit(node, call));
  EXPECT_EQ(retried.code, errc::cancelled) << retried.message;

  // The shard moves to another runner, which replays it; its time passes there.
  node.persisted->set_wanted({});
  ASSERT_TRUE(wait_for_state(node, shard, std::nullopt));
  auto& next = serving_runner(id);
  ASSERT_TRUE(step_until(
      io, [&] { return unix_ms() > *call.deliver_at_ms + 200; }, milliseconds(5000)));
  const auto after = wait_reply(append(next, id, "after", 2, "k2"));
  ASSERT_TRUE(after.ok()) << after.message;
  EXPECT_EQ(log_of(after), (std::vector<std::string>{"after:2"})) << "the interrupted one ran";
  EXPECT_EQ(node.entities.activations(), 0u);
}

TEST_F(persisted_messages_test, an_interrupted_message_queued_behind_a_running_one_never_runs) {
  const std::string id = "nina";
  auto& node = serving_runner(id);
  // Relay holds the entity until the test answers the call it makes.
  auto running = submit(node, request(id, "Relay", {{"target", "x"}, {"text", "hi"}}, "r"));
  ASSERT_TRUE(step_until(io, [&] { return !node.outbound.empty(); }));
  const auto control = control_for();
  auto queued = submit(node, request(id, "Append", {{"sender", "queued"}, {"value", 1}}, "k1"),
                       milliseconds(10000), control);
  ASSERT_TRUE(step_until(io, [&] { return node.persisted->waiting_callers() == 2; }));
  // Let it reach the mailbox (it is handed over right after it is stored).
  io.poll();

  control->cancel(errc::cancelled, "interrupted by the caller");
  const auto reply = wait_reply(queued, milliseconds(1000));
  EXPECT_EQ(reply.code, errc::cancelled) << reply.message;
  EXPECT_FALSE(running->has_value());

  node.answer_outbound("hi back");
  ASSERT_TRUE(wait_reply(running).ok());
  const auto after = wait_reply(append(node, id, "after", 2, "k2"));
  ASSERT_TRUE(after.ok()) << after.message;
  EXPECT_EQ(log_of(after), (std::vector<std::string>{"after:2"})) << "the interrupted one ran";
  // Stored as processed: a retry gets Cancelled, it is not run again.
  const auto retried = wait_reply(append(node, id, "queued", 1, "k1"));
  EXPECT_EQ(retried.code, errc::cancelled) << retried.message;
}

TEST_F(persisted_messages_test, an_interrupt_of_a_running_message_tells_its_handler) {
  const std::string id = "olga";
  auto& node = serving_runner(id);
  const auto control = control_for();
  auto running = submit(node, request(id, "Relay", {{"target", "x"}, {"text", "hi"}}, "r"),
                        milliseconds(10000), control);
  ASSERT_TRUE(step_until(io, [&] { return !node.outbound.empty(); }));
  control->cancel(errc::cancelled, "interrupted by the caller");
  // Its pending call ends with the cancellation; what the handler ends with is stored.
  const auto reply = wait_reply(running, milliseconds(2000));
  EXPECT_EQ(reply.code, errc::cancelled) << reply.message;
  ASSERT_TRUE(step_until(io, [&] { return node.persisted->storing() == 0; }));
  EXPECT_EQ(node.store->completed.size(), 1u);
  const auto retried =
      wait_reply(submit(node, request(id, "Relay", {{"target", "x"}, {"text", "hi"}}, "r")));
  EXPECT_EQ(retried.code, errc::cancelled) << retried.message;
}

TEST_F(persisted_messages_test, an_interrupt_during_the_replay_keeps_the_message_from_running) {
  const std::string id = "petra";
  const auto shard = shard_of(id);
  store_directly(id, "old", 1, "k1");
  auto& node = add_runner();
  // Its caller retries with the key before the shard is served here: it waits for the replay.
  const auto control = control_for();
  auto slot = submit(node, request(id, "Append", {{"sender", "old"}, {"value", 1}}, "k1"),
                     milliseconds(10000), control);
  node.persisted->set_wanted(only(shard));
  ASSERT_TRUE(step_until(io, [&] { return node.persisted->holds("default", shard); }));
  control->cancel(errc::cancelled, "interrupted by the caller");
  // The replay's read is in flight: what it returns is not run once the interrupt came.
  const auto reply = wait_reply(slot, milliseconds(1000));
  EXPECT_EQ(reply.code, errc::cancelled) << reply.message;
  ASSERT_TRUE(wait_for_state(node, shard, shard_state::serving));
  const auto after = wait_reply(append(node, id, "after", 2, "k2"));
  ASSERT_TRUE(after.ok()) << after.message;
  EXPECT_EQ(log_of(after), (std::vector<std::string>{"after:2"})) << "the interrupted one ran";
}

TEST_F(persisted_messages_test, a_discarded_message_is_answered_once_stored_and_still_runs) {
  const std::string id = "quinn";
  auto& node = serving_runner(id);
  auto running = submit(node, request(id, "Relay", {{"target", "x"}, {"text", "hi"}}, "r"));
  ASSERT_TRUE(step_until(io, [&] { return !node.outbound.empty(); }));
  auto call = request(id, "Append", {{"sender", "discarded"}, {"value", 1}}, "k1");
  call.discard = true;
  const auto accepted = wait_reply(submit(node, call, milliseconds(10000), control_for(true)));
  ASSERT_TRUE(accepted.ok()) << accepted.message;
  EXPECT_TRUE(accepted.payload.empty());
  EXPECT_FALSE(running->has_value()) << "answered only after it ran";

  node.answer_outbound("hi back");
  ASSERT_TRUE(wait_reply(running).ok());
  const auto after = wait_reply(append(node, id, "after", 2, "k2"));
  ASSERT_TRUE(after.ok()) << after.message;
  EXPECT_EQ(log_of(after), (std::vector<std::string>{"discarded:1", "after:2"}));
  // A duplicate is accepted at once too, without a second run.
  const auto again = wait_reply(submit(node, call, milliseconds(10000), control_for(true)));
  ASSERT_TRUE(again.ok()) << again.message;
  EXPECT_TRUE(again.payload.empty());
}

}  // namespace
}  // namespace cluster::host
