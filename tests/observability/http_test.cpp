// The admin endpoints' HTTP server and client, on loopback.
#include "cluster/http/http.hpp"

#include <gtest/gtest.h>

#include <thread>

namespace cluster::http {
namespace {

class http_server : public ::testing::Test {
 protected:
  void SetUp() override {
    server_.route("/hello", [](const request& req) -> awaitable<response> {
      co_return response{200, "text/plain", "hello " + std::string(req.body()), {{"X-Demo", "1"}}};
    });
    server_.route("/files/", [](const request& req) -> awaitable<response> {
      co_return response{
          200,
          "text/plain",
          std::string(path_of(std::string_view(req.target().data(), req.target().size()))),
          {}};
    });
    server_.guard([](const request& req) -> std::optional<response> {
      const std::string_view target(req.target().data(), req.target().size());
      if (query_value(target, "deny") == "yes") return response{401, "text/plain", "no\n", {}};
      return std::nullopt;
    });
    server_.listen("127.0.0.1", 0);
    url_ = "http://127.0.0.1:" + std::to_string(server_.local_endpoint().port());
    thread_ = std::thread([this] { io_.run(); });
  }
  void TearDown() override {
    asio::post(io_, [this] { server_.close(); });
    work_.reset();
    thread_.join();
  }
  asio::io_context io_;
  std::optional<asio::executor_work_guard<asio::io_context::executor_type>> work_{
      asio::make_work_guard(io_)};
  server server_{io_};
  std::string url_;
  std::thread thread_;
};

TEST_F(http_server, answers_routes_prefixes_and_unknown_paths) {
  fetch_options post;
  post.method = "POST";
  post.body = "world";
  auto got = fetch_blocking(url_ + "/hello", post);
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_EQ(got.value().status, 200u);
  EXPECT_EQ(got.value().body, "hello world");
  got = fetch_blocking(url_ + "/files/a/b.css?x=1");
  ASSERT_TRUE(got);
  EXPECT_EQ(got.value().body, "/files/a/b.css");
  got = fetch_blocking(url_ + "/nothing");
  ASSERT_TRUE(got);
  EXPECT_EQ(got.value().status, 404u);
  got = fetch_blocking(url_ + "/hello?deny=yes");
  ASSERT_TRUE(got);
  EXPECT_EQ(got.value().status, 401u);
}

TEST_F(http_server, a_body_over_the_limit_is_refused_and_the_server_keeps_serving) {
  fetch_options big;
  big.method = "POST";
  big.body = std::string(200 * 1024, 'x');
  auto got = fetch_blocking(url_ + "/hello", big);
  if (got) {
    EXPECT_EQ(got.value().status, 413u);
  }
  got = fetch_blocking(url_ + "/hello");
  ASSERT_TRUE(got);
  EXPECT_EQ(got.value().status, 200u);
}

TEST(http_client, a_dead_peer_and_a_bad_url_fail_clearly) {
  auto got = fetch_blocking("http://127.0.0.1:9/x", {.timeout = milliseconds(500)});
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code, errc::unavailable);
  got = fetch_blocking("https://example.invalid/");
  ASSERT_FALSE(got);
  EXPECT_EQ(got.error().code, errc::invalid_request);
  EXPECT_EQ(query_value("/a?token=x%20y&b=1", "token"), "x y");
  EXPECT_EQ(path_of("/a/b?c"), "/a/b");
}

}  // namespace
}  // namespace cluster::http
