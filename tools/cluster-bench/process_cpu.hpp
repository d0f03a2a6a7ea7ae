#pragma once
// CPU time used by cluster processes, for cluster-bench's --cpu-pid: user + system time of
// each given process and of every live descendant (a runner's plugin hosts), from /proc.

#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace cluster::bench {

/// Parent and CPU ticks (utime + stime) of one process from /proc/PID/stat.
struct proc_sample {
  long parent = 0;
  std::uint64_t ticks = 0;
};

inline bool read_proc_stat(long pid, proc_sample& out) {
  std::ifstream file("/proc/" + std::to_string(pid) + "/stat");
  std::string text;
  if (!std::getline(file, text)) return false;
  // The command name is in parentheses and may hold spaces: fields resume after the last ')'.
  const auto close = text.rfind(')');
  if (close == std::string::npos) return false;
  std::istringstream fields(text.substr(close + 2));
  std::string state;
  long parent = 0;
  fields >> state >> parent;
  std::string skip;
  for (int i = 0; i < 9; ++i) fields >> skip;  // pgrp .. cmajflt
  std::uint64_t utime = 0, stime = 0;
  fields >> utime >> stime;
  out = {parent, utime + stime};
  return static_cast<bool>(fields);
}

/// CPU seconds used so far by `roots` and their live descendants.
inline double cpu_seconds(const std::vector<long>& roots) {
  std::map<long, proc_sample> all;
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    const auto name = entry.path().filename().string();
    if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
    proc_sample sample;
    if (read_proc_stat(std::stol(name), sample)) all[std::stol(name)] = sample;
  }
  std::set<long> counted(roots.begin(), roots.end());
  for (bool grew = true; grew;) {  // add children of counted processes until none is new
    grew = false;
    for (const auto& [pid, sample] : all)
      if (!counted.count(pid) && counted.count(sample.parent)) grew = counted.insert(pid).second;
  }
  std::uint64_t ticks = 0;
  for (long pid : counted)
    if (auto it = all.find(pid); it != all.end()) ticks += it->second.ticks;
  return static_cast<double>(ticks) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

}  // namespace cluster::bench
