// The SDK's C++ wrapper driven through the C descriptors it builds, with a fake host:
// decoding, error mapping, coroutine handlers, per-type dispatch, activation, declarations.
#include <gtest/gtest.h>

#include <cluster/sdk.hpp>
#include <cstring>
#include <map>

namespace {

// --- a fake runner: records logs, timers and calls; the test fires them ----------------
struct fake_host {
  std::vector<std::pair<std::int32_t, std::string>> logs;
  std::vector<std::pair<void (*)(void*), void*>> timers;
  struct pending_call {
    std::string type, id, rpc;
    cluster_call_done_fn done;
    void* user;
  };
  std::vector<pending_call> calls;

  static fake_host& of(void* host_ctx) { return *static_cast<fake_host*>(host_ctx); }
  static void log(void* host_ctx, std::int32_t level, const char* message) {
    of(host_ctx).logs.emplace_back(level, message);
  }
  static void call(void* host_ctx, const char* type, const char* id, const char* rpc,
                   const std::uint8_t*, std::size_t, const char*, cluster_call_done_fn done,
                   void* user) {
    of(host_ctx).calls.push_back(pending_call{type, id, rpc, done, user});
  }
  static std::int64_t now_ms(void*) { return 1234; }
  static void sleep(void* host_ctx, std::int64_t, void (*fire)(void*), void* user) {
    of(host_ctx).timers.emplace_back(fire, user);
  }
  static constexpr cluster_host_api api = {
      sizeof(cluster_host_api), 0, &log, &call, &now_ms, &sleep};

  cluster_call_context context(const char* type, const char* rpc) {
    cluster_call_context ctx{};
    ctx.struct_size = sizeof ctx;
    ctx.shard = 3;
    ctx.entity_type = type;
    ctx.entity_id = "e1";
    ctx.shard_group = "default";
    ctx.rpc = rpc;
    ctx.api = &api;
    ctx.host_ctx = this;
    return ctx;
  }
};

struct reply_record {
  int count = 0;
  std::int32_t status = -1;
  std::string tag, message;
  std::vector<std::uint8_t> data;

  static void on_reply(void* self, std::int32_t status, const char* tag, const char* message,
                       const std::uint8_t* data, std::size_t size) {
    auto& r = *static_cast<reply_record*>(self);
    ++r.count;
    r.status = status;
    r.tag = tag ? tag : "";
    r.message = message ? message : "";
    r.data.assign(data, data + size);
  }
  template <class T>
  T as() const {
    return msgpack::unpack(reinterpret_cast<const char*>(data.data()), data.size()).get().as<T>();
  }
};

template <class T>
std::vector<std::uint8_t> pack(const T& value) {
  msgpack::sbuffer buffer;
  msgpack::pack(buffer, value);
  return {buffer.data(), buffer.data() + buffer.size()};
}

// --- entities under test ------------------------------------------------------------------
struct Add {
  struct Request {
    std::int64_t a = 0, b = 0;
    MSGPACK_DEFINE_MAP(a, b);
  };
  struct Reply {
    std::int64_t sum = 0;
    MSGPACK_DEFINE_MAP(sum);
  };
};
struct Nothing {
  using Request = cluster::empty;
  using Reply = cluster::empty;
};
struct Text {
  using Request = cluster::empty;
  struct Reply {
    std::string text;
    MSGPACK_DEFINE_MAP(text);
  };
};

class Worker {
 public:
  Add::Reply add(const Add::Request& r, cluster::context&) { return {r.a + r.b}; }
  Nothing::Reply not_found(const Nothing::Request&, cluster::context&) {
    throw cluster::app_error("NotFound", "no such thing");
  }
  Nothing::Reply broken(const Nothing::Request&, cluster::context&) {
    throw std::logic_error("broken invariant");
  }
  Nothing::Reply odd(const Nothing::Request&, cluster::context&) { throw 42; }
  cluster::task<Add::Reply> slow_add(const Add::Request& r, cluster::context& ctx) {
    co_await ctx.sleep_ms(10);
    co_return Add::Reply{r.a + r.b + ++resumed_};
  }
  cluster::task<Nothing::Reply> slow_fail(const Nothing::Request&, cluster::context& ctx) {
    co_await ctx.sleep_ms(10);
    throw cluster::app_error("Late", "failed after a pause");
  }
  cluster::task<Text::Reply> relay(const Text::Request&, cluster::context& ctx) {
    const auto reply = co_await ctx.call<Text::Reply>("Other", "o1", "Get", cluster::empty{});
    co_return Text::Reply{"got " + reply.text};
  }
  cluster::task<Text::Reply> relay_error(const Text::Request&, cluster::context& ctx) {
    try {
      co_await ctx.call<Text::Reply>("Other", "o1", "Get", cluster::empty{});
    } catch (const cluster::call_error& e) {
      co_return Text::Reply{"caught " + e.tag()};
    }
    co_return Text::Reply{"not caught"};
  }
  Text::Reply left(const Text::Request&, cluster::context&) { return {"left"}; }
  Text::Reply right(const Text::Request&, cluster::context&) { return {"right"}; }

 private:
  std::int64_t resumed_ = 0;
};

class Greeted {
 public:
  explicit Greeted(cluster::context& ctx) : seen_(std::string(ctx.entity_id())) {
    ctx.log_info("created " + seen_ + " at " + std::to_string(ctx.now_ms()));
  }
  Text::Reply who(const Text::Request&, cluster::context&) { return {seen_}; }

 private:
  std::string seen_;
};

class Refuses {
 public:
  Refuses() { throw std::runtime_error("no resources"); }
  Nothing::Reply noop(const Nothing::Request&, cluster::context&) { return {}; }
};

// One entity type of a plugin record, driven through its C callbacks like the runner does.
class driven_type {
 public:
  explicit driven_type(const cluster_entity_descriptor* d) : d_(d) {}
  std::uint32_t index(const std::string& rpc) const {
    for (std::uint32_t i = 0; i < d_->rpc_count; ++i)
      if (rpc == d_->rpcs[i]->name) return i;
    ADD_FAILURE() << "no RPC " << rpc;
    return 0;
  }
  void* create(fake_host& host) {
    auto ctx = host.context(d_->name, "");
    return d_->create(d_->type_data, &ctx);
  }
  void destroy(void* instance) { d_->destroy(d_->type_data, instance); }
  /// Runs `rpc` on `instance`; the context lives in `ctx_` for as long as a coroutine needs.
  void handle(fake_host& host, void* instance, const std::string& rpc,
              const std::vector<std::uint8_t>& payload, reply_record& reply) {
    ctx_ = host.context(d_->name, "rpc");
    d_->handle(d_->type_data, instance, index(rpc), payload.data(), payload.size(), &ctx_,
               &reply_record::on_reply, &reply);
  }

 private:
  const cluster_entity_descriptor* d_;
  cluster_call_context ctx_{};
};

cluster::detail::plugin_record worker_plugin() {
  return cluster::detail::plugin_record(cluster::entity<Worker>("Worker")
                                            .rpc<Add>("Add", &Worker::add, cluster::persisted)
                                            .rpc<Nothing>("NotFound", &Worker::not_found)
                                            .rpc<Nothing>("Broken", &Worker::broken)
                                            .rpc<Nothing>("Odd", &Worker::odd)
                                            .rpc<Add>("SlowAdd", &Worker::slow_add)
                                            .rpc<Nothing>("SlowFail", &Worker::slow_fail)
                                            .rpc<Text>("Relay", &Worker::relay)
                                            .rpc<Text>("RelayError", &Worker::relay_error));
}

class sdk_worker : public ::testing::Test {
 protected:
  void SetUp() override { instance = type.create(host); }
  void TearDown() override { type.destroy(instance); }
  void run(const std::string& rpc, const std::vector<std::uint8_t>& payload) {
    type.handle(host, instance, rpc, payload, reply);
  }

  cluster::detail::plugin_record plugin = worker_plugin();
  driven_type type{plugin.descriptor()->entities[0]};
  fake_host host;
  void* instance = nullptr;
  reply_record reply;
};

TEST_F(sdk_worker, decodes_the_request_and_encodes_the_reply) {
  run("Add", pack(std::map<std::string, int>{{"a", 2}, {"b", 40}}));
  ASSERT_EQ(reply.count, 1);
  ASSERT_EQ(reply.status, CLUSTER_STATUS_OK) << reply.message;
  EXPECT_EQ(reply.as<Add::Reply>().sum, 42);
}

TEST_F(sdk_worker, answers_bad_payload_for_bytes_that_are_not_messagepack) {
  run("Add", {0xc1});
  EXPECT_EQ(reply.count, 1);
  EXPECT_EQ(reply.status, CLUSTER_STATUS_BAD_PAYLOAD);
  EXPECT_EQ(reply.tag, "BadPayload");
}

TEST_F(sdk_worker, answers_bad_payload_for_a_field_of_the_wrong_type) {
  run("Add", pack(std::map<std::string, std::string>{{"a", "two"}}));
  EXPECT_EQ(reply.count, 1);
  EXPECT_EQ(reply.status, CLUSTER_STATUS_BAD_PAYLOAD);
  EXPECT_NE(reply.message.find("wrong type"), std::string::npos) << reply.message;
}

TEST_F(sdk_worker, answers_an_app_error_with_its_tag_and_message) {
  run("NotFound", pack(std::map<std::string, int>{}));
  EXPECT_EQ(reply.count, 1);
  EXPECT_EQ(reply.status, CLUSTER_STATUS_APPLICATION_ERROR);
  EXPECT_EQ(reply.tag, "NotFound");
  EXPECT_EQ(reply.message, "no such thing");
}

TEST_F(sdk_worker, answers_defect_for_any_other_exception) {
  run("Broken", pack(std::map<std::string, int>{}));
  EXPECT_EQ(reply.count, 1);
  EXPECT_EQ(reply.status, CLUSTER_STATUS_DEFECT);
  EXPECT_EQ(reply.message, "broken invariant");
  reply_record odd;
  type.handle(host, instance, "Odd", pack(std::map<std::string, int>{}), odd);
  EXPECT_EQ(odd.count, 1);
  EXPECT_EQ(odd.status, CLUSTER_STATUS_DEFECT);
  EXPECT_EQ(odd.message, "unknown exception");
}

TEST_F(sdk_worker, answers_defect_for_an_rpc_index_out_of_range) {
  auto ctx = host.context("Worker", "?");
  const auto* d = plugin.descriptor()->entities[0];
  d->handle(d->type_data, instance, d->rpc_count, nullptr, 0, &ctx, &reply_record::on_reply,
            &reply);
  EXPECT_EQ(reply.count, 1);
  EXPECT_EQ(reply.status, CLUSTER_STATUS_DEFECT);
}

TEST_F(sdk_worker, replies_to_a_coroutine_handler_once_it_finishes) {
  run("SlowAdd", pack(std::map<std::string, int>{{"a", 1}, {"b", 2}}));
  EXPECT_EQ(reply.count, 0);  // suspended in its sleep
  ASSERT_EQ(host.timers.size(), 1u);
  host.timers[0].first(host.timers[0].second);
  ASSERT_EQ(reply.count, 1);
  ASSERT_EQ(reply.status, CLUSTER_STATUS_OK) << reply.message;
  EXPECT_EQ(reply.as<Add::Reply>().sum, 4);  // 1 + 2 + the first resumption
}

TEST_F(sdk_worker, answers_the_app_error_a_coroutine_throws_after_a_pause) {
  run("SlowFail", pack(std::map<std::string, int>{}));
  ASSERT_EQ(host.timers.size(), 1u);
  EXPECT_EQ(reply.count, 0);
  host.timers[0].first(host.timers[0].second);
  EXPECT_EQ(reply.count, 1);
  EXPECT_EQ(reply.status, CLUSTER_STATUS_APPLICATION_ERROR);
  EXPECT_EQ(reply.tag, "Late");
}

TEST_F(sdk_worker, resumes_a_call_with_the_callees_reply) {
  run("Relay", pack(std::map<std::string, int>{}));
  ASSERT_EQ(host.calls.size(), 1u);
  EXPECT_EQ(host.calls[0].type, "Other");
  EXPECT_EQ(host.calls[0].rpc, "Get");
  EXPECT_EQ(reply.count, 0);
  const auto bytes = pack(std::map<std::string, std::string>{{"text", "hi"}});
  host.calls[0].done(host.calls[0].user, CLUSTER_STATUS_OK, nullptr, nullptr, bytes.data(),
                     bytes.size());
  ASSERT_EQ(reply.count, 1);
  EXPECT_EQ(reply.as<Text::Reply>().text, "got hi");
}

TEST_F(sdk_worker, turns_a_failed_call_into_a_call_error_with_its_tag) {
  run("RelayError", pack(std::map<std::string, int>{}));
  ASSERT_EQ(host.calls.size(), 1u);
  host.calls[0].done(host.calls[0].user, CLUSTER_STATUS_CALL_FAILED, "UnknownRpc", "no Get",
                     nullptr, 0);
  ASSERT_EQ(reply.count, 1);
  EXPECT_EQ(reply.as<Text::Reply>().text, "caught UnknownRpc");
}

TEST(sdk, two_entity_types_on_one_class_dispatch_to_their_own_handlers) {
  const cluster::detail::plugin_record plugin(
      cluster::entity<Worker>("Left").rpc<Text>("Who", &Worker::left),
      cluster::entity<Worker>("Right")
          .rpc<Text>("Other", &Worker::right)
          .rpc<Text>("Who", &Worker::right));
  fake_host host;
  for (const auto& [index, expected] : {std::pair{0, "left"}, std::pair{1, "right"}}) {
    driven_type type(plugin.descriptor()->entities[index]);
    void* instance = type.create(host);
    reply_record reply;
    type.handle(host, instance, "Who", pack(std::map<std::string, int>{}), reply);
    ASSERT_EQ(reply.count, 1);
    EXPECT_EQ(reply.as<Text::Reply>().text, expected);
    type.destroy(instance);
  }
}

TEST(sdk, gives_a_constructor_that_takes_the_context_a_working_one) {
  const cluster::detail::plugin_record plugin(
      cluster::entity<Greeted>("Greeted").rpc<Text>("Who", &Greeted::who));
  fake_host host;
  driven_type type(plugin.descriptor()->entities[0]);
  void* instance = type.create(host);
  ASSERT_NE(instance, nullptr);
  ASSERT_EQ(host.logs.size(), 1u);
  EXPECT_EQ(host.logs[0], (std::pair<std::int32_t, std::string>{1, "created e1 at 1234"}));
  reply_record reply;
  type.handle(host, instance, "Who", pack(std::map<std::string, int>{}), reply);
  EXPECT_EQ(reply.as<Text::Reply>().text, "e1");
  type.destroy(instance);
}

TEST(sdk, logs_why_a_constructor_failed_and_returns_no_instance) {
  const cluster::detail::plugin_record plugin(
      cluster::entity<Refuses>("Refuses").rpc<Nothing>("Noop", &Refuses::noop));
  fake_host host;
  driven_type type(plugin.descriptor()->entities[0]);
  EXPECT_EQ(type.create(host), nullptr);
  ASSERT_EQ(host.logs.size(), 1u);
  EXPECT_EQ(host.logs[0].first, 3);
  EXPECT_EQ(host.logs[0].second, "activation failed: no resources");
}

TEST(sdk, stamps_the_abi_the_sizes_and_the_plugins_version) {
  const cluster::detail::plugin_record unnamed(
      cluster::entity<Worker>("A").rpc<Text>("Who", &Worker::left),
      cluster::entity<Worker>("B").group("g").rpc<Text>("Who", &Worker::right, cluster::persisted));
  const auto* d = unnamed.descriptor();
  EXPECT_EQ(d->abi_major, static_cast<std::uint32_t>(CLUSTER_ABI_MAJOR));
  EXPECT_EQ(d->abi_minor, static_cast<std::uint32_t>(CLUSTER_ABI_MINOR));
  EXPECT_EQ(d->struct_size, sizeof(cluster_plugin_descriptor));
  EXPECT_STREQ(d->plugin_name, "A,B");
  EXPECT_STREQ(d->plugin_version, "0.0.0");
  ASSERT_EQ(d->entity_count, 2u);
  EXPECT_EQ(d->entities[1]->struct_size, sizeof(cluster_entity_descriptor));
  EXPECT_STREQ(d->entities[0]->shard_group, "default");
  EXPECT_STREQ(d->entities[1]->shard_group, "g");
  EXPECT_EQ(d->entities[1]->rpcs[0]->struct_size, sizeof(cluster_rpc_descriptor));
  EXPECT_EQ(d->entities[1]->rpcs[0]->flags, CLUSTER_RPC_PERSISTED);
  EXPECT_EQ(d->entities[0]->rpcs[0]->flags, 0u);
  EXPECT_NE(d->entities[0]->type_data, d->entities[1]->type_data);

  const cluster::detail::plugin_record named(
      cluster::plugin("workers").version("1.2.0"),
      cluster::entity<Worker>("A").rpc<Text>("Who", &Worker::left));
  EXPECT_STREQ(named.descriptor()->plugin_name, "workers");
  EXPECT_STREQ(named.descriptor()->plugin_version, "1.2.0");
}

TEST(sdk, refuses_declarations_the_runner_would_refuse) {
  using cluster::detail::plugin_record;
  EXPECT_THROW(plugin_record(cluster::entity<Worker>("").rpc<Text>("Who", &Worker::left)),
               std::invalid_argument);
  EXPECT_THROW(plugin_record(cluster::entity<Worker>("A")
                                 .rpc<Text>("Who", &Worker::left)
                                 .rpc<Text>("Who", &Worker::right)),
               std::invalid_argument);
  EXPECT_THROW(plugin_record(cluster::entity<Worker>("A").rpc<Text>("Who", &Worker::left),
                             cluster::entity<Worker>("A").rpc<Text>("Who", &Worker::right)),
               std::invalid_argument);
  EXPECT_THROW(plugin_record(cluster::plugin("p")), std::invalid_argument);
}

// A streaming RPC: declared by its handler's return type; it cannot also be persisted.
struct Countdown {
  using Request = cluster::empty;
  using Item = int;
  using Reply = void;
};
struct Streamer {
  cluster::stream<int> countdown(const cluster::empty&, cluster::context&) {
    for (int n = 3; n > 0; --n) co_yield n;
  }
};

TEST(sdk, a_handler_returning_a_stream_declares_a_streaming_rpc_that_is_never_persisted) {
  using cluster::detail::plugin_record;
  const plugin_record plugin(
      cluster::entity<Streamer>("S").rpc<Countdown>("Countdown", &Streamer::countdown));
  const auto* rpc = plugin.descriptor()->entities[0]->rpcs[0];
  EXPECT_EQ(rpc->flags, CLUSTER_RPC_STREAM);
  try {
    plugin_record refused(cluster::entity<Streamer>("S").rpc<Countdown>(
        "Countdown", &Streamer::countdown, cluster::persisted));
    FAIL() << "a persisted streaming RPC was accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_STREQ(e.what(), "RPC Countdown of S is both persisted and streaming");
  }
}

TEST(sdk, writes_the_options_of_a_type_and_read_only_rpcs_into_its_descriptor) {
  const cluster::detail::plugin_record plugin(
      cluster::entity<Worker>("Tuned")
          .keep_alive()
          .max_idle_ms(1500)
          .mailbox_capacity(7)
          .concurrency(3)
          .rpc<Text>("Who", &Worker::left, cluster::read_only)
          .rpc<Text>("Log", &Worker::right, cluster::persisted | cluster::read_only)
          .rpc<Text>("Set", &Worker::right),
      cluster::entity<Worker>("Plain").rpc<Text>("Who", &Worker::left));
  const auto* tuned = plugin.descriptor()->entities[0];
  EXPECT_EQ(tuned->flags, CLUSTER_ENTITY_KEEP_ALIVE);
  EXPECT_EQ(tuned->max_idle_ms, 1500);
  EXPECT_EQ(tuned->mailbox_capacity, 7u);
  EXPECT_EQ(tuned->concurrency, 3u);
  EXPECT_EQ(tuned->rpcs[0]->flags, CLUSTER_RPC_READ_ONLY);
  EXPECT_EQ(tuned->rpcs[1]->flags, CLUSTER_RPC_PERSISTED | CLUSTER_RPC_READ_ONLY);
  EXPECT_EQ(tuned->rpcs[2]->flags, 0u);
  // Unset options are 0: the runner's defaults.
  const auto* plain = plugin.descriptor()->entities[1];
  EXPECT_EQ(plain->flags, 0u);
  EXPECT_EQ(plain->max_idle_ms, 0);
  EXPECT_EQ(plain->mailbox_capacity, 0u);
  EXPECT_EQ(plain->concurrency, 0u);
  EXPECT_EQ(plain->cron_schedule, nullptr);

  using cluster::detail::plugin_record;
  EXPECT_THROW(
      plugin_record(cluster::entity<Worker>("A").concurrency(0).rpc<Text>("Who", &Worker::left)),
      std::invalid_argument);
  EXPECT_THROW(
      plugin_record(cluster::entity<Worker>("A").max_idle_ms(-5).rpc<Text>("Who", &Worker::left)),
      std::invalid_argument);
  EXPECT_THROW(plugin_record(cluster::entity<Worker>("A").mailbox_capacity(0).rpc<Text>(
                   "Who", &Worker::left)),
               std::invalid_argument);
}

TEST(sdk, context_gives_the_fencing_token_of_the_call) {
  fake_host host;
  auto raw = host.context("T", "Who");
  EXPECT_EQ(cluster::context(&raw).fencing_token(), 0);
  raw.fencing_token = 42;
  EXPECT_EQ(cluster::context(&raw).fencing_token(), 42);
}

TEST(sdk, writes_an_entry_failure_into_the_runners_buffer_truncated) {
  char buffer[8];
  std::memset(buffer, 'x', sizeof buffer);
  cluster_load_context load{};
  load.struct_size = sizeof load;
  load.error = buffer;
  load.error_size = sizeof buffer;
  cluster::detail::report_entry_failure(
      &load, std::make_exception_ptr(std::runtime_error("settings are missing")));
  EXPECT_STREQ(buffer, "setting");
  cluster::detail::report_entry_failure(nullptr, std::make_exception_ptr(42));  // no crash
}

}  // namespace
