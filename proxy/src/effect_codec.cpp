#include "cluster/proxy/effect_codec.hpp"

#include <array>
#include <cstring>

namespace cluster::proxy {

using nlohmann::json;

std::optional<effect_framing> parse_effect_framing(std::string_view text) {
  if (text == "auto") return effect_framing::detect;
  if (text == "ndjson") return effect_framing::ndjson;
  if (text == "msgpack") return effect_framing::msgpack;
  return std::nullopt;
}

std::string_view to_string(effect_framing framing) {
  switch (framing) {
    case effect_framing::detect:
      return "auto";
    case effect_framing::ndjson:
      return "ndjson";
    case effect_framing::msgpack:
      return "msgpack";
  }
  return "auto";
}

namespace {

failure malformed(std::string what) { return failure{errc::malformed_frame, std::move(what)}; }

// --- msgpackr's dialect: decoding -----------------------------------------------------

constexpr std::uint8_t record_ext = 0x72;  // msgpackr's record extension ('r')
constexpr std::uint8_t first_record = 0x40;
constexpr std::uint8_t last_record = 0x7f;
constexpr int max_depth = 64;

/// A cursor over one value's bytes; `short_` once the bytes ended before the value did.
class msgpackr_decoder {
 public:
  explicit msgpackr_decoder(std::string_view bytes) : bytes_(bytes) {}

  result<json> value(int depth = 0) {
    if (depth > max_depth) return malformed("MessagePack nested deeper than 64 levels");
    std::uint8_t tag = 0;
    if (!byte(tag)) return incomplete();
    if (tag <= 0x3f) return json(tag);  // positive fixint below the record ids
    if (tag >= first_record && tag <= last_record) {
      const auto& keys = structures_[tag - first_record];
      if (!keys) return json(tag);  // no structure: msgpackr reads a plain fixint
      return record(*keys, depth);
    }
    if (tag <= 0x8f) return map(tag & 0x0f, depth);
    if (tag <= 0x9f) return array(tag & 0x0f, depth);
    if (tag <= 0xbf) return str(tag & 0x1f);
    if (tag >= 0xe0) return json(static_cast<std::int8_t>(tag));
    switch (tag) {
      case 0xc0:
        return json(nullptr);
      case 0xc2:
        return json(false);
      case 0xc3:
        return json(true);
      case 0xc4:
      case 0xc5:
      case 0xc6: {
        std::uint64_t n = 0;
        if (!uint(1u << (tag - 0xc4), n)) return incomplete();
        std::string_view raw;
        if (!take(n, raw)) return incomplete();
        return json::binary(std::vector<std::uint8_t>(raw.begin(), raw.end()));
      }
      case 0xca: {
        std::uint64_t n = 0;
        if (!uint(4, n)) return incomplete();
        float f;
        const auto bits = static_cast<std::uint32_t>(n);
        std::memcpy(&f, &bits, 4);
        return json(static_cast<double>(f));
      }
      case 0xcb: {
        std::uint64_t n = 0;
        if (!uint(8, n)) return incomplete();
        double d;
        std::memcpy(&d, &n, 8);
        return json(d);
      }
      case 0xcc:
      case 0xcd:
      case 0xce:
      case 0xcf: {
        std::uint64_t n = 0;
        if (!uint(1u << (tag - 0xcc), n)) return incomplete();
        return json(n);
      }
      case 0xd0:
      case 0xd1:
      case 0xd2:
      case 0xd3: {
        const unsigned size = 1u << (tag - 0xd0);
        std::uint64_t n = 0;
        if (!uint(size, n)) return incomplete();
        // Sign-extend from `size` bytes.
        const unsigned shift = 64 - 8 * size;
        return json(static_cast<std::int64_t>(n << shift) >> shift);
      }
      case 0xd9:
      case 0xda:
      case 0xdb: {
        std::uint64_t n = 0;
        if (!uint(1u << (tag - 0xd9), n)) return incomplete();
        return str(n);
      }
      case 0xdc:
      case 0xdd: {
        std::uint64_t n = 0;
        if (!uint(tag == 0xdc ? 2 : 4, n)) return incomplete();
        return array(n, depth);
      }
      case 0xde:
      case 0xdf: {
        std::uint64_t n = 0;
        if (!uint(tag == 0xde ? 2 : 4, n)) return incomplete();
        return map(n, depth);
      }
      case 0xd4: {  // fixext 1: a record definition, or `undefined` (type 0)
        std::uint8_t type = 0;
        std::uint8_t data = 0;
        if (!byte(type) || !byte(data)) return incomplete();
        if (type == 0) return json(nullptr);
        if (type != record_ext)
          return malformed("MessagePack extension type " + std::to_string(type) +
                           " is not supported");
        if (data < first_record || data > last_record)
          return malformed("msgpackr record id " + std::to_string(data) + " is out of range");
        return define_record(data, depth);
      }
      default:
        return malformed("MessagePack type byte 0x" + hex(tag) + " is not supported");
    }
  }

  bool cut_short() const { return short_; }
  std::size_t used() const { return at_; }

 private:
  result<json> incomplete() {
    short_ = true;
    return malformed("MessagePack value ends early");
  }

  static std::string hex(std::uint8_t b) {
    static constexpr char digits[] = "0123456789abcdef";
    return {digits[b >> 4], digits[b & 15]};
  }

  bool byte(std::uint8_t& out) {
    if (at_ >= bytes_.size()) return false;
    out = static_cast<std::uint8_t>(bytes_[at_++]);
    return true;
  }
  bool uint(unsigned size, std::uint64_t& out) {
    if (bytes_.size() - at_ < size) return false;
    out = 0;
    for (unsigned i = 0; i < size; ++i)
      out = (out << 8) | static_cast<std::uint8_t>(bytes_[at_ + i]);
    at_ += size;
    return true;
  }
  bool take(std::uint64_t n, std::string_view& out) {
    if (bytes_.size() - at_ < n) return false;
    out = bytes_.substr(at_, n);
    at_ += n;
    return true;
  }

  result<json> str(std::uint64_t n) {
    std::string_view raw;
    if (!take(n, raw)) return incomplete();
    return json(std::string(raw));
  }
  // Every element is at least a byte: a count beyond what is left is a cut or a lie, and
  // checking it first keeps a hostile count from reserving memory.
  bool plausible(std::uint64_t n) {
    if (n <= bytes_.size() - at_) return true;
    short_ = true;
    return false;
  }
  result<json> array(std::uint64_t n, int depth) {
    if (!plausible(n)) return incomplete();
    json out = json::array();
    for (std::uint64_t i = 0; i < n; ++i) {
      auto element = value(depth + 1);
      if (!element) return element;
      out.push_back(std::move(element).value());
    }
    return out;
  }
  result<json> map(std::uint64_t n, int depth) {
    if (!plausible(n)) return incomplete();
    json out = json::object();
    for (std::uint64_t i = 0; i < n; ++i) {
      auto key = value(depth + 1);
      if (!key) return key;
      if (!key.value().is_string()) return malformed("MessagePack map key is not a string");
      auto element = value(depth + 1);
      if (!element) return element;
      out[key.value().get<std::string>()] = std::move(element).value();
    }
    return out;
  }
  result<json> define_record(std::uint8_t id, int depth) {
    auto keys = value(depth + 1);
    if (!keys) return keys;
    if (!keys.value().is_array()) return malformed("msgpackr record keys are not an array");
    std::vector<std::string> names;
    for (auto& key : keys.value()) {
      if (!key.is_string()) return malformed("msgpackr record key is not a string");
      names.push_back(key.get<std::string>());
    }
    structures_[id - first_record] = names;
    return record(names, depth);
  }
  result<json> record(const std::vector<std::string>& keys, int depth) {
    // Copied: a nested definition may reuse this id while the values are read.
    const std::vector<std::string> names = keys;
    json out = json::object();
    for (const auto& name : names) {
      auto element = value(depth + 1);
      if (!element) return element;
      out[name] = std::move(element).value();
    }
    return out;
  }

  std::string_view bytes_;
  std::size_t at_ = 0;
  bool short_ = false;
  std::array<std::optional<std::vector<std::string>>, last_record - first_record + 1> structures_;
};

// --- msgpackr's dialect: encoding -------------------------------------------------------

void put_uint(std::string& out, std::uint8_t tag, std::uint64_t n, unsigned size) {
  out.push_back(static_cast<char>(tag));
  for (unsigned i = size; i-- > 0;) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
}

void put_str(std::string& out, std::string_view s) {
  if (s.size() < 32) {
    out.push_back(static_cast<char>(0xa0 | s.size()));
  } else if (s.size() <= 0xff) {
    put_uint(out, 0xd9, s.size(), 1);
  } else if (s.size() <= 0xffff) {
    put_uint(out, 0xda, s.size(), 2);
  } else {
    put_uint(out, 0xdb, s.size(), 4);
  }
  out.append(s);
}

void put_array_header(std::string& out, std::size_t n) {
  if (n < 16) {
    out.push_back(static_cast<char>(0x90 | n));
  } else if (n <= 0xffff) {
    put_uint(out, 0xdc, n, 2);
  } else {
    put_uint(out, 0xdd, n, 4);
  }
}

void put_value(std::string& out, const json& value) {
  switch (value.type()) {
    case json::value_t::null:
    case json::value_t::discarded:
      out.push_back(static_cast<char>(0xc0));
      return;
    case json::value_t::boolean:
      out.push_back(static_cast<char>(value.get<bool>() ? 0xc3 : 0xc2));
      return;
    case json::value_t::number_unsigned: {
      const auto n = value.get<std::uint64_t>();
      // Fixints stop below the record ids: msgpackr reads 0x40..0x7f as records.
      if (n < first_record) {
        out.push_back(static_cast<char>(n));
      } else if (n <= 0xff) {
        put_uint(out, 0xcc, n, 1);
      } else if (n <= 0xffff) {
        put_uint(out, 0xcd, n, 2);
      } else if (n <= 0xffffffffu) {
        put_uint(out, 0xce, n, 4);
      } else {
        put_uint(out, 0xcf, n, 8);
      }
      return;
    }
    case json::value_t::number_integer: {
      const auto n = value.get<std::int64_t>();
      if (n >= 0) return put_value(out, json(static_cast<std::uint64_t>(n)));
      if (n >= -32) {
        out.push_back(static_cast<char>(n));
      } else if (n >= INT8_MIN) {
        put_uint(out, 0xd0, static_cast<std::uint8_t>(n), 1);
      } else if (n >= INT16_MIN) {
        put_uint(out, 0xd1, static_cast<std::uint16_t>(n), 2);
      } else if (n >= INT32_MIN) {
        put_uint(out, 0xd2, static_cast<std::uint32_t>(n), 4);
      } else {
        put_uint(out, 0xd3, static_cast<std::uint64_t>(n), 8);
      }
      return;
    }
    case json::value_t::number_float: {
      const double d = value.get<double>();
      std::uint64_t bits;
      std::memcpy(&bits, &d, 8);
      put_uint(out, 0xcb, bits, 8);
      return;
    }
    case json::value_t::string:
      put_str(out, value.get_ref<const std::string&>());
      return;
    case json::value_t::binary: {
      const auto& bin = value.get_binary();
      if (bin.size() <= 0xff) {
        put_uint(out, 0xc4, bin.size(), 1);
      } else if (bin.size() <= 0xffff) {
        put_uint(out, 0xc5, bin.size(), 2);
      } else {
        put_uint(out, 0xc6, bin.size(), 4);
      }
      out.append(reinterpret_cast<const char*>(bin.data()), bin.size());
      return;
    }
    case json::value_t::array:
      put_array_header(out, value.size());
      for (const auto& element : value) put_value(out, element);
      return;
    case json::value_t::object:
      // Every object defines structure 0x40 afresh: its keys are read before its values, so
      // a nested object redefining it disturbs nothing.
      out.push_back(static_cast<char>(0xd4));
      out.push_back(static_cast<char>(record_ext));
      out.push_back(static_cast<char>(first_record));
      put_array_header(out, value.size());
      for (const auto& [key, element] : value.items()) put_str(out, key);
      for (const auto& [key, element] : value.items()) put_value(out, element);
      return;
  }
}

}  // namespace

result<std::optional<json>> decode_msgpackr(std::string_view bytes, std::size_t& used) {
  msgpackr_decoder decoder(bytes);
  auto decoded = decoder.value();
  if (decoder.cut_short()) return std::optional<json>();
  if (!decoded) return std::move(decoded).error();
  used = decoder.used();
  return std::optional<json>(std::move(decoded).value());
}

std::string encode_msgpackr(const json& value) {
  std::string out;
  put_value(out, value);
  return out;
}

effect_reader::effect_reader(effect_framing framing, std::size_t max_message_bytes)
    : framing_(framing), max_message_bytes_(max_message_bytes) {}

void effect_reader::append(std::string_view bytes) {
  if (start_ > 0 && start_ == buffer_.size()) {
    buffer_.clear();
    start_ = 0;
  }
  buffer_.append(bytes);
}

result<std::optional<json>> effect_reader::next() {
  if (framing_ == effect_framing::detect) {
    if (start_ >= buffer_.size()) return std::optional<json>();
    const char first = buffer_[start_];
    // A JSON object line starts with '{' (whitespace before it is allowed); a msgpackr
    // message with a record (0xd4) or a map.
    framing_ = first == '{' || first == ' ' || first == '\n' || first == '\r' || first == '\t'
                   ? effect_framing::ndjson
                   : effect_framing::msgpack;
  }
  auto out = framing_ == effect_framing::ndjson ? next_line() : next_msgpack();
  // Reclaim the read part once it dominates the buffer.
  if (start_ > 64 * 1024 && start_ * 2 > buffer_.size()) {
    buffer_.erase(0, start_);
    if (incomplete_at_ >= start_) incomplete_at_ -= start_;
    start_ = 0;
  }
  return out;
}

result<std::optional<json>> effect_reader::next_line() {
  for (;;) {
    const auto newline = buffer_.find('\n', start_);
    if (newline == std::string::npos) {
      if (buffer_.size() - start_ > max_message_bytes_)
        return failure{errc::frame_too_large, "an NDJSON line is longer than " +
                                                  std::to_string(max_message_bytes_) + " bytes"};
      return std::optional<json>();
    }
    std::string_view line(buffer_.data() + start_, newline - start_);
    start_ = newline + 1;
    if (line.size() > max_message_bytes_)
      return failure{errc::frame_too_large, "an NDJSON line is longer than " +
                                                std::to_string(max_message_bytes_) + " bytes"};
    if (line.find_first_not_of(" \t\r") == std::string_view::npos) continue;  // blank line
    auto parsed = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (parsed.is_discarded()) return malformed("a line is not JSON");
    return std::optional<json>(std::move(parsed));
  }
}

result<std::optional<json>> effect_reader::next_msgpack() {
  const std::size_t available = buffer_.size() - start_;
  if (available == 0 || buffer_.size() <= incomplete_at_) return std::optional<json>();
  std::size_t used = 0;
  auto decoded = decode_msgpackr(std::string_view(buffer_).substr(start_), used);
  if (!decoded) return std::move(decoded).error();
  if (!decoded.value()) {
    if (available > max_message_bytes_)
      return failure{errc::frame_too_large, "a MessagePack message is longer than " +
                                                std::to_string(max_message_bytes_) + " bytes"};
    incomplete_at_ = buffer_.size();
    return std::optional<json>();
  }
  start_ += used;
  incomplete_at_ = 0;
  return decoded;
}

std::string encode_effect_message(const json& message, effect_framing framing) {
  if (framing == effect_framing::msgpack) return encode_msgpackr(message);
  auto line = message.dump(-1, ' ', false, json::error_handler_t::replace);
  line.push_back('\n');
  return line;
}

}  // namespace cluster::proxy
