#include "cluster/process/config.hpp"

#include <toml++/toml.h>

#include <algorithm>
#include <cctype>

namespace cluster {

namespace {

std::string env_name(const std::string& section, const std::string& key) {
  std::string name = "CLUSTER_" + section + "_" + key;
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) {
    return c == '.' || c == '-' ? '_' : static_cast<char>(std::toupper(c));
  });
  return name;
}

std::int64_t parse_integer(const std::string& text, const std::string& where) {
  try {
    std::size_t used = 0;
    const long long value = std::stoll(text, &used);
    if (used != text.size()) throw std::invalid_argument("trailing characters");
    return value;
  } catch (const std::exception&) {
    throw config_error(where + ": expected an integer, got '" + text + "'");
  }
}

std::int64_t checked_range(std::int64_t value, std::int64_t low, std::int64_t high,
                           const std::string& where) {
  if (value < low || value > high)
    throw config_error(where + ": " + std::to_string(value) + " is outside [" +
                       std::to_string(low) + ", " + std::to_string(high) + "]");
  return value;
}

// Assigns a value given as text (environment or --set).
void assign_text(const config_section::target& target, const std::string& text,
                 const std::string& where) {
  std::visit(
      [&](auto* field) {
        using field_type = std::remove_pointer_t<decltype(field)>;
        if constexpr (std::is_same_v<field_type, std::string>) {
          *field = text;
        } else if constexpr (std::is_same_v<field_type, bool>) {
          if (text == "true" || text == "1") {
            *field = true;
          } else if (text == "false" || text == "0") {
            *field = false;
          } else {
            throw config_error(where + ": expected true or false, got '" + text + "'");
          }
        } else if constexpr (std::is_same_v<field_type, std::vector<std::string>>) {
          field->clear();
          std::size_t start = 0;
          while (start <= text.size()) {
            const auto comma = std::min(text.find(',', start), text.size());
            if (comma > start) field->push_back(text.substr(start, comma - start));
            start = comma + 1;
          }
        } else if constexpr (std::is_same_v<field_type, std::chrono::milliseconds>) {
          *field = std::chrono::milliseconds(
              checked_range(parse_integer(text, where), 0, INT64_MAX, where));
        } else if constexpr (std::is_same_v<field_type, std::uint16_t>) {
          *field = static_cast<std::uint16_t>(
              checked_range(parse_integer(text, where), 0, 65535, where));
        } else if constexpr (std::is_same_v<field_type, std::uint32_t>) {
          *field = static_cast<std::uint32_t>(
              checked_range(parse_integer(text, where), 0, UINT32_MAX, where));
        } else {
          *field = parse_integer(text, where);
        }
      },
      target);
}

// Assigns a value from the TOML file, insisting on the field's type.
void assign_node(const config_section::target& target, const toml::node& node,
                 const std::string& where) {
  std::visit(
      [&](auto* field) {
        using field_type = std::remove_pointer_t<decltype(field)>;
        if constexpr (std::is_same_v<field_type, std::string>) {
          auto value = node.value<std::string>();
          if (!node.is_string() || !value) throw config_error(where + ": expected a string");
          *field = *value;
        } else if constexpr (std::is_same_v<field_type, bool>) {
          if (!node.is_boolean()) throw config_error(where + ": expected true or false");
          *field = *node.value<bool>();
        } else if constexpr (std::is_same_v<field_type, std::vector<std::string>>) {
          const auto* array = node.as_array();
          if (array == nullptr) throw config_error(where + ": expected an array of strings");
          field->clear();
          for (const auto& element : *array) {
            if (!element.is_string()) throw config_error(where + ": expected an array of strings");
            field->push_back(*element.value<std::string>());
          }
        } else {
          if (!node.is_integer()) throw config_error(where + ": expected an integer");
          assign_text(target, std::to_string(*node.value<std::int64_t>()), where);
        }
      },
      target);
}

config_section* find_section(std::vector<config_section>& sections, const std::string& name) {
  for (auto& s : sections)
    if (s.name() == name) return &s;
  return nullptr;
}

}  // namespace

const std::vector<std::string>& all_config_sections() {
  static const std::vector<std::string> names = {"cluster", "manager", "runner", "proxy",
                                                 "storage", "gateway", "log"};
  return names;
}

void load_config(const config_sources& sources, std::vector<config_section>& sections,
                 const std::vector<std::string>& known_sections) {
  if (!sources.file.empty()) {
    toml::table file;
    try {
      file = toml::parse_file(sources.file);
    } catch (const toml::parse_error& e) {
      throw config_error(sources.file + ": " + std::string(e.description()));
    }
    for (const auto& [section_key, section_node] : file) {
      const std::string section_name(section_key.str());
      if (std::find(known_sections.begin(), known_sections.end(), section_name) ==
          known_sections.end())
        throw config_error(sources.file + ": unknown section [" + section_name + "]");
      const auto* table = section_node.as_table();
      if (table == nullptr)
        throw config_error(sources.file + ": '" + section_name + "' must be a [section]");
      auto* section = find_section(sections, section_name);
      if (section == nullptr) continue;  // another process's section
      for (const auto& [key, node] : *table) {
        const std::string key_name(key.str());
        const std::string where = sources.file + ": " + section_name + "." + key_name;
        auto it = section->keys().find(key_name);
        if (it == section->keys().end()) throw config_error(where + ": unknown key");
        assign_node(it->second, node, where);
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
    assign_text(it->second, link.substr(equals + 1), "SST link " + link.substr(0, equals));
  }
  for (auto& section : sections) {
    for (const auto& [key, target] : section.keys()) {
      const std::string name = env_name(section.name(), key);
      if (const char* value = sources.getenv(name.c_str()); value != nullptr)
        assign_text(target, value, "environment " + name);
    }
  }
  for (const auto& set : sources.sets) {
    const auto equals = set.find('=');
    const auto dot = set.find('.');
    if (equals == std::string::npos || dot == std::string::npos || dot > equals)
      throw config_error("--set " + set + ": expected section.key=value");
    const std::string section_name = set.substr(0, dot);
    const std::string key_name = set.substr(dot + 1, equals - dot - 1);
    auto* section = find_section(sections, section_name);
    if (section == nullptr) throw config_error("--set " + set + ": unknown section");
    auto it = section->keys().find(key_name);
    if (it == section->keys().end()) throw config_error("--set " + set + ": unknown key");
    assign_text(it->second, set.substr(equals + 1), "--set " + set);
  }
}

command_line parse_command_line(int argc, char** argv) {
  command_line result;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw config_error(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--config" || arg == "-c") {
      result.sources.file = value();
    } else if (arg == "--set") {
      result.sources.sets.push_back(value());
    } else if (arg == "--help" || arg == "-h") {
      result.help = true;
    } else {
      throw config_error("unknown argument '" + arg + "' (try --help)");
    }
  }
  return result;
}

}  // namespace cluster
