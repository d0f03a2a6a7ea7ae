#pragma once
// CLUSTER_WIRE_FIELDS(type, field...): the one field list of a wire struct.
//
// From that list it generates, inside the struct:
//   - msgpack_pack: a map from each field's name (str) to its value, in list order; the same
//     bytes MSGPACK_DEFINE_MAP wrote, so the wire format is unchanged;
//   - msgpack_unpack: one pass over the received map with no per-key allocation: the map
//     must have str keys (else msgpack::type_error), unknown keys are skipped, missing ones
//     keep their defaults, of duplicate keys the last wins, a value of the wrong type throws;
//   - wire_field_count and wire_field_names, for tests and tools;
//   - a defaulted operator==;
//   - a compile-time check that the list names as many fields as the struct has members (the
//     struct must stay an aggregate: no constructors, no private members).
// MSGPACK_DEFINE_MAP copied every key into a std::map<std::string, ...> before converting,
// a measurable share of a proxy's time under load; and the fast hand-written decoders that
// replaced it for requests and replies listed the fields a second time.
//
//   struct hello_msg {
//     std::uint32_t protocol_version = 1;
//     std::string name;
//     CLUSTER_WIRE_FIELDS(hello_msg, protocol_version, name);
//   };

#include <boost/preprocessor/seq/for_each.hpp>
#include <boost/preprocessor/seq/for_each_i.hpp>
#include <boost/preprocessor/seq/size.hpp>
#include <boost/preprocessor/stringize.hpp>
#include <boost/preprocessor/variadic/to_seq.hpp>
#include <cstddef>
#include <cstdint>
#include <msgpack.hpp>
#include <string_view>
#include <utility>

namespace cluster::detail {

/// Index of `key` in `names`, or names.size() if it is not there. Fields usually arrive in
/// the order they are declared, so the one after the previous match is tried first.
template <std::size_t N>
constexpr std::size_t wire_field_index(const std::string_view (&names)[N], std::string_view key,
                                       std::size_t expected) {
  if (expected < N && names[expected] == key) return expected;
  for (std::size_t i = 0; i < N; ++i)
    if (names[i] == key) return i;
  return N;
}

/// The decoder every CLUSTER_WIRE_FIELDS struct shares: `target.wire_convert_field(i, value)`
/// converts the value of field i.
template <class T>
void unpack_wire_fields(const msgpack::object& fields, T& target) {
  if (fields.type != msgpack::type::MAP) throw msgpack::type_error();
  std::size_t expected = 0;
  for (std::uint32_t i = 0; i < fields.via.map.size; ++i) {
    const msgpack::object_kv& kv = fields.via.map.ptr[i];
    if (kv.key.type != msgpack::type::STR) throw msgpack::type_error();
    const std::size_t index = wire_field_index(
        T::wire_field_names, std::string_view(kv.key.via.str.ptr, kv.key.via.str.size), expected);
    if (index == T::wire_field_count) continue;
    target.wire_convert_field(index, kv.val);
    expected = index + 1;
  }
}

// Counts the members of an aggregate: the largest N for which T{x1, ..., xN} compiles with
// values that convert to anything.
struct any_member {
  template <class T>
  operator T() const;
};
template <class T, std::size_t... I>
constexpr bool brace_initializable(std::index_sequence<I...>) {
  return requires { T{(void(I), any_member{})...}; };
}
template <class T, std::size_t N = 0>
constexpr std::size_t aggregate_member_count() {
  if constexpr (brace_initializable<T>(std::make_index_sequence<N + 1>{}))
    return aggregate_member_count<T, N + 1>();
  else
    return N;
}

template <class Packer>
void pack_wire_key(Packer& packer, std::string_view name) {
  packer.pack_str(static_cast<std::uint32_t>(name.size()));
  packer.pack_str_body(name.data(), static_cast<std::uint32_t>(name.size()));
}

}  // namespace cluster::detail

#define CLUSTER_WIRE_FIELD_NAME(r, data, field) std::string_view(BOOST_PP_STRINGIZE(field)),
#define CLUSTER_WIRE_FIELD_PACK(r, data, field)                        \
  ::cluster::detail::pack_wire_key(packer, BOOST_PP_STRINGIZE(field)); \
  packer.pack(field);
#define CLUSTER_WIRE_FIELD_CONVERT(r, data, index, field) \
  case index:                                             \
    value.convert(field);                                 \
    break;

#define CLUSTER_WIRE_FIELDS_SEQ(type, seq)                                               \
  static constexpr std::size_t wire_field_count = BOOST_PP_SEQ_SIZE(seq);                \
  static constexpr std::string_view wire_field_names[] = {                               \
      BOOST_PP_SEQ_FOR_EACH(CLUSTER_WIRE_FIELD_NAME, _, seq)};                           \
  template <class Packer>                                                                \
  void msgpack_pack(Packer& packer) const {                                              \
    packer.pack_map(static_cast<std::uint32_t>(wire_field_count));                       \
    BOOST_PP_SEQ_FOR_EACH(CLUSTER_WIRE_FIELD_PACK, _, seq)                               \
  }                                                                                      \
  void msgpack_unpack(const msgpack::object& fields) {                                   \
    static_assert(::cluster::detail::aggregate_member_count<type>() == wire_field_count, \
                  "CLUSTER_WIRE_FIELDS(" #type ", ...) must list every member");         \
    ::cluster::detail::unpack_wire_fields(fields, *this);                                \
  }                                                                                      \
  void wire_convert_field(std::size_t wire_index, const msgpack::object& value) {        \
    switch (wire_index) { BOOST_PP_SEQ_FOR_EACH_I(CLUSTER_WIRE_FIELD_CONVERT, _, seq) }  \
  }                                                                                      \
  friend bool operator==(const type&, const type&) = default

#define CLUSTER_WIRE_FIELDS(type, ...) \
  CLUSTER_WIRE_FIELDS_SEQ(type, BOOST_PP_VARIADIC_TO_SEQ(__VA_ARGS__))
