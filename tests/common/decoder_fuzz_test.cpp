// A bounded randomized fuzz run of the frame and message decoders (codec.hpp): random bytes
// and mutations of valid frames of every message kind go through the frame header, the
// envelope decoder and the conversion of the fields to every protocol struct.
//
// The seed is printed; CLUSTER_FUZZ_SEED=<n> replays a run, CLUSTER_FUZZ_ITERATIONS=<n>
// changes its length (default 20000).

#include <gtest/gtest.h>

#include <cstdint>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "cluster/protocol/codec.hpp"

namespace {

using namespace std::string_literals;
using cluster::bytes;
using cluster::decode_limits;
using cluster::message_kind;

std::uint64_t env_number(const char* name, std::uint64_t fallback) {
  const char* text = std::getenv(name);
  if (text == nullptr || *text == '\0') return fallback;
  return std::strtoull(text, nullptr, 10);
}

std::string frame_text(const cluster::frame& frame) {
  return std::string(frame.data(), frame.size());
}

// One valid frame (header included) of every message kind, with every field set.
std::vector<std::string> valid_frames() {
  cluster::entity_type_info counter{"Counter", "default", {{"Increment", true}, {"Get", false}}};
  cluster::request_msg request;
  request.entity_type = "Counter";
  request.entity_id = "c1";
  request.rpc = "Increment";
  request.payload = cluster::pack_bytes(std::map<std::string, int>{{"by", 2}});
  request.persisted = true;
  request.primary_key = "order-42";
  request.deliver_at_ms = 1'700'000'000'000;
  request.timeout_ms = 5000;
  cluster::register_runner_msg registration{
      "runner-1", "127.0.0.1:34431", {"default"}, "0.1.0", {counter}};
  cluster::assignment_snapshot snapshot;
  snapshot.version = 7;
  snapshot.storage = "memory";
  snapshot.groups.push_back({"default", 4, {"127.0.0.1:34431", "", "127.0.0.1:34432", ""}});
  snapshot.entity_types.push_back(counter);
  snapshot.runners.push_back({"runner-1", "127.0.0.1:34431", {"default"}, "0.1.0", true, 2});
  const cluster::empty_msg empty;
  return {
      frame_text(
          cluster::encode_frame(message_kind::hello, 0, cluster::hello_msg{cluster::protocol_version, "client", "fuzz"})),
      frame_text(
          cluster::encode_frame(message_kind::hello_ack, 0, cluster::hello_ack_msg{1, "proxy"})),
      frame_text(cluster::encode_frame(message_kind::request, 1, request)),
      frame_text(cluster::encode_frame(message_kind::reply, 1,
                                       cluster::reply_msg::success(cluster::pack_bytes(7)))),
      frame_text(cluster::encode_frame(
          message_kind::reply, 2, cluster::reply_msg::failure(cluster::errc::not_owner, "moved"))),
      frame_text(cluster::encode_frame(message_kind::ping, 3, empty)),
      frame_text(cluster::encode_frame(message_kind::pong, 3, empty)),
      frame_text(cluster::encode_frame(message_kind::register_runner, 4, registration)),
      frame_text(cluster::encode_frame(message_kind::unregister_runner, 5,
                                       cluster::unregister_runner_msg{"127.0.0.1:34431"})),
      frame_text(cluster::encode_frame(message_kind::subscribe_assignments, 6, empty)),
      frame_text(cluster::encode_frame(message_kind::assignments, 0, snapshot)),
      frame_text(cluster::encode_frame(message_kind::get_status, 8, empty)),
      frame_text(cluster::encode_frame(message_kind::reply, 8,
                                       cluster::reply_msg::success(cluster::pack_bytes(snapshot)))),
      frame_text(cluster::encode_frame(message_kind::interrupt, 1, empty)),
  };
}

class mutator {
 public:
  explicit mutator(std::uint64_t seed) : rng_(seed) {}

  std::size_t below(std::size_t n) {
    return n == 0 ? 0 : std::uniform_int_distribution<std::size_t>(0, n - 1)(rng_);
  }
  char byte() { return static_cast<char>(below(256)); }

  std::string random_bytes(std::size_t max_size) {
    std::string out(below(max_size + 1), '\0');
    for (char& c : out) c = byte();
    return out;
  }

  // A random MessagePack value: any type, sometimes a container announcing more than it has.
  void random_value(msgpack::packer<msgpack::sbuffer>& packer, int depth) {
    switch (below(depth > 3 ? 9 : 12)) {
      case 0:
        packer.pack_nil();
        break;
      case 1:
        packer.pack(below(2) == 1);
        break;
      case 2:
        packer.pack(static_cast<std::uint64_t>(rng_()));
        break;
      case 3:
        packer.pack(-static_cast<std::int64_t>(below(1u << 30)) - 1);
        break;
      case 4:
        packer.pack(static_cast<double>(rng_()) / 3.0);
        break;
      case 5:
        packer.pack(random_bytes(12));
        break;
      case 6: {
        const std::string data = random_bytes(12);
        packer.pack_bin(static_cast<std::uint32_t>(data.size()));
        packer.pack_bin_body(data.data(), static_cast<std::uint32_t>(data.size()));
        break;
      }
      case 7: {
        const std::string data = random_bytes(4);
        packer.pack_ext(data.size(), static_cast<std::int8_t>(below(256) - 128));
        packer.pack_ext_body(data.data(), static_cast<std::uint32_t>(data.size()));
        break;
      }
      case 8:
        packer.pack(static_cast<std::uint32_t>(below(64)));
        break;
      case 9: {
        const auto n = below(4);
        packer.pack_array(static_cast<std::uint32_t>(n));
        for (std::size_t i = 0; i < n; ++i) random_value(packer, depth + 1);
        break;
      }
      case 10: {
        const auto n = below(3);
        packer.pack_map(static_cast<std::uint32_t>(n));
        for (std::size_t i = 0; i < 2 * n; ++i) random_value(packer, depth + 1);
        break;
      }
      default:
        // Announces far more elements than follow.
        packer.pack_array(below(2) == 0 ? 0xFFFFFFFFu : 0xFFFFu);
        packer.pack_nil();
        break;
    }
  }

  // Replaces one value inside a valid body with a value of a random type (a type swap that
  // keeps the framing intact, so the conversions see it).
  std::string swap_a_value(const std::string& frame) {
    const std::string body = frame.substr(cluster::frame_header_size);
    msgpack::object_handle handle = msgpack::unpack(body.data(), body.size());
    std::vector<const msgpack::object*> nodes;
    collect(handle.get(), nodes);
    const msgpack::object* target = nodes[below(nodes.size())];
    msgpack::sbuffer out;
    msgpack::packer<msgpack::sbuffer> packer(out);
    repack(handle.get(), target, packer);
    return with_header(std::string(out.data(), out.size()));
  }

  std::string mutate(const std::string& frame) {
    std::string out = frame;
    const int rounds = 1 + static_cast<int>(below(4));
    for (int r = 0; r < rounds && !out.empty(); ++r) {
      switch (below(8)) {
        case 0:  // flip bits
          for (std::size_t i = 0, n = 1 + below(8); i < n; ++i)
            out[below(out.size())] ^= static_cast<char>(1u << below(8));
          break;
        case 1:  // truncate
          out.resize(below(out.size() + 1));
          break;
        case 2:  // tamper with the length field
          if (out.size() >= cluster::frame_header_size) {
            const std::uint32_t lengths[] = {0u,
                                             0xFFFFFFFFu,
                                             0x7FFFFFFFu,
                                             static_cast<std::uint32_t>(out.size()),
                                             static_cast<std::uint32_t>(rng_()),
                                             static_cast<std::uint32_t>(below(out.size() + 8))};
            set_length(out, lengths[below(std::size(lengths))]);
          }
          break;
        case 3: {  // a MessagePack type byte somewhere
          static const unsigned char markers[] = {0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7,
                                                  0xc8, 0xc9, 0xca, 0xcb, 0xcc, 0xcf, 0xd0, 0xd3,
                                                  0xd4, 0xd8, 0xd9, 0xdb, 0xdc, 0xdd, 0xde, 0xdf,
                                                  0x80, 0x8f, 0x90, 0x9f, 0xa0, 0xbf, 0xe0, 0xff};
          out[below(out.size())] = static_cast<char>(markers[below(std::size(markers))]);
          break;
        }
        case 4: {  // a huge container or string header in the middle
          static const std::string headers[] = {
              "\xdd\xff\xff\xff\xff"s, "\xdf\xff\xff\xff\xff"s,     "\xdb\xff\xff\xff\xff"s,
              "\xc6\xff\xff\xff\xff"s, "\xc9\xff\xff\xff\xff\x01"s, "\xdc\xff\xff"s,
              "\xde\xff\xff"s};
          out.insert(below(out.size() + 1), headers[below(std::size(headers))]);
          break;
        }
        case 5:  // random bytes inserted
          out.insert(below(out.size() + 1), random_bytes(16));
          break;
        case 6: {  // a slice repeated
          const auto from = below(out.size());
          const auto count = 1 + below(std::min<std::size_t>(64, out.size() - from));
          out.insert(below(out.size() + 1), out.substr(from, count));
          break;
        }
        default:  // deep nesting
          out.insert(below(out.size() + 1), std::string(below(64), '\x91'));
          break;
      }
    }
    return out;
  }

  static std::string with_header(const std::string& body) {
    std::string out(cluster::frame_header_size, '\0');
    set_length(out, static_cast<std::uint32_t>(body.size()));
    return out + body;
  }

 private:
  static void set_length(std::string& frame, std::uint32_t length) {
    frame[0] = static_cast<char>(length >> 24);
    frame[1] = static_cast<char>(length >> 16);
    frame[2] = static_cast<char>(length >> 8);
    frame[3] = static_cast<char>(length);
  }

  static void collect(const msgpack::object& o, std::vector<const msgpack::object*>& nodes) {
    nodes.push_back(&o);
    if (o.type == msgpack::type::ARRAY) {
      for (std::uint32_t i = 0; i < o.via.array.size; ++i) collect(o.via.array.ptr[i], nodes);
    } else if (o.type == msgpack::type::MAP) {
      for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
        collect(o.via.map.ptr[i].key, nodes);
        collect(o.via.map.ptr[i].val, nodes);
      }
    }
  }

  void repack(const msgpack::object& o, const msgpack::object* target,
              msgpack::packer<msgpack::sbuffer>& packer) {
    if (&o == target) {
      random_value(packer, 0);
    } else if (o.type == msgpack::type::ARRAY) {
      packer.pack_array(o.via.array.size);
      for (std::uint32_t i = 0; i < o.via.array.size; ++i)
        repack(o.via.array.ptr[i], target, packer);
    } else if (o.type == msgpack::type::MAP) {
      packer.pack_map(o.via.map.size);
      for (std::uint32_t i = 0; i < o.via.map.size; ++i) {
        repack(o.via.map.ptr[i].key, target, packer);
        repack(o.via.map.ptr[i].val, target, packer);
      }
    } else {
      packer.pack(o);
    }
  }

  std::mt19937_64 rng_;
};

struct tally {
  int frames = 0;
  int too_large = 0;
  int incomplete = 0;
  int rejected = 0;
  int decoded = 0;
  int converted = 0;
};

// What a decoded tree may hold: containers within the limits, nesting within max_depth and
// no more values than bytes (each value takes at least one byte), so memory is bounded.
void expect_within_limits(const msgpack::object& root, const decode_limits& limits,
                          std::size_t body_size) {
  struct item {
    const msgpack::object* o;
    std::size_t depth;
  };
  std::vector<item> stack{{&root, 1}};
  std::size_t values = 0;
  while (!stack.empty()) {
    const auto [o, depth] = stack.back();
    stack.pop_back();
    ++values;
    if (o->type == msgpack::type::ARRAY) {
      ASSERT_LE(o->via.array.size, limits.max_container_elements);
      ASSERT_LE(depth, limits.max_depth);
      for (std::uint32_t i = 0; i < o->via.array.size; ++i)
        stack.push_back({&o->via.array.ptr[i], depth + 1});
    } else if (o->type == msgpack::type::MAP) {
      ASSERT_LE(o->via.map.size, limits.max_container_elements);
      ASSERT_LE(depth, limits.max_depth);
      for (std::uint32_t i = 0; i < o->via.map.size; ++i) {
        stack.push_back({&o->via.map.ptr[i].key, depth + 1});
        stack.push_back({&o->via.map.ptr[i].val, depth + 1});
      }
    } else if (o->type == msgpack::type::STR || o->type == msgpack::type::BIN) {
      ASSERT_LE(o->via.str.size, body_size);
    }
  }
  ASSERT_LE(values, body_size);
}

// Converts the fields to T; a failure must say why, and must not throw.
template <class T>
void convert(const cluster::envelope& env, tally& counts) {
  std::optional<cluster::result<T>> value;
  ASSERT_NO_THROW(value.emplace(env.as<T>()));
  if (value->has_value()) {
    ++counts.converted;
  } else {
    EXPECT_FALSE(value->error().message.empty()) << "a conversion failed without a reason";
    EXPECT_EQ(value->error().code, cluster::errc::invalid_request);
  }
}

// Every protocol struct a peer may convert fields to.
template <class... Structs>
void convert_to_every(const cluster::envelope& env, tally& counts) {
  (convert<Structs>(env, counts), ...);
}

// Feeds one byte string through the read path of a connection: header, size check, body
// decode, then every conversion a peer may apply to the fields and to payloads.
void feed(const std::string& data, const decode_limits& limits, tally& counts) {
  ++counts.frames;
  if (data.size() < cluster::frame_header_size) {
    ++counts.incomplete;
    return;
  }
  unsigned char header[cluster::frame_header_size];
  std::copy_n(reinterpret_cast<const unsigned char*>(data.data()), cluster::frame_header_size,
              header);
  const std::uint32_t size = cluster::decode_frame_header(header);
  if (size > limits.max_frame_bytes) {
    ++counts.too_large;  // the connection answers FrameTooLarge without reading the body
    return;
  }
  // A connection waits for the whole body; with fewer bytes the decoder still sees what there
  // is (the tail of a frame cut short is as hostile as any other body).
  const std::size_t available =
      std::min<std::size_t>(size, data.size() - cluster::frame_header_size);
  if (available < size) ++counts.incomplete;
  const char* body = data.data() + cluster::frame_header_size;
  std::optional<cluster::result<cluster::envelope>> decoded;
  ASSERT_NO_THROW(decoded.emplace(cluster::decode_envelope(body, available, limits)));
  if (!decoded->has_value()) {
    ++counts.rejected;
    EXPECT_FALSE(decoded->error().message.empty()) << "a body was rejected without a reason";
    EXPECT_EQ(decoded->error().code, cluster::errc::malformed_frame);
    return;
  }
  ++counts.decoded;
  const cluster::envelope& env = decoded->value();
  expect_within_limits(env.handle.get(), limits, available);
  convert_to_every<cluster::hello_msg, cluster::hello_ack_msg, cluster::request_msg,
                   cluster::reply_msg, cluster::register_runner_msg, cluster::unregister_runner_msg,
                   cluster::empty_msg, cluster::assignment_snapshot,
                   cluster::shard_group_assignment, cluster::runner_info, cluster::entity_type_info,
                   cluster::rpc_info>(env, counts);
  // Payloads are decoded again by whoever receives them (clusterctl: a status snapshot).
  using string_map = std::map<std::string, std::string>;
  std::optional<cluster::result<cluster::reply_msg>> reply;
  ASSERT_NO_THROW(reply.emplace(env.as<cluster::reply_msg>()));
  if (reply->has_value()) {
    const auto& payload = reply->value().payload;
    ASSERT_NO_THROW((void)cluster::unpack_bytes<cluster::assignment_snapshot>(payload, limits));
    ASSERT_NO_THROW((void)cluster::unpack_bytes<string_map>(payload, limits));
  }
  std::optional<cluster::result<cluster::request_msg>> request;
  ASSERT_NO_THROW(request.emplace(env.as<cluster::request_msg>()));
  if (request->has_value()) {
    ASSERT_NO_THROW(
        (void)cluster::unpack_bytes<std::vector<std::int64_t>>(request->value().payload, limits));
  }
}

}  // namespace

TEST(decoder_fuzz, survives_random_and_mutated_frames_of_every_kind_within_the_limits) {
  const std::uint64_t seed = env_number("CLUSTER_FUZZ_SEED", std::random_device{}());
  const std::uint64_t iterations = env_number("CLUSTER_FUZZ_ITERATIONS", 20000);
  std::cout << "decoder fuzz: CLUSTER_FUZZ_SEED=" << seed
            << " CLUSTER_FUZZ_ITERATIONS=" << iterations << std::endl;
  RecordProperty("seed", std::to_string(seed));
  SCOPED_TRACE("CLUSTER_FUZZ_SEED=" + std::to_string(seed));

  const auto corpus = valid_frames();
  mutator m(seed);
  // The default limits, and small ones so that the container and depth bounds are hit often.
  decode_limits small;
  small.max_frame_bytes = 4096;
  small.max_container_elements = 8;
  small.max_depth = 4;
  const decode_limits defaults;

  tally counts;
  for (std::uint64_t i = 0; i < iterations && !HasFatalFailure(); ++i) {
    const decode_limits& limits = i % 4 == 3 ? small : defaults;
    std::string input;
    switch (i % 5) {
      case 0:  // random bytes, sometimes behind a plausible header
        input = m.random_bytes(256);
        if (m.below(2) == 0) input = mutator::with_header(input);
        break;
      case 1:
        input = m.swap_a_value(corpus[m.below(corpus.size())]);
        break;
      case 2: {
        msgpack::sbuffer body;
        msgpack::packer<msgpack::sbuffer> packer(body);
        packer.pack_array(3);
        packer.pack(static_cast<std::uint32_t>(m.below(16)));
        packer.pack(static_cast<std::uint64_t>(m.below(1000)));
        m.random_value(packer, 0);
        input = mutator::with_header(std::string(body.data(), body.size()));
        break;
      }
      default:
        input = m.mutate(corpus[m.below(corpus.size())]);
        break;
    }
    SCOPED_TRACE("iteration " + std::to_string(i));
    feed(input, limits, counts);
  }
  std::cout << "decoder fuzz: " << counts.frames << " inputs, " << counts.too_large
            << " over max_frame_bytes, " << counts.incomplete << " cut short, " << counts.rejected
            << " rejected, " << counts.decoded << " decoded, " << counts.converted
            << " successful conversions" << std::endl;
  // The run reached every outcome: otherwise the mutations are not doing their job.
  EXPECT_GT(counts.too_large, 0);
  EXPECT_GT(counts.rejected, 0);
  EXPECT_GT(counts.decoded, 0);
  EXPECT_GT(counts.converted, 0);
}

TEST(decoder_fuzz, every_valid_frame_of_the_corpus_decodes_and_converts) {
  tally counts;
  for (const auto& frame : valid_frames()) feed(frame, decode_limits{}, counts);
  EXPECT_EQ(counts.decoded, counts.frames);
  EXPECT_EQ(counts.rejected, 0);
}
