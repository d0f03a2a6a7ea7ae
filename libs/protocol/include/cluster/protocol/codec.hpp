#pragma once
// Frame encoding and bounded decoding of untrusted bytes.

#include <cstdint>
#include <msgpack.hpp>
#include <string>

#include "cluster/protocol/messages.hpp"
#include "cluster/protocol/result.hpp"

namespace cluster {

/// Limits applied while decoding a body from an untrusted peer.
struct decode_limits {
  std::size_t max_frame_bytes = 8 * 1024 * 1024;
  std::size_t max_container_elements = 1 << 16;  ///< per array or map
  std::size_t max_depth = 16;
};

/// An encoded frame (header included), ready to be written.
using frame = msgpack::sbuffer;

/// Appends `[kind, id, fields]` with its length header to `out` (frames queue up in one
/// buffer and leave in one write).
template <class Fields>
void append_frame(msgpack::sbuffer& out, message_kind kind, std::uint64_t id,
                  const Fields& fields) {
  const std::size_t start = out.size();
  const char header[frame_header_size] = {};
  out.write(header, frame_header_size);
  msgpack::packer<msgpack::sbuffer> packer(out);
  packer.pack_array(3);
  packer.pack(static_cast<std::uint32_t>(kind));
  packer.pack(id);
  packer.pack(fields);
  const auto body = static_cast<std::uint32_t>(out.size() - start - frame_header_size);
  auto* data = reinterpret_cast<unsigned char*>(out.data()) + start;
  data[0] = static_cast<unsigned char>(body >> 24);
  data[1] = static_cast<unsigned char>(body >> 16);
  data[2] = static_cast<unsigned char>(body >> 8);
  data[3] = static_cast<unsigned char>(body);
}

/// Encodes `[kind, id, fields]` with its length header.
template <class Fields>
frame encode_frame(message_kind kind, std::uint64_t id, const Fields& fields) {
  frame out(256);
  append_frame(out, kind, id, fields);
  return out;
}

/// Body length announced by a frame header.
std::uint32_t decode_frame_header(const unsigned char (&header)[frame_header_size]);

/// A decoded envelope; `fields` stays valid as long as this object lives.
struct envelope {
  std::uint32_t kind = 0;
  std::uint64_t id = 0;
  msgpack::object_handle handle;
  const msgpack::object& fields() const { return handle.get().via.array.ptr[2]; }

  /// Converts the fields to T; `invalid_request` when they have the wrong shape (the caller
  /// picks the code it answers with, e.g. `malformed_frame` for a hello).
  template <class T>
  result<T> as() const {
    try {
      return fields().as<T>();
    } catch (const std::exception& e) {
      return failure{errc::invalid_request, e.what()};
    }
  }
};

/// Decodes one body: `frame_too_large` over `limits.max_frame_bytes`, `malformed_frame` for
/// anything but a valid `[kind, id, fields]` (the message says why).
result<envelope> decode_envelope(const char* data, std::size_t size, const decode_limits& limits);

/// Packs any msgpack-adaptable value into bytes (payloads of requests and replies).
template <class T>
bytes pack_bytes(const T& value) {
  msgpack::sbuffer buffer;
  msgpack::pack(buffer, value);
  return bytes(buffer.data(), buffer.data() + buffer.size());
}

/// Unpacks bytes produced by pack_bytes; `bad_payload` on any decoding or shape error.
template <class T>
result<T> unpack_bytes(const bytes& data, const decode_limits& limits = {}) {
  try {
    msgpack::unpack_limit limit(limits.max_container_elements, limits.max_container_elements,
                                limits.max_frame_bytes, limits.max_frame_bytes,
                                limits.max_frame_bytes, limits.max_depth);
    std::size_t offset = 0;
    auto handle = msgpack::unpack(reinterpret_cast<const char*>(data.data()), data.size(), offset,
                                  nullptr, nullptr, limit);
    // Trailing bytes: not what was packed.
    if (offset != data.size()) return failure{errc::bad_payload, "trailing bytes after the value"};
    return handle.get().as<T>();
  } catch (const std::exception& e) {
    return failure{errc::bad_payload, e.what()};
  }
}

}  // namespace cluster
