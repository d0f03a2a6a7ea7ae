#pragma once
// CLUSTER_WIRE_FIELDS(type, field...): the one field list of a wire struct.
// (CLUSTER_WIRE_FIELDS_OMIT_EMPTY, at the end, also leaves fields out of the map while empty.)
//
// From that list it generates, inside the struct:
//   - msgpack_pack: a map from each field's name (str) to its value, in list order; the same
//     bytes MSGPACK_DEFINE_MAP wrote, so the wire format is unchanged;
//   - msgpack_pack writes each key as bytes built at compile time (one append per key);
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
#include <boost/preprocessor/seq/size.hpp>
#include <boost/preprocessor/stringize.hpp>
#include <boost/preprocessor/variadic/to_seq.hpp>
#include <cstddef>
#include <cstdint>
#include <msgpack.hpp>
#include <string_view>
#include <utility>

namespace cluster::detail {

/// Calls `field(key, value)` for each entry of a fields map.
template <class Field>
void for_each_wire_field(const msgpack::object& fields, Field&& field) {
  if (fields.type != msgpack::type::MAP) throw msgpack::type_error();
  for (std::uint32_t i = 0; i < fields.via.map.size; ++i) {
    const msgpack::object_kv& kv = fields.via.map.ptr[i];
    if (kv.key.type != msgpack::type::STR) throw msgpack::type_error();
    field(std::string_view(kv.key.via.str.ptr, kv.key.via.str.size), kv.val);
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

// A field name as MessagePack bytes (fixstr header and name), built at compile time, so a key
// costs one append.
template <std::size_t N>
struct encoded_key {
  static_assert(N - 1 < 32, "a wire field name must be shorter than 32 characters");
  char bytes[N]{};
  constexpr explicit encoded_key(const char (&name)[N]) {
    bytes[0] = static_cast<char>(0xa0 | (N - 1));
    for (std::size_t i = 0; i + 1 < N; ++i) bytes[i + 1] = name[i];
  }
};

}  // namespace cluster::detail

#define CLUSTER_WIRE_FIELD_NAME(r, data, field) std::string_view(BOOST_PP_STRINGIZE(field)),
// The names inside the generated code start with cluster_wire_ so that no field name can
// shadow them.
#define CLUSTER_WIRE_FIELD_PACK(r, data, field)                                                    \
  {                                                                                                \
    static constexpr ::cluster::detail::encoded_key cluster_wire_key(BOOST_PP_STRINGIZE(field));   \
    cluster_wire_packer.pack_str_body(cluster_wire_key.bytes,                                      \
                                      static_cast<std::uint32_t>(sizeof(cluster_wire_key.bytes))); \
  }                                                                                                \
  cluster_wire_packer.pack(field);
#define CLUSTER_WIRE_FIELD_MATCH(r, data, field)                                            \
  if (cluster_wire_key ==                                                                   \
      std::string_view(BOOST_PP_STRINGIZE(field), sizeof(BOOST_PP_STRINGIZE(field)) - 1)) { \
    cluster_wire_value.convert(field);                                                      \
    return;                                                                                 \
  }
#define CLUSTER_WIRE_FIELD_PACK_UNLESS_EMPTY(r, data, field) \
  if (!field.empty()) {                                      \
    CLUSTER_WIRE_FIELD_PACK(r, data, field)                  \
  }
#define CLUSTER_WIRE_FIELD_COUNT_UNLESS_EMPTY(r, data, field) +(field.empty() ? 0 : 1)
// `map_size` and `pack_fields` are what CLUSTER_WIRE_FIELDS and CLUSTER_WIRE_FIELDS_OMIT_EMPTY
// differ in: how many entries the map has and the statements that write them.
#define CLUSTER_WIRE_FIELDS_IMPL(type, seq, map_size, pack_fields)                             \
  static constexpr std::size_t wire_field_count = BOOST_PP_SEQ_SIZE(seq);                      \
  static constexpr std::string_view wire_field_names[] = {                                     \
      BOOST_PP_SEQ_FOR_EACH(CLUSTER_WIRE_FIELD_NAME, _, seq)};                                 \
  template <class Packer>                                                                      \
  void msgpack_pack(Packer& cluster_wire_packer) const {                                       \
    cluster_wire_packer.pack_map(static_cast<std::uint32_t>(map_size));                        \
    pack_fields                                                                                \
  }                                                                                            \
  void msgpack_unpack(const msgpack::object& cluster_wire_fields) {                            \
    static_assert(::cluster::detail::aggregate_member_count<type>() == wire_field_count,       \
                  "CLUSTER_WIRE_FIELDS(" #type ", ...) must list every member");               \
    ::cluster::detail::for_each_wire_field(                                                    \
        cluster_wire_fields,                                                                   \
        [this](std::string_view cluster_wire_key, const msgpack::object& cluster_wire_value) { \
          BOOST_PP_SEQ_FOR_EACH(CLUSTER_WIRE_FIELD_MATCH, _, seq)                              \
        });                                                                                    \
  }                                                                                            \
  friend bool operator==(const type&, const type&) = default

#define CLUSTER_WIRE_FIELDS_SEQ(type, seq)              \
  CLUSTER_WIRE_FIELDS_IMPL(type, seq, wire_field_count, \
                           BOOST_PP_SEQ_FOR_EACH(CLUSTER_WIRE_FIELD_PACK, _, seq))

#define CLUSTER_WIRE_FIELDS(type, ...) \
  CLUSTER_WIRE_FIELDS_SEQ(type, BOOST_PP_VARIADIC_TO_SEQ(__VA_ARGS__))

// CLUSTER_WIRE_FIELDS_OMIT_EMPTY(type, (field)(field)..., field...): as CLUSTER_WIRE_FIELDS for
// the fields after the parenthesised list; those in it (strings or containers) follow them in
// the map, each only while it is not empty, which the decoder reads as its default. For a
// field that is empty on nearly every message, so that it costs nothing until it is used.
#define CLUSTER_WIRE_FIELDS_OMIT_EMPTY(type, omitted_when_empty, ...)             \
  CLUSTER_WIRE_FIELDS_OMIT_EMPTY_SEQ(type, BOOST_PP_VARIADIC_TO_SEQ(__VA_ARGS__), \
                                     omitted_when_empty)
#define CLUSTER_WIRE_FIELDS_OMIT_EMPTY_SEQ(type, always, omitted_when_empty)                   \
  CLUSTER_WIRE_FIELDS_IMPL(                                                                    \
      type, always omitted_when_empty,                                                         \
      BOOST_PP_SEQ_SIZE(always)                                                                \
          BOOST_PP_SEQ_FOR_EACH(CLUSTER_WIRE_FIELD_COUNT_UNLESS_EMPTY, _, omitted_when_empty), \
      BOOST_PP_SEQ_FOR_EACH(CLUSTER_WIRE_FIELD_PACK, _, always)                                \
          BOOST_PP_SEQ_FOR_EACH(CLUSTER_WIRE_FIELD_PACK_UNLESS_EMPTY, _, omitted_when_empty))
