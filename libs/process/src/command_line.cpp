// The processes' command line, parsed with CLI11 (kept apart from config.cpp so that the
// Lambda, which has no command line, compiles the loader without it).
#include <CLI/CLI.hpp>

#include "cluster/process/config.hpp"

namespace cluster {

result<command_line> parse_command_line(int argc, char** argv) {
  command_line line;
  const std::string program = argc > 0 && argv[0] != nullptr ? argv[0] : "cluster";
  CLI::App app("Runs one process of the cluster.",
               program.substr(program.find_last_of('/') == std::string::npos
                                  ? 0
                                  : program.find_last_of('/') + 1));
  // Our own help flag: --help is reported, not acted on, so the caller can add the keys.
  app.set_help_flag();
  app.add_flag("-h,--help", line.help, "Print this help, with every key and its default");
  app.add_option("-c,--config", line.sources.file, "TOML file to read (config/local.toml)")
      ->type_name("FILE");
  app.add_option("--set", line.sources.sets, "Override one key, last of all sources (repeatable)")
      ->type_name("section.key=value")
      ->expected(1)
      ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {  // CLI11 reports errors only by throwing
    return failure{errc::invalid_request, std::string(e.what()) + " (try --help)"};
  }
  line.usage = app.help();
  return line;
}

}  // namespace cluster
