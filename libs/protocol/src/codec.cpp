#include "cluster/protocol/codec.hpp"

#include <algorithm>
#include <memory>

namespace cluster {

std::uint32_t decode_frame_header(const unsigned char (&header)[frame_header_size]) {
  return (std::uint32_t{header[0]} << 24) | (std::uint32_t{header[1]} << 16) |
         (std::uint32_t{header[2]} << 8) | std::uint32_t{header[3]};
}

result<envelope> decode_envelope(const char* data, std::size_t size, const decode_limits& limits) {
  if (size > limits.max_frame_bytes)
    return failure{errc::frame_too_large, "frame of " + std::to_string(size) +
                                              " bytes exceeds the limit of " +
                                              std::to_string(limits.max_frame_bytes)};
  envelope env;
  try {
    msgpack::unpack_limit limit(limits.max_container_elements, limits.max_container_elements,
                                limits.max_frame_bytes, limits.max_frame_bytes,
                                limits.max_frame_bytes, limits.max_depth);
    // A zone sized for this body: msgpack's default 8 KiB first chunk costs a large malloc
    // (and free) per frame, a measurable share of a proxy's time under load. The zone still
    // grows by itself for bodies that expand more.
    auto zone =
        std::make_unique<msgpack::zone>(std::clamp<std::size_t>(size * 2 + 512, 1024, 65536));
    std::size_t offset = 0;
    const msgpack::object root =
        msgpack::unpack(*zone, data, size, offset, nullptr, nullptr, limit);
    env.handle = msgpack::object_handle(root, std::move(zone));
    if (offset != size)
      return failure{errc::malformed_frame, "trailing bytes after the message body"};
  } catch (const std::exception& e) {
    return failure{errc::malformed_frame,
                   std::string("body is not valid MessagePack: ") + e.what()};
  }
  const msgpack::object& root = env.handle.get();
  if (root.type != msgpack::type::ARRAY || root.via.array.size != 3)
    return failure{errc::malformed_frame, "body is not a [kind, id, fields] array"};
  const msgpack::object& kind = root.via.array.ptr[0];
  const msgpack::object& id = root.via.array.ptr[1];
  if (kind.type != msgpack::type::POSITIVE_INTEGER || kind.via.u64 > 0xffffffffu ||
      id.type != msgpack::type::POSITIVE_INTEGER)
    return failure{errc::malformed_frame, "kind and id must be unsigned integers"};
  env.kind = static_cast<std::uint32_t>(kind.via.u64);
  env.id = id.via.u64;
  return env;
}

}  // namespace cluster
