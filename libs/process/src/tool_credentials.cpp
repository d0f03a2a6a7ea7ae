#include "cluster/process/tool_credentials.hpp"

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cluster/security/credentials_folder.hpp"

namespace cluster {

namespace {

namespace fs = std::filesystem;

struct source {
  std::string text;  // inline text, or
  std::string file;  // a file to read
  bool found() const { return !text.empty() || !file.empty(); }
};

std::string env(const tool_credentials& request, const char* name) {
  const char* value = request.getenv(name);
  return value ? value : "";
}

std::string sst_value(const tool_credentials& request, const std::string& resource) {
  const auto text = env(request, ("SST_RESOURCE_" + resource).c_str());
  if (text.empty()) return "";
  auto parsed = nlohmann::json::parse(text, nullptr, false);
  if (!parsed.is_object() || !parsed.contains("value") || !parsed["value"].is_string()) return "";
  return parsed["value"].get<std::string>();
}

std::string sst_role_name(role r) {
  std::string name(to_string(r));
  name[0] = static_cast<char>(name[0] - 'a' + 'A');
  return "Cluster" + name + "Key";
}

fs::path credentials_folder(const tool_credentials& request) {
  const auto configured = env(request, "CLUSTER_SECURITY_CREDENTIALS_DIR");
  return configured.empty() ? fs::path(".local/credentials") : fs::path(configured);
}

source find_key(const tool_credentials& request) {
  if (!request.key_file.empty()) return {"", request.key_file};
  if (auto text = env(request, "CLUSTER_SECURITY_KEY"); !text.empty()) return {text, ""};
  if (auto file = env(request, "CLUSTER_SECURITY_KEY_FILE"); !file.empty()) return {"", file};
  if (auto text = sst_value(request, sst_role_name(request.wanted)); !text.empty())
    return {text, ""};
  for (int i = 0; i < role_count; ++i)
    if (auto text = sst_value(request, sst_role_name(static_cast<role>(i))); !text.empty())
      return {text, ""};
  const auto folder = credentials_folder(request);
  for (const auto r : {request.wanted, role::client}) {
    const auto file = credentials_key_path(folder.string(), r);
    std::error_code ec;
    if (fs::exists(file, ec)) return {"", file};
  }
  return {};
}

source find_trust(const tool_credentials& request) {
  if (!request.trust_file.empty()) return {"", request.trust_file};
  if (auto text = env(request, "CLUSTER_SECURITY_TRUST"); !text.empty()) return {text, ""};
  if (auto file = env(request, "CLUSTER_SECURITY_TRUST_FILE"); !file.empty()) return {"", file};
  if (auto text = sst_value(request, "ClusterTrust"); !text.empty()) return {text, ""};
  const auto file = credentials_trust_path(credentials_folder(request).string());
  std::error_code ec;
  if (fs::exists(file, ec)) return {"", file};
  return {};
}

std::string find_tls(const tool_credentials& request) {
  if (!request.tls.empty()) return request.tls;
  if (auto mode = env(request, "CLUSTER_SECURITY_TLS"); !mode.empty()) return mode;
  std::ifstream in(credentials_folder(request) / "tls");
  std::string mode;
  if (in >> mode) return mode;
  return "off";
}

}  // namespace

result<std::shared_ptr<const security_context>> load_tool_credentials(
    const tool_credentials& request) {
  const auto auth = env(request, "CLUSTER_SECURITY_AUTH");
  if (auth == "false" || auth == "0" || auth == "off") return {nullptr};
  const auto key = find_key(request);
  const auto trust = find_trust(request);
  if (!key.found() || !trust.found()) return {nullptr};
  BOOST_OUTCOME_TRY(listed, [&]() -> result<trust_list> {
    return trust.text.empty() ? trust_list::load_file(trust.file) : trust_list::parse(trust.text);
  }());
  BOOST_OUTCOME_TRY(own_key, [&]() -> result<signing_key> {
    return key.text.empty() ? signing_key::load_file(key.file) : signing_key::from_text(key.text);
  }());
  const auto own_role = listed.role_of(own_key.public_half());
  if (!own_role)
    return failure{errc::invalid_request, "the key " +
                                              (key.file.empty() ? std::string("given") : key.file) +
                                              " is not in the trust list"};
  BOOST_OUTCOME_TRY(mode, parse_tls_mode(find_tls(request)));
  return std::shared_ptr<const security_context>(
      make_security_context(std::move(own_key), std::move(listed), *own_role, mode));
}

}  // namespace cluster
