#include "child_process.hpp"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <stdexcept>

namespace cluster::testing {

namespace {
launch::child spawn(const std::string& program, const std::vector<std::string>& args,
                    const std::string& log_file) {
  auto started = launch::child::spawn({program, args, log_file, false});
  if (!started) throw std::runtime_error(started.error().message);
  return std::move(started).value();
}
}  // namespace

child_process::child_process(const std::string& program, const std::vector<std::string>& args,
                             const std::string& log_file)
    : child_(spawn(program, args, log_file)) {}

child_process::~child_process() {
  if (running() && !stop(SIGTERM, std::chrono::milliseconds(5000)))
    stop(SIGKILL, std::chrono::milliseconds(5000));
}

std::string run_command(const std::string& command, int& status) {
  std::string output;
  FILE* pipe = popen(command.c_str(), "r");
  if (pipe == nullptr) {
    status = -1;
    return output;
  }
  std::array<char, 4096> buffer{};
  while (std::fgets(buffer.data(), buffer.size(), pipe) != nullptr) output += buffer.data();
  const int raw = pclose(pipe);
  status = WIFEXITED(raw) ? WEXITSTATUS(raw) : -1;
  return output;
}

std::uint16_t free_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  socklen_t length = sizeof(address);
  getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length);
  close(fd);
  return ntohs(address.sin_port);
}

}  // namespace cluster::testing
