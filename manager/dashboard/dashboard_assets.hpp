#pragma once
// The manager's web dashboard (index.html, dashboard.js, dashboard.css), compiled into the
// binary by embed.cmake: no files to install, the page always matches the binary.
//
// Serve "/" and "/dashboard" with the first asset (index.html) and "/dashboard<path>" with the
// asset of that path; the page itself fetches "/api/cluster" (see README.md next to this file).

#include <span>
#include <string_view>

namespace cluster::dashboard {

struct asset {
  std::string_view path;          ///< "/index.html", "/dashboard.js", ...
  std::string_view content_type;  ///< e.g. "text/html; charset=utf-8"
  std::string_view body;          ///< the file's bytes
};

/// Every file of the page, "/index.html" first. Static storage: the views never dangle.
std::span<const asset> assets();

}  // namespace cluster::dashboard
