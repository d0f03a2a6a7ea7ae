#pragma once
// `clusterctl top`: the dashboard's numbers (the manager's /api/cluster) in a terminal,
// refreshed every second.

#include <string>

namespace clusterctl {

struct top_options {
  std::string admin_url;  ///< the manager's admin endpoint, e.g. http://127.0.0.1:9090
  std::string token;      ///< its admin token, "" when it has none
  int frames = 0;         ///< stop after this many frames; 0: until interrupted
};

/// Exit code: 0 after `frames` frames (or an interrupt), 1 when the first fetch fails.
int top_command(const top_options& options);

/// One frame of the view of an /api/cluster document (exposed for tests), `width` columns.
std::string render_top(const std::string& api_json, int width = 100);

}  // namespace clusterctl
