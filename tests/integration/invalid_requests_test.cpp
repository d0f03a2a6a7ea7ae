// One bad request fails only itself: floods of requests with invalid ids, names and times,
// through the proxy and through the gateway, beside a stream of valid persisted calls, on
// the real binaries and a real PostgreSQL. Skipped without CLUSTER_TEST_PG_URL.
#include <fstream>

#include "../gateway/http_client.hpp"
#include "process_cluster.hpp"

namespace cluster::testing {
namespace {

using namespace std::chrono_literals;

std::int64_t unix_ms() {
  return std::chrono::duration_cast<milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

/// What no caller may read: PostgreSQL's own words.
std::vector<std::string> database_internals(const std::string& text) {
  std::vector<std::string> found;
  for (const char* internal : {"ERROR:", "SQLSTATE", "invalid byte sequence", "malformed array",
                               "UTF8", "unnest", "portal", "CONTEXT:"})
    if (text.find(internal) != std::string::npos) found.push_back(internal);
  return found;
}

// A persisted Probe.Append whose every field is fine but one.
std::vector<request_msg> invalid_calls(int n) {
  const auto append = [n](const std::string& id) {
    auto request = make_request("Probe", id, "Append", {{"sender", "bad"}, {"value", n}});
    request.primary_key = "bad-" + std::to_string(n);
    return request;
  };
  std::vector<request_msg> calls;
  calls.push_back(append("\xFF" + std::to_string(n)));
  calls.push_back(append("nul-" + std::string(1, '\0') + std::to_string(n)));
  calls.push_back(append(std::string(2000, 'x') + std::to_string(n)));
  calls.push_back(append("tail-\xE2\x82"));
  auto key = append("fine-id");
  key.primary_key = "key-\xC3(" + std::to_string(n);
  calls.push_back(key);
  auto later = append("later");
  later.deliver_at_ms = unix_ms() + 10LL * 365 * 24 * 60 * 60 * 1000;
  calls.push_back(later);
  return calls;
}

class invalid_requests : public pg_cluster_test {
 protected:
  std::string log(const std::string& name) {
    std::ifstream in(dir / (name + ".log"));
    return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  }
};

TEST_F(invalid_requests, a_flood_of_them_fails_none_of_the_valid_persisted_calls_beside_it) {
  start_manager();
  start_runner(1);
  start_runner(2);
  start_proxy();
  const auto gateway_port = free_port();
  start("gateway", "cluster-gateway",
        {"--set", "gateway.host=127.0.0.1", "--set", "gateway.port=" + std::to_string(gateway_port),
         "--set", "gateway.proxy=127.0.0.1:" + std::to_string(proxy_port)});
  ASSERT_TRUE(ready(2));
  std::string out;
  ASSERT_EQ(
      clusterctl_wait("gateway http://127.0.0.1:" + std::to_string(gateway_port) + "/", 30s, out),
      0)
      << out;

  load_generator::options only_persisted;
  only_persisted.volatile_calls = false;
  load_generator load(proxy_port, only_persisted);
  ASSERT_TRUE(load.wait_answered(100, 60s));

  // Through the proxy: rounds of every kind of invalid call, all in flight at once.
  asio::io_context io;
  auto conn = connect_client(io, "127.0.0.1:" + std::to_string(proxy_port));
  ASSERT_NE(conn, nullptr);
  std::size_t sent = 0, answered = 0;
  std::map<std::string, std::size_t> wrong;  // "code: message" of replies other than expected
  for (int round = 0; round < 40; ++round) {
    for (const auto& call : invalid_calls(round)) {
      ++sent;
      conn->call(message_kind::request, call, milliseconds(30000), [&](reply_msg&& reply) {
        ++answered;
        if (reply.code != errc::invalid_request || !database_internals(reply.message).empty())
          ++wrong[reply.error + ": " + reply.message];
      });
    }
    ASSERT_TRUE(run_until(
        io, [&] { return answered == sent; }, 30s));
  }

  // Through the gateway: the same ids percent-encoded in the path, on a few keep-alive
  // connections at once.
  std::vector<http_exchange> exchanges;
  for (int n = 0; n < 50; ++n) {
    const auto number = std::to_string(n);
    exchanges.push_back({"POST", "/Probe/%FF" + number + "/Append", "{\"sender\":\"b\"}"});
    exchanges.push_back({"POST", "/Probe/nul%00" + number + "/Append", "{}"});
    exchanges.push_back({"POST", "/Probe/" + std::string(1100, 'y') + number + "/Append", "{}"});
    exchanges.push_back({"POST", "/Probe/ab%C3/Append", "{}"});
    exchanges.push_back({"POST", "/Pr%F0%9Fobe/x/Append", "{}"});
  }
  auto sessions = std::vector<std::shared_ptr<detail::session_state>>();
  for (int c = 0; c < 4; ++c) {
    sessions.push_back(std::make_shared<detail::session_state>());
    asio::co_spawn(io, detail::run_exchanges(gateway_port, exchanges, sessions.back()),
                   asio::detached);
  }
  ASSERT_TRUE(run_until(
      io,
      [&] {
        return std::all_of(sessions.begin(), sessions.end(), [](const auto& s) { return s->done; });
      },
      60s));
  std::size_t http_answers = 0;
  for (const auto& session : sessions)
    for (const auto& result : session->results) {
      ++http_answers;
      const auto body = result.json();
      if (result.status != 400 || !body.is_object() ||
          body.value("error", "") != "InvalidRequest" || !database_internals(result.body).empty())
        ++wrong["HTTP " + std::to_string(result.status) + " " + result.body + result.error];
    }
  EXPECT_EQ(http_answers, 4 * exchanges.size());

  // The valid stream went on meanwhile and afterwards.
  ASSERT_TRUE(load.wait_answered(load.answered() + 200, 60s));
  const auto result = load.stop();
  conn->close();
  run_until(
      io, [] { return false; }, 50ms);

  for (const auto& [what, count] : wrong) ADD_FAILURE() << count << " × " << what;
  EXPECT_EQ(answered, sent);
  EXPECT_GT(result.persisted_ok, 300u);
  for (const auto& [failure, count] : result.failures)
    ADD_FAILURE() << count << " valid calls failed: " << failure;
  // Nothing invalid reached the database: no runner logged a refused store round.
  for (const char* runner : {"runner-1", "runner-2"})
    EXPECT_EQ(log(runner).find("storage refused"), std::string::npos) << log(runner);
}

}  // namespace
}  // namespace cluster::testing
