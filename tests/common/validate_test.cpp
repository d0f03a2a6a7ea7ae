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

}  // namespace
}  // namespace cluster
