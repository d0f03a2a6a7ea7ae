#include "cluster/process/process.hpp"

#include <iostream>

namespace cluster {

std::optional<int> configure_process(int argc, char** argv, const std::string& process_name,
                                     std::vector<config_section> sections) {
  auto cli = parse_command_line(argc, argv);
  if (!cli) {
    std::cerr << process_name << ": configuration error: " << cli.error().message << "\n";
    return 2;
  }
  if (cli.value().help) {
    std::cout
        << cli.value().usage << "\n"
        << "Keys, with their defaults (a file sets them in [section]; CLUSTER_<SECTION>_<KEY>\n"
        << "or --set section.key=value overrides them):\n";
    for (const auto& section : sections) {
      for (const auto& [key, target] : section.keys()) {
        const auto value = config_value_text(target);
        std::cout << "  " << section.name() << "." << key << " = "
                  << (value.empty() ? "\"\"" : value) << "  ("
                  << config_env_name(section.name(), key) << ")\n";
      }
      for (const auto& key : section.table_keys())
        std::cout << "  " << section.name() << ".<name>." << key << "  ("
                  << config_env_name(section.name(), "<NAME>_" + key) << ")\n";
    }
    return 0;
  }
  auto sources = std::move(cli.value().sources);
  auto links = sst_link_settings();
  if (links) {
    sources.links = std::move(links.value());
    const auto loaded = load_config(sources, sections, all_config_sections());
    if (loaded) return {};
    std::cerr << process_name << ": configuration error: " << loaded.error().message << "\n";
  } else {
    std::cerr << process_name << ": configuration error: " << links.error().message << "\n";
  }
  return 2;
}

int run_until_signal(asio::io_context& io,
                     const std::function<void(std::function<void()> on_stopped)>& stop,
                     milliseconds drain_timeout) {
  asio::signal_set signals(io, SIGINT, SIGTERM);
  asio::steady_timer give_up(io);
  bool stopping = false;
  signals.async_wait([&](const error_code& ec, int signal_number) {
    if (ec) return;
    stopping = true;
    spdlog::info("received signal {}, stopping", signal_number);
    give_up.expires_after(drain_timeout);
    give_up.async_wait([&io, drain_timeout](const error_code& timer_ec) {
      if (timer_ec) return;
      spdlog::warn("not drained after {} ms; stopping anyway", drain_timeout.count());
      io.stop();
    });
    stop([&io] { io.stop(); });
  });
  try {
    io.run();
  } catch (const std::exception& e) {  // a handler threw: nothing sane is left to run
    spdlog::critical("fatal: {}", e.what());
    return 1;
  }
  spdlog::info("stopped");
  return stopping ? 0 : 1;
}

}  // namespace cluster
