// The [gateway] keys, shared by cluster-gateway and the Lambda (which compiles this file).
#include "cluster/gateway/gateway.hpp"

namespace cluster::gateway {

std::vector<config_section> gateway_config::sections() {
  std::vector<config_section> sections;
  common.declare(sections);
  sections.emplace_back("gateway");
  common.declare_admin(sections.back());
  sections.back()
      .key("host", &host)
      .key("port", &port)
      .key("proxy", &proxy)
      .key("request_timeout_ms", &request_timeout)
      .key("read_timeout_ms", &read_timeout)
      .key("max_body_bytes", &max_body_bytes)
      .key("max_header_bytes", &max_header_bytes)
      .key("bearer_token", &bearer_token)
      .key("expose", &expose);
  return sections;
}

result<handler_options> gateway_config::handler_settings() const {
  handler_options options;
  options.max_body_bytes = max_body_bytes;
  options.limits = common.request_limits();
  if (!bearer_token.empty()) options.bearer_token = digest_of_token(bearer_token);
  BOOST_OUTCOME_TRY(exposed, expose_list::parse(expose));
  options.expose = std::move(exposed);
  return options;
}

}  // namespace cluster::gateway
