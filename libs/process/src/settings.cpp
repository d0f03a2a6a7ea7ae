#include "cluster/process/settings.hpp"

#include <spdlog/details/fmt_helper.h>
#include <spdlog/pattern_formatter.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <nlohmann/json.hpp>

#include "cluster/process/defaults.hpp"
#include "cluster/trace/trace.hpp"

namespace cluster {

void common_settings::declare(std::vector<config_section>& sections) {
  sections.emplace_back("cluster");
  sections.back()
      .key("storage", &storage.backend)
      .key("max_frame_bytes", &max_frame_bytes)
      .key("handshake_timeout_ms", &handshake_timeout)
      .key("frame_body_timeout_ms", &frame_body_timeout)
      .key("max_connections", &max_connections)
      .key("max_in_flight", &max_in_flight)
      .key("max_queued_bytes", &max_queued_bytes)
      .key("idle_timeout_ms", &idle_timeout)
      .key("max_id_bytes", &max_id_bytes);
  sections.emplace_back("log");
  sections.back().key("level", &log_level).key("format", &log_format);
  sections.emplace_back("trace");
  sections.back()
      .key("otlp_endpoint", &trace.otlp_endpoint)
      .key("sample_ratio", &trace.sample_ratio)
      .key("service_name", &trace.service_name);
  sections.emplace_back("security");
  sections.back()
      .key("auth", &security.auth)
      .key("credentials_dir", &security.credentials_dir)
      .key("key_file", &security.key_file)
      .key("key", &security.key)
      .key("trust_file", &security.trust_file)
      .key("trust", &security.trust)
      .key("tls", &security.tls);
}

void common_settings::declare_admin(config_section& own) {
  own.key("admin_host", &admin.host)
      .key("admin_port", &admin.port)
      .key("admin_token", &admin.token);
}

result<void> common_settings::prepare_security(role own) {
  BOOST_OUTCOME_TRY(context, make_security_context(security, own));
  security_prepared = std::move(context);
  return success();
}

void common_settings::declare_storage(std::vector<config_section>& sections) {
  sections.emplace_back("storage");
  sections.back()
      .key("url", &storage.url)
      .key("host", &storage.host)
      .key("port", &storage.port)
      .key("user", &storage.user)
      .key("password", &storage.password)
      .key("database", &storage.database)
      .key("sslmode", &storage.sslmode)
      .key("sslrootcert", &storage.sslrootcert)
      .key("table_prefix", &storage.table_prefix)
      .key("poll_interval_ms", &storage.poll_interval)
      .key("retention_ms", &storage.retention)
      .key("batch_size", &storage.batch_size)
      .key("max_attempts", &storage.max_attempts)
      .key("max_state_bytes", &storage.max_state_bytes);
}

result<std::vector<std::string>> sst_link_settings(
    const std::function<const char*(const char*)>& getenv) {
  std::vector<std::string> sets;
  std::string malformed;
  auto link = [&](const char* name) -> nlohmann::json {
    const std::string variable = std::string("SST_RESOURCE_") + name;
    const char* value = getenv(variable.c_str());
    if (value == nullptr) return nullptr;
    auto parsed = nlohmann::json::parse(value, nullptr, false);
    if (!parsed.is_object() && malformed.empty()) malformed = variable;
    return parsed;
  };
  auto text = [](const nlohmann::json& value) {
    return value.is_string() ? value.get<std::string>() : value.dump();
  };
  if (auto db = link("Database"); db.is_object()) {
    const std::pair<const char*, const char*> fields[] = {{"host", "host"},
                                                          {"port", "port"},
                                                          {"username", "user"},
                                                          {"password", "password"},
                                                          {"database", "database"}};
    for (const auto& [from, to] : fields)
      if (db.contains(from)) sets.push_back(std::string("storage.") + to + "=" + text(db[from]));
  }
  if (auto manager = link("ShardManager"); manager.is_object() && manager.contains("host")) {
    const std::string address = text(manager["host"]) + ":" +
                                text(manager.value("port", nlohmann::json(defaults::manager_port)));
    sets.push_back("runner.manager=" + address);
    sets.push_back("proxy.manager=" + address);
  }
  if (auto proxy = link("ProxyServer"); proxy.is_object() && proxy.contains("host"))
    sets.push_back("gateway.proxy=" + text(proxy["host"]) + ":" +
                   text(proxy.value("port", nlohmann::json(defaults::proxy_port))));
  // Secrets: each service links one key; the value is never logged.
  for (const char* role_name : {"Manager", "Runner", "Proxy", "Client", "Admin"}) {
    const std::string name = std::string("Cluster") + role_name + "Key";
    if (auto key = link(name.c_str()); key.is_object() && key.contains("value"))
      sets.push_back("security.key=" + text(key["value"]));
  }
  if (auto trust = link("ClusterTrust"); trust.is_object() && trust.contains("value"))
    sets.push_back("security.trust=" + text(trust["value"]));
  if (auto token = link("GatewayToken"); token.is_object() && token.contains("value"))
    sets.push_back("gateway.bearer_token=" + text(token["value"]));
  if (auto token = link("EffectRpcToken"); token.is_object() && token.contains("value"))
    sets.push_back("proxy.effect_token=" + text(token["value"]));
  if (!malformed.empty())
    return failure{errc::invalid_request, malformed + ": expected a JSON object"};
  return sets;
}

connection_limits common_settings::limits() const {
  connection_limits limits;
  limits.decode.max_frame_bytes = max_frame_bytes;
  limits.handshake_timeout = handshake_timeout;
  limits.frame_body_timeout = frame_body_timeout;
  limits.max_in_flight = max_in_flight;
  // One frame must always fit, or the first large snapshot would close its subscriber.
  limits.max_queued_bytes =
      std::max<std::size_t>(max_queued_bytes, 2 * std::size_t{max_frame_bytes});
  limits.idle_timeout = idle_timeout;
  limits.security = security_prepared;
  return limits;
}

cluster::request_limits common_settings::request_limits() const {
  cluster::request_limits limits;
  limits.max_id_bytes = max_id_bytes;
  return limits;
}

namespace {

/// `%*` in the text pattern: ` trace=<id>` inside a request, nothing outside one.
class trace_flag final : public spdlog::custom_flag_formatter {
 public:
  void format(const spdlog::details::log_msg&, const std::tm&, spdlog::memory_buf_t& out) override {
    const auto id = trace::current_trace_id();
    if (id.empty()) return;
    spdlog::details::fmt_helper::append_string_view(" trace=", out);
    spdlog::details::fmt_helper::append_string_view(id, out);
  }
  std::unique_ptr<custom_flag_formatter> clone() const override {
    return std::make_unique<trace_flag>();
  }
};

/// One JSON object per line, for log collectors (CloudWatch, Loki).
class json_formatter final : public spdlog::formatter {
 public:
  explicit json_formatter(std::string process) : process_(std::move(process)) {}

  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& out) override {
    const auto since_epoch = msg.time.time_since_epoch();
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(since_epoch).count();
    const std::time_t seconds = static_cast<std::time_t>(ms / 1000);
    std::tm utc{};
    gmtime_r(&seconds, &utc);
    char time[32];
    const auto length = std::strftime(time, sizeof time, "%Y-%m-%dT%H:%M:%S", &utc);
    nlohmann::json line{
        {"time", std::string(time, length) + fmt::format(".{:03}Z", ms % 1000)},
        {"level", std::string(spdlog::level::to_string_view(msg.level).data(),
                              spdlog::level::to_string_view(msg.level).size())},
        {"process", process_},
        {"message", std::string(msg.payload.data(), msg.payload.size())},
    };
    if (const auto id = trace::current_trace_id(); !id.empty()) line["trace_id"] = std::string(id);
    const auto text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
    spdlog::details::fmt_helper::append_string_view(text, out);
    out.push_back('\n');
  }
  std::unique_ptr<spdlog::formatter> clone() const override {
    return std::make_unique<json_formatter>(process_);
  }

 private:
  std::string process_;
};

}  // namespace

result<void> setup_logging(const std::string& name, const std::string& level,
                           const std::string& format) {
  const auto parsed = spdlog::level::from_str(level);
  if (parsed == spdlog::level::off && level != "off")
    return failure{errc::invalid_request, "log.level: unknown level '" + level + "'"};
  if (format != "text" && format != "json")
    return failure{errc::invalid_request,
                   "log.format: '" + format + "' is neither \"text\" nor \"json\""};
  auto logger = format == "json" ? spdlog::stderr_logger_mt(name) : spdlog::stderr_color_mt(name);
  if (format == "json") {
    logger->set_formatter(std::make_unique<json_formatter>(name));
  } else {
    auto formatter = std::make_unique<spdlog::pattern_formatter>();
    formatter->add_flag<trace_flag>('*').set_pattern("%Y-%m-%dT%H:%M:%S.%e %^%l%$ [%n] %v%*");
    logger->set_formatter(std::move(formatter));
  }
  logger->set_level(parsed);
  spdlog::set_default_logger(logger);
  return success();
}

}  // namespace cluster
