// validate_request: what every process checks where a request enters it.
#include "cluster/protocol/validate.hpp"

#include <gtest/gtest.h>

namespace cluster {
namespace {

constexpr std::int64_t now_ms = 1'700'000'000'000;
constexpr std::int64_t day_ms = 24LL * 60 * 60 * 1000;

request_msg valid_request() {
  request_msg request;
  request.entity_type = "Greeter";
  request.entity_id = "alice";
  request.rpc = "Greet";
  return request;
}

std::string why(const request_msg& request, const request_limits& limits = {}) {
  auto checked = validate_request(request, limits, now_ms);
  if (checked) return "";
  EXPECT_EQ(checked.error().code, errc::invalid_request);
  return checked.error().message;
}

TEST(validate, accepts_ascii_and_every_kind_of_well_formed_utf8) {
  auto request = valid_request();
  request.entity_id = "plain-ascii-id-longer-than-eight-bytes";
  EXPECT_EQ(why(request), "");
  // 2-, 3- and 4-byte sequences at the edges of their ranges: U+0080, U+07FF, U+0800,
  // U+D7FF, U+E000, U+FFFF, U+10000, U+10FFFF.
  request.entity_id =
      "\xC2\x80\xDF\xBF\xE0\xA0\x80\xED\x9F\xBF\xEE\x80\x80\xEF\xBF\xBF"
      "\xF0\x90\x80\x80\xF4\x8F\xBF\xBF";
  EXPECT_EQ(why(request), "");
  request.entity_id = "Zürich-東京-🙂";
  request.primary_key = "κλειδί";
  EXPECT_EQ(why(request), "");
  request.entity_id = "";  // an empty id is an id
  EXPECT_EQ(why(request), "");
}

TEST(validate, names_the_field_the_byte_and_its_offset_for_invalid_utf8) {
  auto request = valid_request();
  request.entity_id = "\xFF";
  EXPECT_EQ(why(request), "entity_id is not valid UTF-8 (byte 0xff at offset 0)");
  request.entity_id = "abcdefghij\xC3(";  // a lead byte without its continuation, after a word
  EXPECT_EQ(why(request), "entity_id is not valid UTF-8 (byte 0xc3 at offset 10)");
  request = valid_request();
  request.entity_type = "Gr\x80";
  EXPECT_EQ(why(request), "entity_type is not valid UTF-8 (byte 0x80 at offset 2)");
  request = valid_request();
  request.rpc = "Greet\xE2\x82";  // truncated at the end
  EXPECT_EQ(why(request), "rpc is not valid UTF-8 (byte 0xe2 at offset 5)");
  request = valid_request();
  request.primary_key = "k\xF5\x80\x80\x80";
  EXPECT_EQ(why(request), "primary_key is not valid UTF-8 (byte 0xf5 at offset 1)");
}

TEST(validate, refuses_overlong_forms_surrogates_and_code_points_past_u10ffff) {
  const std::string refused[] = {
      "\xC0\xAF",          // overlong '/'
      "\xC1\xBF",          // overlong U+007F
      "\xE0\x9F\xBF",      // overlong U+07FF
      "\xF0\x8F\xBF\xBF",  // overlong U+FFFF
      "\xED\xA0\x80",      // U+D800, a surrogate
      "\xED\xBF\xBF",      // U+DFFF
      "\xF4\x90\x80\x80",  // U+110000
      "\xF8\x88\x80\x80\x80",
      "\xE2\x28\xA1",  // a continuation replaced by ASCII
  };
  for (const auto& text : refused) {
    auto request = valid_request();
    request.entity_id = "ok" + text;
    EXPECT_EQ(invalid_utf8_offset(request.entity_id), std::optional<std::size_t>(2))
        << testing::PrintToString(text);
    EXPECT_NE(why(request), "") << testing::PrintToString(text);
  }
}

TEST(validate, refuses_a_nul_byte_anywhere_even_deep_in_an_ascii_run) {
  auto request = valid_request();
  request.entity_id = std::string("abcdefgh\0ijklmnop", 17);
  EXPECT_EQ(why(request), "entity_id contains a NUL byte at offset 8");
  request.entity_id = std::string("\0", 1);
  EXPECT_EQ(why(request), "entity_id contains a NUL byte at offset 0");
  request = valid_request();
  request.primary_key = std::string("key\0", 4);
  EXPECT_EQ(why(request), "primary_key contains a NUL byte at offset 3");
  // UTF-8 itself allows NUL: only the field check refuses it.
  EXPECT_EQ(invalid_utf8_offset(std::string("a\0b", 3)), std::nullopt);
}

TEST(validate, bounds_ids_by_max_id_bytes_and_names_by_the_fixed_name_bound) {
  request_limits limits;
  limits.max_id_bytes = 16;
  auto request = valid_request();
  request.entity_id = std::string(16, 'x');
  EXPECT_EQ(why(request, limits), "");
  request.entity_id = std::string(17, 'x');
  EXPECT_EQ(why(request, limits), "entity_id is 17 bytes long; at most 16 are allowed");
  request = valid_request();
  request.primary_key = std::string(17, 'k');
  EXPECT_EQ(why(request, limits), "primary_key is 17 bytes long; at most 16 are allowed");
  request = valid_request();
  request.entity_type = std::string(255, 'T');
  EXPECT_EQ(why(request), "");
  request.entity_type = std::string(256, 'T');
  EXPECT_EQ(why(request), "entity_type is 256 bytes long; at most 255 are allowed");
  request = valid_request();
  request.rpc = std::string(256, 'R');
  EXPECT_EQ(why(request), "rpc is 256 bytes long; at most 255 are allowed");
  // The default bound is 1024 bytes.
  request = valid_request();
  request.entity_id = std::string(1024, 'x');
  EXPECT_EQ(why(request), "");
  request.entity_id += 'x';
  EXPECT_NE(why(request), "");
}

TEST(validate, allows_deliver_at_in_the_past_and_up_to_a_year_ahead_only) {
  auto request = valid_request();
  request.deliver_at_ms = 0;
  EXPECT_EQ(why(request), "");
  request.deliver_at_ms = now_ms - 10 * day_ms;
  EXPECT_EQ(why(request), "");
  request.deliver_at_ms = now_ms + 365 * day_ms;
  EXPECT_EQ(why(request), "");
  request.deliver_at_ms = now_ms + 365 * day_ms + 1;
  EXPECT_EQ(why(request), "deliver_at_ms is 365 days ahead; at most 365 days are allowed");
  request.deliver_at_ms = now_ms + 3650 * day_ms;
  EXPECT_EQ(why(request), "deliver_at_ms is 3650 days ahead; at most 365 days are allowed");
  request.deliver_at_ms = std::numeric_limits<std::int64_t>::max();
  EXPECT_NE(why(request), "");
  request.deliver_at_ms = -1;
  EXPECT_EQ(why(request), "deliver_at_ms is -1; expected unix milliseconds, not before 1970");
  request.deliver_at_ms = std::numeric_limits<std::int64_t>::min();
  EXPECT_NE(why(request), "");
}

TEST(validate, reads_the_system_clock_for_deliver_at) {
  auto request = valid_request();
  request.deliver_at_ms = now_ms + 3650 * day_ms * 10;  // a century after 2023
  EXPECT_FALSE(validate_request(request, request_limits{}).has_value());
  request.deliver_at_ms = now_ms;  // 2023: in the past
  EXPECT_TRUE(validate_request(request, request_limits{}).has_value());
}

register_runner_msg valid_registration() {
  register_runner_msg registration;
  registration.name = "runner-1";
  registration.address = "10.0.3.17:34431";
  registration.groups = {"default", "billing"};
  registration.version = "0.1.0";
  registration.incarnation = "00c0ffee00c0ffee";
  entity_type_info type;
  type.name = "Greeter";
  type.group = "default";
  type.rpcs = {rpc_info{"Greet", true}, rpc_info{"Ping", false}};
  registration.entity_types = {type};
  plugin_info plugin;
  plugin.name = "greeter";
  plugin.version = "1.2.0";
  plugin.sha256 = std::string(64, 'a');
  plugin.file = "/opt/cluster/plugins/libgreeter.so";
  plugin.state = "loaded";
  plugin.entity_types = {"Greeter"};
  registration.plugins = {plugin};
  return registration;
}

std::string why(const register_runner_msg& registration, const registration_limits& limits = {}) {
  auto checked = validate_registration(registration, limits);
  if (checked) return "";
  EXPECT_EQ(checked.error().code, errc::invalid_request);
  return checked.error().message;
}

TEST(validate_registration, accepts_a_runner_within_every_bound) {
  EXPECT_EQ(why(valid_registration()), "");
  auto at_the_limits = valid_registration();
  at_the_limits.address = std::string(250, 'h') + ":8080";
  at_the_limits.groups.clear();
  for (int i = 0; i < 64; ++i)  // 64 groups of 64 bytes each
    at_the_limits.groups.push_back(std::string(62, 'g') + (i < 10 ? "0" : "") + std::to_string(i));
  at_the_limits.entity_types.resize(256, valid_registration().entity_types.front());
  at_the_limits.entity_types.front().rpcs.resize(256, rpc_info{std::string(255, 'r'), false});
  EXPECT_EQ(why(at_the_limits), "");
}

TEST(validate_registration, refuses_150_groups_and_a_200_byte_address_naming_field_and_limit) {
  auto many_groups = valid_registration();
  many_groups.groups.clear();
  for (int i = 0; i < 150; ++i) many_groups.groups.push_back("group-" + std::to_string(i));
  EXPECT_EQ(why(many_groups), "groups has 150 entries; at most 64 are allowed");

  auto long_address = valid_registration();
  long_address.address = std::string(300, 'a') + ":1";
  EXPECT_EQ(why(long_address), "address is 302 bytes long; at most 255 are allowed");
  registration_limits strict;
  strict.max_address_bytes = 100;
  long_address.address = std::string(195, 'a') + ":3443";
  EXPECT_EQ(why(long_address, strict), "address is 200 bytes long; at most 100 are allowed");
}

TEST(validate_registration, refuses_bad_group_names) {
  auto registration = valid_registration();
  registration.groups = {"default", std::string(65, 'g')};
  EXPECT_EQ(why(registration), "groups[1] is 65 bytes long; at most 64 are allowed");
  registration.groups = {"default", std::string("a\0b", 3)};
  EXPECT_EQ(why(registration), "groups[1] contains a NUL byte at offset 1");
  registration.groups = {"\xc3"};
  EXPECT_EQ(why(registration), "groups[0] is not valid UTF-8 (byte 0xc3 at offset 0)");
  registration.groups = {""};
  EXPECT_EQ(why(registration), "groups[0] is empty");
  registration.groups.clear();
  EXPECT_EQ(why(registration), "groups is empty; a runner serves at least one group");
}

TEST(validate_registration, bounds_entity_types_and_their_rpcs) {
  auto registration = valid_registration();
  registration.entity_types.resize(257, registration.entity_types.front());
  EXPECT_EQ(why(registration), "entity_types has 257 entries; at most 256 are allowed");

  registration = valid_registration();
  registration.entity_types.front().rpcs.resize(257, rpc_info{"R", false});
  EXPECT_EQ(why(registration), "entity_types[0].rpcs has 257 entries; at most 256 are allowed");

  registration = valid_registration();
  registration.entity_types.front().rpcs[1].name = std::string(256, 'r');
  EXPECT_EQ(why(registration),
            "entity_types[0].rpcs[1].name is 256 bytes long; at most 255 are allowed");

  registration = valid_registration();
  registration.entity_types.front().name = "";
  EXPECT_EQ(why(registration), "entity_types[0].name is empty");

  registration = valid_registration();
  registration.entity_types.front().group = std::string(65, 'g');
  EXPECT_EQ(why(registration), "entity_types[0].group is 65 bytes long; at most 64 are allowed");
}

TEST(validate_registration, bounds_the_name_version_and_incarnation) {
  auto registration = valid_registration();
  registration.name = std::string(256, 'n');
  EXPECT_EQ(why(registration), "name is 256 bytes long; at most 255 are allowed");
  registration = valid_registration();
  registration.name.clear();
  EXPECT_EQ(why(registration), "name is empty");
  registration = valid_registration();
  registration.version = std::string(256, 'v');
  EXPECT_EQ(why(registration), "version is 256 bytes long; at most 255 are allowed");
  registration = valid_registration();
  registration.incarnation = std::string(49, 'f');
  EXPECT_EQ(why(registration), "incarnation is 49 bytes long; at most 48 are allowed");
  registration.incarnation.clear();  // older runners send none
  EXPECT_EQ(why(registration), "");
  registration.address.clear();
  EXPECT_EQ(why(registration), "address is empty");
}

TEST(validate_registration, bounds_the_plugins_and_their_fields) {
  auto registration = valid_registration();
  registration.plugins.resize(64, registration.plugins.front());
  EXPECT_EQ(why(registration), "");
  registration.plugins.resize(65, registration.plugins.front());
  EXPECT_EQ(why(registration), "plugins has 65 entries; at most 64 are allowed");

  registration = valid_registration();
  registration.plugins.front().name.clear();
  EXPECT_EQ(why(registration), "plugins[0].name is empty");

  registration = valid_registration();
  registration.plugins.front().version = std::string(256, 'v');
  EXPECT_EQ(why(registration), "plugins[0].version is 256 bytes long; at most 255 are allowed");

  registration = valid_registration();
  registration.plugins.front().sha256 = std::string(64, 'A');
  EXPECT_EQ(why(registration), "plugins[0].sha256 is not 64 lowercase hex digits (or empty)");
  registration.plugins.front().sha256.clear();  // a file the runner could not read
  EXPECT_EQ(why(registration), "");

  registration = valid_registration();
  registration.plugins.front().file = std::string(1025, 'f');
  EXPECT_EQ(why(registration), "plugins[0].file is 1025 bytes long; at most 1024 are allowed");

  registration = valid_registration();
  registration.plugins.front().state = std::string(33, 's');
  EXPECT_EQ(why(registration), "plugins[0].state is 33 bytes long; at most 32 are allowed");

  registration = valid_registration();
  registration.plugins.front().state = "failed";
  registration.plugins.front().error = "bad ABI \xff";
  EXPECT_EQ(why(registration), "plugins[0].error is not valid UTF-8 (byte 0xff at offset 8)");

  registration = valid_registration();
  registration.plugins.front().entity_types.resize(257, "Greeter");
  EXPECT_EQ(why(registration), "plugins[0].entity_types has 257 entries; at most 256 are allowed");
  registration.plugins.front().entity_types = {"Greeter", std::string(256, 't')};
  EXPECT_EQ(why(registration),
            "plugins[0].entity_types[1] is 256 bytes long; at most 255 are allowed");
}

TEST(validate, recognises_sha256_hex) {
  EXPECT_TRUE(is_sha256_hex(std::string(64, '0')));
  EXPECT_TRUE(is_sha256_hex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
  EXPECT_FALSE(is_sha256_hex(std::string(63, '0')));
  EXPECT_FALSE(is_sha256_hex(std::string(65, '0')));
  EXPECT_FALSE(is_sha256_hex(std::string(63, '0') + "g"));
  EXPECT_FALSE(is_sha256_hex(""));
}

}  // namespace
}  // namespace cluster
