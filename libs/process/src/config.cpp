#include "cluster/process/config.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <sstream>
#include <type_traits>

extern char** environ;  // POSIX: the process's environment

namespace cluster {

namespace {

failure config_failure(std::string message) {
  return failure{errc::invalid_request, std::move(message)};
}

// An integer of the field's type from `text`, or a failure naming `where`, the text and
// the range. Parsed as int64 first so that "-1" for an unsigned field reports the range.
template <class T>
result<T> integer_from(const std::string& text, const std::string& where) {
  const auto value = parse_number<std::int64_t>(text);
  if (!value) return config_failure(where + ": expected an integer, got '" + text + "'");
  constexpr auto low = static_cast<std::int64_t>(std::numeric_limits<T>::min());
  constexpr auto high =
      static_cast<std::int64_t>(std::min<std::uint64_t>(std::numeric_limits<T>::max(), INT64_MAX));
  if (*value < low || *value > high)
    return config_failure(where + ": " + std::to_string(*value) + " is outside [" +
                          std::to_string(low) + ", " + std::to_string(high) + "]");
  return static_cast<T>(*value);
}

template <class T>
struct is_optional : std::false_type {};
template <class T>
struct is_optional<std::optional<T>> : std::true_type {};

// Assigns a value given as text (environment or --set).
result<void> assign_text(const config_section::target& target, const std::string& text,
                         const std::string& where) {
  return std::visit(
      [&](auto* field) -> result<void> {
        using field_type = std::remove_pointer_t<decltype(field)>;
        if constexpr (is_optional<field_type>::value) {
          typename field_type::value_type value{};
          BOOST_OUTCOME_TRYV(assign_text(config_section::target(&value), text, where));
          *field = value;
        } else if constexpr (std::is_same_v<field_type, std::string>) {
          *field = text;
        } else if constexpr (std::is_same_v<field_type, bool>) {
          if (text == "true" || text == "1") {
            *field = true;
          } else if (text == "false" || text == "0") {
            *field = false;
          } else {
            return config_failure(where + ": expected true or false, got '" + text + "'");
          }
        } else if constexpr (std::is_same_v<field_type, std::vector<std::string>>) {
          field->clear();
          std::size_t start = 0;
          while (start <= text.size()) {
            const auto comma = std::min(text.find(',', start), text.size());
            if (comma > start) field->push_back(text.substr(start, comma - start));
            start = comma + 1;
          }
        } else if constexpr (std::is_same_v<field_type, std::map<std::string, std::string>>) {
          // A table as text: "name=value,name=value".
          field->clear();
          std::size_t start = 0;
          while (start <= text.size()) {
            const auto comma = std::min(text.find(',', start), text.size());
            const auto entry = text.substr(start, comma - start);
            start = comma + 1;
            if (entry.empty()) continue;
            const auto equals = entry.find('=');
            if (equals == std::string::npos || equals == 0)
              return config_failure(where + ": expected name=value, got '" + entry + "'");
            (*field)[entry.substr(0, equals)] = entry.substr(equals + 1);
          }
        } else if constexpr (std::is_same_v<field_type, std::chrono::milliseconds>) {
          // Durations are never negative; the field's own range is int64.
          BOOST_OUTCOME_TRY(count, integer_from<std::int64_t>(text, where));
          if (count < 0)
            return config_failure(where + ": " + std::to_string(count) + " is outside [0, " +
                                  std::to_string(INT64_MAX) + "]");
          *field = std::chrono::milliseconds(count);
        } else if constexpr (std::is_same_v<field_type, double>) {
          char* end = nullptr;
          const double value = std::strtod(text.c_str(), &end);
          if (text.empty() || end != text.c_str() + text.size() || !std::isfinite(value))
            return config_failure(where + ": expected a number, got '" + text + "'");
          *field = value;
        } else {
          BOOST_OUTCOME_TRY(value, integer_from<field_type>(text, where));
          *field = value;
        }
        return success();
      },
      target);
}

// Assigns a value from the TOML file, insisting on the field's type.
result<void> assign_node(const config_section::target& target, const toml::node& node,
                         const std::string& where) {
  return std::visit(
      [&](auto* field) -> result<void> {
        using field_type = std::remove_pointer_t<decltype(field)>;
        if constexpr (is_optional<field_type>::value) {
          typename field_type::value_type value{};
          BOOST_OUTCOME_TRYV(assign_node(config_section::target(&value), node, where));
          *field = value;
        } else if constexpr (std::is_same_v<field_type, std::string>) {
          auto value = node.value<std::string>();
          if (!node.is_string() || !value) return config_failure(where + ": expected a string");
          *field = *value;
        } else if constexpr (std::is_same_v<field_type, bool>) {
          if (!node.is_boolean()) return config_failure(where + ": expected true or false");
          *field = *node.value<bool>();
        } else if constexpr (std::is_same_v<field_type, std::vector<std::string>>) {
          const auto* array = node.as_array();
          if (array == nullptr) return config_failure(where + ": expected an array of strings");
          field->clear();
          for (const auto& element : *array) {
            if (!element.is_string())
              return config_failure(where + ": expected an array of strings");
            field->push_back(*element.value<std::string>());
          }
        } else if constexpr (std::is_same_v<field_type, std::map<std::string, std::string>>) {
          const auto* table = node.as_table();
          if (table == nullptr) return config_failure(where + ": expected a table of strings");
          field->clear();
          for (const auto& [name, value] : *table) {
            if (!value.is_string())
              return config_failure(where + "." + std::string(name.str()) + ": expected a string");
            (*field)[std::string(name.str())] = *value.template value<std::string>();
          }
        } else if constexpr (std::is_same_v<field_type, double>) {
          if (!node.is_number()) return config_failure(where + ": expected a number");
          *field = *node.value<double>();
        } else {
          if (!node.is_integer()) return config_failure(where + ": expected an integer");
          return assign_text(target, std::to_string(*node.value<std::int64_t>()), where);
        }
        return success();
      },
      target);
}

config_section* find_section(std::vector<config_section>& sections, const std::string& name) {
  for (auto& s : sections)
    if (s.name() == name) return &s;
  return nullptr;
}

result<toml::table> parse_file(const std::string& file) {
  try {
    return toml::parse_file(file);
  } catch (const toml::parse_error& e) {  // toml++ reports errors only by throwing
    return config_failure(file + ": " + std::string(e.description()));
  }
}

// CLUSTER_<SECTION>_<NAME>_<KEY> of a section of tables: the longest table key that ends the
// variable's name is its key, what lies between is the table's name.
result<void> assign_table_env(const config_sources& sources, config_section& section) {
  if (!sources.env_names) return success();
  const std::string prefix = config_env_name(section.name(), "");
  for (const auto& variable : sources.env_names()) {
    if (variable.size() <= prefix.size() || variable.compare(0, prefix.size(), prefix) != 0)
      continue;
    const std::string rest = variable.substr(prefix.size());
    const std::string* matched = nullptr;
    std::string matched_suffix;
    for (const auto& key : section.table_keys()) {
      std::string suffix = config_env_name(section.name(), key).substr(prefix.size() - 1);
      if (rest.size() > suffix.size() &&
          rest.compare(rest.size() - suffix.size(), suffix.size(), suffix) == 0 &&
          suffix.size() > matched_suffix.size()) {
        matched = &key;
        matched_suffix = std::move(suffix);
      }
    }
    if (matched == nullptr) continue;
    const char* value = sources.getenv(variable.c_str());
    if (value == nullptr) continue;
    auto& opened = section.opener()(rest.substr(0, rest.size() - matched_suffix.size()));
    auto it = opened.keys().find(*matched);
    if (it == opened.keys().end()) continue;
    BOOST_OUTCOME_TRYV(assign_text(it->second, value, "environment " + variable));
  }
  return success();
}

}  // namespace

std::vector<std::string> config_environment_names() {
  std::vector<std::string> names;
  for (char** entry = environ; entry != nullptr && *entry != nullptr; ++entry) {
    const std::string_view text(*entry);
    if (text.rfind("CLUSTER_", 0) != 0) continue;
    names.emplace_back(text.substr(0, text.find('=')));
  }
  return names;
}

std::string config_env_name(const std::string& section, const std::string& key) {
  std::string name = "CLUSTER_" + section + "_" + key;
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) {
    return c == '.' || c == '-' ? '_' : static_cast<char>(std::toupper(c));
  });
  return name;
}

std::string config_value_text(const config_section::target& target) {
  return std::visit(
      [](auto* field) -> std::string {
        using field_type = std::remove_pointer_t<decltype(field)>;
        if constexpr (is_optional<field_type>::value) {
          if (!field->has_value()) return std::string();
          auto value = **field;
          return config_value_text(config_section::target(&value));
        } else if constexpr (std::is_same_v<field_type, std::string>) {
          return *field;
        } else if constexpr (std::is_same_v<field_type, bool>) {
          return *field ? "true" : "false";
        } else if constexpr (std::is_same_v<field_type, std::vector<std::string>>) {
          std::string joined;
          for (const auto& item : *field) joined += (joined.empty() ? "" : ",") + item;
          return joined;
        } else if constexpr (std::is_same_v<field_type, std::map<std::string, std::string>>) {
          std::string joined;
          for (const auto& [name, value] : *field)
            joined += (joined.empty() ? "" : ",") + name + "=" + value;
          return joined;
        } else if constexpr (std::is_same_v<field_type, std::chrono::milliseconds>) {
          return std::to_string(field->count());
        } else if constexpr (std::is_same_v<field_type, double>) {
          std::ostringstream text;
          text << *field;
          return text.str();
        } else {
          return std::to_string(*field);
        }
      },
      target);
}

const std::vector<std::string>& all_config_sections() {
  static const std::vector<std::string> names = {"cluster", "manager", "runner", "proxy",
                                                 "storage", "gateway", "log",    "security",
                                                 "entity",  "trace"};
  return names;
}

result<void> load_config(const config_sources& sources, std::vector<config_section>& sections,
                         const std::vector<std::string>& known_sections) {
  if (!sources.file.empty()) {
    BOOST_OUTCOME_TRY(file, parse_file(sources.file));
    for (const auto& [section_key, section_node] : file) {
      const std::string section_name(section_key.str());
      if (std::find(known_sections.begin(), known_sections.end(), section_name) ==
          known_sections.end())
        return config_failure(sources.file + ": unknown section [" + section_name + "]");
      const auto* table = section_node.as_table();
      if (table == nullptr)
        return config_failure(sources.file + ": '" + section_name + "' must be a [section]");
      auto* section = find_section(sections, section_name);
      if (section == nullptr) continue;  // another process's section
      if (section->opener()) {
        for (const auto& [name, node] : *table) {
          const std::string table_name(name.str());
          const auto* inner = node.as_table();
          if (inner == nullptr)
            return config_failure(sources.file + ": " + section_name + "." + table_name +
                                  " must be a [" + section_name + "." + table_name + "] table");
          auto& opened = section->opener()(table_name);
          for (const auto& [key, value] : *inner) {
            const std::string key_name(key.str());
            const std::string where =
                sources.file + ": " + section_name + "." + table_name + "." + key_name;
            auto it = opened.keys().find(key_name);
            if (it == opened.keys().end()) return config_failure(where + ": unknown key");
            BOOST_OUTCOME_TRYV(assign_node(it->second, value, where));
          }
        }
        continue;
      }
      for (const auto& [key, node] : *table) {
        const std::string key_name(key.str());
        const std::string where = sources.file + ": " + section_name + "." + key_name;
        auto it = section->keys().find(key_name);
        if (it == section->keys().end()) return config_failure(where + ": unknown key");
        BOOST_OUTCOME_TRYV(assign_node(it->second, node, where));
      }
    }
  }
  for (const auto& link : sources.links) {
    // Links name keys of every process; each process takes the ones it declares.
    const auto equals = link.find('=');
    const auto dot = link.find('.');
    if (equals == std::string::npos || dot == std::string::npos || dot > equals) continue;
    auto* section = find_section(sections, link.substr(0, dot));
    if (section == nullptr) continue;
    auto it = section->keys().find(link.substr(dot + 1, equals - dot - 1));
    if (it == section->keys().end()) continue;
    BOOST_OUTCOME_TRYV(
        assign_text(it->second, link.substr(equals + 1), "SST link " + link.substr(0, equals)));
  }
  for (auto& section : sections) {
    for (const auto& [key, target] : section.keys()) {
      const std::string name = config_env_name(section.name(), key);
      if (const char* value = sources.getenv(name.c_str()); value != nullptr) {
        BOOST_OUTCOME_TRYV(assign_text(target, value, "environment " + name));
      }
    }
    if (section.opener()) {
      BOOST_OUTCOME_TRYV(assign_table_env(sources, section));
    }
  }
  for (const auto& set : sources.sets) {
    const auto equals = set.find('=');
    const auto dot = set.find('.');
    if (equals == std::string::npos || dot == std::string::npos || dot > equals)
      return config_failure("--set " + set + ": expected section.key=value");
    const std::string section_name = set.substr(0, dot);
    const std::string key_name = set.substr(dot + 1, equals - dot - 1);
    auto* section = find_section(sections, section_name);
    if (section == nullptr) return config_failure("--set " + set + ": unknown section");
    if (section->opener()) {
      // section.<table>.key: the table's name may itself hold dots, the key never does.
      const auto last_dot = key_name.rfind('.');
      if (last_dot == std::string::npos || last_dot == 0)
        return config_failure("--set " + set + ": expected " + section_name + ".<name>.key=value");
      auto& opened = section->opener()(key_name.substr(0, last_dot));
      auto it = opened.keys().find(key_name.substr(last_dot + 1));
      if (it == opened.keys().end()) return config_failure("--set " + set + ": unknown key");
      BOOST_OUTCOME_TRYV(assign_text(it->second, set.substr(equals + 1), "--set " + set));
      continue;
    }
    auto it = section->keys().find(key_name);
    if (it == section->keys().end()) {
      // section.table.name=value: one entry of a table key.
      const auto inner_dot = key_name.find('.');
      auto table = inner_dot == std::string::npos
                       ? section->keys().end()
                       : section->keys().find(key_name.substr(0, inner_dot));
      auto* const* entries = table == section->keys().end()
                                 ? nullptr
                                 : std::get_if<std::map<std::string, std::string>*>(&table->second);
      if (entries == nullptr || inner_dot + 1 >= key_name.size())
        return config_failure("--set " + set + ": unknown key");
      (**entries)[key_name.substr(inner_dot + 1)] = set.substr(equals + 1);
      continue;
    }
    BOOST_OUTCOME_TRYV(assign_text(it->second, set.substr(equals + 1), "--set " + set));
  }
  return success();
}

}  // namespace cluster
