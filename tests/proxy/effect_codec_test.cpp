// The Effect RPC framings and mappings: NDJSON lines and msgpackr's MessagePack dialect
// (records, `undefined`, values split across reads), tags to entity RPCs, replies to Exits.
// The msgpackr bytes below were written by msgpackr's Packr, as @effect/rpc's
// RpcSerialization.msgPack uses it.
#include "cluster/proxy/effect_codec.hpp"

#include <gtest/gtest.h>

#include "cluster/proxy/effect_mapping.hpp"

namespace cluster::proxy {
namespace {

using nlohmann::json;

std::string from_hex(std::string_view hex) {
  std::string out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2)
    out.push_back(static_cast<char>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  return out;
}

// Packr().pack({_tag:"Request", id:"1", tag:"Greet", payload:{entityId:"Test",
// payload:{name:"John"}}, traceId:"ab", spanId:"cd", sampled:true, headers:[]})
const std::string request_hex =
    "d4724098a45f746167a26964a3746167a77061796c6f6164a774726163654964a67370616e4964a773616d70"
    "6c6564a768656164657273a752657175657374a131a54772656574d4724192a8656e746974794964a7706179"
    "6c6f6164a454657374d4724291a46e616d65a44a6f686ea26162a26364c390";

TEST(effect_codec, reads_a_msgpackr_request_with_nested_records) {
  std::size_t used = 0;
  const auto bytes = from_hex(request_hex);
  auto decoded = decode_msgpackr(bytes, used);
  ASSERT_TRUE(decoded) << decoded.error().message;
  ASSERT_TRUE(decoded.value());
  const auto& message = *decoded.value();
  EXPECT_EQ(used, bytes.size());
  EXPECT_EQ(message["_tag"], "Request");
  EXPECT_EQ(message["id"], "1");
  EXPECT_EQ(message["payload"]["entityId"], "Test");
  EXPECT_EQ(message["payload"]["payload"]["name"], "John");
  EXPECT_EQ(message["sampled"], true);
  EXPECT_TRUE(message["headers"].is_array());
}

TEST(effect_codec, a_record_id_is_used_again_for_an_object_of_the_same_shape) {
  // Packr().pack({a:100, b:[1,2,{c:1},{c:2}]}): the second {c} is the bare byte 0x41.
  std::size_t used = 0;
  auto decoded = decode_msgpackr(from_hex("d4724092a161a162cc64940102d4724191a163014102"), used);
  ASSERT_TRUE(decoded && decoded.value());
  EXPECT_EQ(*decoded.value(), json::parse(R"({"a":100,"b":[1,2,{"c":1},{"c":2}]})"));
}

TEST(effect_codec, reads_undefined_as_null_and_plain_maps_as_objects) {
  std::size_t used = 0;
  // {a: undefined} as a record, then a standard map {"a": 80}.
  auto undefined = decode_msgpackr(from_hex("d4724091a161d40000"), used);
  ASSERT_TRUE(undefined && undefined.value());
  EXPECT_TRUE((*undefined.value())["a"].is_null());
  auto map = decode_msgpackr(from_hex("81a16150"), used);
  ASSERT_TRUE(map && map.value());
  EXPECT_EQ((*map.value())["a"], 80) << "0x50 with no structure defined is a fixint";
}

TEST(effect_codec, a_value_cut_short_is_incomplete_and_garbage_is_an_error) {
  const auto bytes = from_hex(request_hex);
  for (std::size_t cut = 0; cut < bytes.size(); ++cut) {
    std::size_t used = 0;
    auto decoded = decode_msgpackr(std::string_view(bytes).substr(0, cut), used);
    ASSERT_TRUE(decoded) << "cut at " << cut << ": " << decoded.error().message;
    EXPECT_FALSE(decoded.value()) << "cut at " << cut;
  }
  std::size_t used = 0;
  auto bad = decode_msgpackr(from_hex("c1"), used);
  ASSERT_FALSE(bad);
  EXPECT_NE(bad.error().message.find("0xc1"), std::string::npos) << bad.error().message;
  auto unknown_ext = decode_msgpackr(from_hex("d40501"), used);
  ASSERT_FALSE(unknown_ext);
  // A count far beyond the bytes waits for more rather than reserving it.
  auto huge = decode_msgpackr(from_hex("dd7fffffff01"), used);
  ASSERT_TRUE(huge);
  EXPECT_FALSE(huge.value());
}

TEST(effect_codec, writes_objects_as_records_and_small_ints_outside_the_record_ids) {
  const json value = json::parse(R"({"_tag":"Exit","requestId":"7","n":100,"m":-5,"list":[{"k":1}],
                                    "empty":{},"x":1.5,"none":null})");
  const auto bytes = encode_msgpackr(value);
  EXPECT_EQ(static_cast<std::uint8_t>(bytes[0]), 0xd4);
  EXPECT_EQ(static_cast<std::uint8_t>(bytes[1]), 0x72);
  std::size_t used = 0;
  auto back = decode_msgpackr(bytes, used);
  ASSERT_TRUE(back && back.value());
  EXPECT_EQ(*back.value(), value);
  EXPECT_EQ(used, bytes.size());
  // 100 is written as uint8, never as the fixint 0x64 (a record id for msgpackr).
  EXPECT_NE(encode_msgpackr(json(100)), std::string(1, '\x64'));
}

TEST(effect_codec, the_reader_splits_ndjson_lines_and_detects_the_framing) {
  effect_reader reader(effect_framing::detect, 1024);
  reader.append(R"({"_tag":"Ping"})");
  auto first = reader.next();
  ASSERT_TRUE(first);
  EXPECT_FALSE(first.value()) << "no newline yet";
  EXPECT_EQ(reader.framing(), effect_framing::ndjson);
  reader.append("\n\n{\"_tag\":\"Eof\"}\n");
  auto ping = reader.next();
  ASSERT_TRUE(ping && ping.value());
  EXPECT_EQ((*ping.value())["_tag"], "Ping");
  auto eof = reader.next();
  ASSERT_TRUE(eof && eof.value());
  EXPECT_EQ((*eof.value())["_tag"], "Eof");
  reader.append("not json\n");
  EXPECT_FALSE(reader.next());
}

TEST(effect_codec, the_reader_takes_msgpack_in_pieces_and_bounds_a_message) {
  const auto bytes = from_hex(request_hex) + from_hex(request_hex);
  effect_reader reader(effect_framing::detect, 4096);
  int messages = 0;
  for (char c : bytes) {
    reader.append(std::string_view(&c, 1));
    for (;;) {
      auto next = reader.next();
      ASSERT_TRUE(next) << next.error().message;
      if (!next.value()) break;
      EXPECT_EQ((*next.value())["tag"], "Greet");
      ++messages;
    }
  }
  EXPECT_EQ(messages, 2);
  EXPECT_EQ(reader.framing(), effect_framing::msgpack);

  effect_reader small(effect_framing::ndjson, 16);
  small.append(std::string(64, 'x'));
  auto too_long = small.next();
  ASSERT_FALSE(too_long);
  EXPECT_EQ(too_long.error().code, errc::frame_too_large);
}

assignment_snapshot catalog() {
  assignment_snapshot snapshot;
  snapshot.version = 1;
  entity_type_info greeter;
  greeter.name = "Greeter";
  greeter.rpcs = {rpc_info{"Greet"}, rpc_info{"Shared"}};
  entity_type_info counter;
  counter.name = "Counter";
  counter.rpcs = {rpc_info{"Increment"}, rpc_info{"Shared"}};
  snapshot.entity_types = {greeter, counter};
  return snapshot;
}

TEST(effect_mapping, tags_resolve_by_override_prefix_or_the_one_type_with_the_rpc) {
  auto made = effect_tags::make({{"Hello", "Greeter.Greet"}});
  ASSERT_TRUE(made);
  auto tags = std::move(made).value();
  const auto snapshot = catalog();
  auto override_tag = tags.resolve("Hello", snapshot);
  ASSERT_TRUE(override_tag);
  EXPECT_EQ(override_tag.value().entity_type, "Greeter");
  EXPECT_EQ(override_tag.value().rpc, "Greet");
  auto prefixed = tags.resolve("Counter.Increment", snapshot);
  ASSERT_TRUE(prefixed);
  EXPECT_EQ(prefixed.value().entity_type, "Counter");
  auto bare = tags.resolve("Increment", snapshot);
  ASSERT_TRUE(bare);
  EXPECT_EQ(bare.value().entity_type, "Counter");
  EXPECT_EQ(bare.value().rpc, "Increment");

  auto ambiguous = tags.resolve("Shared", snapshot);
  ASSERT_FALSE(ambiguous);
  EXPECT_EQ(ambiguous.error().code, errc::unknown_rpc);
  EXPECT_NE(ambiguous.error().message.find("Greeter, Counter"), std::string::npos)
      << ambiguous.error().message;
  auto unknown = tags.resolve("Nope", snapshot);
  ASSERT_FALSE(unknown);
  EXPECT_NE(unknown.error().message.find("Unknown request tag: Nope"), std::string::npos);

  EXPECT_FALSE(effect_tags::make({{"Bad", "NoDot"}}));
  auto discard = tags.resolve("Greeter.GreetDiscard", snapshot);
  ASSERT_TRUE(discard) << discard.error().message;
  EXPECT_EQ(discard.value().rpc, "Greet");
  EXPECT_TRUE(discard.value().discard);
  EXPECT_FALSE(bare.value().discard);
  auto no_rpc = tags.resolve("Greeter.Nope", snapshot);
  ASSERT_FALSE(no_rpc);
  EXPECT_NE(no_rpc.error().message.find("entity type Greeter has no RPC Nope"), std::string::npos)
      << no_rpc.error().message;

  auto before_any_runner = tags.resolve("Greet", assignment_snapshot{});
  ASSERT_FALSE(before_any_runner);
  EXPECT_EQ(before_any_runner.error().code, errc::no_runner);
}

TEST(effect_mapping, a_new_snapshot_forgets_old_resolutions) {
  auto tags = effect_tags::make({}).value();
  auto snapshot = catalog();
  ASSERT_TRUE(tags.resolve("Greet", snapshot));
  snapshot.version = 2;
  snapshot.entity_types.erase(snapshot.entity_types.begin());
  EXPECT_FALSE(tags.resolve("Greet", snapshot)) << "Greeter is gone from the catalog";
}

TEST(effect_mapping, replies_become_the_exits_effect_clients_decode) {
  const effect_address address{"default", 216, "Greeter", "Test"};
  const auto packed = json::to_msgpack(json{{"message", "hi"}});
  auto ok = effect_exit(reply_msg::success(bytes(packed.begin(), packed.end())), address);
  EXPECT_EQ(ok, json::parse(R"({"_tag":"Success","value":{"message":"hi"}})"));

  reply_msg rejected = reply_msg::failure(errc::application_error, "probe rejected the request");
  rejected.error = "Rejected";
  auto app = effect_exit(rejected, address);
  EXPECT_EQ(app["cause"]["_tag"], "Fail");
  EXPECT_EQ(app["cause"]["error"]["_tag"], "Rejected");
  EXPECT_EQ(app["cause"]["error"]["message"], "probe rejected the request");

  auto full = effect_exit(reply_msg::failure(errc::mailbox_full, "full"), address);
  EXPECT_EQ(full["cause"]["error"]["_tag"], "MailboxFull");
  EXPECT_EQ(full["cause"]["error"]["address"]["shardId"]["id"], 216);
  EXPECT_EQ(full["cause"]["error"]["address"]["entityId"], "Test");
  auto moved = effect_exit(reply_msg::failure(errc::unavailable, "gone"), address);
  EXPECT_EQ(moved["cause"]["error"]["_tag"], "EntityNotManagedByRunner");
  auto storage = effect_exit(reply_msg::failure(errc::storage_error, "db"), address);
  EXPECT_EQ(storage["cause"]["error"]["_tag"], "PersistenceError");
  EXPECT_EQ(storage["cause"]["error"]["cause"]["message"], "db");
  auto cancelled = effect_exit(reply_msg::failure(errc::cancelled, "stop"), address);
  EXPECT_EQ(cancelled["cause"]["_tag"], "Interrupt");
  auto bad = effect_exit(reply_msg::failure(errc::bad_payload, "name: expected a string"), address);
  EXPECT_EQ(bad["cause"]["_tag"], "Die");
  EXPECT_EQ(bad["cause"]["defect"]["name"], "BadPayload");
  EXPECT_EQ(bad["cause"]["defect"]["message"], "name: expected a string");

  auto streamed = effect_exit(reply_msg::success(bytes(packed.begin(), packed.end())), address,
                              /*stream=*/true);
  EXPECT_EQ(streamed, json::parse(R"({"_tag":"Success"})")) << "a stream's success is void";
}

}  // namespace
}  // namespace cluster::proxy
