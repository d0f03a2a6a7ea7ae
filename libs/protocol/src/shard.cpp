#include "cluster/protocol/shard.hpp"

#include <cstdlib>
#include <stdexcept>
#include <string>

namespace cluster {
namespace {

constexpr char32_t replacement_character = 0xFFFD;

// Decodes UTF-8 to UTF-16 with the WHATWG "UTF-8 decode" algorithm (what TextDecoder runs), so
// ill-formed input produces the same U+FFFD sequence as in JavaScript.
std::u16string to_utf16(std::string_view utf8) {
  std::u16string out;
  out.reserve(utf8.size());
  const auto emit = [&out](char32_t code_point) {
    if (code_point >= 0x10000) {
      code_point -= 0x10000;
      out.push_back(static_cast<char16_t>(0xD800 + (code_point >> 10)));
      out.push_back(static_cast<char16_t>(0xDC00 + (code_point & 0x3FF)));
    } else {
      out.push_back(static_cast<char16_t>(code_point));
    }
  };

  char32_t code_point = 0;
  int bytes_needed = 0;
  int bytes_seen = 0;
  unsigned lower_boundary = 0x80;
  unsigned upper_boundary = 0xBF;
  for (std::size_t i = 0; i < utf8.size();) {
    const auto byte = static_cast<unsigned char>(utf8[i]);
    if (bytes_needed == 0) {
      ++i;
      if (byte <= 0x7F) {
        emit(byte);
      } else if (byte >= 0xC2 && byte <= 0xDF) {
        bytes_needed = 1;
        code_point = byte & 0x1F;
      } else if (byte >= 0xE0 && byte <= 0xEF) {
        // The narrowed boundaries reject overlong forms and UTF-16 surrogates.
        if (byte == 0xE0) lower_boundary = 0xA0;
        if (byte == 0xED) upper_boundary = 0x9F;
        bytes_needed = 2;
        code_point = byte & 0x0F;
      } else if (byte >= 0xF0 && byte <= 0xF4) {
        // The narrowed boundaries reject overlong forms and code points above U+10FFFF.
        if (byte == 0xF0) lower_boundary = 0x90;
        if (byte == 0xF4) upper_boundary = 0x8F;
        bytes_needed = 3;
        code_point = byte & 0x07;
      } else {
        emit(replacement_character);
      }
      continue;
    }
    if (byte < lower_boundary || byte > upper_boundary) {
      // The byte is not consumed: it may start the next sequence.
      code_point = 0;
      bytes_needed = 0;
      bytes_seen = 0;
      lower_boundary = 0x80;
      upper_boundary = 0xBF;
      emit(replacement_character);
      continue;
    }
    ++i;
    lower_boundary = 0x80;
    upper_boundary = 0xBF;
    code_point = (code_point << 6) | (byte & 0x3F);
    if (++bytes_seen == bytes_needed) {
      emit(code_point);
      code_point = 0;
      bytes_needed = 0;
      bytes_seen = 0;
    }
  }
  if (bytes_needed != 0) emit(replacement_character);
  return out;
}

}  // namespace

std::int32_t hash_string(std::string_view utf8_id) {
  const std::u16string units = to_utf16(utf8_id);
  // JS computes `(h * 33) ^ unit` on int32 values; unsigned arithmetic gives the same bits
  // without signed overflow.
  std::uint32_t h = 5381;
  for (auto it = units.rbegin(); it != units.rend(); ++it) {
    h = (h * 33U) ^ static_cast<std::uint32_t>(*it);
  }
  // Effect's Hash.optimize: copies bit 31 into bit 30 (JS `>>>` is a logical shift).
  const std::uint32_t optimized = (h & 0xBFFFFFFFU) | ((h >> 1) & 0x40000000U);
  return static_cast<std::int32_t>(optimized);
}

std::int32_t shard_for(std::string_view entity_id, std::int32_t shards_per_group) {
  if (shards_per_group <= 0) {
    throw std::invalid_argument("shards_per_group must be positive, got " +
                                std::to_string(shards_per_group));
  }
  // C++ `%` truncates toward zero like the JS remainder, so a negative hash gives a negative
  // remainder whose magnitude is below shards_per_group: std::abs cannot overflow.
  return std::abs(hash_string(entity_id) % shards_per_group) + 1;
}

}  // namespace cluster
