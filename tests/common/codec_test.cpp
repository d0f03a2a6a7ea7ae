// Frame encoding and the bounded decoding of untrusted bytes
// (libs/protocol: cluster/protocol/codec.hpp).

#include "cluster/protocol/codec.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace {

using namespace std::string_literals;
using cluster::bytes;
using cluster::decode_limits;
using cluster::envelope;
using cluster::errc;
using cluster::message_kind;

// The body of a frame: everything after the 4-byte length header.
std::string body_of(const cluster::frame& frame) {
  return std::string(frame.data() + cluster::frame_header_size,
                     frame.size() - cluster::frame_header_size);
}

cluster::result<envelope> decode(const std::string& body, const decode_limits& limits = {}) {
  return cluster::decode_envelope(body.data(), body.size(), limits);
}

// Passes when `r` holds a value; otherwise says why it failed.
template <class T>
::testing::AssertionResult succeeded(const cluster::result<T>& r) {
  if (r) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << cluster::to_string(r.error().code) << ": " << r.error().message;
}

// Passes when `r` failed with `code` and a message that contains `text`.
template <class T>
::testing::AssertionResult failed_with(const cluster::result<T>& r, errc code,
                                       std::string_view text = {}) {
  if (r) return ::testing::AssertionFailure() << "succeeded";
  if (r.error().code != code || r.error().message.find(text) == std::string::npos ||
      r.error().message.empty())
    return ::testing::AssertionFailure()
           << cluster::to_string(r.error().code) << ": '" << r.error().message << "'";
  return ::testing::AssertionSuccess();
}

// Encodes, checks the header against the body, decodes and converts the fields back.
template <class T>
T round_trip(message_kind kind, std::uint64_t id, const T& fields) {
  const auto frame = cluster::encode_frame(kind, id, fields);
  EXPECT_GT(frame.size(), cluster::frame_header_size);
  unsigned char header[cluster::frame_header_size];
  std::copy_n(reinterpret_cast<const unsigned char*>(frame.data()), cluster::frame_header_size,
              header);
  EXPECT_EQ(cluster::decode_frame_header(header), frame.size() - cluster::frame_header_size);

  const auto body = body_of(frame);
  auto env = decode(body);
  EXPECT_TRUE(succeeded(env));
  if (!env) return T{};
  EXPECT_EQ(env.value().kind, static_cast<std::uint32_t>(kind));
  EXPECT_EQ(env.value().id, id);
  auto converted = env.value().template as<T>();
  EXPECT_TRUE(succeeded(converted));
  return converted ? converted.value() : T{};
}

// A body packed by hand: lets tests build envelopes the encoder never would.
template <class... Items>
std::string packed_array(const Items&... items) {
  msgpack::sbuffer buffer;
  msgpack::packer<msgpack::sbuffer> packer(buffer);
  packer.pack_array(sizeof...(Items));
  (packer.pack(items), ...);
  return std::string(buffer.data(), buffer.size());
}

// Fields of a request whose entity_type is an integer instead of a string.
struct request_with_integer_entity_type {
  std::int64_t entity_type = 42;
  std::string entity_id = "e";
  std::string rpc = "r";
  MSGPACK_DEFINE_MAP(entity_type, entity_id, rpc);
};

}  // namespace

TEST(codec, marks_an_attempt_cut_short_by_error_details_callers_can_read) {
  const auto crashed = cluster::reply_msg::crashed("plugin libx.so crashed: SIGSEGV");
  EXPECT_EQ(crashed.code, errc::defect);
  EXPECT_EQ(crashed.error, "Defect");  // callers see a plain Defect
  EXPECT_TRUE(crashed.attempt_cut_short());
  const auto details = cluster::unpack_bytes<std::map<std::string, bool>>(crashed.payload);
  ASSERT_TRUE(details);
  EXPECT_EQ(details.value(), (std::map<std::string, bool>{{"cut_short", true}}));
  // It survives the wire; a handler's own Defect is not cut short.
  const auto back = round_trip(message_kind::reply, 1, crashed);
  EXPECT_TRUE(back.attempt_cut_short());
  EXPECT_FALSE(cluster::reply_msg::failure(errc::defect, "threw").attempt_cut_short());
}

TEST(codec, round_trips_a_hello) {
  cluster::hello_msg hello;
  hello.role = "runner";
  hello.name = "runner-1";
  const auto back = round_trip(message_kind::hello, 1, hello);
  EXPECT_EQ(back.protocol_version, cluster::protocol_version);
  EXPECT_EQ(back.role, "runner");
  EXPECT_EQ(back.name, "runner-1");
}

TEST(codec, round_trips_a_request_with_payload_bytes_primary_key_and_deliver_at) {
  cluster::request_msg request;
  request.entity_type = "Counter";
  request.entity_id = "counter-7";
  request.rpc = "Increment";
  // Every byte value, including ones that are not valid UTF-8 or MessagePack on their own.
  for (int b = 0; b < 256; ++b) request.payload.push_back(static_cast<std::uint8_t>(b));
  request.persisted = true;
  request.primary_key = "idempotency-key";
  request.deliver_at_ms = 1'700'000'000'123;
  request.timeout_ms = 2500;

  const auto back = round_trip(message_kind::request, 0xFFFF'FFFF'FFFFull, request);
  EXPECT_EQ(back.entity_type, "Counter");
  EXPECT_EQ(back.entity_id, "counter-7");
  EXPECT_EQ(back.rpc, "Increment");
  EXPECT_EQ(back.payload, request.payload);
  EXPECT_TRUE(back.persisted);
  EXPECT_EQ(back.primary_key, std::optional<std::string>("idempotency-key"));
  EXPECT_EQ(back.deliver_at_ms, std::optional<std::int64_t>(1'700'000'000'123));
  EXPECT_EQ(back.timeout_ms, 2500u);
}

TEST(codec, round_trips_a_request_without_the_optional_fields) {
  cluster::request_msg request;
  request.entity_type = "Greeter";
  request.entity_id = "";
  request.rpc = "Greet";
  const auto back = round_trip(message_kind::request, 2, request);
  EXPECT_EQ(back.entity_type, "Greeter");
  EXPECT_TRUE(back.payload.empty());
  EXPECT_FALSE(back.persisted);
  EXPECT_FALSE(back.primary_key.has_value());
  EXPECT_FALSE(back.deliver_at_ms.has_value());
  EXPECT_EQ(back.timeout_ms, 0u);
}

TEST(codec, round_trips_a_successful_and_a_failed_reply) {
  const auto ok = round_trip(message_kind::reply, 3, cluster::reply_msg::success(bytes{1, 2, 3}));
  EXPECT_TRUE(ok.ok());
  EXPECT_EQ(ok.payload, (bytes{1, 2, 3}));

  const auto failed = round_trip(message_kind::reply, 4,
                                 cluster::reply_msg::failure(errc::mailbox_full, "too many"));
  EXPECT_FALSE(failed.ok());
  EXPECT_EQ(failed.code, errc::mailbox_full);
  EXPECT_EQ(failed.error, "MailboxFull");
  EXPECT_EQ(failed.message, "too many");
  EXPECT_TRUE(failed.payload.empty());
}

TEST(codec, round_trips_a_register_runner_with_its_entity_types) {
  cluster::register_runner_msg reg;
  reg.name = "runner-a";
  reg.address = "10.0.0.1:7000";
  reg.groups = {"default", "billing"};
  reg.version = "1.2.3";
  reg.entity_types.push_back({"Counter", "default", {{"Increment", true}, {"Get", false}}});
  reg.entity_types.push_back({"Invoice", "billing", {}});

  const auto back = round_trip(message_kind::register_runner, 5, reg);
  EXPECT_EQ(back.name, "runner-a");
  EXPECT_EQ(back.address, "10.0.0.1:7000");
  EXPECT_EQ(back.groups, (std::vector<std::string>{"default", "billing"}));
  EXPECT_EQ(back.version, "1.2.3");
  ASSERT_EQ(back.entity_types.size(), 2u);
  EXPECT_EQ(back.entity_types[0].name, "Counter");
  EXPECT_EQ(back.entity_types[0].group, "default");
  ASSERT_NE(back.entity_types[0].find_rpc("Increment"), nullptr);
  EXPECT_TRUE(back.entity_types[0].find_rpc("Increment")->persisted);
  ASSERT_NE(back.entity_types[0].find_rpc("Get"), nullptr);
  EXPECT_FALSE(back.entity_types[0].find_rpc("Get")->persisted);
  EXPECT_EQ(back.entity_types[1].name, "Invoice");
  EXPECT_TRUE(back.entity_types[1].rpcs.empty());
}

TEST(codec, round_trips_an_assignment_snapshot) {
  cluster::assignment_snapshot snapshot;
  snapshot.version = 17;
  snapshot.storage = "postgres";
  snapshot.groups.push_back({"default", 3, {"a:1", "", "b:2"}});
  snapshot.entity_types.push_back({"Counter", "default", {{"Increment", true}}});
  snapshot.runners.push_back({"a", "a:1", {"default"}, "1.0", true, 1});
  snapshot.runners.push_back({"b", "b:2", {"default"}, "1.0", false, 1});

  const auto back = round_trip(message_kind::assignments, 0, snapshot);
  EXPECT_EQ(back.version, 17u);
  EXPECT_EQ(back.storage, "postgres");
  const auto* group = back.find_group("default");
  ASSERT_NE(group, nullptr);
  EXPECT_EQ(group->shards, 3u);
  EXPECT_EQ(group->owners, (std::vector<std::string>{"a:1", "", "b:2"}));
  ASSERT_NE(back.find_entity_type("Counter"), nullptr);
  EXPECT_EQ(back.find_entity_type("Counter")->group, "default");
  ASSERT_EQ(back.runners.size(), 2u);
  EXPECT_EQ(back.runners[0].address, "a:1");
  EXPECT_TRUE(back.runners[0].healthy);
  EXPECT_FALSE(back.runners[1].healthy);
  EXPECT_EQ(back.runners[1].shards, 1u);
}

TEST(codec, round_trips_the_dead_letter_messages) {
  const auto ref =
      round_trip(message_kind::replay_dead_letter, 6, cluster::dead_letter_ref_msg{1234567890123});
  EXPECT_EQ(ref.id, 1234567890123);
  EXPECT_EQ(
      round_trip(message_kind::list_dead_letters, 7, cluster::list_dead_letters_msg{25}).limit,
      25u);
  cluster::dead_letters_msg listed;
  listed.dead_letters.push_back(
      {42, "default", 17, "Faulty", "x", "Crash", "poison", 3, "plugin crashed", 1700000000000});
  const auto back = cluster::unpack_bytes<cluster::dead_letters_msg>(cluster::pack_bytes(listed));
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back.value(), listed);
}

TEST(codec, writes_the_body_length_big_endian_in_the_frame_header) {
  // A 300-byte name makes the body longer than 255 bytes, so two header bytes are non-zero.
  cluster::hello_msg hello;
  hello.name = std::string(300, 'n');
  const auto frame = cluster::encode_frame(message_kind::hello, 9, hello);
  const std::size_t body = frame.size() - cluster::frame_header_size;
  ASSERT_GT(body, 255u);
  const auto* data = reinterpret_cast<const unsigned char*>(frame.data());
  EXPECT_EQ(data[0], (body >> 24) & 0xFF);
  EXPECT_EQ(data[1], (body >> 16) & 0xFF);
  EXPECT_EQ(data[2], (body >> 8) & 0xFF);
  EXPECT_EQ(data[3], body & 0xFF);

  const unsigned char header[cluster::frame_header_size] = {0x01, 0x02, 0x03, 0x04};
  EXPECT_EQ(cluster::decode_frame_header(header), 0x01020304u);
  const unsigned char max_header[cluster::frame_header_size] = {0xFF, 0xFF, 0xFF, 0xFF};
  EXPECT_EQ(cluster::decode_frame_header(max_header), 0xFFFFFFFFu);
}

TEST(codec, survives_two_thousand_random_buffers) {
  std::mt19937 rng(20240601);
  std::uniform_int_distribution<int> length(0, 64);
  std::uniform_int_distribution<int> byte(0, 255);
  int decoded = 0;
  int rejected = 0;
  for (int i = 0; i < 2000; ++i) {
    std::string body(static_cast<std::size_t>(length(rng)), '\0');
    for (char& c : body) c = static_cast<char>(byte(rng));
    // Half of the buffers start like an envelope so the decoder gets past the first byte.
    if (i % 2 == 0 && body.size() >= 3) {
      body[0] = static_cast<char>(0x93);
      body[1] = static_cast<char>(byte(rng) & 0x7F);
      body[2] = static_cast<char>(byte(rng) & 0x7F);
    }
    auto env = decode(body);
    if (env) {
      ++decoded;
      // A decoded envelope is usable: its fields can be inspected and converted safely.
      (void)env.value().fields().type;
      (void)env.value().as<cluster::request_msg>();
    } else {
      ++rejected;
      EXPECT_TRUE(failed_with(env, errc::malformed_frame)) << "buffer " << i;
    }
  }
  EXPECT_EQ(decoded + rejected, 2000);
  EXPECT_GT(rejected, 0);
}

TEST(codec, rejects_every_truncation_of_a_valid_body) {
  cluster::request_msg request;
  request.entity_type = "Counter";
  request.entity_id = "c";
  request.rpc = "Get";
  request.payload = bytes(40, 7);
  const auto body = body_of(cluster::encode_frame(message_kind::request, 1234, request));
  for (std::size_t size = 0; size < body.size(); ++size) {
    EXPECT_TRUE(failed_with(decode(body.substr(0, size)), errc::malformed_frame))
        << "a body truncated to " << size << " bytes";
  }
  EXPECT_TRUE(succeeded(decode(body)));
}

TEST(codec, rejects_a_body_that_is_not_a_three_element_array) {
  msgpack::sbuffer map_body;
  msgpack::pack(map_body, std::map<std::string, int>{{"kind", 3}});
  msgpack::sbuffer int_body;
  msgpack::pack(int_body, 3);
  const std::vector<std::string> bodies = {
      std::string(map_body.data(), map_body.size()),
      std::string(int_body.data(), int_body.size()),
      packed_array(3u, 1u),
      packed_array(3u, 1u, cluster::empty_msg{}, 4u),
      packed_array(),
  };
  for (const auto& body : bodies) {
    EXPECT_TRUE(failed_with(decode(body), errc::malformed_frame, "[kind, id, fields]"));
  }
}

TEST(codec, rejects_a_kind_or_id_that_is_not_an_unsigned_integer) {
  const std::vector<std::string> bodies = {
      packed_array(std::string("request"), 1u, cluster::empty_msg{}),
      packed_array(3u, std::string("1"), cluster::empty_msg{}),
      packed_array(-3, 1u, cluster::empty_msg{}),
      packed_array(3u, -1, cluster::empty_msg{}),
      packed_array(3.5, 1u, cluster::empty_msg{}),  // integral doubles are packed as ints
      packed_array(3u, 1.5, cluster::empty_msg{}),
      // A kind above 32 bits must not be truncated into a valid one.
      packed_array(std::uint64_t{0x1'0000'0003}, 1u, cluster::empty_msg{}),
  };
  for (const auto& body : bodies) {
    EXPECT_TRUE(failed_with(decode(body), errc::malformed_frame, "unsigned integers"));
  }
  const auto env = decode(packed_array(3u, std::uint64_t{0xFFFF'FFFF'FFFF'FFFF}, 0));
  ASSERT_TRUE(succeeded(env));
  EXPECT_EQ(env.value().id, 0xFFFF'FFFF'FFFF'FFFFull);
}

TEST(codec, rejects_trailing_bytes_after_the_body) {
  auto body = body_of(cluster::encode_frame(message_kind::ping, 1, cluster::empty_msg{}));
  ASSERT_TRUE(succeeded(decode(body)));
  body.push_back('\x01');
  EXPECT_TRUE(failed_with(decode(body), errc::malformed_frame, "trailing"));
}

TEST(codec, rejects_a_body_over_max_frame_bytes) {
  cluster::hello_msg hello;
  hello.name = std::string(100, 'x');
  const auto body = body_of(cluster::encode_frame(message_kind::hello, 1, hello));
  decode_limits limits;
  limits.max_frame_bytes = body.size() - 1;
  EXPECT_TRUE(failed_with(decode(body, limits), errc::frame_too_large, "exceeds the limit"));
  limits.max_frame_bytes = body.size();
  EXPECT_TRUE(succeeded(decode(body, limits)));
}

TEST(codec, rejects_huge_announced_containers_without_allocating_them) {
  // If the announced sizes were trusted, each of these would ask for gigabytes (ASan would abort).
  const std::vector<std::string> bodies = {
      "\xdd\xff\xff\xff\xff\x01\x02"s,               // array32, 4G elements
      "\xdf\xff\xff\xff\xff\x01\x02"s,               // map32, 4G pairs
      "\x93\x03\x01\xdd\xff\xff\xff\xff\x00"s,       // fields: array32
      "\x93\x03\x01\xdf\xff\xff\xff\xff\xa1k\x01"s,  // fields: map32
      "\x93\x03\x01\xdb\xff\xff\xff\xf0xy"s,         // fields: str32 of 4 GB
      "\x93\x03\x01\xc6\xff\xff\xff\xf0xy"s,         // fields: bin32 of 4 GB
      "\x93\x03\x01\xdc\xff\xff\x00"s,               // fields: array16 over the limit
  };
  decode_limits limits;
  limits.max_container_elements = 1000;
  for (const auto& body : bodies) {
    EXPECT_TRUE(failed_with(decode(body, limits), errc::malformed_frame));
  }
}

TEST(codec, rejects_a_container_over_max_container_elements) {
  decode_limits limits;
  limits.max_container_elements = 100;
  EXPECT_TRUE(succeeded(decode(packed_array(3u, 1u, std::vector<int>(100, 0)), limits)));
  EXPECT_TRUE(failed_with(decode(packed_array(3u, 1u, std::vector<int>(101, 0)), limits),
                          errc::malformed_frame));
  std::map<std::string, int> wide;
  for (int i = 0; i <= 100; ++i) wide.emplace(std::to_string(i), i);
  EXPECT_TRUE(failed_with(decode(packed_array(3u, 1u, wide), limits), errc::malformed_frame));
}

TEST(codec, rejects_nesting_deeper_than_max_depth) {
  std::string deep = "\x93\x03\x01"s;
  deep.append(200, '\x91');  // 200 nested one-element arrays
  deep.push_back('\x00');
  EXPECT_TRUE(failed_with(decode(deep), errc::malformed_frame));

  std::string shallow = "\x93\x03\x01"s;
  shallow.append(4, '\x91');
  shallow.push_back('\x00');
  EXPECT_TRUE(succeeded(decode(shallow)));
}

TEST(codec, converts_fields_of_the_wrong_type_to_an_invalid_request_failure) {
  const auto frame =
      cluster::encode_frame(message_kind::request, 7, request_with_integer_entity_type{});
  auto env = decode(body_of(frame));
  ASSERT_TRUE(succeeded(env));
  EXPECT_TRUE(failed_with(env.value().as<cluster::request_msg>(), errc::invalid_request));

  // Fields that are not a map at all.
  auto list = decode(packed_array(3u, 8u, std::vector<int>{1, 2}));
  ASSERT_TRUE(succeeded(list));
  EXPECT_TRUE(failed_with(list.value().as<cluster::hello_msg>(), errc::invalid_request));
}

TEST(codec, round_trips_payloads_through_pack_bytes) {
  const std::vector<std::string> names = {"a", "", "\xff\xfe"};
  const auto packed = cluster::pack_bytes(names);
  EXPECT_EQ(cluster::unpack_bytes<std::vector<std::string>>(packed).value(), names);

  const auto number = cluster::pack_bytes(std::int64_t{-123456789});
  EXPECT_EQ(cluster::unpack_bytes<std::int64_t>(number).value(), -123456789);

  cluster::rpc_info info{"Get", true};
  const auto back = cluster::unpack_bytes<cluster::rpc_info>(cluster::pack_bytes(info));
  ASSERT_TRUE(succeeded(back));
  EXPECT_EQ(back.value(), info);
}

TEST(codec, unpack_bytes_rejects_garbage_and_the_wrong_shape) {
  EXPECT_FALSE(cluster::unpack_bytes<int>(bytes{}).has_value());
  EXPECT_FALSE(cluster::unpack_bytes<int>(bytes{0xc1}).has_value());  // never-used byte
  EXPECT_FALSE(cluster::unpack_bytes<std::string>(bytes{0xa5, 'a', 'b'}).has_value());
  EXPECT_FALSE(cluster::unpack_bytes<std::vector<int>>(bytes{0xdd, 0xff, 0xff, 0xff, 0xff, 0x01})
                   .has_value());
  EXPECT_FALSE(cluster::unpack_bytes<int>(cluster::pack_bytes(std::string("x"))).has_value());
  EXPECT_FALSE(cluster::unpack_bytes<cluster::rpc_info>(cluster::pack_bytes(std::vector<int>{1}))
                   .has_value());
}

// Bytes after the first object mean the buffer is not what pack_bytes produced.
TEST(codec, unpack_bytes_rejects_trailing_bytes) {
  auto data = cluster::pack_bytes(7);
  data.push_back(0xc1);
  EXPECT_TRUE(failed_with(cluster::unpack_bytes<int>(data), errc::bad_payload, "trailing"));
}

TEST(errc, has_a_distinct_name_for_every_code) {
  std::set<std::string_view> names;
  for (std::uint32_t code = 0; code <= 23; ++code) {
    const auto name = cluster::to_string(static_cast<errc>(code));
    EXPECT_NE(name, "Unknown") << "code " << code;
    EXPECT_FALSE(name.empty());
    names.insert(name);
  }
  EXPECT_EQ(names.size(), 24u);
  EXPECT_EQ(cluster::to_string(errc::ok), "Ok");
  EXPECT_EQ(cluster::to_string(errc::handshake_required), "HandshakeRequired");
  EXPECT_EQ(cluster::to_string(errc::forbidden), "Forbidden");
  EXPECT_EQ(cluster::to_string(errc::state_conflict), "StateConflict");
  EXPECT_EQ(cluster::to_string(errc::cancelled), "Cancelled");
  EXPECT_EQ(cluster::to_string(static_cast<errc>(24)), "Unknown");
}

TEST(errc, retries_routing_exactly_for_not_owner_no_runner_unavailable_and_shutting_down) {
  const std::set<errc> retriable = {errc::not_owner, errc::no_runner, errc::unavailable,
                                    errc::shutting_down};
  for (std::uint32_t code = 0; code <= 19; ++code) {
    const auto e = static_cast<errc>(code);
    EXPECT_EQ(cluster::is_routing_retriable(e), retriable.count(e) == 1) << cluster::to_string(e);
  }
}

// --- one field list per wire struct (wire_fields.hpp) -------------------------------------

namespace {

std::string from_hex(std::string_view hex) {
  std::string out;
  int high = -1;
  for (char c : hex) {
    int digit = -1;
    if (c >= '0' && c <= '9') digit = c - '0';
    if (c >= 'a' && c <= 'f') digit = c - 'a' + 10;
    if (digit < 0) continue;  // spaces between bytes
    if (high < 0) {
      high = digit;
    } else {
      out.push_back(static_cast<char>(high * 16 + digit));
      high = -1;
    }
  }
  return out;
}

// The fields map with entry `skip` left out (pointing into `fields`' zone).
struct map_without {
  std::vector<msgpack::object_kv> entries;
  msgpack::object object;
  map_without(const msgpack::object& fields, std::size_t skip) {
    for (std::uint32_t i = 0; i < fields.via.map.size; ++i)
      if (i != skip) entries.push_back(fields.via.map.ptr[i]);
    object.type = msgpack::type::MAP;
    object.via.map.size = static_cast<std::uint32_t>(entries.size());
    object.via.map.ptr = entries.data();
  }
};

// `sample` must have every field set to a value other than its default. Checks that the
// struct lists `members` fields (counted by hand below), that the frame's map has exactly
// those keys in order, that it decodes back equal, and that each key carries its field: the
// map without key i decodes to something else, because field i then keeps its default.
template <class T>
void expect_every_field_travels(message_kind kind, const T& sample, std::size_t members) {
  SCOPED_TRACE(::testing::Message() << "message kind " << static_cast<std::uint32_t>(kind));
  EXPECT_EQ(T::wire_field_count, members) << "a field is missing from CLUSTER_WIRE_FIELDS";
  const auto frame = cluster::encode_frame(kind, 11, sample);
  auto env = decode(body_of(frame));
  ASSERT_TRUE(succeeded(env));
  const msgpack::object& fields = env.value().fields();
  ASSERT_EQ(fields.type, msgpack::type::MAP);
  ASSERT_EQ(fields.via.map.size, members) << "the encoded map has another number of keys";
  auto back = env.value().template as<T>();
  ASSERT_TRUE(succeeded(back));
  EXPECT_TRUE(back.value() == sample) << "the round trip lost a field";
  if constexpr (T::wire_field_count > 0) {
    for (std::size_t i = 0; i < members; ++i) {
      const auto& key = fields.via.map.ptr[i].key;
      ASSERT_EQ(key.type, msgpack::type::STR);
      EXPECT_EQ(std::string_view(key.via.str.ptr, key.via.str.size), T::wire_field_names[i]);
      const map_without partial(fields, i);
      T without;
      partial.object.convert(without);
      EXPECT_FALSE(without == sample)
          << "field '" << T::wire_field_names[i]
          << "' has its default value in the sample, or its key does not set it";
    }
  }
}

cluster::entity_options sample_entity_options() {
  return {9, 64, 5000, 4, "*/5 * * * * *", 1};  // flags: stateful | cron
}

cluster::entity_type_info sample_entity_type() {
  return {"Counter", "billing", {{"Increment", true}, {"Get", false}}};
}

// With the fields entity types gained with the plugin ABI 2.1.
cluster::entity_type_info full_entity_type() {
  return {"Counter",
          "billing",
          {{"Increment", true, false}, {"Get", false, true}},
          sample_entity_options()};
}

cluster::assignment_snapshot sample_snapshot() {
  cluster::assignment_snapshot snapshot;
  snapshot.version = 17;
  snapshot.storage = "postgres";
  snapshot.groups.push_back({"default", 3, {"a:1", "", "b:2"}});
  snapshot.entity_types.push_back(sample_entity_type());
  snapshot.runners.push_back({"a", "a:1", {"default"}, "1.0", false, 2});
  return snapshot;
}

cluster::plugin_info sample_plugin_info() {
  return {"billing",
          "1.2.0",
          std::string(64, 'a'),
          "/plugins/libbilling.so",
          "loaded",
          "an older file failed",
          {"Counter"}};
}

cluster::stored_plugin sample_stored_plugin() {
  return {"billing", "1.2.0", std::string(64, 'b'), 2, 1, 4096, {"Counter"}, 1'700'000'000'000};
}

// A snapshot with every field set, the nested ones too.
cluster::assignment_snapshot full_snapshot() {
  auto snapshot = sample_snapshot();
  snapshot.runners.front().plugins.push_back(sample_plugin_info());
  snapshot.pushed_plugins.push_back(sample_stored_plugin());
  return snapshot;
}

// The encoding before CLUSTER_WIRE_FIELDS, frozen: MSGPACK_DEFINE_MAP's maps.
struct old_rpc_info {
  std::string name;
  bool persisted = false;
  MSGPACK_DEFINE_MAP(name, persisted);
};
struct old_entity_type_info {
  std::string name;
  std::string group;
  std::vector<old_rpc_info> rpcs;
  MSGPACK_DEFINE_MAP(name, group, rpcs);
};
struct old_shard_group_assignment {
  std::string group;
  std::uint32_t shards = 0;
  std::vector<std::string> owners;
  MSGPACK_DEFINE_MAP(group, shards, owners);
};
struct old_runner_info {
  std::string name;
  std::string address;
  std::vector<std::string> groups;
  std::string version;
  bool healthy = true;
  std::uint32_t shards = 0;
  MSGPACK_DEFINE_MAP(name, address, groups, version, healthy, shards);
};
struct old_assignment_snapshot {
  std::uint64_t version = 0;
  std::string storage;
  std::vector<old_shard_group_assignment> groups;
  std::vector<old_entity_type_info> entity_types;
  std::vector<old_runner_info> runners;
  MSGPACK_DEFINE_MAP(version, storage, groups, entity_types, runners);
};
struct old_register_runner_msg {
  std::string name;
  std::string address;
  std::vector<std::string> groups;
  std::string version;
  std::vector<old_entity_type_info> entity_types;
  MSGPACK_DEFINE_MAP(name, address, groups, version, entity_types);
};

old_assignment_snapshot old_sample_snapshot() {
  old_assignment_snapshot snapshot;
  snapshot.version = 17;
  snapshot.storage = "postgres";
  snapshot.groups.push_back({"default", 3, {"a:1", "", "b:2"}});
  snapshot.entity_types.push_back({"Counter", "billing", {{"Increment", true}, {"Get", false}}});
  snapshot.runners.push_back({"a", "a:1", {"default"}, "1.0", false, 2});
  return snapshot;
}

// A map packed by hand: `pack_entries(packer)` packs `size` key/value pairs.
template <class Entries>
std::string packed_map(std::uint32_t size, Entries pack_entries) {
  msgpack::sbuffer buffer;
  msgpack::packer<msgpack::sbuffer> packer(buffer);
  packer.pack_map(size);
  pack_entries(packer);
  return std::string(buffer.data(), buffer.size());
}

template <class T>
cluster::result<T> fields_as(const std::string& packed_fields) {
  msgpack::object_handle handle = msgpack::unpack(packed_fields.data(), packed_fields.size());
  try {
    return handle.get().as<T>();
  } catch (const msgpack::type_error&) {
    return cluster::failure{errc::invalid_request, "msgpack::type_error"};
  }
}

}  // namespace

TEST(wire_fields, every_message_kind_round_trips_with_every_field_set) {
  expect_every_field_travels(
      message_kind::hello, cluster::hello_msg{7, "runner", "runner-1", bytes(32, 1), bytes(32, 2)},
      5);
  expect_every_field_travels(
      message_kind::hello_ack,
      cluster::hello_ack_msg{9, "manager", "manager", bytes(32, 3), bytes(32, 4), bytes(64, 5)}, 6);
  expect_every_field_travels(message_kind::auth, cluster::auth_msg{bytes(64, 6)}, 1);
  cluster::request_msg request{"Counter",
                               "c-7",
                               "Increment",
                               bytes{1, 2, 3},
                               true,
                               "key-1",
                               1'700'000'000'123,
                               2500,
                               true,
                               64,
                               "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"};
  expect_every_field_travels(message_kind::request, request, 11);
  expect_every_field_travels(message_kind::stream_chunk,
                             cluster::stream_chunk_msg{{bytes{1}, bytes{2, 3}}}, 1);
  expect_every_field_travels(message_kind::stream_ack, cluster::stream_ack_msg{16}, 1);
  expect_every_field_travels(
      message_kind::reply,
      cluster::reply_msg{errc::application_error, "NotFound", "no such order", bytes{9}}, 4);
  for (auto kind : {message_kind::ping, message_kind::pong, message_kind::subscribe_assignments,
                    message_kind::get_status, message_kind::interrupt})
    expect_every_field_travels(kind, cluster::empty_msg{}, 0);
  expect_every_field_travels(message_kind::register_runner,
                             cluster::register_runner_msg{"runner-a",
                                                          "10.0.0.1:7000",
                                                          {"default", "billing"},
                                                          "1.2.3",
                                                          {sample_entity_type()},
                                                          "0123abcdef",
                                                          {sample_plugin_info()},
                                                          "10.0.0.1:9093"},
                             8);
  expect_every_field_travels(message_kind::unregister_runner,
                             cluster::unregister_runner_msg{"10.0.0.1:7000"}, 1);
  expect_every_field_travels(message_kind::assignments, full_snapshot(), 6);
  expect_every_field_travels(message_kind::list_plugins, cluster::empty_msg{}, 0);
  expect_every_field_travels(message_kind::push_plugin,
                             cluster::push_plugin_msg{sample_stored_plugin(), 1024, bytes{1, 2}},
                             3);
  expect_every_field_travels(message_kind::remove_plugin, cluster::remove_plugin_msg{"billing"}, 1);
  expect_every_field_travels(message_kind::fetch_plugin,
                             cluster::fetch_plugin_msg{std::string(64, 'c'), 2048, 512}, 3);
}

TEST(wire_fields, every_nested_structure_round_trips_with_every_field_set) {
  // Sent inside the messages above (and as get_status payloads): checked on their own too.
  const auto kind = message_kind::reply;
  expect_every_field_travels(kind, cluster::rpc_info{"Get", true, true, true}, 4);
  expect_every_field_travels(kind, sample_entity_options(), 6);
  expect_every_field_travels(kind, full_entity_type(), 4);
  expect_every_field_travels(kind, cluster::shard_group_assignment{"billing", 2, {"a:1", "b:2"}},
                             3);
  expect_every_field_travels(
      kind,
      cluster::runner_info{
          "a", "a:1", {"default"}, "1.0", false, 12, {sample_plugin_info()}, "a:9093"},
      8);
  expect_every_field_travels(kind, sample_plugin_info(), 7);
  expect_every_field_travels(kind, sample_stored_plugin(), 8);
  expect_every_field_travels(kind, cluster::plugins_msg{{sample_stored_plugin()}}, 1);
  expect_every_field_travels(kind, cluster::plugin_chunk_msg{4096, bytes{7, 8}}, 2);
}

// The frames of docs/protocol.md's worked example, byte for byte: what clients written
// against the spec send and expect.
TEST(wire_fields, encodes_and_decodes_the_bytes_of_the_protocol_spec_unchanged) {
  // An unauthenticated hello (security.auth = false): its key and nonce are empty.
  const std::string hello_frame = from_hex(
      "00 00 00 40 93 01 00 85 b0 70 72 6f 74 6f 63 6f 6c 5f 76 65 72 73 69 6f 6e 02 a4 72 6f 6c "
      "65 a6 63 6c 69 65 6e 74 a4 6e 61 6d 65 aa 63 6c 75 73 74 65 72 63 74 6c a3 6b 65 79 c4 00 "
      "a5 6e 6f 6e 63 65 c4 00");
  const std::string hello_ack_frame = from_hex(
      "00 00 00 3c 93 02 00 86 b0 70 72 6f 74 6f 63 6f 6c 5f 76 65 72 73 69 6f 6e 02 a4 6e 61 6d "
      "65 a0 a4 72 6f 6c 65 a0 a3 6b 65 79 c4 00 a5 6e 6f 6e 63 65 c4 00 a9 73 69 67 6e 61 74 75 "
      "72 65 c4 00");
  const std::string request_frame = from_hex(
      "00 00 00 8a 93 03 01 8a ab 65 6e 74 69 74 79 5f 74 79 70 65 a7 47 72 65 65 74 65 72 a9 65 "
      "6e 74 69 74 79 5f 69 64 a4 54 65 73 74 a3 72 70 63 a5 47 72 65 65 74 a7 70 61 79 6c 6f 61 "
      "64 c4 0b 81 a4 6e 61 6d 65 a4 4a 6f 68 6e a9 70 65 72 73 69 73 74 65 64 c2 ab 70 72 69 6d "
      "61 72 79 5f 6b 65 79 c0 ad 64 65 6c 69 76 65 72 5f 61 74 5f 6d 73 c0 aa 74 69 6d 65 6f 75 "
      "74 5f 6d 73 00 a7 64 69 73 63 61 72 64 c2 a6 63 72 65 64 69 74 00");
  const std::string reply_frame = from_hex(
      "00 00 00 51 93 04 01 84 a4 63 6f 64 65 00 a5 65 72 72 6f 72 a0 a7 6d 65 73 73 61 67 65 a0 "
      "a7 70 61 79 6c 6f 61 64 c4 2d 81 a7 6d 65 73 73 61 67 65 d9 22 48 65 6c 6c 6f 2c 20 4a 6f "
      "68 6e 21 20 66 72 6f 6d 20 54 65 73 74 20 47 72 65 65 74 65 72 20 32 31 36");

  const cluster::hello_msg hello{2, "client", "clusterctl"};
  const cluster::hello_ack_msg hello_ack{2, ""};
  cluster::request_msg request;
  request.entity_type = "Greeter";
  request.entity_id = "Test";
  request.rpc = "Greet";
  request.payload = cluster::pack_bytes(std::map<std::string, std::string>{{"name", "John"}});
  const auto reply = cluster::reply_msg::success(cluster::pack_bytes(
      std::map<std::string, std::string>{{"message", "Hello, John! from Test Greeter 216"}}));

  auto as_text = [](const cluster::frame& f) { return std::string(f.data(), f.size()); };
  EXPECT_EQ(as_text(cluster::encode_frame(message_kind::hello, 0, hello)), hello_frame);
  EXPECT_EQ(as_text(cluster::encode_frame(message_kind::hello_ack, 0, hello_ack)), hello_ack_frame);
  EXPECT_EQ(as_text(cluster::encode_frame(message_kind::request, 1, request)), request_frame);
  EXPECT_EQ(as_text(cluster::encode_frame(message_kind::reply, 1, reply)), reply_frame);

  auto decoded = [](const std::string& frame) {
    return decode(frame.substr(cluster::frame_header_size));
  };
  EXPECT_EQ(decoded(hello_frame).value().as<cluster::hello_msg>().value(), hello);
  EXPECT_EQ(decoded(hello_ack_frame).value().as<cluster::hello_ack_msg>().value(), hello_ack);
  EXPECT_EQ(decoded(request_frame).value().as<cluster::request_msg>().value(), request);
  EXPECT_EQ(decoded(reply_frame).value().as<cluster::reply_msg>().value(), reply);
}

TEST(wire_fields, writes_the_same_bytes_as_msgpack_define_map_did) {
  // The snapshot gained `pushed_plugins` and runner_info `plugins` since: an older
  // subscriber skips them and reads the rest as it did.
  const auto old_view =
      cluster::unpack_bytes<old_assignment_snapshot>(cluster::pack_bytes(sample_snapshot()));
  ASSERT_TRUE(old_view.has_value());
  EXPECT_EQ(cluster::pack_bytes(old_view.value()), cluster::pack_bytes(old_sample_snapshot()));
  const old_register_runner_msg old_registration{
      "runner-a",
      "10.0.0.1:7000",
      {"default"},
      "1.2.3",
      {{"Counter", "billing", {{"Increment", true}, {"Get", false}}}}};
  const cluster::register_runner_msg registration{
      "runner-a", "10.0.0.1:7000", {"default"}, "1.2.3", {sample_entity_type()}};
  // A registration gained `incarnation` since: an older runner's (without it) still decodes,
  // with an empty incarnation, and an older manager skips the new key.
  EXPECT_EQ(
      cluster::unpack_bytes<cluster::register_runner_msg>(cluster::pack_bytes(old_registration))
          .value(),
      registration);
  auto with_incarnation = registration;
  with_incarnation.incarnation = "5eed";
  EXPECT_EQ(cluster::unpack_bytes<old_register_runner_msg>(cluster::pack_bytes(with_incarnation))
                .value()
                .address,
            "10.0.0.1:7000");
  // And what the old encoder wrote decodes to the same message.
  EXPECT_EQ(cluster::unpack_bytes<cluster::assignment_snapshot>(
                cluster::pack_bytes(old_sample_snapshot()))
                .value(),
            sample_snapshot());
}

TEST(wire_fields, skips_unknown_keys_and_keeps_defaults_for_missing_ones) {
  const auto fields = packed_map(3, [](auto& packer) {
    packer.pack(std::string("added_in_a_later_version"));
    packer.pack(std::vector<int>{1, 2, 3});
    packer.pack(std::string("rpc"));
    packer.pack(std::string("Get"));
    packer.pack(std::string("entity_type"));
    packer.pack(std::string("Counter"));
  });
  const auto request = fields_as<cluster::request_msg>(fields);
  ASSERT_TRUE(succeeded(request));
  cluster::request_msg expected;
  expected.entity_type = "Counter";
  expected.rpc = "Get";
  EXPECT_EQ(request.value(), expected);
}

TEST(wire_fields, lets_the_last_of_duplicate_keys_win_in_every_struct) {
  const auto reply_fields = packed_map(3, [](auto& packer) {
    packer.pack(std::string("message"));
    packer.pack(std::string("first"));
    packer.pack(std::string("message"));
    packer.pack(std::string("second"));
    packer.pack(std::string("code"));
    packer.pack(static_cast<std::uint32_t>(errc::not_owner));
  });
  const auto reply = fields_as<cluster::reply_msg>(reply_fields);
  ASSERT_TRUE(succeeded(reply));
  EXPECT_EQ(reply.value().message, "second");
  EXPECT_EQ(reply.value().code, errc::not_owner);

  // MSGPACK_DEFINE_MAP kept the first; nested structs now follow the same rule as requests.
  const auto runner_fields = packed_map(2, [](auto& packer) {
    packer.pack(std::string("shards"));
    packer.pack(1u);
    packer.pack(std::string("shards"));
    packer.pack(2u);
  });
  const auto runner = fields_as<cluster::runner_info>(runner_fields);
  ASSERT_TRUE(succeeded(runner));
  EXPECT_EQ(runner.value().shards, 2u);
}

TEST(wire_fields, refuses_fields_that_are_not_a_map_or_have_a_non_string_key) {
  msgpack::sbuffer list;
  msgpack::pack(list, std::vector<std::string>{"entity_type", "Counter"});
  EXPECT_FALSE(fields_as<cluster::request_msg>(std::string(list.data(), list.size())));
  EXPECT_FALSE(fields_as<cluster::runner_info>(std::string(list.data(), list.size())));

  const auto integer_key = packed_map(2, [](auto& packer) {
    packer.pack(std::string("rpc"));
    packer.pack(std::string("Get"));
    packer.pack(7);
    packer.pack(std::string("Counter"));
  });
  EXPECT_FALSE(fields_as<cluster::request_msg>(integer_key));
  EXPECT_FALSE(fields_as<cluster::unregister_runner_msg>(integer_key));

  // A known key with a value of the wrong type is refused too, not skipped.
  const auto wrong_type = packed_map(1, [](auto& packer) {
    packer.pack(std::string("timeout_ms"));
    packer.pack(std::string("soon"));
  });
  EXPECT_FALSE(fields_as<cluster::request_msg>(wrong_type));
}

TEST(wire_fields, decodes_keys_in_any_order) {
  const auto fields = packed_map(3, [](auto& packer) {
    packer.pack(std::string("name"));
    packer.pack(std::string("gw"));
    packer.pack(std::string("role"));
    packer.pack(std::string("client"));
    packer.pack(std::string("protocol_version"));
    packer.pack(3u);
  });
  const auto hello = fields_as<cluster::hello_msg>(fields);
  ASSERT_TRUE(succeeded(hello));
  EXPECT_EQ(hello.value(), (cluster::hello_msg{3, "client", "gw"}));
}
