#include "cluster/security/access.hpp"

#include <openssl/crypto.h>
#include <openssl/sha.h>

namespace cluster::security {

token_digest digest_of_token(std::string_view token) {
  token_digest out{};
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), out.data());
  return out;
}

namespace {

bool equals_ignoring_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    const auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c + 32) : c; };
    if (lower(a[i]) != lower(b[i])) return false;
  }
  return true;
}

std::string_view trimmed(std::string_view text) {
  const auto first = text.find_first_not_of(" \t");
  if (first == std::string_view::npos) return {};
  const auto last = text.find_last_not_of(" \t");
  return text.substr(first, last - first + 1);
}

}  // namespace

std::optional<std::string_view> bearer_token_of(std::string_view authorization) {
  const auto space = authorization.find(' ');
  if (space == std::string_view::npos ||
      !equals_ignoring_case(authorization.substr(0, space), "Bearer"))
    return std::nullopt;
  return trimmed(authorization.substr(space + 1));
}

bool token_matches(std::string_view presented, const token_digest& expected) {
  const auto digest = digest_of_token(presented);
  return !presented.empty() && CRYPTO_memcmp(digest.data(), expected.data(), expected.size()) == 0;
}

result<expose_list> expose_list::parse(const std::vector<std::string>& entries,
                                       std::string_view setting) {
  expose_list list;
  for (const auto& text : entries) {
    if (text == "*") {
      list.all_ = true;
      continue;
    }
    const auto slash = text.find('/');
    entry parsed;
    parsed.type = text.substr(0, slash);
    if (slash != std::string::npos) parsed.rpc = text.substr(slash + 1);
    const bool well_formed = !parsed.type.empty() &&
                             (slash == std::string::npos || !parsed.rpc.empty()) &&
                             parsed.rpc.find('/') == std::string::npos;
    if (!well_formed)
      return failure{errc::invalid_request, std::string(setting) + ": '" + text +
                                                "' is not \"Type\", \"Type/Rpc\" or \"*\""};
    list.entries_.push_back(std::move(parsed));
  }
  return list;
}

expose_list expose_list::everything() {
  expose_list list;
  list.all_ = true;
  return list;
}

bool expose_list::allows(std::string_view type, std::string_view rpc) const {
  if (all_) return true;
  for (const auto& e : entries_)
    if (e.type == type && (e.rpc.empty() || e.rpc == rpc)) return true;
  return false;
}

}  // namespace cluster::security
