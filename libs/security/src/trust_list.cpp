#include "cluster/security/trust_list.hpp"

#include <algorithm>
#include <fstream>
#include <sstream>

namespace cluster {

result<trust_list> trust_list::parse(std::string_view text) {
  trust_list out;
  std::size_t line_number = 0;
  std::size_t pos = 0;
  while (pos <= text.size()) {
    const auto end = std::min(text.find('\n', pos), text.size());
    std::string_view line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_number;
    const auto first = line.find_first_not_of(" \t\r");
    if (first == std::string_view::npos || line[first] == '#') continue;
    std::size_t at = 0;
    while (at < line.size()) {
      const auto start = line.find_first_not_of(" \t\r,", at);
      if (start == std::string_view::npos) break;
      const auto stop = std::min(line.find_first_of(" \t\r,", start), line.size());
      const std::string_view entry = line.substr(start, stop - start);
      at = stop;
      const auto where = "trust list line " + std::to_string(line_number) + ": ";
      const auto eq = entry.find('=');
      if (eq == std::string_view::npos)
        return failure{errc::invalid_request,
                       where + "expected role=BASE64KEY, got '" + std::string(entry) + "'"};
      const auto r = parse_role(entry.substr(0, eq));
      if (!r)
        return failure{errc::invalid_request, where + "unknown role '" +
                                                  std::string(entry.substr(0, eq)) +
                                                  "' (manager, runner, proxy, client, admin)"};
      auto key_bytes = from_base64(entry.substr(eq + 1));
      if (!key_bytes || key_bytes.value().size() != public_key{}.size())
        return failure{errc::invalid_request,
                       where + "the " + std::string(to_string(*r)) +
                           " key is not a base64 32-byte Ed25519 public key"};
      public_key key{};
      std::copy(key_bytes.value().begin(), key_bytes.value().end(), key.begin());
      auto added = out.add(*r, key);
      if (!added) return failure{errc::invalid_request, where + added.error().message};
    }
    if (end == text.size()) break;
  }
  return out;
}

result<trust_list> trust_list::load_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) return failure{errc::invalid_request, "cannot read the trust list " + path};
  std::stringstream text;
  text << in.rdbuf();
  auto parsed = parse(text.str());
  if (!parsed) return failure{parsed.error().code, path + ": " + parsed.error().message};
  return parsed;
}

result<void> trust_list::add(role r, const public_key& key) {
  if (auto existing = role_of(key))
    return failure{errc::invalid_request, "key " + key_fingerprint(key) + "… is listed twice (as " +
                                              std::string(to_string(*existing)) + ")"};
  entries_.emplace_back(r, key);
  return success();
}

std::optional<role> trust_list::role_of(const public_key& key) const {
  for (const auto& [r, listed] : entries_)
    if (listed == key) return r;
  return std::nullopt;
}

std::string trust_list::to_text() const {
  std::string out = "# cluster-sst trust list: role=public key (docs/security.md)\n";
  for (const auto& [r, key] : entries_)
    out += std::string(to_string(r)) + "=" + to_base64(key) + "\n";
  return out;
}

}  // namespace cluster
