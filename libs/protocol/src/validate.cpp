#include "cluster/protocol/validate.hpp"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <string>

namespace cluster {

namespace {

constexpr std::uint64_t low_bits = 0x0101010101010101ULL;
constexpr std::uint64_t high_bits = 0x8080808080808080ULL;

std::string hex_byte(unsigned char byte) {
  static constexpr char digits[] = "0123456789abcdef";
  return std::string{'0', 'x', digits[byte >> 4], digits[byte & 0xf]};
}

constexpr std::int64_t day_ms = 24LL * 60 * 60 * 1000;

bool continuation(unsigned char byte) { return (byte & 0xC0) == 0x80; }

// The first byte that is not part of well-formed UTF-8 or is NUL (when `stop_at_nul`),
// with which of the two it is.
struct text_problem {
  std::size_t offset;
  bool nul;
};

std::optional<text_problem> first_problem(std::string_view text, bool stop_at_nul) {
  const auto* bytes = reinterpret_cast<const unsigned char*>(text.data());
  const std::size_t size = text.size();
  std::size_t i = 0;
  while (i < size) {
    // Ids are mostly ASCII: skip a word at a time while no byte has its high bit set and
    // (the usual has-zero-byte test) none is zero.
    if (i + 8 <= size) {
      std::uint64_t word;
      std::memcpy(&word, bytes + i, sizeof word);
      const std::uint64_t zero_bytes = (word - low_bits) & ~word & high_bits;
      if ((word & high_bits) == 0 && (!stop_at_nul || zero_bytes == 0)) {
        i += 8;
        continue;
      }
    }
    const unsigned char lead = bytes[i];
    if (lead < 0x80) {
      if (lead == 0 && stop_at_nul) return text_problem{i, true};
      ++i;
      continue;
    }
    // The table of well-formed sequences (Unicode 15, table 3-7): the second byte's range
    // depends on the lead, which rules out overlong forms, surrogates and > U+10FFFF.
    std::size_t length = 0;
    unsigned char low = 0x80, high = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) {
      length = 2;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      length = 3;
      if (lead == 0xE0) low = 0xA0;
      if (lead == 0xED) high = 0x9F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      length = 4;
      if (lead == 0xF0) low = 0x90;
      if (lead == 0xF4) high = 0x8F;
    } else {
      return text_problem{i, false};
    }
    if (i + 1 >= size || bytes[i + 1] < low || bytes[i + 1] > high) return text_problem{i, false};
    for (std::size_t k = 2; k < length; ++k)
      if (i + k >= size || !continuation(bytes[i + k])) return text_problem{i, false};
    i += length;
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::size_t> invalid_utf8_offset(std::string_view text) {
  const auto problem = first_problem(text, false);
  if (!problem) return std::nullopt;
  return problem->offset;
}

bool is_clean_text(std::string_view text) { return !first_problem(text, true); }

std::string to_clean_text(std::string_view text) {
  static constexpr std::string_view replacement = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(text.size());
  while (!text.empty()) {
    const auto problem = first_problem(text, true);
    if (!problem) {
      out.append(text);
      break;
    }
    out.append(text.substr(0, problem->offset));
    out.append(replacement);
    text.remove_prefix(problem->offset + 1);
  }
  return out;
}

result<void> validate_text_field(std::string_view field, std::string_view text,
                                 std::size_t max_bytes) {
  if (text.size() > max_bytes)
    return failure{errc::invalid_request,
                   std::string(field) + " is " + std::to_string(text.size()) +
                       " bytes long; at most " + std::to_string(max_bytes) + " are allowed"};
  if (const auto problem = first_problem(text, true)) {
    if (problem->nul)
      return failure{errc::invalid_request, std::string(field) + " contains a NUL byte at offset " +
                                                std::to_string(problem->offset)};
    return failure{errc::invalid_request,
                   std::string(field) + " is not valid UTF-8 (byte " +
                       hex_byte(static_cast<unsigned char>(text[problem->offset])) + " at offset " +
                       std::to_string(problem->offset) + ")"};
  }
  return success();
}

result<void> validate_request(const request_msg& request, const request_limits& limits,
                              std::int64_t now_ms) {
  BOOST_OUTCOME_TRY(validate_text_field("entity_type", request.entity_type, limits.max_name_bytes));
  BOOST_OUTCOME_TRY(validate_text_field("entity_id", request.entity_id, limits.max_id_bytes));
  BOOST_OUTCOME_TRY(validate_text_field("rpc", request.rpc, limits.max_name_bytes));
  if (request.primary_key) {
    BOOST_OUTCOME_TRY(
        validate_text_field("primary_key", *request.primary_key, limits.max_id_bytes));
  }
  if (request.deliver_at_ms) {
    const std::int64_t at = *request.deliver_at_ms;
    // Negative times would overflow the delay a runner computes from them.
    if (at < 0)
      return failure{errc::invalid_request, "deliver_at_ms is " + std::to_string(at) +
                                                "; expected unix milliseconds, not before 1970"};
    if (at > now_ms && at - now_ms > limits.max_deliver_ahead_ms)
      return failure{
          errc::invalid_request,
          "deliver_at_ms is " + std::to_string((at - now_ms) / day_ms) + " days ahead; at most " +
              std::to_string(limits.max_deliver_ahead_ms / day_ms) + " days are allowed"};
  }
  return success();
}

result<void> validate_request(const request_msg& request, const request_limits& limits) {
  // Only deliver_at_ms needs the time: most requests do not read the clock at all.
  std::int64_t now_ms = 0;
  if (request.deliver_at_ms)
    now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                 std::chrono::system_clock::now().time_since_epoch())
                 .count();
  return validate_request(request, limits, now_ms);
}

namespace {

result<void> validate_name(const std::string& field, std::string_view text, std::size_t max_bytes) {
  if (text.empty()) return failure{errc::invalid_request, field + " is empty"};
  return validate_text_field(field, text, max_bytes);
}

result<void> validate_count(const std::string& field, std::size_t count, std::size_t most) {
  if (count > most)
    return failure{errc::invalid_request, field + " has " + std::to_string(count) +
                                              " entries; at most " + std::to_string(most) +
                                              " are allowed"};
  return success();
}

}  // namespace

bool is_sha256_hex(std::string_view text) {
  return text.size() == 64 && std::all_of(text.begin(), text.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

result<void> validate_registration(const register_runner_msg& registration,
                                   const registration_limits& limits) {
  BOOST_OUTCOME_TRY(validate_name("address", registration.address, limits.max_address_bytes));
  BOOST_OUTCOME_TRY(validate_name("name", registration.name, limits.max_runner_name_bytes));
  BOOST_OUTCOME_TRY(validate_text_field("version", registration.version, limits.max_version_bytes));
  BOOST_OUTCOME_TRY(
      validate_text_field("incarnation", registration.incarnation, limits.max_incarnation_bytes));
  if (registration.groups.empty())
    return failure{errc::invalid_request, "groups is empty; a runner serves at least one group"};
  BOOST_OUTCOME_TRY(validate_count("groups", registration.groups.size(), limits.max_groups));
  for (std::size_t i = 0; i < registration.groups.size(); ++i) {
    BOOST_OUTCOME_TRY(validate_name("groups[" + std::to_string(i) + "]", registration.groups[i],
                                    limits.max_group_bytes));
  }
  BOOST_OUTCOME_TRY(
      validate_count("entity_types", registration.entity_types.size(), limits.max_entity_types));
  for (std::size_t i = 0; i < registration.entity_types.size(); ++i) {
    const auto& type = registration.entity_types[i];
    const std::string field = "entity_types[" + std::to_string(i) + "]";
    BOOST_OUTCOME_TRY(validate_name(field + ".name", type.name, limits.max_name_bytes));
    BOOST_OUTCOME_TRY(validate_name(field + ".group", type.group, limits.max_group_bytes));
    BOOST_OUTCOME_TRY(validate_count(field + ".rpcs", type.rpcs.size(), limits.max_rpcs_per_type));
    for (std::size_t r = 0; r < type.rpcs.size(); ++r) {
      BOOST_OUTCOME_TRY(validate_name(field + ".rpcs[" + std::to_string(r) + "].name",
                                      type.rpcs[r].name, limits.max_name_bytes));
    }
  }
  BOOST_OUTCOME_TRY(validate_count("plugins", registration.plugins.size(), limits.max_plugins));
  for (std::size_t i = 0; i < registration.plugins.size(); ++i) {
    const auto& plugin = registration.plugins[i];
    const std::string field = "plugins[" + std::to_string(i) + "]";
    BOOST_OUTCOME_TRY(validate_name(field + ".name", plugin.name, limits.max_name_bytes));
    BOOST_OUTCOME_TRY(
        validate_text_field(field + ".version", plugin.version, limits.max_version_bytes));
    // Lowercase hex of a sha256, or empty when the runner could not read the file.
    if (!plugin.sha256.empty() && !is_sha256_hex(plugin.sha256))
      return failure{errc::invalid_request,
                     field + ".sha256 is not 64 lowercase hex digits (or empty)"};
    BOOST_OUTCOME_TRY(
        validate_text_field(field + ".file", plugin.file, limits.max_plugin_file_bytes));
    // loaded, failed, draining: bounded rather than enumerated, so a newer runner's state
    // does not cost it its registration.
    BOOST_OUTCOME_TRY(validate_name(field + ".state", plugin.state, 32));
    BOOST_OUTCOME_TRY(
        validate_text_field(field + ".error", plugin.error, limits.max_plugin_error_bytes));
    BOOST_OUTCOME_TRY(validate_count(field + ".entity_types", plugin.entity_types.size(),
                                     limits.max_entity_types));
    for (std::size_t t = 0; t < plugin.entity_types.size(); ++t) {
      BOOST_OUTCOME_TRY(validate_name(field + ".entity_types[" + std::to_string(t) + "]",
                                      plugin.entity_types[t], limits.max_name_bytes));
    }
  }
  return success();
}

result<void> validate_stored_plugin(const stored_plugin& plugin,
                                    const registration_limits& limits) {
  constexpr std::size_t max_plugin_name_bytes = 128;
  if (plugin.name.empty()) return failure{errc::invalid_request, "the plugin's name is empty"};
  const bool file_name = plugin.name.size() <= max_plugin_name_bytes &&
                         plugin.name.front() != '.' &&
                         std::all_of(plugin.name.begin(), plugin.name.end(), [](char c) {
                           return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                                  (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
                         });
  if (!file_name)
    return failure{errc::invalid_request,
                   "the plugin's name '" + to_clean_text(plugin.name.substr(0, 64)) +
                       "' is not 1-128 letters, digits, '.', '_' or '-' (not starting with '.')"};
  BOOST_OUTCOME_TRY(validate_text_field("version", plugin.version, limits.max_version_bytes));
  if (!is_sha256_hex(plugin.sha256))
    return failure{errc::invalid_request, "sha256 is not 64 lowercase hex digits"};
  BOOST_OUTCOME_TRY(
      validate_count("entity_types", plugin.entity_types.size(), limits.max_entity_types));
  for (std::size_t i = 0; i < plugin.entity_types.size(); ++i) {
    BOOST_OUTCOME_TRY(validate_name("entity_types[" + std::to_string(i) + "]",
                                    plugin.entity_types[i], limits.max_name_bytes));
  }
  if (plugin.size_bytes == 0) return failure{errc::invalid_request, "the plugin file is empty"};
  return success();
}

}  // namespace cluster
