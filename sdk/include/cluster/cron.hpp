#pragma once
/// @file
/// Cron expressions, header-only: the one parser the runner, the test kit and clusterctl
/// share, so that they agree on every tick.
///
/// An expression has 5 fields (minute hour day-of-month month day-of-week) or 6 (a seconds
/// field first). A field is `*`, a number, a range `a-b`, a step `*/n`, `a-b/n` or `a/n`
/// (from a to the field's end), or a comma list of those. Months and weekdays also take
/// names (`jan`..`dec`, `sun`..`sat`, any case); a weekday is 0-7 with both 0 and 7 Sunday.
/// `?` is `*`. As in classic cron, when both day fields are restricted a day matches if
/// either matches; when one is `*` (or `?`), only the other one counts. Times are UTC.

#include <array>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <string_view>

namespace cluster {

/// A parsed cron expression. Immutable, cheap to copy.
class cron_schedule {
 public:
  /// Parses `text`; throws std::invalid_argument naming the bad field.
  static cron_schedule parse(std::string_view text) {
    cron_schedule out;
    out.text_ = std::string(text);
    std::array<std::string_view, 6> fields{};
    std::size_t count = 0;
    std::size_t at = 0;
    while (at < text.size()) {
      while (at < text.size() && is_space(text[at])) ++at;
      if (at == text.size()) break;
      const std::size_t begin = at;
      while (at < text.size() && !is_space(text[at])) ++at;
      if (count == fields.size()) {
        throw std::invalid_argument("cron expression '" + std::string(text) +
                                    "': more than 6 fields");
      }
      fields[count++] = text.substr(begin, at - begin);
    }
    if (count != 5 && count != 6) {
      throw std::invalid_argument("cron expression '" + std::string(text) +
                                  "': " + std::to_string(count) + " fields, expected 5 or 6");
    }
    const std::size_t first = count == 6 ? 0 : 1;
    if (count == 5) out.seconds_ = 1;  // second 0 only
    for (std::size_t i = 0; i < count; ++i) {
      const field_kind kind = static_cast<field_kind>(first + i);
      bool star = false;
      const std::uint64_t bits = parse_field(text, kind, fields[i], star);
      switch (kind) {
        case field_kind::second:
          out.seconds_ = bits;
          break;
        case field_kind::minute:
          out.minutes_ = bits;
          break;
        case field_kind::hour:
          out.hours_ = bits;
          break;
        case field_kind::day_of_month:
          out.days_ = bits;
          out.days_star_ = star;
          break;
        case field_kind::month:
          out.months_ = bits;
          break;
        case field_kind::day_of_week:
          // 7 is Sunday as well as 0.
          out.weekdays_ = (bits | (bits >> 7)) & 0x7f;
          out.weekdays_star_ = star;
          break;
      }
    }
    out.check_reachable();
    return out;
  }

  /// The first tick strictly after `unix_ms` (a whole second, UTC, in ms since the epoch).
  std::int64_t next_after(std::int64_t unix_ms) const {
    std::int64_t second = floor_div(unix_ms, 1000) + 1;
    // A reachable expression matches within 8 years (Feb 29 skips a non-leap century
    // year); the bound only guards against a bug looping forever.
    const std::int64_t give_up = second + std::int64_t{400} * 366 * 86400;
    while (second < give_up) {
      const std::int64_t day = floor_div(second, 86400);
      std::int64_t in_day = second - day * 86400;
      const civil date = civil_from_days(day);
      if (!has(months_, date.month)) {
        second = days_from_civil(date.month == 12 ? date.year + 1 : date.year,
                                 date.month == 12 ? 1 : date.month + 1, 1) *
                 86400;
        continue;
      }
      if (!day_matches(date.day, weekday(day))) {
        second = (day + 1) * 86400;
        continue;
      }
      const int hour = static_cast<int>(in_day / 3600);
      const int next_hour = next_set(hours_, hour, 23);
      if (next_hour < 0) {
        second = (day + 1) * 86400;
        continue;
      }
      if (next_hour != hour) {
        second = day * 86400 + next_hour * 3600;
        continue;
      }
      in_day -= hour * 3600;
      const int minute = static_cast<int>(in_day / 60);
      const int next_minute = next_set(minutes_, minute, 59);
      if (next_minute < 0) {
        second = day * 86400 + (hour + 1) * 3600;
        continue;
      }
      if (next_minute != minute) {
        second = day * 86400 + hour * 3600 + next_minute * 60;
        continue;
      }
      const int sec = static_cast<int>(in_day - minute * 60);
      const int next_sec = next_set(seconds_, sec, 59);
      if (next_sec < 0) {
        second = day * 86400 + hour * 3600 + (minute + 1) * 60;
        continue;
      }
      return (day * 86400 + hour * 3600 + minute * 60 + next_sec) * 1000;
    }
    return std::numeric_limits<std::int64_t>::max();
  }

  /// The expression as given.
  const std::string& expression() const { return text_; }

 private:
  enum class field_kind : std::uint8_t { second, minute, hour, day_of_month, month, day_of_week };
  struct civil {
    std::int64_t year;
    int month;  // 1-12
    int day;    // 1-31
  };

  cron_schedule() = default;

  static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }
  static bool has(std::uint64_t bits, int value) { return ((bits >> value) & 1u) != 0; }
  static std::int64_t floor_div(std::int64_t a, std::int64_t b) {
    const std::int64_t q = a / b;
    return (a % b != 0 && ((a < 0) != (b < 0))) ? q - 1 : q;
  }
  /// The first value >= from (and <= last) in bits, or -1.
  static int next_set(std::uint64_t bits, int from, int last) {
    for (int v = from; v <= last; ++v) {
      if (has(bits, v)) return v;
    }
    return -1;
  }

  static const char* field_name(field_kind kind) {
    switch (kind) {
      case field_kind::second:
        return "seconds";
      case field_kind::minute:
        return "minutes";
      case field_kind::hour:
        return "hours";
      case field_kind::day_of_month:
        return "day of month";
      case field_kind::month:
        return "month";
      case field_kind::day_of_week:
        return "day of week";
    }
    return "?";
  }
  static void field_range(field_kind kind, int& low, int& high) {
    switch (kind) {
      case field_kind::second:
      case field_kind::minute:
        low = 0, high = 59;
        return;
      case field_kind::hour:
        low = 0, high = 23;
        return;
      case field_kind::day_of_month:
        low = 1, high = 31;
        return;
      case field_kind::month:
        low = 1, high = 12;
        return;
      case field_kind::day_of_week:
        low = 0, high = 7;
        return;
    }
  }

  [[noreturn]] static void bad(std::string_view text, field_kind kind, std::string_view field,
                               std::string_view why) {
    throw std::invalid_argument("cron expression '" + std::string(text) + "': " + field_name(kind) +
                                " field '" + std::string(field) + "': " + std::string(why));
  }

  static char lower(char c) {
    return (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  }

  /// A number or (months, weekdays) a three-letter name; -1 when `part` is neither.
  static int value_of(field_kind kind, std::string_view part) {
    if (part.empty()) return -1;
    if (part[0] >= '0' && part[0] <= '9') {
      int value = 0;
      for (char c : part) {
        if (c < '0' || c > '9' || value > 1000) return -1;
        value = value * 10 + (c - '0');
      }
      return value;
    }
    if (part.size() != 3) return -1;
    static constexpr std::array<std::string_view, 12> months{
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"};
    static constexpr std::array<std::string_view, 7> days{"sun", "mon", "tue", "wed",
                                                          "thu", "fri", "sat"};
    const char name[3] = {lower(part[0]), lower(part[1]), lower(part[2])};
    const std::string_view key(name, 3);
    if (kind == field_kind::month) {
      for (std::size_t i = 0; i < months.size(); ++i) {
        if (months[i] == key) return static_cast<int>(i) + 1;
      }
    } else if (kind == field_kind::day_of_week) {
      for (std::size_t i = 0; i < days.size(); ++i) {
        if (days[i] == key) return static_cast<int>(i);
      }
    }
    return -1;
  }

  static std::uint64_t parse_field(std::string_view text, field_kind kind, std::string_view field,
                                   bool& star) {
    int low = 0;
    int high = 0;
    field_range(kind, low, high);
    std::uint64_t bits = 0;
    // Classic cron: a day field starting with `*` counts as unrestricted for the
    // day-of-month / day-of-week rule, even with a step.
    star = !field.empty() && (field[0] == '*' || field[0] == '?');
    std::size_t at = 0;
    while (true) {
      const std::size_t comma = field.find(',', at);
      const std::string_view item =
          field.substr(at, comma == std::string_view::npos ? std::string_view::npos : comma - at);
      if (item.empty()) bad(text, kind, field, "empty list item");
      std::string_view range = item;
      int step = 1;
      const std::size_t slash = item.find('/');
      if (slash != std::string_view::npos) {
        range = item.substr(0, slash);
        const int parsed = value_of(field_kind::second, item.substr(slash + 1));
        if (parsed <= 0) bad(text, kind, field, "the step must be a number > 0");
        step = parsed;
      }
      int from = low;
      int to = high;
      if (range == "*" || range == "?") {
        if (kind == field_kind::day_of_week) to = 6;  // 7 again would be Sunday twice
      } else {
        const std::size_t dash = range.find('-');
        from = value_of(kind, range.substr(0, dash));
        if (from < 0) bad(text, kind, field, "'" + std::string(range) + "' is not a value");
        if (dash != std::string_view::npos) {
          to = value_of(kind, range.substr(dash + 1));
          if (to < 0) bad(text, kind, field, "'" + std::string(range) + "' is not a range");
        } else if (slash == std::string_view::npos) {
          to = from;
        } else if (kind == field_kind::day_of_week) {
          to = 6;
        }
        if (from < low || from > high || to < low || to > high) {
          bad(text, kind, field,
              "out of range " + std::to_string(low) + "-" + std::to_string(high));
        }
        if (from > to) bad(text, kind, field, "a range must go up");
      }
      for (int v = from; v <= to; v += step) bits |= std::uint64_t{1} << v;
      if (comma == std::string_view::npos) break;
      at = comma + 1;
    }
    return bits;
  }

  static bool leap(std::int64_t year) {
    return (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  }
  static int days_in_month(std::int64_t year, int month) {
    static constexpr std::array<int, 12> days{31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return month == 2 && leap(year) ? 29 : days[static_cast<std::size_t>(month - 1)];
  }

  /// Refuses an expression that never fires (e.g. `0 0 30 feb *`), which would otherwise
  /// leave a job without a next run.
  void check_reachable() const {
    if (days_star_ || !weekdays_star_) return;  // any day, or any weekday, comes round
    for (int month = 1; month <= 12; ++month) {
      if (!has(months_, month)) continue;
      for (int day = 1; day <= days_in_month(2000, month); ++day) {
        if (has(days_, day)) return;
      }
    }
    throw std::invalid_argument("cron expression '" + text_ +
                                "': day of month field: no such day in the given months");
  }

  bool day_matches(int day_of_month, int day_of_week) const {
    const bool dom = has(days_, day_of_month);
    const bool dow = has(weekdays_, day_of_week);
    if (days_star_ || weekdays_star_) return dom && dow;
    return dom || dow;
  }

  // Howard Hinnant's civil calendar algorithms (proleptic Gregorian, days since 1970-01-01).
  static std::int64_t days_from_civil(std::int64_t y, int m, int d) {
    y -= m <= 2 ? 1 : 0;
    const std::int64_t era = floor_div(y, 400);
    const std::int64_t yoe = y - era * 400;
    const std::int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const std::int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
  }
  static civil civil_from_days(std::int64_t z) {
    z += 719468;
    const std::int64_t era = floor_div(z, 146097);
    const std::int64_t doe = z - era * 146097;
    const std::int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const std::int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const std::int64_t mp = (5 * doy + 2) / 153;
    const int d = static_cast<int>(doy - (153 * mp + 2) / 5 + 1);
    const int m = static_cast<int>(mp < 10 ? mp + 3 : mp - 9);
    return civil{yoe + era * 400 + (m <= 2 ? 1 : 0), m, d};
  }
  /// 0 = Sunday; 1970-01-01 was a Thursday.
  static int weekday(std::int64_t days) {
    return static_cast<int>(days - floor_div(days + 4, 7) * 7 + 4);
  }

  std::string text_;
  std::uint64_t seconds_ = 0;
  std::uint64_t minutes_ = 0;
  std::uint64_t hours_ = 0;
  std::uint64_t days_ = 0;
  std::uint64_t months_ = 0;
  std::uint64_t weekdays_ = 0;
  bool days_star_ = false;
  bool weekdays_star_ = false;
};

}  // namespace cluster
