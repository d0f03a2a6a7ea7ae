#pragma once
// TOML configuration with defaults, environment overrides and strict keys.
//
// Every process reads one file (sections `[cluster]`, `[manager]`, `[runner]`, `[proxy]`,
// ...). Precedence, lowest first: the field's default, the file, SST link variables
// (`SST_RESOURCE_<Name>`), the environment variable `CLUSTER_<SECTION>_<KEY>` (upper
// case), then `--set section.key=value`.
// A key that no field declares is an error naming the key.
//
// Start-up only: nothing here runs once a process serves.

#include <charconv>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "cluster/protocol/result.hpp"

namespace cluster {

/// Thrown by constructors and `start()` of the process objects for a setting that loaded
/// but cannot be used (an address that is not host:port); `run_process` reports it.
struct config_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

/// All of `text` as a number of type T (integers in base 10, floating point in fixed or
/// scientific form), or nullopt: empty, trailing characters, a sign T cannot hold, or out
/// of T's range.
template <class T>
std::optional<T> parse_number(std::string_view text) {
  T value{};
  const auto* end = text.data() + text.size();
  const auto [stop, ec] = std::from_chars(text.data(), end, value);
  if (text.empty() || ec != std::errc() || stop != end) return std::nullopt;
  return value;
}

/// Declares the keys of one section and where their values go.
class config_section {
 public:
  /// An optional field stays nullopt unless a source sets it (an override of something else).
  using target = std::variant<std::string*, std::int64_t*, std::uint16_t*, std::uint32_t*, bool*,
                              std::vector<std::string>*, std::chrono::milliseconds*,
                              std::optional<std::int64_t>*, std::optional<bool>*,
                              std::map<std::string, std::string>*, double*>;
  /// Opens the section of one named table of a section of tables (see `tables`).
  using table_opener = std::function<config_section&(const std::string& table)>;
  explicit config_section(std::string name) : name_(std::move(name)) {}

  /// Milliseconds are written in TOML as integers under a key ending in `_ms`.
  config_section& key(std::string key_name, target where) {
    keys_.emplace(std::move(key_name), where);
    return *this;
  }
  /// A section of tables named by the user (`[entity.Counter]`, `[entity.Cart]`): each table
  /// goes to the section `open(name)` returns, which declares `table_keys`. The environment
  /// sets them as CLUSTER_<SECTION>_<NAME>_<KEY> (the name then arrives in upper case, `.`
  /// and `-` as `_`), --set as `section.<name>.key=value`.
  config_section& tables(std::vector<std::string> table_keys, table_opener open) {
    table_keys_ = std::move(table_keys);
    open_ = std::move(open);
    return *this;
  }
  const std::string& name() const { return name_; }
  const std::map<std::string, target>& keys() const { return keys_; }
  const std::vector<std::string>& table_keys() const { return table_keys_; }
  /// Null for a section of keys.
  const table_opener& opener() const { return open_; }

 private:
  std::string name_;
  std::map<std::string, target> keys_;
  std::vector<std::string> table_keys_;
  table_opener open_;
};

/// The names of this process's environment variables that begin with CLUSTER_.
std::vector<std::string> config_environment_names();

/// Where overrides come from; tests pass their own environment.
struct config_sources {
  std::string file;                ///< empty: defaults and overrides only
  std::vector<std::string> links;  ///< "section.key=value" from SST links, after the file
  std::vector<std::string> sets;   ///< "section.key=value", last
  std::function<const char*(const char*)> getenv = [](const char* n) { return std::getenv(n); };
  /// The names of the environment's variables (sections of tables look for theirs here).
  std::function<std::vector<std::string>()> env_names = &config_environment_names;
};

/// Applies file, environment and overrides to `sections`. Sections of the file that are
/// not listed in `known_sections` are errors; listed but unused ones are skipped. A
/// failure (errc::invalid_request) names the file, variable or --set, the key and why.
result<void> load_config(const config_sources& sources, std::vector<config_section>& sections,
                         const std::vector<std::string>& known_sections);

/// The environment variable that overrides `section.key`: CLUSTER_<SECTION>_<KEY>.
std::string config_env_name(const std::string& section, const std::string& key);

/// The current value of a declared key as `--set` would write it (lists comma-separated).
std::string config_value_text(const config_section::target& target);

/// The common command line of the four processes: `--config FILE` (`-c`), `--set k=v`
/// (repeatable), `--help` (`-h`). Parsed with CLI11; an unknown argument or a missing
/// value is a failure naming it.
struct command_line {
  config_sources sources;
  bool help = false;
  std::string usage;  ///< CLI11's help text for `--help`
};
result<command_line> parse_command_line(int argc, char** argv);

/// The section names every process accepts in a shared file.
const std::vector<std::string>& all_config_sections();

}  // namespace cluster
