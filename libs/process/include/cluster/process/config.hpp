#pragma once
// TOML configuration with defaults, environment overrides and strict keys.
//
// Every process reads one file (sections `[cluster]`, `[manager]`, `[runner]`, `[proxy]`,
// ...). Precedence, lowest first: the field's default, the file, SST link variables
// (`SST_RESOURCE_<Name>`), the environment variable `CLUSTER_<SECTION>_<KEY>` (upper
// case), then `--set section.key=value`.
// A key that no field declares is an error naming the key.

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <stdexcept>
#include <string>
#include <variant>
#include <vector>

namespace cluster {

struct config_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// Declares the keys of one section and where their values go.
class config_section {
 public:
  using target = std::variant<std::string*, std::int64_t*, std::uint16_t*, std::uint32_t*, bool*,
                              std::vector<std::string>*, std::chrono::milliseconds*>;
  explicit config_section(std::string name) : name_(std::move(name)) {}

  /// Milliseconds are written in TOML as integers under a key ending in `_ms`.
  config_section& key(std::string key_name, target where) {
    keys_.emplace(std::move(key_name), where);
    return *this;
  }
  const std::string& name() const { return name_; }
  const std::map<std::string, target>& keys() const { return keys_; }

 private:
  std::string name_;
  std::map<std::string, target> keys_;
};

/// Where overrides come from; tests pass their own environment.
struct config_sources {
  std::string file;                ///< empty: defaults and overrides only
  std::vector<std::string> links;  ///< "section.key=value" from SST links, after the file
  std::vector<std::string> sets;   ///< "section.key=value", last
  std::function<const char*(const char*)> getenv = [](const char* n) { return std::getenv(n); };
};

/// Applies file, environment and overrides to `sections`. Sections of the file that are
/// not listed in `known_sections` are errors; listed but unused ones are skipped.
/// Throws config_error naming the file, key and reason.
void load_config(const config_sources& sources, std::vector<config_section>& sections,
                 const std::vector<std::string>& known_sections);

/// Parses the common command line (`--config FILE`, `--set k=v`, `--help`). Throws config_error.
struct command_line {
  config_sources sources;
  bool help = false;
};
command_line parse_command_line(int argc, char** argv);

/// The section names every process accepts in a shared file.
const std::vector<std::string>& all_config_sections();

}  // namespace cluster
