#include "cluster/process/ecs_metadata.hpp"

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <nlohmann/json.hpp>

#include "cluster/net/asio.hpp"

namespace cluster {

namespace http = boost::beast::http;

std::optional<std::string> ecs_task_ip_from_json(const std::string& task_json) {
  const auto task = nlohmann::json::parse(task_json, nullptr, false);
  if (!task.is_object() || !task.contains("Containers")) return std::nullopt;
  for (const auto& container : task["Containers"])
    for (const auto& network : container.value("Networks", nlohmann::json::array()))
      for (const auto& address : network.value("IPv4Addresses", nlohmann::json::array()))
        if (address.is_string() && !address.get<std::string>().empty())
          return address.get<std::string>();
  return std::nullopt;
}

result<std::string> ecs_task_ip(const std::string& metadata_uri) {
  auto unavailable = [](std::string why) { return failure{errc::unavailable, std::move(why)}; };
  const std::string scheme = "http://";
  if (metadata_uri.rfind(scheme, 0) != 0)
    return unavailable("metadata URI must start with http://");
  const auto slash = metadata_uri.find('/', scheme.size());
  const std::string authority = metadata_uri.substr(scheme.size(), slash - scheme.size());
  const std::string path = (slash == std::string::npos ? "" : metadata_uri.substr(slash)) + "/task";
  auto target = parse_host_port(authority);
  if (!target) target = host_port{authority, 80};
  try {
    asio::io_context io;
    tcp::resolver resolver(io);
    boost::beast::tcp_stream stream(io);
    stream.expires_after(std::chrono::seconds(5));
    stream.connect(resolver.resolve(target->host, std::to_string(target->port)));
    http::request<http::empty_body> request{http::verb::get, path, 11};
    request.set(http::field::host, authority);
    http::write(stream, request);
    boost::beast::flat_buffer buffer;
    http::response<http::string_body> response;
    http::read(stream, buffer, response);
    if (response.result() != http::status::ok)
      return unavailable("metadata endpoint answered " + std::to_string(response.result_int()));
    auto ip = ecs_task_ip_from_json(response.body());
    if (!ip) return unavailable("no IPv4 address in the task metadata");
    return *ip;
  } catch (const std::exception& e) {  // Beast's synchronous calls report errors by throwing
    return unavailable(std::string("cannot read the task metadata: ") + e.what());
  }
}

}  // namespace cluster
