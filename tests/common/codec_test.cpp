// Frame encoding and the bounded decoding of untrusted bytes
// (common/include/cluster/protocol/codec.hpp).

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

std::optional<envelope> decode(const std::string& body, std::string& error,
                               const decode_limits& limits = {}) {
  return cluster::decode_envelope(body.data(), body.size(), limits, error);
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

  std::string error;
  const auto body = body_of(frame);
  auto env = decode(body, error);
  EXPECT_TRUE(env.has_value()) << error;
  if (!env) return T{};
  EXPECT_EQ(env->kind, static_cast<std::uint32_t>(kind));
  EXPECT_EQ(env->id, id);
  auto converted = env->template as<T>(&error);
  EXPECT_TRUE(converted.has_value()) << error;
  return converted.value_or(T{});
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
    std::string error;
    auto env = decode(body, error);
    if (env) {
      ++decoded;
      // A decoded envelope is usable: its fields can be inspected and converted safely.
      (void)env->fields().type;
      std::string conversion_error;
      (void)env->as<cluster::request_msg>(&conversion_error);
    } else {
      ++rejected;
      EXPECT_FALSE(error.empty()) << "buffer " << i << " was rejected without a reason";
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
    std::string error;
    const auto env = decode(body.substr(0, size), error);
    EXPECT_FALSE(env.has_value()) << "a body truncated to " << size << " bytes decoded";
    EXPECT_FALSE(error.empty());
  }
  std::string error;
  EXPECT_TRUE(decode(body, error).has_value()) << error;
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
    std::string error;
    EXPECT_FALSE(decode(body, error).has_value());
    EXPECT_NE(error.find("[kind, id, fields]"), std::string::npos) << error;
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
    std::string error;
    EXPECT_FALSE(decode(body, error).has_value());
    EXPECT_NE(error.find("unsigned integers"), std::string::npos) << error;
  }
  std::string error;
  const auto env = decode(packed_array(3u, std::uint64_t{0xFFFF'FFFF'FFFF'FFFF}, 0), error);
  ASSERT_TRUE(env.has_value()) << error;
  EXPECT_EQ(env->id, 0xFFFF'FFFF'FFFF'FFFFull);
}

TEST(codec, rejects_trailing_bytes_after_the_body) {
  auto body = body_of(cluster::encode_frame(message_kind::ping, 1, cluster::empty_msg{}));
  std::string error;
  ASSERT_TRUE(decode(body, error).has_value()) << error;
  body.push_back('\x01');
  EXPECT_FALSE(decode(body, error).has_value());
  EXPECT_NE(error.find("trailing"), std::string::npos) << error;
}

TEST(codec, rejects_a_body_over_max_frame_bytes) {
  cluster::hello_msg hello;
  hello.name = std::string(100, 'x');
  const auto body = body_of(cluster::encode_frame(message_kind::hello, 1, hello));
  decode_limits limits;
  limits.max_frame_bytes = body.size() - 1;
  std::string error;
  EXPECT_FALSE(decode(body, error, limits).has_value());
  EXPECT_NE(error.find("exceeds the limit"), std::string::npos) << error;
  limits.max_frame_bytes = body.size();
  EXPECT_TRUE(decode(body, error, limits).has_value()) << error;
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
    std::string error;
    EXPECT_FALSE(decode(body, error, limits).has_value());
    EXPECT_FALSE(error.empty());
  }
}

TEST(codec, rejects_a_container_over_max_container_elements) {
  decode_limits limits;
  limits.max_container_elements = 100;
  std::string error;
  EXPECT_TRUE(decode(packed_array(3u, 1u, std::vector<int>(100, 0)), error, limits).has_value())
      << error;
  EXPECT_FALSE(decode(packed_array(3u, 1u, std::vector<int>(101, 0)), error, limits).has_value());
  EXPECT_FALSE(error.empty());
  std::map<std::string, int> wide;
  for (int i = 0; i <= 100; ++i) wide.emplace(std::to_string(i), i);
  EXPECT_FALSE(decode(packed_array(3u, 1u, wide), error, limits).has_value());
}

TEST(codec, rejects_nesting_deeper_than_max_depth) {
  std::string deep = "\x93\x03\x01"s;
  deep.append(200, '\x91');  // 200 nested one-element arrays
  deep.push_back('\x00');
  std::string error;
  EXPECT_FALSE(decode(deep, error).has_value());
  EXPECT_FALSE(error.empty());

  std::string shallow = "\x93\x03\x01"s;
  shallow.append(4, '\x91');
  shallow.push_back('\x00');
  EXPECT_TRUE(decode(shallow, error).has_value()) << error;
}

TEST(codec, converts_fields_of_the_wrong_type_to_nullopt_with_an_error) {
  const auto frame =
      cluster::encode_frame(message_kind::request, 7, request_with_integer_entity_type{});
  std::string error;
  auto env = decode(body_of(frame), error);
  ASSERT_TRUE(env.has_value()) << error;
  error.clear();
  EXPECT_FALSE(env->as<cluster::request_msg>(&error).has_value());
  EXPECT_FALSE(error.empty());
  EXPECT_FALSE(env->as<cluster::request_msg>().has_value());  // no error slot: still no throw

  // Fields that are not a map at all.
  auto list = decode(packed_array(3u, 8u, std::vector<int>{1, 2}), error);
  ASSERT_TRUE(list.has_value()) << error;
  error.clear();
  EXPECT_FALSE(list->as<cluster::hello_msg>(&error).has_value());
  EXPECT_FALSE(error.empty());
}

TEST(codec, round_trips_payloads_through_pack_bytes) {
  const std::vector<std::string> names = {"a", "", "\xff\xfe"};
  const auto packed = cluster::pack_bytes(names);
  EXPECT_EQ(cluster::unpack_bytes<std::vector<std::string>>(packed), names);

  const auto number = cluster::pack_bytes(std::int64_t{-123456789});
  EXPECT_EQ(cluster::unpack_bytes<std::int64_t>(number), std::optional<std::int64_t>(-123456789));

  cluster::rpc_info info{"Get", true};
  const auto back = cluster::unpack_bytes<cluster::rpc_info>(cluster::pack_bytes(info));
  ASSERT_TRUE(back.has_value());
  EXPECT_EQ(back->name, "Get");
  EXPECT_TRUE(back->persisted);
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
  EXPECT_FALSE(cluster::unpack_bytes<int>(data).has_value());
}

TEST(errc, has_a_distinct_name_for_every_code) {
  std::set<std::string_view> names;
  for (std::uint32_t code = 0; code <= 19; ++code) {
    const auto name = cluster::to_string(static_cast<errc>(code));
    EXPECT_NE(name, "Unknown") << "code " << code;
    EXPECT_FALSE(name.empty());
    names.insert(name);
  }
  EXPECT_EQ(names.size(), 20u);
  EXPECT_EQ(cluster::to_string(errc::ok), "Ok");
  EXPECT_EQ(cluster::to_string(errc::handshake_required), "HandshakeRequired");
  EXPECT_EQ(cluster::to_string(static_cast<errc>(20)), "Unknown");
}

TEST(errc, retries_routing_exactly_for_not_owner_no_runner_unavailable_and_shutting_down) {
  const std::set<errc> retriable = {errc::not_owner, errc::no_runner, errc::unavailable,
                                    errc::shutting_down};
  for (std::uint32_t code = 0; code <= 19; ++code) {
    const auto e = static_cast<errc>(code);
    EXPECT_EQ(cluster::is_routing_retriable(e), retriable.count(e) == 1) << cluster::to_string(e);
  }
}
