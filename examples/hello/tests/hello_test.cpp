// The Hello entity under the SDK's test kit: no cluster, the same C ABI a runner uses.
#include "../src/hello.hpp"

#include <gtest/gtest.h>

#include <cluster/testing.hpp>
#include <string>

using cluster::testing::kit;
using namespace hello;

TEST(hello, greets_by_name_with_its_version) {
  kit k;  // the CLUSTER_PLUGIN linked into this test
  auto reply = k.call<Greet>("Hello", "Test", "Greet", {"John"});
  ASSERT_TRUE(reply) << reply.error();
  EXPECT_EQ(reply->message, "Hello, John! from Test (hello " HELLO_VERSION ")");
  EXPECT_EQ(reply->version, HELLO_VERSION);
  EXPECT_EQ(k.plugin_name(), "hello");
  EXPECT_EQ(k.plugin_version(), HELLO_VERSION);
}

TEST(hello, an_empty_name_is_an_application_error) {
  kit k;
  auto reply = k.call<Greet>("Hello", "Test", "GreetVolatile", {""});
  ASSERT_FALSE(reply);
  EXPECT_EQ(reply.error().code, "ApplicationError");
  EXPECT_EQ(reply.error().tag, "EmptyName");
}

TEST(hello, keeps_state_per_entity_until_passivated) {
  kit k;
  EXPECT_EQ(k.call<Greet>("Hello", "a", "GreetVolatile", {"x"})->greeted, 1);
  EXPECT_EQ(k.call<Greet>("Hello", "a", "GreetVolatile", {"x"})->greeted, 2);
  EXPECT_EQ(k.call<Greet>("Hello", "b", "GreetVolatile", {"x"})->greeted, 1);
  k.passivate("Hello", "a");
  EXPECT_EQ(k.call<Greet>("Hello", "a", "GreetVolatile", {"x"})->greeted, 1);
}

TEST(hello, greet_later_answers_when_the_clock_passes_its_delay) {
  kit k;
  auto later = k.send<GreetLater>("Hello", "Test", "GreetLater", {"John", 5'000});
  EXPECT_FALSE(later.done());
  k.advance_ms(4'999);
  EXPECT_FALSE(later.done());
  k.advance_ms(1);
  ASSERT_TRUE(later.done());
  EXPECT_EQ(later.get()->answered_at_ms, cluster::testing::kit_options{}.start_ms + 5'000);
}

TEST(hello, welcome_sends_one_mail_through_the_mailer) {
  kit k;
  k.stub<Send>("Mailer", "Send",
               [](const Send::Request& mail) { return Send::Reply{"mail-to-" + mail.to}; });
  auto reply = k.call<Welcome>("Hello", "Test", "Welcome", {"John", "john@example.com"});
  ASSERT_TRUE(reply) << reply.error();
  EXPECT_EQ(reply->mail_id, "mail-to-john@example.com");
  ASSERT_EQ(k.calls_to("Mailer", "Send"), 1u);
  EXPECT_EQ(k.calls()[0].request<Send::Request>().subject, "Welcome, John");
}

TEST(hello, welcome_fails_cleanly_without_a_mailer) {
  kit k;  // no stub: as in a cluster where no runner has Mailer
  auto reply = k.call<Welcome>("Hello", "Test", "Welcome", {"John", "john@example.com"});
  ASSERT_FALSE(reply);
  // The SDK's call_error, not caught by the handler, reaches the caller with the cluster's tag.
  EXPECT_EQ(reply.error().code, "ApplicationError");
  EXPECT_EQ(reply.error().tag, "UnknownEntityType");
  EXPECT_NE(reply.error().message.find("Mailer"), std::string::npos) << reply.error();
}

TEST(hello, a_replayed_welcome_reuses_its_mail_key) {
  kit k;
  k.stub<Send>("Mailer", "Send", [](const Send::Request& mail) { return Send::Reply{mail.to}; });
  ASSERT_TRUE(k.call<Welcome>("Hello", "Test", "Welcome", {"John", "john@example.com"}));
  const auto replies = k.replay_persisted();  // as after a crash before the reply was stored
  ASSERT_EQ(replies.size(), 1u);
  ASSERT_TRUE(replies[0]) << replies[0].error();
  ASSERT_EQ(k.calls_to("Mailer", "Send"), 2u);
  EXPECT_EQ(k.calls()[0].primary_key, k.calls()[1].primary_key);  // the mailer can dedupe
}

TEST(hello, the_built_plugin_file_loads_like_in_a_runner) {
  kit k = kit::load(HELLO_PLUGIN_FILE);
  EXPECT_EQ(k.plugin_version(), HELLO_VERSION);
  const auto types = k.entity_types();
  ASSERT_EQ(types.size(), 1u);
  EXPECT_EQ(types[0].name, "Hello");
  auto reply = k.call<Greet>("Hello", "Test", "Greet", {"John"});
  ASSERT_TRUE(reply) << reply.error();
  EXPECT_EQ(reply->version, HELLO_VERSION);
}
