#include "cluster/process/process.hpp"

#include <spdlog/spdlog.h>

#include <iostream>

#include "cluster/process/settings.hpp"

namespace cluster {

std::optional<int> configure_process(int argc, char** argv, const std::string& process_name,
                                     std::vector<config_section> sections) {
  try {
    const auto cli = parse_command_line(argc, argv);
    if (cli.help) {
      std::cout << "usage: " << process_name << " [--config FILE] [--set section.key=value]...\n"
                << "keys (override with CLUSTER_<SECTION>_<KEY> or --set):\n";
      for (const auto& section : sections)
        for (const auto& [key, target] : section.keys())
          std::cout << "  " << section.name() << "." << key << "\n";
      return 0;
    }
    auto sources = cli.sources;
    sources.links = sst_link_settings();
    load_config(sources, sections, all_config_sections());
  } catch (const config_error& e) {
    std::cerr << process_name << ": configuration error: " << e.what() << "\n";
    return 2;
  }
  return std::nullopt;
}

int run_until_signal(asio::io_context& io, const std::function<void()>& stop,
                     const std::function<bool()>& drained, milliseconds drain_timeout) {
  asio::signal_set signals(io, SIGINT, SIGTERM);
  bool stopping = false;
  signals.async_wait([&](const error_code& ec, int signal_number) {
    if (ec) return;
    stopping = true;
    spdlog::info("received signal {}, stopping", signal_number);
    stop();
    asio::co_spawn(
        io,
        [io_ptr = &io, drained, drain_timeout]() -> awaitable<void> {
          const auto give_up = steady_clock::now() + drain_timeout;
          while (!drained() && steady_clock::now() < give_up) co_await sleep_for(milliseconds(10));
          io_ptr->stop();
        },
        asio::detached);
  });
  try {
    io.run();
  } catch (const std::exception& e) {
    spdlog::critical("fatal: {}", e.what());
    return 1;
  }
  spdlog::info("stopped");
  return stopping ? 0 : 1;
}

}  // namespace cluster
