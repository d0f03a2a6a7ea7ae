// The shared cron expression parser: fields, names, steps, the day rule, UTC ticks, and the
// errors that name the bad field.
#include "cluster/cron.hpp"

#include <gtest/gtest.h>

#include <string>

namespace {

using cluster::cron_schedule;

// 2024-01-01T00:00:00Z, a Monday.
constexpr std::int64_t jan_1_2024 = 1704067200000;
constexpr std::int64_t second = 1000;
constexpr std::int64_t minute = 60 * second;
constexpr std::int64_t hour = 60 * minute;
constexpr std::int64_t day = 24 * hour;

std::string error_of(std::string_view text) {
  try {
    (void)cron_schedule::parse(text);
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

TEST(cron_schedule, six_fields_start_with_seconds) {
  const auto every_second = cron_schedule::parse("* * * * * *");
  EXPECT_EQ(every_second.next_after(jan_1_2024), jan_1_2024 + second);
  const auto every_5s = cron_schedule::parse("*/5 * * * * *");
  EXPECT_EQ(every_5s.next_after(jan_1_2024), jan_1_2024 + 5 * second);
  EXPECT_EQ(every_5s.next_after(jan_1_2024 + 4999), jan_1_2024 + 5 * second);
  EXPECT_EQ(every_5s.next_after(jan_1_2024 + 5 * second), jan_1_2024 + 10 * second);
}

TEST(cron_schedule, five_fields_fire_at_second_zero) {
  const auto every_minute = cron_schedule::parse("* * * * *");
  EXPECT_EQ(every_minute.next_after(jan_1_2024), jan_1_2024 + minute);
  EXPECT_EQ(every_minute.next_after(jan_1_2024 + 59 * second), jan_1_2024 + minute);
  const auto half_past_nine = cron_schedule::parse("30 9 * * *");
  EXPECT_EQ(half_past_nine.next_after(jan_1_2024), jan_1_2024 + 9 * hour + 30 * minute);
  EXPECT_EQ(half_past_nine.next_after(jan_1_2024 + 9 * hour + 30 * minute),
            jan_1_2024 + day + 9 * hour + 30 * minute);
}

TEST(cron_schedule, next_is_strictly_after_and_a_whole_second) {
  const auto every_second = cron_schedule::parse("* * * * * *");
  EXPECT_EQ(every_second.next_after(jan_1_2024 + 1), jan_1_2024 + second);
  EXPECT_EQ(every_second.next_after(jan_1_2024 + 999), jan_1_2024 + second);
  EXPECT_EQ(every_second.next_after(jan_1_2024 - 1), jan_1_2024);
  EXPECT_EQ(every_second.next_after(-1), 0);
  EXPECT_EQ(every_second.next_after(-1500), -1000);
}

TEST(cron_schedule, lists_ranges_and_steps) {
  const auto s = cron_schedule::parse("0 0,15,45 8-10/2 * * *");
  EXPECT_EQ(s.next_after(jan_1_2024), jan_1_2024 + 8 * hour);
  EXPECT_EQ(s.next_after(jan_1_2024 + 8 * hour), jan_1_2024 + 8 * hour + 15 * minute);
  EXPECT_EQ(s.next_after(jan_1_2024 + 8 * hour + 45 * minute), jan_1_2024 + 10 * hour);
  EXPECT_EQ(s.next_after(jan_1_2024 + 10 * hour + 45 * minute), jan_1_2024 + day + 8 * hour);
  // a/n runs from a to the field's end.
  const auto from_50 = cron_schedule::parse("50/5 * * * * *");
  EXPECT_EQ(from_50.next_after(jan_1_2024), jan_1_2024 + 50 * second);
  EXPECT_EQ(from_50.next_after(jan_1_2024 + 55 * second), jan_1_2024 + minute + 50 * second);
}

TEST(cron_schedule, month_and_weekday_names_in_any_case) {
  // 2024-01-07 is the first Sunday.
  EXPECT_EQ(cron_schedule::parse("0 0 * * sun").next_after(jan_1_2024), jan_1_2024 + 6 * day);
  EXPECT_EQ(cron_schedule::parse("0 0 * * 7").next_after(jan_1_2024), jan_1_2024 + 6 * day);
  EXPECT_EQ(cron_schedule::parse("0 0 * * 0").next_after(jan_1_2024), jan_1_2024 + 6 * day);
  EXPECT_EQ(cron_schedule::parse("0 0 * * Mon-FRI").next_after(jan_1_2024), jan_1_2024 + day);
  // 2024-03-04T09:30:00Z.
  EXPECT_EQ(cron_schedule::parse("0 30 9 4 MAR ?").next_after(jan_1_2024), 1709544600000);
}

TEST(cron_schedule, both_day_fields_restricted_match_either) {
  // The 13th or a Monday: Monday 2024-01-08 comes before Saturday the 13th.
  const auto s = cron_schedule::parse("0 0 13 * mon");
  EXPECT_EQ(s.next_after(jan_1_2024), jan_1_2024 + 7 * day);
  EXPECT_EQ(s.next_after(jan_1_2024 + 7 * day), jan_1_2024 + 12 * day);
  // With the weekday unrestricted only the day of the month counts.
  EXPECT_EQ(cron_schedule::parse("0 0 13 * *").next_after(jan_1_2024), jan_1_2024 + 12 * day);
}

TEST(cron_schedule, leap_day_and_year_end) {
  // 2024-02-29T12:00:00Z, then 2028-02-29.
  const auto s = cron_schedule::parse("0 0 12 29 2 *");
  EXPECT_EQ(s.next_after(jan_1_2024), 1709208000000);
  EXPECT_EQ(s.next_after(1709208000000), 1835395200000 + 12 * hour);
  // 2024-12-31T23:59:59Z rolls to 2025-01-01T00:00:00Z.
  EXPECT_EQ(cron_schedule::parse("0 0 0 1 1 *").next_after(1735689599000), 1735689600000);
}

TEST(cron_schedule, keeps_the_expression) {
  EXPECT_EQ(cron_schedule::parse("*/5 * * * * *").expression(), "*/5 * * * * *");
}

TEST(cron_schedule, errors_name_the_bad_field) {
  EXPECT_NE(error_of("* * * *").find("4 fields, expected 5 or 6"), std::string::npos);
  EXPECT_NE(error_of("* * * * * * *").find("more than 6 fields"), std::string::npos);
  EXPECT_NE(error_of("60 * * * * *").find("seconds field '60'"), std::string::npos);
  EXPECT_NE(error_of("60 * * * *").find("minutes field '60'"), std::string::npos);
  EXPECT_NE(error_of("* 24 * * *").find("hours field '24'"), std::string::npos);
  EXPECT_NE(error_of("* * 0 * *").find("day of month field '0'"), std::string::npos);
  EXPECT_NE(error_of("* * * foo *").find("month field 'foo'"), std::string::npos);
  EXPECT_NE(error_of("* * * * 8").find("day of week field '8'"), std::string::npos);
  EXPECT_NE(error_of("*/0 * * * *").find("step"), std::string::npos);
  EXPECT_NE(error_of("5-1 * * * *").find("a range must go up"), std::string::npos);
  EXPECT_NE(error_of("1,,2 * * * *").find("empty list item"), std::string::npos);
  EXPECT_NE(error_of("0 0 30 feb *").find("no such day"), std::string::npos);
  EXPECT_EQ(error_of("0 0 29 feb *"), "");
}

}  // namespace
