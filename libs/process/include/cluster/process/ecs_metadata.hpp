#pragma once
// The private IP a runner advertises inside an ECS task, from the task metadata endpoint
// (`ECS_CONTAINER_METADATA_URI_V4` + "/task"). Every container of a task shares it.

#include <optional>
#include <string>

#include "cluster/protocol/result.hpp"

namespace cluster {

/// The task's first private IPv4 address, or a failure (errc::unavailable) saying why.
/// Blocking, start-up only; `metadata_uri` is the value of ECS_CONTAINER_METADATA_URI_V4
/// (http://host[:port]/path).
result<std::string> ecs_task_ip(const std::string& metadata_uri);

/// Parses the JSON of `GET ${ECS_CONTAINER_METADATA_URI_V4}/task`.
std::optional<std::string> ecs_task_ip_from_json(const std::string& task_json);

}  // namespace cluster
