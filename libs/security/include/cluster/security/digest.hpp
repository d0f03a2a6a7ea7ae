#pragma once
// SHA-256 of bytes and of files, as lowercase hex: how plugin files are identified (a runner's
// shadow copies, the plugin_info and stored_plugin of the wire).

#include <cstdint>
#include <filesystem>
#include <span>
#include <string>

#include "cluster/protocol/result.hpp"

namespace cluster::security {

/// Lowercase hex of the SHA-256 of `data` (64 characters).
std::string sha256_hex(std::span<const std::uint8_t> data);

/// Lowercase hex of the SHA-256 of the file's bytes, read in blocks; fails when it cannot be
/// read.
result<std::string> sha256_file(const std::filesystem::path& file);

}  // namespace cluster::security
