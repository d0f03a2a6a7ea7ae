#include "cluster/protocol/codec.hpp"

#include <algorithm>
#include <memory>

namespace cluster {

std::uint32_t decode_frame_header(const unsigned char (&header)[frame_header_size]) {
  return (std::uint32_t{header[0]} << 24) | (std::uint32_t{header[1]} << 16) |
         (std::uint32_t{header[2]} << 8) | std::uint32_t{header[3]};
}

std::optional<envelope> decode_envelope(const char* data, std::size_t size,
                                        const decode_limits& limits, std::string& error) {
  if (size > limits.max_frame_bytes) {
    error = "frame of " + std::to_string(size) + " bytes exceeds the limit of " +
            std::to_string(limits.max_frame_bytes);
    return std::nullopt;
  }
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
    if (offset != size) {
      error = "trailing bytes after the message body";
      return std::nullopt;
    }
  } catch (const std::exception& e) {
    error = std::string("body is not valid MessagePack: ") + e.what();
    return std::nullopt;
  }
  const msgpack::object& root = env.handle.get();
  if (root.type != msgpack::type::ARRAY || root.via.array.size != 3) {
    error = "body is not a [kind, id, fields] array";
    return std::nullopt;
  }
  const msgpack::object& kind = root.via.array.ptr[0];
  const msgpack::object& id = root.via.array.ptr[1];
  if (kind.type != msgpack::type::POSITIVE_INTEGER || kind.via.u64 > 0xffffffffu ||
      id.type != msgpack::type::POSITIVE_INTEGER) {
    error = "kind and id must be unsigned integers";
    return std::nullopt;
  }
  env.kind = static_cast<std::uint32_t>(kind.via.u64);
  env.id = id.via.u64;
  return env;
}

}  // namespace cluster
